"""``PACBayesBoundEstimator``: the task pipeline with a PAC-Bayes criterion, a measured choice of Q, a certificate."""

from __future__ import annotations

import logging
import os
from numbers import Integral, Real
from typing import Any, Literal, Sequence

import numpy as np
import torch
from sklearn.utils.validation import check_is_fitted
from torch import nn

from .._validation import error_message
from ..bounds import Certificate, certificate_from_errors
from ..certify import batch_statistics_message, certify, normalization_statistics
from ..laplace import KroneckerPosterior, KroneckerPrior
from ..predictive import NonFiniteLogits, gibbs_error_count
from ..tuning import training_objective
from ._base import Anything, BaseKroneckerEstimator, OpenUnit, Options, Positive, positive_sequence

logger = logging.getLogger("skkprior.estimators")

# Temperature multipliers of the candidate posteriors scored by the measured bound.
CERTIFICATE_TEMPERATURE_GRID = (1.0, 0.3, 0.1, 0.03, 0.01, 0.003, 0.001)
# The candidate posteriors are scored on at most this many bound examples (a seeded subset; the
# choice of the posterior is free, so scoring on a subset costs no confidence, only noise:
# the standard error of a Gibbs risk r scored on 5,000 examples is sqrt(r (1 - r) / 5000) <= 0.007).
SELECTION_EXAMPLES = 5000
# prior_fraction="auto" splits from this many training examples on (50 or more in each part); below it
# the bound part would be too small for an informative certificate (the kl bound needs n >= 8 at all)
# and the prior part too small to learn a prior from, so the prior is used as given.
AUTO_SPLIT_MIN_EXAMPLES = 100
# The grid of prior-precision multipliers when ``prior_scales=None``: the union bound costs ln 5 nats,
# measured on digits (MLP, data-dependent prior) the winner moves from 100 to 1000 with the split.
DEFAULT_PRIOR_SCALES = (1.0, 10.0, 100.0, 1000.0, 10000.0)
# Bounds within this of 1 are vacuous: among them the lower Gibbs risk decides.
VACUOUS_TOLERANCE = 1e-6


class PACBayesBoundEstimator(BaseKroneckerEstimator):
    r"""Train a network with a PAC-Bayes criterion, tune its posterior by the bound, certify it.

    ``fit`` trains with the paper's criterion (``objective``), computes the Laplace posterior,
    tunes ``(alpha, beta, tau)`` by the PAC-Bayes objective, picks the candidate posterior
    (tuned or plain Laplace, times each of ``temperatures``) with the lowest *measured* bound
    (free: PAC-Bayes bounds hold for every Q at once), and certifies the Gibbs classifier's 0-1
    risk on the training data with fresh draws. A grid of ``prior_scales`` changes the prior:
    each scale's best candidate is scored with the same selection draws, the best scale is kept
    and paid for by a union bound (``ln len(prior_scales)``), and only its posterior is
    certified, once, with fresh draws, so the certificate holds with probability
    ``1 - delta - delta_mc`` for the whole procedure (see the concepts page, "What a
    certificate's confidence pays for").

    With ``prior_fraction > 0`` the prior is *data-dependent*, the tight route of Dziugaite et
    al. (2021) and Perez-Ortiz et al. (2021): a seeded random split that never looks at the
    data keeps ``prior_fraction`` of the training set for the prior. On that part the network
    is trained to the MAP under ``prior`` (the learned source prior, or ``N(0,
    weight_decay^-1 I)``), and its Laplace posterior, compressed to a Kronecker prior as in the
    continual hand-over, becomes the prior of the certificate. The posterior is then trained
    by ``objective`` on the rest (the bound part) starting from that prior's mean, and
    certified on the bound part only, whose examples the prior never saw: the bound's ``n`` is
    the size of that part. Nothing on the prior part is paid for; the grid of ``prior_scales``
    is paid by the union bound as before. Posterior and prior together are the Bayesian
    posterior of all the data (the prior part enters through the prior, the bound part through
    the likelihood), so no example is wasted for prediction.

    The certified hypothesis must depend on the bound data only through the posterior: a module
    with BatchNorm layers whose running statistics training would estimate (``momentum != 0``),
    with batch statistics (``track_running_stats=False``), or with a floating-point buffer that
    training changed, is refused with a ``ValueError``. LayerNorm / GroupNorm work: their
    affine parameters are in isotropic groups of the prior and the posterior, paid by the KL.

    Parameters
    ----------
    module : nn.Module class, instance or None, default=None
        As in :class:`KroneckerPriorClassifier`.
    prior : KroneckerPrior, path or None, default=None
        The prior; it must not depend on the training data. None: ``N(0, weight_decay^-1 I)``.
    bound : {"kl", "mcallester", "catoni"}, default="kl"
        The certified bound.
    objective : {"catoni", "mcallester", "quadratic", "map"}, default="catoni"
        The training criterion (docs/concepts.md, section 6), also the objective that tunes the
        posterior's scales; ``"quadratic"`` is the PAC-Bayes-quadratic criterion of Perez-Ortiz
        et al. (2021); ``"map"`` trains to the MAP and tunes the scales with Catoni's.
    delta : float, default=0.025
        Failure probability of the bound.
    delta_mc : float, default=0.01
        Failure probability of the Monte-Carlo correction (confidence ``1 - delta - delta_mc``).
    mc_passes : int, default=1
        Passes over the data with fresh draws for the Gibbs risk (``m = mc_passes * n``).
    prior_fraction : "auto" or float in [0, 1), default="auto"
        Fraction of the training data that learns a data-dependent prior (see above); the
        certificate is about the other part. 0: the prior is ``prior`` itself and the
        certificate is about all the data. ``"auto"``: 0.5 from ``AUTO_SPLIT_MIN_EXAMPLES =
        100`` training examples on, else 0 (fewer examples leave too few on either side).
        Choosing this value by the bound on the same data (e.g. a grid search scored by
        ``bound_``) is a selection the certificate does not pay for: pay it with ``delta / K``
        for a grid of ``K`` values.
    prior_scales : sequence of float or None, default=None
        Candidate multipliers of the prior precision, fixed before the data are seen; the
        winner is chosen with selection draws and a union bound over them is paid. None:
        ``DEFAULT_PRIOR_SCALES = (1, 10, 100, 1000, 10000)`` (``ln 5`` nats; each value costs
        one training run). ``[1.0]``: the prior as given, no union.
    temperatures : sequence of float or None, default=None
        Temperature multipliers of the candidate posteriors (free). None:
        ``(1, 0.3, 0.1, 0.03, 0.01, 0.003, 0.001)``. Each costs one pass with posterior draws.
    catoni_C : float, default=1.0
        Catoni's constant in the training criterion.
    weight_decay : float, default=1.0
    fisher : {"mc", "exact", "empirical"}, default="mc"
    curvature : {"kfac", "kfoc", "diag"}, default="kfac"
        Structure of the curvature, as in :class:`KroneckerPriorClassifier`.
    predictive : {"mc", "map", "linearized"}, default="mc"
        The predictive of the certified posterior.
    n_samples : int, default=100
    max_epochs : int, default=30
    lr : float, default=1e-2
    batch_size : int, default=64
    optimizer : torch.optim.Optimizer class, default=torch.optim.Adam
    callbacks : list of skorch callbacks, optional
    device : str, default="auto"
    random_state : int, RandomState or None, default=None
    verbose : int, default=0
    **module_kwargs
        ``module__<name>`` keywords, as in :class:`KroneckerPriorClassifier`.

    Attributes
    ----------
    certificate_ : Certificate
        The certificate on the training data (every ingredient recorded).
    bound_ : float
        ``certificate_.risk_bound``.
    prior_scale_ : float
        The chosen prior-scale multiplier.
    prior_split_ : dict
        ``prior_fraction`` (resolved), ``n_prior`` and ``n_bound``: the sizes of the two parts
        (``n_prior = 0`` without a data-dependent prior; the certificate's ``n`` is
        ``n_bound``), and ``bound_indices``, the rows of the training data the certificate is
        about.
    selection_ : list of dict
        Per prior scale: ``prior_scale``, and the ``selection_bound`` and
        ``selection_gibbs_risk`` of its best candidate posterior, measured with the selection
        draws (scores of the choice, not certificates).
    module_ : nn.Module
        The trained network.
    prior_ : KroneckerPrior
        The prior of the certificate at the chosen scale, matched to the network (with
        ``prior_fraction > 0``: the data-dependent prior learned on the prior part).
    posterior_ : KroneckerPosterior
        The certified posterior.
    curvature_ : Curvature
    classes_ : ndarray
    n_features_in_ : int
    history_ : list of dict
    random_seed_ : int
    device_ : torch.device

    Examples
    --------
    >>> from sklearn.datasets import load_iris
    >>> from sklearn.preprocessing import StandardScaler
    >>> X, y = load_iris(return_X_y=True)
    >>> X = StandardScaler().fit_transform(X)
    >>> est = PACBayesBoundEstimator(max_epochs=20, random_state=0, device="cpu").fit(X, y)
    >>> 0 < est.bound_ <= 1, est.certificate_.protocol
    (True, 'certificate')
    """

    _parameter_constraints = {
        **BaseKroneckerEstimator._parameter_constraints,
        "bound": Options("kl", "mcallester", "catoni"),
        "objective": Options("catoni", "mcallester", "quadratic", "map"),
        "delta": OpenUnit(),
        "delta_mc": OpenUnit(),
        "mc_passes": Positive(Integral),
        "prior_fraction": Anything("'auto' or a float in [0, 1)", lambda v: (isinstance(v, str) and v == "auto") or (
            isinstance(v, Real) and not isinstance(v, bool) and 0.0 <= float(v) < 1.0)),
        "prior_scales": positive_sequence(),
        "catoni_C": Positive(),
        "temperatures": positive_sequence(),
    }

    def __init__(self, module: type[nn.Module] | nn.Module | None = None, *,
                 prior: KroneckerPrior | str | os.PathLike | None = None, bound: str = "kl",
                 objective: str = "catoni", delta: float = 0.025, delta_mc: float = 0.01, mc_passes: int = 1,
                 prior_fraction: float | str = "auto", prior_scales: Sequence[float] | None = None,
                 temperatures: Sequence[float] | None = None,
                 catoni_C: float = 1.0, weight_decay: float = 1.0, fisher: str = "mc", curvature: str = "kfac",
                 predictive: str = "mc", n_samples: int = 100, max_epochs: int = 30, lr: float = 1e-2,
                 batch_size: int = 64, optimizer: type[torch.optim.Optimizer] = torch.optim.Adam,
                 callbacks: list | None = None, device: str = "auto",
                 random_state: int | np.random.RandomState | None = None, verbose: int = 0,
                 **module_kwargs: Any) -> None:
        self.module = module
        self.prior = prior
        self.bound = bound
        self.objective = objective
        self.delta = delta
        self.delta_mc = delta_mc
        self.mc_passes = mc_passes
        self.prior_fraction = prior_fraction
        self.prior_scales = prior_scales
        self.temperatures = temperatures
        self.catoni_C = catoni_C
        self.weight_decay = weight_decay
        self.fisher = fisher
        self.curvature = curvature
        self.predictive = predictive
        self.n_samples = n_samples
        self.max_epochs = max_epochs
        self.lr = lr
        self.batch_size = batch_size
        self.optimizer = optimizer
        self.callbacks = callbacks
        self.device = device
        self.random_state = random_state
        self.verbose = verbose
        for key, value in module_kwargs.items():
            setattr(self, key, value)

    # -- what differs from the pipeline: the scales start at 1 and are tuned by the PAC-Bayes objective --
    def _given_scales(self) -> tuple[float, float, float]:
        return 1.0, 1.0, 1.0

    def _scaling(self) -> str:
        return "pac-bayes"

    def _pac_bayes_options(self) -> dict[str, Any]:
        return {"objective": "catoni" if self.objective == "map" else self.objective, "delta": self.delta}

    def _union_size(self) -> int:
        return len(self._prior_scale_grid())

    def _prior_scale_grid(self) -> tuple[float, ...]:
        return DEFAULT_PRIOR_SCALES if self.prior_scales is None else tuple(float(s) for s in self.prior_scales)

    def _criterion(self, prior: KroneckerPrior, n_params: int):
        """``n -> loss``: the training criterion of ``objective`` under ``prior`` (None: the MAP loss)."""
        if self.objective == "map":
            return None
        kind, delta, C = self.objective, self.delta, self.catoni_C

        def criterion(n: int):
            def loss(ce: torch.Tensor, module: nn.Module) -> torch.Tensor:
                q = prior.quadratic(module).to(ce.dtype)
                return training_objective(kind, ce, q, n=n, n_params=n_params, delta=delta, C=C)
            return loss
        return criterion

    def fit(self, X: Any, y: Any) -> "PACBayesBoundEstimator":
        """Train, tune and certify on ``(X, y)``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or (n_samples, *input_shape)
        y : array-like of shape (n_samples,)

        Returns
        -------
        self
        """
        self._reset()
        try:
            X, y = self._start(X, y)
            y_enc = self._set_classes(y, None)
            n_total = len(y_enc)
            prior_part, bound_part = self._prior_split(n_total)
            union_size = self._union_size()
            prior = None
            if prior_part is not None:
                prior = self._data_dependent_prior(X[prior_part], y_enc[prior_part])
                X, y_enc = X[bound_part], y_enc[bound_part]
            n = len(y_enc)
            best, selection = None, []
            for scale in self._prior_scale_grid():
                module = self._new_module(X, len(self.classes_))
                self._refuse_running_statistics(module)
                buffers = _floating_buffers(module)
                X_module = self._module_input(X, module)
                base_prior = (self._resolve_prior(module) if prior is None else prior.match(module)).to(self.device_)
                scaled = base_prior.scaled(float(scale)) if float(scale) != 1.0 else base_prior
                self._init_at_prior_mean(module, scaled)
                n_params = sum(p.numel() for p in module.parameters() if p.requires_grad)
                fit = self._learn_task(module, scaled, X_module, y_enc, 0, loss=self._criterion(scaled, n_params))
                self._refuse_changed_buffers(module, buffers)
                # the tuned posterior and the plain Laplace posterior (alpha = beta = tau = 1) compete
                # by the measured bound: the Taylor objective can pick scales whose KL is vacuous
                chosen, key = self._select_posterior(module, (fit.posterior, fit.laplace), X_module, y_enc, n)
                selection.append({"prior_scale": float(scale), "selection_bound": key[0],
                                  "selection_gibbs_risk": key[1]})
                # the prior scale is chosen by the same selection draws (the union bound pays for the
                # choice on the KL side); only the winner is certified, once, with fresh draws
                if best is None or key < best[0]:
                    best = (key, module, scaled, chosen, fit.curvature, fit.history, float(scale), X_module)
            (_, self.module_, self.prior_, self.posterior_, self.curvature_, self.history_, self.prior_scale_,
             X_module) = best
            self.selection_ = selection
            self.prior_split_ = {"prior_fraction": self._resolved_fraction(n_total), "n_bound": int(n),
                                 "n_prior": 0 if prior_part is None else int(len(prior_part)),
                                 "bound_indices": (np.arange(n) if bound_part is None else bound_part)}
            self.certificate_ = certify(self.module_, self.posterior_, torch.from_numpy(X_module), torch.from_numpy(y_enc),
                                        bound=self.bound, delta=self.delta, delta_mc=self.delta_mc,
                                        passes=self.mc_passes, union_size=union_size,
                                        generator=self._seeds.generator("certify", device=self.device_),
                                        batch_size=max(self.batch_size, 256),
                                        C=1.0 if self.bound == "catoni" else None,
                                        # checked above: no running statistics moved on the bound data
                                        frozen_statistics=True)
        except BaseException:
            self._reset()  # no half-fitted estimator: check_is_fitted keeps failing
            raise
        self.bound_ = float(self.certificate_.risk_bound)
        self.n_tasks_ = 1
        return self

    def _prior_split(self, n: int) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Indices of the prior part and the bound part (None, None without a data-dependent prior).

        A uniformly random permutation from the seed stream ``prior_split``, independent of the
        data's values and labels, so the bound part is an i.i.d. sample that the prior never saw
        (a stratified split would tie the bound part's class counts to the prior part's).
        """
        fraction = self._resolved_fraction(n)
        if fraction == 0.0:
            return None, None
        n_prior = int(round(fraction * n))
        if n_prior < 1 or n - n_prior < 1:
            raise ValueError(error_message(
                "prior_fraction", "a split with at least one example in each part",
                f"{fraction} of {n} examples: {n_prior} for the prior, {n - n_prior} for the bound",
                "Pass more data or a prior_fraction nearer 0.5 (or 0 for a prior that sees no data)."))
        order = np.random.default_rng(self._seeds.sequence("prior_split")).permutation(n)
        return np.sort(order[:n_prior]), np.sort(order[n_prior:])

    def _resolved_fraction(self, n: int) -> float:
        """``prior_fraction`` for ``n`` training examples (``"auto"`` resolved)."""
        if isinstance(self.prior_fraction, str):
            return 0.5 if n >= AUTO_SPLIT_MIN_EXAMPLES else 0.0
        return float(self.prior_fraction)

    def _data_dependent_prior(self, X: np.ndarray, y: np.ndarray) -> KroneckerPrior:
        """The prior learned on the prior part: the MAP under ``prior`` there, its Laplace posterior
        at the given scales, compressed to a prior (the continual hand-over)."""
        module = self._new_module(X, len(self.classes_), task=1)
        self._refuse_running_statistics(module)
        source = self._resolve_prior(module).to(self.device_)
        self._init_at_prior_mean(module, source)
        # only the Laplace posterior at the given scales is handed over: no scale tuning on the prior part
        fit = self._learn_task(module, source, self._module_input(X, module), y, 1, scaling="fixed")
        return self._handover(fit.laplace)

    def _refuse_running_statistics(self, module: nn.Module) -> None:
        """Before training: normalization statistics that training on the bound data would fit."""
        batch, running = normalization_statistics(module)
        if batch:
            raise ValueError(batch_statistics_message(batch, f"the module of {type(self).__name__}"))
        moving = [name for name in running if module.get_submodule(name).momentum != 0]
        if moving:
            shown = ", ".join(repr(m) for m in moving[:6]) + (" ..." if len(moving) > 6 else "")
            raise ValueError(error_message(
                f"the module of {type(self).__name__}", "free of state fitted on the bound data that the KL "
                "does not pay for", f"normalization layers with running statistics [{shown}] that training "
                "on the bound data would estimate (momentum != 0): buffers not under the prior, so the "
                "certified hypothesis would depend on the bound data",
                "Use nn.LayerNorm or nn.GroupNorm (per-example statistics; their affine parameters are "
                "under the prior and paid by the KL), or fix the running statistics before fit (compute them "
                "on data other than the bound data, or keep the initial ones) and set momentum=0."))

    def _refuse_changed_buffers(self, module: nn.Module, before: dict[str, torch.Tensor]) -> None:
        """After training: any floating-point buffer that moved was fitted on the bound data."""
        after = _floating_buffers(module)
        changed = [k for k, v in before.items() if k not in after or not torch.equal(after[k], v)]
        if changed:
            shown = ", ".join(repr(k) for k in changed[:6]) + (" ..." if len(changed) > 6 else "")
            raise ValueError(error_message(
                f"the module of {type(self).__name__}", "free of state fitted on the bound data that the KL "
                "does not pay for", f"floating-point buffers [{shown}] changed during training on the bound "
                "data (they are not under the prior)",
                "Keep such state fixed during training: make it a constant, or a trainable parameter (the "
                "prior and the posterior cover every trainable parameter, so the KL pays for it)."))

    def _select_posterior(self, module: nn.Module, candidates: Sequence[KroneckerPosterior], X: np.ndarray,
                          y: np.ndarray, n: int) -> tuple[KroneckerPosterior, tuple[float, float]]:
        """The candidate times temperature multiplier with the best *measured* bound, and its score.

        Each is scored by the bound with its Monte-Carlo Gibbs risk on the bound data (at most
        ``SELECTION_EXAMPLES`` of them, a subset from stream ``select_subset``, the same for
        every candidate; draws from stream ``select``, one child per grid point, the same for
        every prior scale, independent of the certificate's stream ``certify``); the lowest
        bound wins, and among vacuous bounds
        (within ``1e-6`` of 1) the lower Gibbs risk. The score ``(bound, Gibbs risk)`` of the
        winner also ranks the prior scales. See the concepts page, "Choosing the certified
        posterior" and "What a certificate's confidence pays for".
        """
        if len(y) > SELECTION_EXAMPLES:
            keep = np.sort(np.random.default_rng(self._seeds.sequence("select_subset")).permutation(len(y))
                           [:SELECTION_EXAMPLES])
            X, y = X[keep], y[keep]
        X_t, y_t = torch.from_numpy(X), torch.from_numpy(y)
        best = None
        factors = CERTIFICATE_TEMPERATURE_GRID if self.temperatures is None else tuple(self.temperatures)
        grid = [(post, float(factor)) for post in candidates for factor in factors]
        skipped: list[str] = []
        for i, (post, factor) in enumerate(grid):
            q = post.with_scales(temperature={k: float(v) * factor for k, v in post.temperature.items()})
            try:
                errors, m = gibbs_error_count(module, q, X_t, y_t, passes=1,
                                              generator=self._seeds.generator("select", i, device=self.device_),
                                              batch_size=max(self.batch_size, 256))
            except NonFiniteLogits as exc:  # too broad to evaluate: never the best
                skipped.append(str(exc))
                continue
            cert = certificate_from_errors(int(errors), int(m), n, float(q.kl_to_prior().total),
                                           delta=self.delta, delta_mc=self.delta_mc,
                                           union_size=self._union_size(), bound=self.bound,
                                           C=1.0 if self.bound == "catoni" else None)
            # the lowest bound wins; vacuous bounds tie, and then the lower Gibbs risk wins
            bound_value = 1.0 if cert.risk_bound >= 1.0 - VACUOUS_TOLERANCE else float(cert.risk_bound)
            key = (bound_value, float(cert.empirical_gibbs_risk))
            if best is None or key < best[0]:
                best = (key, q)
        if best is None:
            raise ValueError(error_message(
                f"the candidate posteriors of {type(self).__name__}", "evaluable (finite Gibbs logits)",
                f"all {len(grid)} overflowing; first: {skipped[0]}",
                "Raise weight_decay or prior_scales, or pass smaller temperatures."))
        if skipped:
            logger.warning("%s: %d of %d candidate posteriors overflow and are skipped; first: %s",
                           type(self).__name__, len(skipped), len(grid), skipped[0])
        return best[1], best[0]

    def certify(self, X: Any, y: Any, *, protocol: Literal["certificate", "paper"] = "certificate",
                passes: int | None = None, n_samples: int = 100, delta: float | None = None) -> Certificate:
        """A certificate of the fitted posterior on ``(X, y)`` (e.g. fresh bound data).

        The union over ``prior_scales`` is still paid (the prior was chosen on the training data).
        Each call draws from the same stream ``recertify``; certifying again and keeping the
        smaller of several certificates is a choice the stated confidence does not cover.

        Parameters
        ----------
        X : array-like
        y : array-like of shape (n_samples,)
        protocol : {"certificate", "paper"}, default="certificate"
            ``"paper"``: the paper's optimistic diagnostic (model average of ``n_samples`` draws,
            McAllester's bound, or Catoni's for ``bound="catoni"``, confidence 0.9).
        passes : int, optional
            Passes with fresh draws (default: ``mc_passes``).
        n_samples : int, default=100
            Draws of the model average of ``protocol="paper"``.
        delta : float, optional
            Failure probability; None is ``delta`` (``"certificate"``) or the paper's 0.1 (``"paper"``).

        Returns
        -------
        Certificate
        """
        check_is_fitted(self)
        if protocol not in ("certificate", "paper"):
            raise ValueError(error_message("protocol", "'certificate' or 'paper'", protocol))
        Xc, y = self._check_X_y(X, y, reset=False)
        Xc = self._module_input(Xc, self.module_)
        y_enc = self._encode_new(y)
        if protocol == "paper":
            bound = "catoni" if self.bound == "catoni" else "mcallester"
        else:
            bound = self.bound
            delta = self.delta if delta is None else delta
        return certify(self.module_, self.posterior_, torch.from_numpy(Xc), torch.from_numpy(y_enc),
                       bound=bound, delta=delta, delta_mc=self.delta_mc,
                       passes=self.mc_passes if passes is None else passes, union_size=self._union_size(),
                       protocol=protocol, generator=self._seeds.generator("recertify", device=self.device_),
                       batch_size=max(self.batch_size, 256), C=1.0 if self.bound == "catoni" else None,
                       n_samples=n_samples, frozen_statistics=True)  # fit checked: none moved in training


def _floating_buffers(module: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the floating-point buffers (counters such as ``num_batches_tracked`` are left out)."""
    return {k: v.detach().clone() for k, v in module.named_buffers() if v.is_floating_point()}
