r"""Choosing the posterior's scales ``(alpha, beta, tau)``.

Four ways (docs/concepts.md, section 6 and the Laplace evidence):

- :func:`tune_pac_bayes`: the paper's tractable PAC-Bayes objective. The expected empirical
  risk is approximated by a second-order Taylor expansion of the expected NLL,

  .. math:: r_{approx} = \frac{NLL_{sum}(\theta^*) + \tfrac12 \tau \sum_l \mathrm{tr}(F_l \Sigma_l)}{N \ln 2},

  (base-2 cross-entropy upper-bounds the 0-1 loss) and plugged into McAllester's or Catoni's
  bound together with the *exact* KL. ``log alpha``, ``log beta``, ``log tau`` (shared or per
  layer) are optimized with Adam. Because every posterior layer is held in the exact two-term
  form, each step only touches the eigenvalues: ``O(sum_l n_l m_l)`` per step, no
  decomposition, no NKP, no Cholesky. The best iterate (the start included) is returned, so
  tuning never makes the objective worse.
- :func:`tune_validation`: a grid over ``(alpha, tau)`` scored by the predictive NLL on
  held-out data.
- :func:`tune_marglik`: ``alpha`` (shared or per layer) maximizing the Laplace approximation of
  the log marginal likelihood (:func:`laplace_log_evidence`), MacKay's evidence framework. In
  the joint eigenbasis the evidence is a one-dimensional concave function of ``log alpha`` per
  scale, solved exactly (safeguarded Newton); it needs no held-out data, so it also works
  where a data set is too small to split.
- fixed values: :meth:`~skkprior.laplace.KroneckerPosterior.with_scales`.

Choices of ``(alpha, beta, tau)`` change only the posterior ``Q`` (the prior is fixed), so
they cost nothing in the certificate (no union bound).

The paper's *training* criteria (MAP, McAllester, Catoni) live here too, as loss terms:
:func:`training_objective`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import torch

from ._validation import check_positive, check_probability, error_message

__all__ = [
    "PACBayesObjective",
    "TuningResult",
    "laplace_log_evidence",
    "training_objective",
    "tune_marglik",
    "tune_pac_bayes",
    "tune_validation",
]

logger = logging.getLogger(__name__)

LN2 = math.log(2.0)
ObjectiveName = Literal["mcallester", "catoni", "quadratic"]
OBJECTIVE_NAMES = ("mcallester", "catoni", "quadratic")
SCALE_NAMES = ("prior_scale", "likelihood_scale", "temperature")


def _bound_from_risk(risk: torch.Tensor, kl: torch.Tensor, n: int, delta: float, bound: str,
                     log_C: torch.Tensor | None) -> torch.Tensor:
    if bound == "mcallester":
        eps = kl + math.log(2.0 * math.sqrt(n) / delta)
        return risk + torch.sqrt(eps.clamp_min(0) / (2.0 * n))
    if bound == "catoni":
        C = log_C.exp()
        return (1.0 - torch.exp(-C * risk - (kl + math.log(1.0 / delta)) / n)) / (1.0 - torch.exp(-C))
    if bound == "quadratic":
        half = (kl + math.log(2.0 * math.sqrt(n) / delta)).clamp_min(0) / (2.0 * n)
        return (torch.sqrt(risk + half) + torch.sqrt(half)) ** 2
    raise ValueError(error_message("objective", "'mcallester', 'catoni' or 'quadratic'", bound))


class PACBayesObjective:
    r"""The paper's PAC-Bayes objective of a posterior as a function of its log-scales.

    Precomputes, per layer, everything that does not depend on ``(alpha, beta, tau)``: the
    generalized eigenvalues ``D_G D_A^T``, the (constant) Mahalanobis term against the fixed
    prior and the dimensions. :meth:`__call__` then costs ``O(sum n m)``.

    Parameters
    ----------
    posterior : KroneckerPosterior
        Built by :func:`~skkprior.laplace.posterior` (exact two-term layers).
    nll_sum : float
        Summed NLL (nats) of the MAP network on the ``n`` bound data points.
    n : int
        Number of data points the bound is about.
    bound : {"mcallester", "catoni", "quadratic"}, default="catoni"
        ``"quadratic"``: the PAC-Bayes-quadratic bound of Perez-Ortiz et al. (2021),
        ``(sqrt(r + b) + sqrt(b))^2`` with ``b = (KL + ln(2 sqrt(n) / delta)) / (2n)``.
    delta : float, default=0.025
        ``delta_conf`` of the bound.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from skkprior.curvature import kfac
    >>> from skkprior.laplace import isotropic_prior, posterior
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    >>> X, y = torch.randn(200, 4), torch.randint(0, 3, (200,))
    >>> curv = kfac(net, X, y, progress=False)
    >>> post = posterior(isotropic_prior(net, weight_decay=1.0), curv, net)
    >>> obj = PACBayesObjective(post, nll_sum=curv.nll_sum, n=200, bound="mcallester")
    >>> zeros = {k: torch.zeros((), dtype=torch.float64) for k in SCALE_NAMES}
    >>> value = obj(zeros)
    >>> bool(torch.isclose(value, obj.reference(post)))
    True
    """

    def __init__(self, posterior: Any, *, nll_sum: float, n: int, bound: ObjectiveName = "catoni",
                 delta: float = 0.025) -> None:
        self.n = int(n)
        if self.n < 1:
            raise ValueError(error_message("n", "a positive number of data points", n))
        if not math.isfinite(float(nll_sum)) or float(nll_sum) < 0:
            raise ValueError(error_message("nll_sum", "a finite non-negative summed NLL", nll_sum))
        self.nll_sum = float(nll_sum)
        self.bound = bound
        self.delta = check_probability(delta, "delta")
        if bound not in OBJECTIVE_NAMES:
            raise ValueError(error_message("objective", "'mcallester', 'catoni' or 'quadratic'", bound))
        self.names = list(posterior.groups)
        self.layers: dict[str, dict[str, Any]] = {}
        self.flat: dict[str, dict[str, Any]] = {}
        self._logdet_gap = 0.0  # logdet of posteriors that keep the prior term in part (diagonal)
        device = posterior.device
        for name, g in posterior.groups.items():
            p = posterior.prior.groups[name]
            diff = g.mean.to(torch.float64) - p.mean.to(device=g.mean.device, dtype=torch.float64)
            maha = p.precision_quadratic(diff).detach() / float(p.temperature)
            if g.terms is not None:  # a two-term posterior: beta d + alpha in the prior's metric
                if p.precision is not g.terms[1]:
                    raise ValueError(error_message(f"posterior layer '{name}'",
                                                   "built by skkprior.laplace.posterior (prior as its second term)",
                                                   "a precision of another origin"))
                dd = g.precision.whitened_curvature().detach()
                self.layers[name] = {"dd": dd, "maha": maha, "dim": g.dim}
                self._logdet_gap += float(g.precision.logdet_gap)
            else:  # no curvature: Q's precision is alpha times the prior's, whatever its type
                self.flat[name] = {"maha": maha, "dim": g.dim}
        self.device = device
        # One vectorized route for all layers: every layer's eigenvalue grid lives in one flat
        # tensor (the per-layer entries are views into it) and per-layer scales are gathered
        # onto it, so a step is a few kernels whatever the number of layers (54 layers of
        # ResNet-50: 4x faster than a per-layer loop); shared scales simply broadcast.
        layers, flat = list(self.layers.values()), list(self.flat.values())
        f64 = {"dtype": torch.float64, "device": device}
        sizes = [c["dd"].numel() for c in layers]
        self._dd = torch.cat([c["dd"].reshape(-1) for c in layers]) if layers else torch.zeros(0, **f64)
        for c, chunk in zip(layers, torch.split(self._dd, sizes)):
            c["dd"] = chunk.view(c["dd"].shape)
        self._layer_of = torch.repeat_interleave(torch.arange(len(layers), device=device),
                                                 torch.tensor(sizes, dtype=torch.long, device=device))
        self._layer_dim = torch.tensor([float(c["dim"]) for c in layers], **f64)
        self._layer_maha = torch.stack([c["maha"] for c in layers]).sum() if layers else torch.zeros((), **f64)
        self._flat_dim = torch.tensor([float(c["dim"]) for c in flat], **f64)
        self._flat_maha = torch.stack([c["maha"] for c in flat]).sum() if flat else torch.zeros((), **f64)

    def _split(self, value: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """A log-scale as (per-layer, per-flat-group) tensors: 0-d when shared, else vectors."""
        if not isinstance(value, dict):
            return value, value
        per_layer = torch.stack([value[name] for name in self.layers]) if self.layers else self._layer_dim
        per_flat = torch.stack([value[name] for name in self.flat]) if self.flat else self._flat_dim
        return per_layer, per_flat

    def parts(self, log_scales: dict[str, Any]) -> dict[str, torch.Tensor]:
        """``kl``, ``trace_term`` and ``risk`` (r_approx) for log-scales (0-d tensors or per-group dicts)."""
        la, la_flat = self._split(log_scales["prior_scale"])
        lb, _ = self._split(log_scales["likelihood_scale"])
        lt, lt_flat = self._split(log_scales["temperature"])

        def per_entry(v: torch.Tensor) -> torch.Tensor:  # a per-layer vector onto the flat grid
            return v[self._layer_of] if v.ndim else v

        lam = per_entry(lb).exp() * self._dd + per_entry(la).exp()
        inv = 1.0 / lam
        tau = per_entry(lt).exp()
        if tau.ndim:  # per-layer temperatures
            trace, trace_term = (tau * inv).sum(), (tau * self._dd * inv).sum()
        else:  # shared: one elementwise pass fewer
            trace, trace_term = tau * inv.sum(), tau * (self._dd * inv).sum()
        kl = 0.5 * (trace + self._layer_maha - self._layer_dim.sum() + torch.log(lam).sum()
                    - (self._layer_dim * lt).sum() + self._logdet_gap)
        # groups without curvature. Q: precision alpha * P, temperature tau; P: the prior's.
        d = self._flat_dim
        kl = kl + 0.5 * ((d * torch.exp(lt_flat - la_flat)).sum() + self._flat_maha - d.sum()
                         + (d * (la_flat - lt_flat)).sum())
        risk = (self.nll_sum + 0.5 * trace_term) / (self.n * LN2)
        return {"kl": kl, "trace_term": trace_term, "risk": risk}

    def __call__(self, log_scales: dict[str, Any], log_C: torch.Tensor | None = None) -> torch.Tensor:
        parts = self.parts(log_scales)
        if self.bound == "catoni" and log_C is None:
            log_C = torch.zeros((), dtype=torch.float64, device=self.device)
        return _bound_from_risk(parts["risk"], parts["kl"], self.n, self.delta, self.bound, log_C)

    def reference(self, posterior: Any, C: float = 1.0) -> torch.Tensor:
        """The same objective through the general route (``kl_to_prior`` + ``trace_term``); for tests."""
        kl = posterior.kl_to_prior().total
        trace_term = posterior.trace_term({n: g.terms[0] for n, g in posterior.groups.items() if g.terms})
        risk = (self.nll_sum + 0.5 * trace_term) / (self.n * LN2)
        log_C = torch.tensor(math.log(C), dtype=torch.float64)
        return _bound_from_risk(risk, kl, self.n, self.delta, self.bound, log_C)


@dataclass
class TuningResult:
    """What :func:`tune_pac_bayes` / :func:`tune_validation` found.

    Attributes
    ----------
    posterior : KroneckerPosterior
        The posterior at the best scales.
    prior_scale, likelihood_scale, temperature : dict
        The best scales per group.
    objective_start, objective_best : float
        Objective at the starting scales and at the best ones (``best <= start``).
    history : list of float
        Objective per step (or per grid point).
    C : float or None
        Catoni's constant at the optimum (Catoni objective only).
    accuracy : list of float
        :func:`tune_validation` only: the held-out accuracy of every grid point, in the order of
        ``history`` (NaN where the predictive overflowed).
    """

    posterior: Any
    prior_scale: dict[str, float]
    likelihood_scale: dict[str, float]
    temperature: dict[str, float]
    objective_start: float
    objective_best: float
    history: list[float] = field(default_factory=list)
    C: float | None = None
    accuracy: list[float] = field(default_factory=list)


def tune_pac_bayes(posterior: Any, *, nll_sum: float, n: int, objective: ObjectiveName = "catoni",
                   delta: float = 0.025, per_layer: bool = False,
                   tune: Sequence[str] = SCALE_NAMES, lr: float = 0.5, max_steps: int = 500,
                   tol: float = 1e-7) -> TuningResult:
    r"""Optimize ``log alpha, log beta, log tau`` by the paper's PAC-Bayes objective.

    Parameters
    ----------
    posterior : KroneckerPosterior
        The starting posterior; its current scales are the starting point.
    nll_sum : float
        Summed NLL (nats) of the MAP network on the ``n`` data points (``Curvature.nll_sum``).
    n : int
        Number of data points.
    objective : {"catoni", "mcallester", "quadratic"}, default="catoni"
        The bound the approximate risk is plugged into (:class:`PACBayesObjective`). Catoni's
        ``C`` is optimized too.
    delta : float, default=0.025
    per_layer : bool, default=False
        One scale per group (True) or shared scales (False).
    tune : sequence of str
        Which of ``"prior_scale"``, ``"likelihood_scale"``, ``"temperature"`` to optimize;
        the others stay at their current values.
    lr : float, default=0.5
        Adam learning rate (the paper's).
    max_steps : int, default=500
    tol : float, default=1e-7
        Stop when the objective changed by less than ``tol`` (relative) over 20 steps.

    Returns
    -------
    TuningResult
        ``objective_best <= objective_start`` always.
    """
    for t in tune:
        if t not in SCALE_NAMES:
            raise ValueError(error_message("tune", f"a subset of {SCALE_NAMES}", list(tune)))
    check_positive(lr, "lr")
    obj = PACBayesObjective(posterior, nll_sum=nll_sum, n=n, bound=objective, delta=delta)
    device = obj.device
    start = {"prior_scale": posterior.prior_scale, "likelihood_scale": posterior.likelihood_scale,
             "temperature": posterior.temperature}
    names = obj.names

    def init(kind: str) -> Any:
        vals = {k: math.log(float(start[kind][k])) for k in names}
        if per_layer:
            return {k: torch.tensor(v, dtype=torch.float64, device=device, requires_grad=kind in tune)
                    for k, v in vals.items()}
        shared = sum(vals.values()) / len(vals)
        if any(abs(v - shared) > 1e-12 for v in vals.values()):
            # heterogeneous start values: keep them as per-group constants plus one shared shift
            base = {k: torch.tensor(v, dtype=torch.float64, device=device) for k, v in vals.items()}
            shift = torch.zeros((), dtype=torch.float64, device=device, requires_grad=kind in tune)
            return ("shift", base, shift)
        return torch.tensor(shared, dtype=torch.float64, device=device, requires_grad=kind in tune)

    raw = {kind: init(kind) for kind in SCALE_NAMES}

    def materialize() -> dict[str, Any]:
        out = {}
        for kind, v in raw.items():
            if isinstance(v, tuple):
                _, base, shift = v
                out[kind] = {k: b + shift for k, b in base.items()}
            else:
                out[kind] = v
        return out

    leaves: list[torch.Tensor] = []
    for kind in tune:
        v = raw[kind]
        if isinstance(v, tuple):
            leaves.append(v[2])
        elif isinstance(v, dict):
            leaves.extend(v.values())
        else:
            leaves.append(v)
    log_C = None
    if objective == "catoni":
        log_C = torch.zeros((), dtype=torch.float64, device=device, requires_grad=True)
        leaves.append(log_C)

    def snapshot() -> tuple[dict[str, dict[str, float]], float | None]:
        vals = materialize()
        scales = {kind: {k: math.exp(float((v[k] if isinstance(v, dict) else v).detach())) for k in names}
                  for kind, v in vals.items()}
        return scales, (math.exp(float(log_C.detach())) if log_C is not None else None)

    with torch.no_grad():
        value0 = float(obj(materialize(), log_C))
    if not math.isfinite(value0):
        raise ArithmeticError(error_message("the PAC-Bayes objective at the starting scales", "finite",
                                            value0, "Check the curvature and prior for non-finite entries, "
                                            "and the starting scales: a temperature or 1 / prior_scale "
                                            "(or 1 / weight_decay of the prior) near 1e300 overflows the KL."))
    best_value = value0
    best_state = [leaf.detach().clone() for leaf in leaves]
    history = [value0]
    optimizer = torch.optim.Adam(leaves, lr=lr) if leaves else None

    def consider(current: float) -> None:
        nonlocal best_value, best_state
        history.append(current)
        if math.isfinite(current) and current < best_value:
            best_value, best_state = current, [leaf.detach().clone() for leaf in leaves]

    # one forward and one backward per step: the forward's value is the objective at the
    # current iterate (history[k] = objective after k steps); the last iterate is scored after
    stopped_early = False
    for step in range(max_steps if optimizer else 0):
        optimizer.zero_grad()
        value = obj(materialize(), log_C)
        if not torch.isfinite(value):
            logger.warning("tune_pac_bayes: non-finite objective at step %d; stopping", step)
            stopped_early = True
            break
        if step > 0:
            consider(float(value.detach()))
            if len(history) > 21 and abs(history[-21] - history[-1]) <= tol * max(abs(history[-1]), 1e-12):
                stopped_early = True
                break
        value.backward()
        optimizer.step()
    if optimizer is not None and not stopped_early and max_steps > 0:
        with torch.no_grad():
            consider(float(obj(materialize(), log_C)))
    with torch.no_grad():
        for leaf, state in zip(leaves, best_state):
            leaf.copy_(state)
    best_scales, best_C = snapshot()
    tuned = posterior.with_scales(best_scales["prior_scale"], best_scales["likelihood_scale"],
                                  best_scales["temperature"])
    logger.info("tune_pac_bayes: objective %.6g -> %.6g in %d steps", value0, best_value, len(history) - 1)
    return TuningResult(tuned, best_scales["prior_scale"], best_scales["likelihood_scale"],
                        best_scales["temperature"], value0, best_value, history, best_C)


def tune_validation(posterior: Any, model: torch.nn.Module, X_val: Any, y_val: Any, *,
                    prior_scales: Sequence[float] = (0.1, 0.3, 1.0, 3.0, 10.0),
                    temperatures: Sequence[float] = (0.01, 0.03, 0.1, 0.3, 1.0),
                    predictive: Literal["mc", "linearized"] = "mc", n_samples: int = 30,
                    generator: torch.Generator | None = None, batch_size: int = 512) -> TuningResult:
    """Pick ``(alpha, tau)`` on a grid by the predictive NLL on held-out data.

    The posterior's ``beta`` is kept. Returns the grid point with the lowest validation NLL;
    ``history`` holds the NLL of every grid point in row-major order (prior scale outer) and
    ``accuracy`` its held-out accuracy.
    """
    from .metrics import nll
    from .predictive import NonFiniteLogits, predict_proba_linearized, predict_proba_mc

    if predictive not in ("mc", "linearized"):
        raise ValueError(error_message("predictive", "'mc' or 'linearized'", predictive))
    y = torch.as_tensor(y_val)
    results = []
    accuracies: list[float] = []
    skipped: list[str] = []
    for a in prior_scales:
        for t in temperatures:
            q = posterior.with_scales(prior_scale=float(a), temperature=float(t))
            try:
                if predictive == "mc":
                    gen = None if generator is None else torch.Generator(device=generator.device).manual_seed(
                        int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=generator.device)))
                    proba = predict_proba_mc(model, q, X_val, n_samples=n_samples, generator=gen,
                                             batch_size=batch_size)
                else:
                    proba = predict_proba_linearized(model, q, X_val, batch_size=batch_size)
                value = float(nll(proba.cpu().numpy(), y.cpu().numpy()))
                correct = float((proba.argmax(dim=1).cpu() == y.cpu()).to(torch.float64).mean())
            except NonFiniteLogits as exc:  # a grid point too broad to evaluate: never the best
                skipped.append(f"(prior_scale {float(a):.3g}, temperature {float(t):.3g}): {exc}")
                value, correct = math.inf, math.nan
            # a NaN would make min() depend on the grid order; it ranks last like an overflow
            results.append((value if math.isfinite(value) else math.inf, float(a), float(t)))
            accuracies.append(correct if math.isfinite(value) else math.nan)
    if skipped and len(skipped) < len(results):
        logger.warning("tune_validation: %d of %d grid points overflow and are skipped; first: %s",
                       len(skipped), len(results), skipped[0])
    if all(r[0] == math.inf for r in results):
        raise ValueError(error_message(
            "the validation grid of tune_validation", "at least one point with a finite validation NLL",
            f"none finite over prior_scales {[float(a) for a in prior_scales]} and temperatures "
            f"{[float(t) for t in temperatures]}" + (f"; first overflow: {skipped[0]}" if skipped else ""),
            "Pass smaller temperatures or larger prior_scales (or a larger weight_decay of the prior)."))
    start_nll = results[0][0]
    best = min(results)
    tuned = posterior.with_scales(prior_scale=best[1], temperature=best[2])
    names = list(posterior.groups)
    return TuningResult(tuned, {k: best[1] for k in names}, dict(posterior.likelihood_scale),
                        {k: best[2] for k in names}, start_nll, best[0], [r[0] for r in results],
                        accuracy=accuracies)


def _evidence_terms(posterior: Any) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], float]:
    """Per layer group: ``q = (theta - mu)^T P (theta - mu)`` and the eigenvalues ``beta * d`` of
    ``beta F`` in the prior's metric (``T^T P T = I``, ``T^T F T = diag(d)``), flattened; and the
    summed ``logdet_gap`` of posteriors that keep their prior term only in part (a constant)."""
    quads: dict[str, torch.Tensor] = {}
    curv: dict[str, torch.Tensor] = {}
    gap = 0.0
    for name, g in posterior.groups.items():
        if g.terms is None:  # no curvature
            continue
        prior_group = posterior.prior.groups[name]  # its precision is the posterior's second term
        delta = g.mean.to(torch.float64) - prior_group.mean.to(device=g.mean.device, dtype=torch.float64)
        quads[name] = prior_group.precision_quadratic(delta)
        prec = g.precision
        beta = torch.as_tensor(prec.beta, dtype=torch.float64, device=prec.device).detach()
        curv[name] = (prec.whitened_curvature().detach() * beta).reshape(-1).clamp_min(0.0)
        gap += float(prec.logdet_gap)
    if not quads:
        raise ValueError(error_message("posterior", "at least one layer with curvature (a KroneckerPosterior "
                                       "from skkprior.posterior)", "none",
                                       "Build the posterior with skkprior.posterior(prior, curvature, model)."))
    return quads, curv, gap


def _evidence_value(quads: dict[str, torch.Tensor], curv: dict[str, torch.Tensor], alphas: dict[str, Any],
                    beta: float, nll: float, gap: float = 0.0) -> torch.Tensor:
    """``-beta nll - sum_l (alpha_l q_l + sum_i ln(1 + e_li / alpha_l)) / 2 - gap / 2`` (see
    laplace_log_evidence; ``gap`` from :func:`_evidence_terms`)."""
    total = torch.zeros((), dtype=torch.float64, device=next(iter(quads.values())).device)
    for name, q in quads.items():
        alpha = torch.as_tensor(float(alphas[name]), dtype=torch.float64, device=q.device)
        total = total - 0.5 * alpha * q - 0.5 * torch.log1p(curv[name] / alpha).sum()
    return total - beta * nll - 0.5 * gap


def _shared_likelihood_scale(posterior: Any) -> float:
    """The posterior's one ``beta``; a clear error for anything but a KroneckerPosterior or mixed ``beta``."""
    from .laplace import KroneckerPosterior

    if not isinstance(posterior, KroneckerPosterior):
        raise TypeError(error_message("posterior", "a KroneckerPosterior", type(posterior).__name__,
                                      "Build it with skkprior.posterior(prior, curvature, model)."))
    betas = {float(v) for v in posterior.likelihood_scale.values()}
    if len(betas) != 1:
        raise ValueError(error_message("likelihood_scale of the posterior", "one value shared by all groups "
                                       "(the likelihood is tempered as a whole)", sorted(betas),
                                       "Use posterior.with_scales(likelihood_scale=<float>)."))
    return betas.pop()


def laplace_log_evidence(posterior: Any, *, nll_sum: float) -> torch.Tensor:
    r"""Laplace approximation of the log marginal likelihood at the posterior's scales.

    For each layer, with prior ``N(mu, (alpha P)^-1)`` and posterior precision
    ``Lambda = beta F + alpha P`` at the MAP ``theta``:

    .. math:: \ln Z \approx -\beta\, NLL_{sum}(\theta) - \tfrac{\alpha}{2} (\theta - \mu)^T P (\theta - \mu)
              + \tfrac12 \ln\det(\alpha P) - \tfrac12 \ln\det \Lambda ,

    summed over layers; the ``2 pi`` terms cancel. In the joint eigenbasis of ``F`` and ``P``
    the two log-determinants reduce to ``-1/2 sum_i ln(1 + beta d_i / alpha)`` (``d_i`` the
    eigenvalues of ``F`` relative to ``P``), so the value is exact for the two-term posterior
    and costs ``O(n m)`` per layer. The temperature is not part of the evidence and is
    ignored. Groups without curvature (no layer) carry no information about ``alpha`` and are
    left out.

    Parameters
    ----------
    posterior : KroneckerPosterior
        From :func:`skkprior.posterior`; its ``likelihood_scale`` must be shared.
    nll_sum : float
        Summed NLL (nats) of the MAP network on the training data (``Curvature.nll_sum``).

    Returns
    -------
    torch.Tensor
        0-d float64.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from skkprior import isotropic_prior, kfac, posterior
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    >>> X, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    >>> curv = kfac(net, X, y, progress=False)
    >>> post = posterior(isotropic_prior(net, weight_decay=1.0), curv, net)
    >>> bool(torch.isfinite(laplace_log_evidence(post, nll_sum=curv.nll_sum)))
    True
    """
    nll = check_positive(nll_sum, "nll_sum", allow_zero=True)
    beta = _shared_likelihood_scale(posterior)
    quads, curv, gap = _evidence_terms(posterior)
    return _evidence_value(quads, curv, posterior.prior_scale, beta, nll, gap)


def _solve_log_alpha(quads: Sequence[torch.Tensor], curv: Sequence[torch.Tensor], u0: float,
                     lo: float, hi: float, tol: float = 1e-10, max_iter: int = 200) -> tuple[float, str]:
    """Maximize ``f(u) = -1/2 e^u q - 1/2 sum log(1 + e_i e^-u)`` over ``u`` in ``[lo, hi]``.

    ``f`` is concave (``f'' < 0``), so its maximizer is the root of the decreasing ``f'`` (MacKay's
    fixed point ``alpha q = sum e_i / (e_i + alpha)``) or a bound. Newton steps, kept inside a
    shrinking bracket (bisection when a step leaves it). Returns ``(u, where)`` with ``where`` in
    ``"interior"``, ``"lower"``, ``"upper"``.
    """
    q = float(sum(float(x) for x in quads))
    e = torch.cat([c.reshape(-1) for c in curv])

    def derivs(u: float) -> tuple[float, float]:
        a = math.exp(u)
        frac = e / (e + a)
        g = -0.5 * a * q + 0.5 * float(frac.sum())
        h = -0.5 * a * q - 0.5 * float((frac * (1.0 - frac)).sum())
        return g, h

    if q <= 0.0 and float(e.sum()) == 0.0:  # no data pull and no curvature: the evidence is flat
        return min(max(u0, lo), hi), "interior"
    g_lo, _ = derivs(lo)
    if g_lo <= 0.0:
        return lo, "lower"
    g_hi, _ = derivs(hi)
    if g_hi >= 0.0:
        return hi, "upper"
    u = min(max(u0, lo), hi)
    for _ in range(max_iter):
        g, h = derivs(u)
        if g == 0.0:
            return u, "interior"
        if g > 0.0:
            lo = u
        else:
            hi = u
        step = -g / h if h < 0.0 else 0.0
        new = u + step
        if not (lo < new < hi) or step == 0.0:
            new = 0.5 * (lo + hi)
        if abs(new - u) <= tol or hi - lo <= tol:
            return new, "interior"
        u = new
    return u, "interior"


def tune_marglik(posterior: Any, *, nll_sum: float, per_layer: bool = False,
                 search: tuple[float, float] = (1e-8, 1e8)) -> TuningResult:
    r"""Choose ``alpha`` by the Laplace approximation of the marginal likelihood.

    Maximizes :func:`laplace_log_evidence` over the prior scale: one shared ``alpha`` for all
    layers, or one per layer (the evidence separates over layers). In ``u = log alpha`` each
    objective is concave, ``f(u) = -e^u q / 2 - sum_i ln(1 + beta d_i e^-u) / 2`` up to a
    constant, so the maximizer is unique: the root of MacKay's fixed-point equation
    ``alpha q = sum_i beta d_i / (beta d_i + alpha)`` (the effective number of parameters on the
    right), found by safeguarded Newton steps to ``1e-10`` in ``log alpha``. No held-out data,
    no sampling, no eigensolve: ``O(n m)`` per step and layer. ``beta`` and ``tau`` are kept.

    Parameters
    ----------
    posterior : KroneckerPosterior
        From :func:`skkprior.posterior`; its current ``alpha`` is the starting point.
    nll_sum : float
        Summed NLL of the MAP network (``Curvature.nll_sum``); only shifts the evidence.
    per_layer : bool, default=False
        One ``alpha`` per layer instead of a shared one. Groups without curvature keep theirs.
    search : (float, float), default=(1e-8, 1e8)
        The search interval for ``alpha``, as multiples of the starting ``alpha`` (of the first
        layer for a shared scale). An optimum at an end is logged as a warning: with
        ``theta = mu`` (no data pull) the evidence grows without bound in ``alpha``.

    Returns
    -------
    TuningResult
        ``objective_start`` / ``objective_best``: the negative log evidence at the starting and
        at the chosen scales (``best <= start``); ``history`` is empty.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from skkprior import isotropic_prior, kfac, posterior
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    >>> X, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    >>> curv = kfac(net, X, y, progress=False)
    >>> post = posterior(isotropic_prior(net, weight_decay=1.0), curv, net)
    >>> result = tune_marglik(post, nll_sum=curv.nll_sum)
    >>> result.objective_best <= result.objective_start
    True
    """
    if not (isinstance(search, (tuple, list)) and len(search) == 2):
        raise ValueError(error_message("search of tune_marglik", "a pair (low, high)", search,
                                       "Pass e.g. search=(1e-8, 1e8)."))
    lo_mult, hi_mult = (check_positive(v, "search") for v in search)
    if not lo_mult < hi_mult:
        raise ValueError(error_message("search of tune_marglik", "(low, high) with low < high", search,
                                       "Pass e.g. search=(1e-8, 1e8)."))
    nll = check_positive(nll_sum, "nll_sum", allow_zero=True)
    beta = _shared_likelihood_scale(posterior)
    quads, curv, gap = _evidence_terms(posterior)  # once: every evidence value below reuses them
    start = float(_evidence_value(quads, curv, posterior.prior_scale, beta, nll, gap))
    names = list(quads)
    start_scales = {k: float(v) for k, v in posterior.prior_scale.items()}
    chosen = dict(start_scales)
    blocks = [[n] for n in names] if per_layer else [names]
    for block in blocks:
        a0 = float(posterior.prior_scale[block[0]])
        u, where = _solve_log_alpha([quads[n] for n in block], [curv[n] for n in block], math.log(a0),
                                    math.log(a0 * lo_mult), math.log(a0 * hi_mult))
        if where != "interior":
            logger.warning("tune_marglik: the evidence is maximal at the %s end of the search interval for %s "
                           "(alpha = %.3g); widen search= or check the prior", where,
                           "every layer" if len(block) > 1 else block[0], math.exp(u))
        for n in (block if per_layer else chosen):
            chosen[n] = math.exp(u)
    best = float(_evidence_value(quads, curv, chosen, beta, nll, gap))
    if best < start:  # only when the start lies outside the search interval (or by rounding)
        return TuningResult(posterior, start_scales, dict(posterior.likelihood_scale), dict(posterior.temperature),
                            -start, -start, [])
    return TuningResult(posterior.with_scales(prior_scale=chosen), chosen, dict(posterior.likelihood_scale), dict(posterior.temperature),
                        -start, -best, [])


def training_objective(kind: Literal["map", "mcallester", "catoni", "quadratic"], mean_ce: torch.Tensor,
                       quadratic: torch.Tensor, *, n: int, n_params: int, prior_weight: float = 1.0,
                       delta: float = 0.025, C: float = 1.0) -> torch.Tensor:
    r"""The paper's training criteria as a loss on a mini-batch.

    Parameters
    ----------
    kind : {"map", "mcallester", "catoni", "quadratic"}
        - ``"map"``: ``mean CE + prior_weight * Q / (2N)``;
        - ``"mcallester"``: ``(CE + D/(2N)) / ln 2 + sqrt((Q/2 + ln(2 sqrt(N)/delta)) / (2N))``;
        - ``"catoni"``: ``C (CE + D/(2N)) / ln 2 + (Q/2 + ln(1/delta)) / N``;
        - ``"quadratic"``: the PAC-Bayes-quadratic criterion of Perez-Ortiz et al. (2021),
          ``(sqrt(R + B) + sqrt(B))^2`` with ``R = (CE + D/(2N)) / ln 2`` and
          ``B = (Q/2 + ln(2 sqrt(N)/delta)) / (2N)``: tighter than McAllester's where ``R``
          is small, the usual regime of a data-dependent prior.
    mean_ce : torch.Tensor
        Mean cross-entropy (nats) of the batch.
    quadratic : torch.Tensor
        ``Q = (theta - mu)^T P (theta - mu)``, the prior quadratic term.
    n : int
        Size of the training set ``N``.
    n_params : int
        ``D``, the number of parameters (the ``D / (2N)`` term approximates the posterior's
        expected curvature penalty ``1/2 tr(F Sigma) / N`` with ``Sigma = F^-1``).
    prior_weight : float, default=1.0
        Multiplies ``Q`` in the MAP criterion (the paper's code used the batch size here by
        mistake; we expose the weight instead).
    delta : float, default=0.025
    C : float, default=1.0
        Catoni's constant.

    Examples
    --------
    >>> import torch
    >>> ce, q = torch.tensor(0.5), torch.tensor(100.0)
    >>> round(float(training_objective("map", ce, q, n=1000, n_params=10)), 6)
    0.55
    """
    if kind == "map":
        return mean_ce + prior_weight * quadratic / (2.0 * n)
    expected = (mean_ce + n_params / (2.0 * n)) / LN2
    if kind == "mcallester":
        return expected + torch.sqrt((quadratic / 2 + math.log(2 * math.sqrt(n) / delta)) / (2 * n))
    if kind == "catoni":
        return C * expected + (quadratic / 2 + math.log(1 / delta)) / n
    if kind == "quadratic":
        half = (quadratic / 2 + math.log(2 * math.sqrt(n) / delta)) / (2 * n)
        return (torch.sqrt(expected + half) + torch.sqrt(half)) ** 2
    raise ValueError(error_message("objective", "'map', 'mcallester', 'catoni' or 'quadratic'", kind))
