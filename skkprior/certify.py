r"""PAC-Bayes risk certificates for a posterior over a network's weights (docs/concepts.md, section 6).

:func:`certify` computes an *honest* certificate of the Gibbs classifier's 0-1 risk:

1. the empirical Gibbs risk on the ``n`` bound points, estimated with a fresh posterior draw
   per example and pass (``m = passes * n`` independent predictions);
2. the sample-convergence correction ``r+ = kl^-1(r_m, ln(2/delta_mc)/m)``;
3. the kl (Seeger/Maurer) bound (or McAllester / Catoni) with the exact ``KL(Q || P)`` plus
   ``ln(union_size)`` for any choice made on the bound data that changed the prior.

The certificate holds with probability at least ``1 - delta - delta_mc``.

The hypothesis must be a function of the input and of the parameters the posterior draws: a
state fitted on the bound data that the KL does not pay for makes it data-dependent, and
:func:`certify` refuses it with an error naming the modules or parameters and the fix:

- BatchNorm (or InstanceNorm) layers with *running statistics*: buffers estimated on the training
  data, under no prior. Accepted only with ``frozen_statistics=True``, the caller's statement
  that they were fixed before the bound data were seen (e.g. computed on other data and kept
  with ``momentum=0``);
- BatchNorm layers with *batch statistics* (``track_running_stats=False``): a prediction would
  depend on the other examples of its batch; always refused;
- trainable parameters (``requires_grad``) outside the posterior: fitted, possibly on the bound
  data, and not paid by the KL. Build the posterior over them (the Laplace posterior covers every
  trainable parameter: Linear/Conv2d layers in Kronecker form, the rest, e.g. LayerNorm's
  affine parameters, in isotropic groups), or freeze them (``requires_grad_(False)``) when they
  were fixed without the bound data.

``protocol="paper"`` instead reproduces the evaluation of Schnaus et al. (2023): the
training error of the Bayesian model average (100 samples) in McAllester's or Catoni's bound
at confidence 0.9, with no Monte-Carlo correction and no union bound. It is a diagnostic for
comparison, not a certificate, and is labeled so in the record. Its defaults (McAllester,
``delta = 0.1``) apply only where ``bound`` and ``delta`` are left out: a value passed
explicitly is always used as given, under either protocol.
"""

from __future__ import annotations

from typing import Any, Literal, Sequence

import torch
from torch import nn

from ._validation import check_label_range, check_probability, class_labels, error_message
from .bounds import Certificate, certificate_from_errors, paper_protocol_bound

__all__ = ["certify"]


def certify(model: nn.Module, posterior: Any, X: Any, y: Any, *, prior: Any = None,
            bound: Literal["kl", "mcallester", "catoni"] | None = None, delta: float | None = None,
            delta_mc: float = 0.01, passes: int = 1, union_size: int = 1,
            protocol: Literal["certificate", "paper"] = "certificate", C: float | None = None,
            catoni_grid: Sequence[float] | None = None, n_samples: int = 100,
            generator: torch.Generator | None = None, batch_size: int = 512,
            frozen_statistics: bool = False) -> Certificate:
    r"""Certify the Gibbs 0-1 risk of ``posterior`` on the bound data ``(X, y)``.

    Parameters
    ----------
    model : nn.Module
        The network (its parameters are not used; the posterior supplies them).
    posterior : LayerwiseGaussian
        ``Q``; usually a :class:`~skkprior.laplace.KroneckerPosterior`.
    X, y : tensors or arrays
        The bound data; ``y`` are class indices ``0 .. C-1`` (integers, or floats with integral
        values), one per row of ``X``. They must not have influenced the prior.
    prior : LayerwiseGaussian, optional
        ``P`` (default: ``posterior.prior``).
    bound : {"kl", "mcallester", "catoni"}, optional
        Default: ``"kl"`` for ``protocol="certificate"``, the paper's ``"mcallester"`` for
        ``protocol="paper"``. A bound given explicitly is used under either protocol.
    delta : float, optional
        Failure probability of the bound. Default: 0.025 for ``protocol="certificate"``, the
        paper's 0.1 (confidence 0.9) for ``protocol="paper"``. A value given explicitly is used
        as given under either protocol (never replaced).
    delta_mc : float, default=0.01
        Failure probability of the Monte-Carlo correction (``protocol="certificate"``).
    passes : int, default=1
        Passes over the data, each with fresh draws (``m = passes * n``).
    union_size : int, default=1
        Number of prior candidates the prior was chosen from on the bound data.
    protocol : {"certificate", "paper"}, default="certificate"
        ``"paper"``: the paper's optimistic diagnostic (see module docstring), with its own
        defaults for ``bound`` and ``delta``.
    C, catoni_grid
        Catoni's constant (fixed) or a grid of them fixed in advance (``bound="catoni"``).
    n_samples : int, default=100
        Samples of the model average (paper protocol only).
    generator : torch.Generator, optional
        Seeds the posterior draws.
    batch_size : int, default=512
    frozen_statistics : bool, default=False
        True states that the running statistics of the normalization layers (BatchNorm,
        InstanceNorm with ``track_running_stats``) were fixed before the bound data were seen,
        so they are constants of the hypothesis. False (default): a network with running
        statistics is refused, since they are fitted on the training data and under no prior.

    Returns
    -------
    Certificate
        The record of :mod:`skkprior.bounds` (bound, every ingredient, the protocol).

    Raises
    ------
    ValueError
        For a data-dependent hypothesis (see the module notes): running statistics without
        ``frozen_statistics=True``, batch statistics, trainable parameters outside the posterior.
    """
    from .predictive import gibbs_error_count, predict_proba_mc

    prior = posterior.prior if prior is None else prior
    if prior is None:
        raise ValueError(error_message("prior", "given (the posterior carries none)", None,
                                       "Pass prior=... explicitly."))
    if protocol not in ("certificate", "paper"):
        raise ValueError(error_message("protocol", "'certificate' or 'paper'", protocol))
    if bound is None:
        bound = "mcallester" if protocol == "paper" else "kl"
    if bound not in ("kl", "mcallester", "catoni"):
        raise ValueError(error_message("bound", "'kl', 'mcallester' or 'catoni'", bound))
    if delta is None:
        delta = 0.1 if protocol == "paper" else 0.025
    delta = check_probability(delta, "delta")
    if not isinstance(frozen_statistics, bool):
        raise TypeError(error_message("frozen_statistics", "True or False", repr(frozen_statistics),
                                      "It states that normalization statistics were fixed before the bound data."))
    refuse_data_dependent(model, posterior, frozen_statistics=frozen_statistics)
    X_t = torch.as_tensor(X)
    y_t = class_labels(y, int(X_t.shape[0]) if X_t.ndim else 0)
    n = int(y_t.shape[0])
    if isinstance(passes, bool) or not isinstance(passes, int) or passes < 1:
        raise ValueError(error_message("passes", "a positive integer", passes))
    kl = posterior.kl(prior)
    kl_groups = kl.as_dict()
    kl_total = float(sum(kl_groups.values()))
    if protocol == "paper":
        proba = predict_proba_mc(model, posterior, X_t, n_samples=n_samples, generator=generator,
                                 batch_size=batch_size)
        check_label_range(y_t, int(proba.shape[1]))
        error = float((proba.argmax(dim=1).cpu() != y_t).double().mean())
        return paper_protocol_bound(error, kl_total, n, delta=delta, bound=bound,
                                    C=(C if C is not None else (1.0 if bound == "catoni" else None)),
                                    kl_per_group=kl_groups)
    n_errors, m = gibbs_error_count(model, posterior, X_t, y_t, passes=passes, generator=generator,
                                    batch_size=batch_size)
    return certificate_from_errors(int(n_errors), int(m), n, kl_total, delta=delta, delta_mc=delta_mc,
                                   union_size=union_size, bound=bound, kl_per_group=kl_groups,
                                   C=C, catoni_grid=catoni_grid)


def refuse_data_dependent(model: nn.Module, posterior: Any, *, frozen_statistics: bool = False,
                          who: str = "certify") -> None:
    """Raise a ``ValueError`` when the hypothesis holds state that the KL does not pay for.

    Refused: normalization layers with batch statistics; with running statistics unless
    ``frozen_statistics``; trainable parameters outside ``posterior``.
    """
    batch, running = normalization_statistics(model)
    if batch:
        raise ValueError(batch_statistics_message(batch, f"the network given to {who}"))
    if running and not frozen_statistics:
        raise ValueError(error_message(
            f"the network given to {who}", "free of state fitted on the bound data that the KL does not "
            "pay for", f"normalization layers with running statistics {_names(running)}: buffers "
            "estimated on the training data, not under the prior",
            "Use nn.LayerNorm or nn.GroupNorm (per-example statistics, affine parameters under the "
            "prior), or fix the statistics before the bound data are seen (compute them on other "
            "data, then momentum=0) and pass frozen_statistics=True."))
    covered = {name for g in posterior for name in g.parameter_names}
    outside = [name for name, p in model.named_parameters() if p.requires_grad and name not in covered]
    if outside:
        shown = ", ".join(repr(n) for n in outside[:6]) + (" ..." if len(outside) > 6 else "")
        raise ValueError(error_message(
            f"the posterior given to {who}", "over every trainable parameter of the network",
            f"trainable parameters {shown} not under the posterior (so not paid by the KL, though they "
            "may have been fitted on the bound data)",
            "Build the posterior over them (skkprior.laplace.posterior covers every trainable "
            "parameter: Linear/Conv2d layers in Kronecker form, the others in isotropic groups), or "
            "freeze them with requires_grad_(False) if they were fixed without the bound data."))


def batch_statistics_message(batch: list[str], what: str) -> str:
    """The error for BatchNorm layers that normalize by the batch in evaluation."""
    return error_message(
        what, "a function of each input alone (a hypothesis the posterior draws)",
        f"BatchNorm layers with batch statistics (track_running_stats=False) {_names(batch)}: in "
        "evaluation they normalize by the batch, so a prediction depends on the other examples of its batch",
        "Use a per-example normalization (nn.LayerNorm, nn.GroupNorm: their affine parameters are "
        "under the prior), or running statistics fixed before the bound data are seen.")


def normalization_statistics(model: nn.Module) -> tuple[list[str], list[str]]:
    """Names of the normalization layers with batch statistics and with running statistics."""
    batch, running = [], []
    for name, module in model.named_modules():
        if not isinstance(module, nn.modules.batchnorm._NormBase):
            continue
        if getattr(module, "running_mean", None) is not None or getattr(module, "running_var", None) is not None:
            running.append(name)
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):  # normalizes by the batch in eval mode
            batch.append(name)
    return batch, running


def _names(names: list[str]) -> str:
    return "[" + ", ".join(repr(n) for n in names[:6]) + (" ..." if len(names) > 6 else "") + "]"
