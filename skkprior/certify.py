r"""PAC-Bayes risk certificates for a posterior over a network's weights (METHOD.md section 6).

:func:`certify` computes an *honest* certificate of the Gibbs classifier's 0-1 risk:

1. the empirical Gibbs risk on the ``n`` bound points, estimated with a fresh posterior draw
   per example and pass (``m = passes * n`` independent predictions);
2. the sample-convergence correction ``r+ = kl^-1(r_m, ln(2/delta_mc)/m)``;
3. the kl (Seeger/Maurer) bound (or McAllester / Catoni) with the exact ``KL(Q || P)`` plus
   ``ln(union_size)`` for any choice made on the bound data that changed the prior.

The certificate holds with probability at least ``1 - delta - delta_mc``.

``protocol="paper"`` instead reproduces the evaluation of Schnaus et al. (2023): the
training error of the Bayesian model average (100 samples) in McAllester's or Catoni's bound
at confidence 0.9, with no Monte-Carlo correction and no union bound. It is a diagnostic for
comparison, not a certificate, and is labeled so in the record.
"""

from __future__ import annotations

from typing import Any, Literal, Sequence

import torch
from torch import nn

from ._validation import check_positive, error_message
from .bounds import Certificate, certificate_from_errors, paper_protocol_bound

__all__ = ["certify"]


def certify(model: nn.Module, posterior: Any, X: Any, y: Any, *, prior: Any = None,
            bound: Literal["kl", "mcallester", "catoni"] = "kl", delta: float = 0.025,
            delta_mc: float = 0.01, passes: int = 1, union_size: int = 1,
            protocol: Literal["certificate", "paper"] = "certificate", C: float | None = None,
            catoni_grid: Sequence[float] | None = None, n_samples: int = 100,
            generator: torch.Generator | None = None, batch_size: int = 512) -> Certificate:
    r"""Certify the Gibbs 0-1 risk of ``posterior`` on the bound data ``(X, y)``.

    Parameters
    ----------
    model : nn.Module
        The network (its parameters are not used; the posterior supplies them).
    posterior : LayerwiseGaussian
        ``Q``; usually a :class:`~skkprior.laplace.KroneckerPosterior`.
    X, y : tensors or arrays
        The bound data; ``y`` are class indices. They must not have influenced the prior.
    prior : LayerwiseGaussian, optional
        ``P`` (default: ``posterior.prior``).
    bound : {"kl", "mcallester", "catoni"}, default="kl"
    delta, delta_mc : float, default=0.025, 0.01
        Failure probabilities of the bound and of the Monte-Carlo correction.
    passes : int, default=1
        Passes over the data, each with fresh draws (``m = passes * n``).
    union_size : int, default=1
        Number of prior candidates the prior was chosen from on the bound data.
    protocol : {"certificate", "paper"}, default="certificate"
        ``"paper"``: the paper's optimistic diagnostic (see module docstring); then
        ``delta`` defaults to the paper's 0.1 when left at 0.025, and ``bound`` "kl" maps to
        McAllester.
    C, catoni_grid
        Catoni's constant (fixed) or a grid of them fixed in advance (``bound="catoni"``).
    n_samples : int, default=100
        Samples of the model average (paper protocol only).
    generator : torch.Generator, optional
        Seeds the posterior draws.
    batch_size : int, default=512

    Returns
    -------
    Certificate
        The record of :mod:`skkprior.bounds` (bound, every ingredient, the protocol).
    """
    from .predictive import gibbs_error_count, predict_proba_mc

    prior = posterior.prior if prior is None else prior
    if prior is None:
        raise ValueError(error_message("prior", "given (the posterior carries none)", None,
                                       "Pass prior=... explicitly."))
    X_t = torch.as_tensor(X)
    y_t = torch.as_tensor(y).long()
    if X_t.shape[0] != y_t.shape[0]:
        raise ValueError(error_message("X and y", "of the same length", f"{X_t.shape[0]} and {y_t.shape[0]}"))
    n = int(y_t.shape[0])
    if not isinstance(passes, int) or passes < 1:
        raise ValueError(error_message("passes", "a positive integer", passes))
    kl = posterior.kl(prior)
    kl_groups = kl.as_dict()
    kl_total = float(sum(kl_groups.values()))
    if protocol == "paper":
        proba = predict_proba_mc(model, posterior, X_t, n_samples=n_samples, generator=generator,
                                 batch_size=batch_size)
        error = float((proba.argmax(dim=1).cpu() != y_t.cpu()).double().mean())
        paper_bound = "mcallester" if bound == "kl" else bound
        paper_delta = 0.1 if delta == 0.025 else delta
        return paper_protocol_bound(error, kl_total, n, delta=paper_delta, bound=paper_bound,
                                    C=(C if C is not None else (1.0 if paper_bound == "catoni" else None)),
                                    kl_per_group=kl_groups)
    if protocol != "certificate":
        raise ValueError(error_message("protocol", "'certificate' or 'paper'", protocol))
    check_positive(delta, "delta")
    n_errors, m = gibbs_error_count(model, posterior, X_t, y_t, passes=passes, generator=generator,
                                    batch_size=batch_size)
    return certificate_from_errors(int(n_errors), int(m), n, kl_total, delta=delta, delta_mc=delta_mc,
                                   union_size=union_size, bound=bound, kl_per_group=kl_groups,
                                   C=C, catoni_grid=catoni_grid)
