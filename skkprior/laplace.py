r"""Learned priors, Laplace posteriors and the continual chain (docs/concepts.md, section 5).

- :func:`learn_prior`: the Laplace posterior of a (pretrained) network on its source data,
  stored as one Kronecker product per layer: the *Bayesian counterpart of a pretrained model*.
  ``kind="isotropic"`` gives the isotropic prior with learned mean instead, and
  :func:`isotropic_prior` the zero-mean isotropic prior.
- :func:`posterior`: the Laplace posterior ``N(theta_t, tau (beta F_t + alpha P)^-1)`` of a
  target task, held per layer in the exact two-term form (no approximation beyond K-FAC).
- :meth:`KroneckerPosterior.as_prior`: the posterior of one task becomes the prior of the
  next; its two-term precision is compressed to the Frobenius-nearest Kronecker product and
  the relative error of every layer is recorded.

Which form every object holds
-----------------------------
Priors hold one :class:`~skkprior.kron.Kron` per Linear/Conv2d layer (or a
:class:`~skkprior.precision.DiagonalPrecision`, from a diagonal posterior) and an isotropic
precision for every other parameter. Posteriors hold a two-term precision per layer, chosen by
the curvature's structure: :class:`~skkprior.kron.KronDecomposed` (exact ``beta F + alpha P``)
for K-FAC / K-FOC, :class:`~skkprior.precision.DiagonalDecomposed` (``beta f + alpha diag(P)``:
exact for an isotropic or diagonal prior, the prior's off-diagonal dropped for a Kronecker
one; the KL to the full prior stays exact) for :func:`~skkprior.curvature.diagonal_fisher`.
Parameters without curvature keep the prior's precision scaled by ``alpha`` (the data do not
inform them under K-FAC; this is stated, not hidden).
"""

from __future__ import annotations

import hashlib
import logging
import math
from typing import Any, Literal, Mapping

import torch
from torch import nn

from ._layers import kronecker_layers, uncovered_parameters
from ._validation import check_positive, error_message
from .curvature import kfac
from .gaussian import FORMAT_NAME, GaussianGroup, IsotropicPrecision, LayerwiseGaussian, Scalar, model_order
from .kron import Kron, KronSum, check_factors_definite, positive_definite_nearest, psd_projected
from .precision import TwoTermPrecision

__all__ = [
    "KroneckerPosterior",
    "KroneckerPrior",
    "damped_kron",
    "isotropic_prior",
    "learn_prior",
    "posterior",
]

logger = logging.getLogger(__name__)

ScaleArg = float | Mapping[str, Scalar] | torch.Tensor


def architecture_fingerprint(model: nn.Module) -> str:
    """A short hash of the trainable parameter names and shapes of ``model``."""
    text = ";".join(f"{n}:{tuple(p.shape)}" for n, p in model.named_parameters() if p.requires_grad)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class KroneckerPrior(LayerwiseGaussian):
    r"""A Gaussian prior over a network's parameters with one Kronecker precision per layer.

    Build it with :func:`learn_prior`, :func:`isotropic_prior` or
    :meth:`KroneckerPosterior.as_prior`; store it with :meth:`save` and read it back with
    :meth:`load` (``torch.load(weights_only=True)``, versioned format). :meth:`load` validates
    the file (finite means of the parameters' shapes, positive finite temperatures, symmetric
    positive definite factors of the right sizes) and refuses a *posterior* file: its two-term
    precisions are not a prior; ``KroneckerPosterior.load(path).as_prior()`` turns it into one.

    Attributes
    ----------
    metadata : dict
        ``kind`` ("kronecker", "isotropic", "zero-mean isotropic" or "posterior"),
        ``weight_decay``, ``head``, ``fingerprint``, ``n_source``, ``source_nll``,
        ``nkp_error`` (per layer relative Frobenius error of compressions), and the scales.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    >>> X, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    >>> prior = learn_prior(net, X, y, weight_decay=1e-2, progress=False)
    >>> prior.metadata["kind"], len(prior)
    ('kronecker', 2)
    >>> target = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 5))  # new head
    >>> type(prior.match(target).groups["2"].precision).__name__
    'Kron'
    """

    def __init__(self, groups: Any, metadata: dict[str, Any] | None = None, *,
                 source_factors: Mapping[str, Kron] | None = None) -> None:
        super().__init__(groups, metadata)
        self.source_factors: dict[str, Kron] = dict(source_factors or {})

    @property
    def weight_decay(self) -> float:
        return float(self.metadata.get("weight_decay", 1.0))

    @property
    def reweightable(self) -> bool:
        """Whether :meth:`reweighted` can rebuild this prior (it holds its source factors)."""
        return bool(self.source_factors) and isinstance(self.metadata.get("calibration"), Mapping)

    def to(self, *args: Any, **kwargs: Any) -> "KroneckerPrior":
        """Move every group and the source factors."""
        out = super().to(*args, **kwargs)
        out.source_factors = {k: F.to(*args, **kwargs) for k, F in self.source_factors.items()}
        return out

    def reweighted(self, *, likelihood_scale: ScaleArg | None = None, prior_scale: ScaleArg | None = None,
                   temperature: ScaleArg | None = None,
                   compression: Literal["nearest", "damped"] | None = None) -> "KroneckerPrior":
        r"""This learned prior at other scales ``(alpha_0, beta_0, tau_0)``, without a new source pass.

        A learned prior keeps the (PSD-projected) source factors ``G_s, A_s`` of every Kronecker
        layer (:attr:`source_factors`), so ``P_0 = beta_0 (G_s (x) A_s) + alpha_0 delta I`` can be
        formed and compressed again for new values, by the same code as :func:`learn_prior`.
        ``likelihood_scale=0`` gives exactly the isotropic prior with the learned mean,
        ``N(theta_s, tau_0 (alpha_0 delta)^-1 I)``, on the Kronecker layers (no compression).
        The head keeps ``N(0, delta^-1 I)``; other parameters get ``N(theta_s, tau_0 (alpha_0
        delta)^-1 I)`` as in :func:`learn_prior`.

        Parameters
        ----------
        likelihood_scale : float or dict, optional
            ``beta_0 >= 0``, the weight of the source curvature.
        prior_scale : float or dict, optional
            ``alpha_0 > 0``, the weight of the isotropic floor ``delta I``.
        temperature : float or dict, optional
            ``tau_0 > 0``, multiplies the prior covariance.
        compression : {"nearest", "damped"}, optional
            As in :func:`learn_prior`; None keeps this prior's.

        Notes
        -----
        A float is shared by every group, a dict sets the groups it names; None (and groups a
        dict leaves out) keep the current values, ``metadata["calibration"]``.

        Returns
        -------
        KroneckerPrior
            With the new scales in ``metadata["calibration"]`` (``scaling="reweighted"``; the
            scales the prior was learned with in ``metadata["learned_calibration"]``), the new
            ``compression``, and per layer ``metadata["nkp_error"]`` (relative Frobenius error of
            the compression) and ``metadata["precision_exact"]``.

        Raises
        ------
        ValueError
            For a prior without source factors: from :meth:`KroneckerPosterior.as_prior`,
            :func:`isotropic_prior`, ``learn_prior(kind="isotropic")`` or a file written before
            the factors were stored.

        Examples
        --------
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
        >>> X, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
        >>> prior = learn_prior(net, X, y, weight_decay=1e-2, progress=False)
        >>> flat = prior.reweighted(likelihood_scale=0.0)
        >>> flat.metadata["precision_exact"]["0"], flat.metadata["nkp_error"]["0"]
        (True, 0.0)
        >>> float(flat.groups["0"].precision.to_dense()[0, 0])  # alpha_0 delta
        0.01
        >>> prior.reweighted(likelihood_scale=0.1).metadata["calibration"]["likelihood_scale"]["0"]
        0.1
        """
        if not self.reweightable:
            kind = self.metadata.get("kind")
            if kind == "kronecker":
                why, fix = ("a learned prior without its source factors (a file written before they were stored)",
                            "Re-learn the prior with learn_prior(...) and save it again; the new file keeps them.")
            else:
                why, fix = (f"a prior of kind {kind!r}, which has no source curvature",
                            "Re-weighting needs a prior from learn_prior(kind='kronecker'); an isotropic prior "
                            "is already the likelihood_scale=0 member of that family.")
            raise ValueError(error_message("the prior re-weighted by KroneckerPrior.reweighted",
                                           "a learned Kronecker prior that holds its source factors", why, fix))
        compression = self.metadata.get("compression", "nearest") if compression is None else compression
        if compression not in ("damped", "nearest"):
            raise ValueError(error_message("compression", "'damped', 'nearest' or None", compression))
        cal = self.metadata["calibration"]
        names = list(self.groups)
        new = {}
        for key, value, zero in (("prior_scale", prior_scale, False), ("likelihood_scale", likelihood_scale, True),
                                 ("temperature", temperature, False)):
            current = {k: float(cal[key][k]) for k in names if k in cal[key]}
            if value is None:
                given = {}
            elif isinstance(value, Mapping):
                unknown = [k for k in value if k not in current]
                if unknown:
                    raise ValueError(error_message(f"the groups of {key}", f"among {list(current)[:8]}",
                                                   f"unknown groups {unknown[:4]}",
                                                   "Name the prior's groups (its layer and parameter names)."))
                given = dict(value)
            else:
                given = {k: value for k in current}
            for k, v in given.items():
                v = float(v.detach()) if isinstance(v, torch.Tensor) else v
                current[k] = check_positive(v, f"{key} of group '{k}'", allow_zero=zero)
            new[key] = current
        scales = {k: (new["prior_scale"][k], new["likelihood_scale"][k], new["temperature"][k])
                  for k in new["prior_scale"]}
        nkp_method = self.metadata.get("nkp_method", "gram")
        groups, record = _learned_groups(self.groups.values(), self.source_factors, scales, self.weight_decay,
                                         compression, nkp_method, self.head)
        learned = self.metadata.get("learned_calibration", cal)
        calibration = {**cal, "scaling": "reweighted", **new}
        meta = {**self.metadata, "compression": compression, "calibration": calibration,
                "learned_calibration": learned, **_approximation_record(record)}
        for key in ("prior_scale", "likelihood_scale", "temperature"):
            values = set(new[key].values())
            meta[key] = values.pop() if len(values) == 1 else dict(new[key])
        factor = float(self.metadata.get("prior_scale_factor", 1.0))
        out = self._new(groups)
        out.metadata = {**meta, "prior_scale_factor": 1.0}
        return out.scaled(factor) if factor != 1.0 else out

    @property
    def head(self) -> str | None:
        return self.metadata.get("head")

    def scaled(self, factor: float) -> "KroneckerPrior":
        """The prior with every precision multiplied by ``factor`` (a prior-scale candidate).

        Examples
        --------
        >>> from torch import nn
        >>> p = isotropic_prior(nn.Linear(2, 2), weight_decay=1.0)
        >>> float(p.scaled(3.0).groups[""].precision.G[0, 0])
        3.0
        """
        f = check_positive(factor, "factor")
        groups = []
        for g in self:
            prec = g.precision.scaled(f)
            groups.append(GaussianGroup(g.name, g.parameter_names, g.parameter_shapes, g.layer, g.mean,
                                        prec, g.temperature))
        return self._new(groups, prior_scale_factor=f * float(self.metadata.get("prior_scale_factor", 1.0)))

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> "KroneckerPrior":
        """Inverse of :meth:`state`, validated; a posterior's state raises a ``ValueError``."""
        if isinstance(state, Mapping) and state.get("format") == FORMAT_NAME and \
                state.get("class") == "KroneckerPosterior":
            raise ValueError(error_message(
                "the file given to KroneckerPrior.load", "a prior (written by KroneckerPrior.save)",
                "a posterior file (written by KroneckerPosterior.save)",
                "Load it with KroneckerPosterior.load(path).as_prior() to use the posterior as the next "
                "prior (or KroneckerPosterior.load(path).prior for the prior it was built on)."))
        out = super().from_state(state)
        bad = [g.name for g in out if g.terms is not None or isinstance(g.precision, TwoTermPrecision)]
        if bad:
            raise ValueError(error_message(
                "the precisions of the prior file", "one precision of the prior family per group (no two-term form)",
                f"two-term (posterior) precisions in groups {bad[:4]}",
                "Compress a posterior with as_prior() before saving it as a prior."))
        out.source_factors = _loaded_source_factors(out, state.get("source_factors"))
        return out

    def match(self, model: nn.Module, *, head: str | None = None) -> "KroneckerPrior":
        """This prior aligned with ``model``'s parameters.

        Groups are matched by parameter names and shapes. A Linear/Conv2d *head* whose shape
        changed (by default the prior's recorded head, else the last Kronecker layer of
        ``model``) gets the zero-mean isotropic prior ``N(0, weight_decay^-1 I)``. Any other
        mismatch raises a ``ValueError`` that lists the differences.
        """
        layers = kronecker_layers(model)
        params = dict(model.named_parameters())
        head = head or self.head or (list(layers)[-1] if layers else None)
        groups: list[GaussianGroup] = []
        problems: list[str] = []
        device = self.device
        for name, layer in layers.items():
            g = self.groups.get(name)
            shapes = tuple(tuple(params[p].shape) for p in layer.parameter_names)
            if g is not None and g.parameter_names == layer.parameter_names and g.parameter_shapes == shapes:
                groups.append(g)
                continue
            if name == head:
                groups.append(zero_isotropic_layer_group(layer, shapes, self.weight_decay, device))
                continue
            problems.append(f"layer '{name}': prior has "
                            f"{'nothing' if g is None else list(zip(g.parameter_names, g.parameter_shapes))}, "
                            f"module has {list(zip(layer.parameter_names, shapes))}")
        for pname in uncovered_parameters(model, layers):
            g = self.groups.get(pname)
            shape = tuple(params[pname].shape)
            if g is not None and g.parameter_shapes == (shape,):
                groups.append(g)
            else:
                problems.append(f"parameter '{pname}' of shape {shape}: "
                                f"prior has {'nothing' if g is None else g.parameter_shapes[0]}")
        used = {g.name for g in groups}
        extra = [n for n in self.groups if n not in used and n not in layers]
        if extra:
            problems.append(f"prior groups without a module parameter: {extra[:5]}")
        if problems:
            raise ValueError(
                error_message("the prior", "defined over the module's parameters (names and shapes)",
                              "; ".join(problems[:6]),
                              "Use the architecture the prior was learned on; only the head "
                              f"(here '{head}') may change its shape.")
            )
        out = self._new(model_order(groups, model))
        # a replaced head has no source curvature of its shape
        out.source_factors = {k: F for k, F in self.source_factors.items() if out.groups.get(k) is self.groups.get(k)}
        return out

    def state(self) -> dict[str, Any]:
        """:meth:`LayerwiseGaussian.state` plus the source factors of a learned prior (format version 3)."""
        out = super().state()
        if self.source_factors:
            out["source_factors"] = {k: {"G": F.G, "A": F.A} for k, F in self.source_factors.items()}
        return out


class KroneckerPosterior(LayerwiseGaussian):
    r"""A Laplace posterior ``N(theta_t, tau (beta F + alpha P)^-1)``, exact per layer.

    Built by :func:`posterior`. :meth:`with_scales` re-evaluates it for new scales without a
    new decomposition; :meth:`as_prior` turns it into the prior of the next task.
    :meth:`save` stores all of it (format version 2): the groups, the two terms of each
    decomposed group, the prior, and ``alpha``, ``beta``, ``tau`` per group, so that after
    :meth:`load` :meth:`kl_to_prior`, :meth:`with_scales`, :meth:`as_prior` and
    :func:`~skkprior.certify.certify` give the results of the saved posterior.

    Attributes
    ----------
    prior : KroneckerPrior
        The prior, matched to the model.
    prior_scale, likelihood_scale, temperature : dict
        ``alpha``, ``beta`` and ``tau`` per group name.
    """

    prior: KroneckerPrior
    prior_scale: dict[str, Scalar]
    likelihood_scale: dict[str, Scalar]
    temperature: dict[str, Scalar]

    def to(self, *args: Any, **kwargs: Any) -> "KroneckerPosterior":
        """Move the posterior and its prior together, keeping the prior term shared."""
        prior = self.prior.to(*args, **kwargs)
        groups = []
        for g in self:
            moved = g.to(*args, **kwargs)
            if moved.terms is not None:
                moved.terms = (moved.terms[0], prior.groups[g.name].precision)
            groups.append(moved)
        out = self._new(groups)
        out.prior = prior
        return out

    def state(self) -> dict[str, Any]:
        """:meth:`LayerwiseGaussian.state` plus the prior and the scales (floats) per group."""
        out = super().state()
        out["prior"] = self.prior.state()
        out["scales"] = {key: {k: float(v.detach()) if isinstance(v, torch.Tensor) else float(v)
                               for k, v in getattr(self, key).items()}
                         for key in ("prior_scale", "likelihood_scale", "temperature")}
        return out

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> "KroneckerPosterior":
        """Inverse of :meth:`state`, validated: the groups, the prior, the scales and their consistency."""
        if isinstance(state, Mapping) and state.get("format") == FORMAT_NAME:
            kind = state.get("class")
            if kind != "KroneckerPosterior":
                raise ValueError(error_message("the file given to KroneckerPosterior.load",
                                               "a posterior (written by KroneckerPosterior.save)",
                                               f"a file of class {kind!r}",
                                               "Load a prior file with KroneckerPrior.load(path)."))
            if "prior" not in state or "scales" not in state:
                raise ValueError(error_message(
                    "the posterior file", "one that holds its prior and its scales (format version 2)",
                    f"format version {state.get('version')!r} without them",
                    "Re-create the posterior and save it again; LayerwiseGaussian.load(path) still reads its "
                    "mean and precision."))
        out = super().from_state(state)
        prior = KroneckerPrior.from_state(state["prior"])
        _attach_loaded_prior(out, prior, state["scales"])
        return out

    def kl_to_prior(self):
        """``KL(self || prior)`` with named parts (see :meth:`LayerwiseGaussian.kl`)."""
        return self.kl(self.prior)

    def with_scales(self, prior_scale: ScaleArg | None = None, likelihood_scale: ScaleArg | None = None,
                    temperature: ScaleArg | None = None, *, validate: bool = True) -> "KroneckerPosterior":
        """The same posterior for new ``alpha``, ``beta``, ``tau`` (shared floats, per-group
        dicts, or 0-d tensors that may require gradients), sharing every decomposition.

        The cost is ``O(1)`` per group; evaluations on the result cost ``O(n m)`` per layer.
        """
        alpha = self.prior_scale if prior_scale is None else _per_group(prior_scale, self.groups, "prior_scale", validate)
        beta = (self.likelihood_scale if likelihood_scale is None
                else _per_group(likelihood_scale, self.groups, "likelihood_scale", validate))
        tau = self.temperature if temperature is None else _per_group(temperature, self.groups, "temperature", validate)
        groups = []
        for name, g in self.groups.items():
            prior_group = self.prior.groups[name]
            if g.terms is not None:  # a two-term posterior: curvature and prior term
                prec = g.precision.with_weights(beta=beta[name], alpha=alpha[name])
            else:  # no curvature: the prior's precision, scaled
                prec = prior_group.precision.scaled(alpha[name])
            groups.append(GaussianGroup(g.name, g.parameter_names, g.parameter_shapes, g.layer, g.mean,
                                        prec, tau[name], g.terms))
        out = self._new(groups)
        out.prior_scale, out.likelihood_scale, out.temperature = alpha, beta, tau
        return out

    def as_prior(self, *, method: Literal["gram", "power"] = "gram") -> KroneckerPrior:
        """This posterior as the prior of the next task.

        The precision ``(beta F + alpha P) / tau`` of each layer is compressed to one
        precision of the prior family (:meth:`~skkprior.precision.TwoTermPrecision.compress`:
        for Kronecker posteriors the Frobenius-nearest single Kronecker product, exact Gram
        route; a diagonal posterior stays exact); the relative Frobenius error per layer is
        stored in ``metadata["nkp_error"]`` and logged. Groups without curvature keep their
        precision type. The temperature is folded into the precision.
        The factors are positive definite: eigenvalues at the float64 rounding level of the
        compression (``4 size eps max``) are raised to that level (an ill-conditioned
        curvature, condition ~1e10 and beyond, otherwise gave an indefinite prior that only the
        next task's Cholesky noticed); a negative eigenvalue beyond it raises a ``ValueError``
        here (:func:`skkprior.kron.positive_definite_nearest`).
        """
        if method not in ("gram", "power"):
            raise ValueError(error_message("method of as_prior", "'gram' or 'power'", method))
        groups = []
        errors: dict[str, float] = {}
        for name, g in self.groups.items():
            tau = float(g.temperature)
            if g.terms is not None:
                prec, errors[name] = g.precision.compress(
                    g.terms, float(self.likelihood_scale[name]) / tau, float(self.prior_scale[name]) / tau,
                    method=method, name=name)
            else:
                prec = g.precision.scaled(1.0 / tau)
            groups.append(GaussianGroup(g.name, g.parameter_names, g.parameter_shapes, g.layer,
                                        g.mean.detach().clone(), prec, 1.0))
        if errors:
            logger.info("posterior -> prior: worst relative NKP error %.3g", max(errors.values()))
        metadata = {**self.metadata, "kind": "posterior", "nkp_error": errors,
                    "head": self.prior.head, "weight_decay": self.prior.weight_decay,
                    "n_tasks": int(self.metadata.get("n_tasks", 1))}
        return KroneckerPrior(groups, metadata)


def _loaded_source_factors(prior: KroneckerPrior, given: Any) -> dict[str, Kron]:
    """The source factors of a prior file, validated (``{}`` for a file without them)."""
    if given is None:
        return {}
    fix = "The file is corrupted or was edited; re-learn the prior and save it again."
    if not isinstance(given, Mapping):
        raise ValueError(error_message("source_factors in the prior file", "a dict per layer", type(given).__name__,
                                       fix))
    out: dict[str, Kron] = {}
    for name, factors in given.items():
        g = prior.groups.get(name)
        if g is None or g.layer is None or not isinstance(factors, Mapping) or set(factors) != {"G", "A"}:
            raise ValueError(error_message(f"source factors of {name!r} in the prior file",
                                           "the factors G and A of one of the prior's Kronecker layers",
                                           repr(name), fix))
        G, A = factors["G"], factors["A"]
        if not (isinstance(G, torch.Tensor) and isinstance(A, torch.Tensor)) or \
                tuple(G.shape) != (g.layer.n, g.layer.n) or tuple(A.shape) != (g.layer.m, g.layer.m):
            raise ValueError(error_message(f"source factors of layer {name!r} in the prior file",
                                           f"tensors of shapes {(g.layer.n, g.layer.n)} and {(g.layer.m, g.layer.m)}",
                                           f"{getattr(G, 'shape', G)} and {getattr(A, 'shape', A)}", fix))
        F = Kron(G.to(torch.float64), A.to(torch.float64))
        check_factors_definite(F, f"the source curvature of layer {name!r} in the prior file", semi=True)
        out[name] = F
    return out


def _attach_loaded_prior(post: KroneckerPosterior, prior: KroneckerPrior, scales: Any) -> None:
    """Give a loaded posterior its prior and scales, after checking they belong together.

    The prior term of each decomposed group becomes the prior's own precision object again
    (as :func:`posterior` builds it), so the KL keeps its exact, cancellation-free path.
    """
    fix = "The file is corrupted or was edited; re-create the posterior and save it again."
    if prior.fingerprint() != post.fingerprint() or list(prior.groups) != list(post.groups):
        raise ValueError(error_message("the prior in the posterior file", "defined over the posterior's groups "
                                       "and parameter shapes", f"groups {list(prior.groups)[:6]} against "
                                       f"{list(post.groups)[:6]}", fix))
    values: dict[str, dict[str, float]] = {}
    for key in ("prior_scale", "likelihood_scale", "temperature"):
        given = scales.get(key) if isinstance(scales, Mapping) else None
        if not isinstance(given, Mapping) or set(given) != set(post.groups):
            raise ValueError(error_message(f"{key} in the posterior file", "a value per group",
                                           repr(given)[:80], fix))
        values[key] = {k: check_positive(given[k], f"{key} of group '{k}' in the posterior file") for k in post.groups}

    def close(a: float, b: float) -> bool:
        return math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=0.0)

    for name, g in post.groups.items():
        p = prior.groups[name]
        alpha, beta, tau = (values[k][name] for k in ("prior_scale", "likelihood_scale", "temperature"))
        consistent = close(g.temperature, tau)
        if g.terms is not None:  # a two-term posterior: its weights and its prior term
            consistent = consistent and close(g.precision.alpha, alpha) and close(g.precision.beta, beta) \
                and _same_state(g.terms[1].state(), p.precision.state())
            if consistent:
                g.terms = (g.terms[0], p.precision)
        else:  # no curvature: alpha times the prior's precision
            consistent = consistent and _same_state(g.precision.state(), p.precision.scaled(alpha).state())
        if not consistent:
            raise ValueError(error_message(f"group '{name}' of the posterior file",
                                           "the posterior of its prior at its scales (alpha, beta, tau)",
                                           f"a {type(g.precision).__name__} precision that does not match "
                                           f"the prior's {type(p.precision).__name__} at alpha={alpha:g}, "
                                           f"beta={beta:g}, tau={tau:g}", fix))
    post.prior = prior
    post.prior_scale = values["prior_scale"]
    post.likelihood_scale = values["likelihood_scale"]
    post.temperature = values["temperature"]


def _same_state(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Two precision states describe the same matrix (tensors to 1e-12 relative, numbers likewise)."""
    if set(a) != set(b):
        return False
    for key, x in a.items():
        y = b[key]
        if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
            x, y = torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(y, dtype=torch.float64)
            if x.shape != y.shape or not torch.allclose(x, y.to(x.device), rtol=1e-12, atol=0.0):
                return False
        elif isinstance(x, float) or isinstance(y, float):
            if not math.isclose(float(x), float(y), rel_tol=1e-12, abs_tol=0.0):
                return False
        elif x != y:
            return False
    return True


def _per_group(value: ScaleArg, groups: Mapping[str, GaussianGroup], name: str, validate: bool) -> dict[str, Scalar]:
    if isinstance(value, Mapping):
        missing = [k for k in groups if k not in value]
        if missing:
            raise ValueError(error_message(name, "a value for every group", f"a dict missing {missing[:4]}",
                                           "Pass a float to share one value, or a dict over all groups."))
        out = dict(value)
    else:
        out = {k: value for k in groups}
    if validate:
        for k, v in out.items():
            check_positive(float(v.detach()) if isinstance(v, torch.Tensor) else v, f"{name} of group '{k}'")
    return out


def zero_isotropic_layer_group(layer, shapes, weight_decay: float, device) -> GaussianGroup:
    """The group ``N(0, weight_decay^-1 I)`` of one layer (a new head), Kronecker-factored."""
    prec = Kron(torch.eye(layer.n, dtype=torch.float64, device=device) * weight_decay,
                torch.eye(layer.m, dtype=torch.float64, device=device))
    mean = torch.zeros(layer.n, layer.m, dtype=torch.float64, device=device)
    return GaussianGroup(layer.name, layer.parameter_names, shapes, layer, mean, prec, 1.0)


def isotropic_prior(model: nn.Module, *, weight_decay: float = 1.0, zero_mean: bool = True) -> KroneckerPrior:
    """The isotropic prior ``N(0, weight_decay^-1 I)`` (or centred at the model's weights).

    The default ``weight_decay=1.0`` is the estimators' (``KroneckerPriorClassifier``'s
    ``prior=None``), so the same prior results whichever way it is built.

    Examples
    --------
    >>> from torch import nn
    >>> p = isotropic_prior(nn.Linear(3, 2), weight_decay=0.1)
    >>> p.metadata["kind"], p.dim
    ('zero-mean isotropic', 8)
    """
    wd = check_positive(weight_decay, "weight_decay")
    gauss = LayerwiseGaussian.isotropic(model, wd, zero_mean=zero_mean)
    kind = "zero-mean isotropic" if zero_mean else "isotropic"
    meta = {"kind": kind, "weight_decay": wd, "head": None,
            "fingerprint": architecture_fingerprint(model), "n_source": 0, "source_nll": None}
    return KroneckerPrior(gauss.groups.values(), meta)


def damped_kron(F: Kron, scale: float, damping: float) -> Kron:
    r"""One Kronecker product ``>= scale * F + damping * I`` (factored Tikhonov damping).

    ``(sqrt(s) G + pi sqrt(d) I) (x) (sqrt(s) A + sqrt(d) / pi I)`` with
    ``pi = sqrt((tr G / n) / (tr A / m))`` (Martens & Grosse, 2015): its expansion is
    ``s F + d I`` plus two positive semidefinite cross terms, so every eigenvalue is at least
    ``d``. ``pi`` balances the two cross terms; a zero factor gets ``pi = 1``.

    Parameters
    ----------
    F : Kron
        Positive semidefinite factors ``G`` (n x n) and ``A`` (m x m).
    scale, damping : float
        ``s >= 0`` and ``d > 0``.

    Returns
    -------
    Kron

    Examples
    --------
    >>> import torch
    >>> F = Kron(torch.diag(torch.tensor([4.0, 0.0], dtype=torch.float64)), torch.eye(3, dtype=torch.float64))
    >>> P = damped_kron(F, 1.0, 0.5)
    >>> bool(torch.linalg.eigvalsh(P.to_dense() - F.to_dense()).min() >= 0.5 - 1e-12)
    True
    """
    if not isinstance(F, Kron):
        raise TypeError(error_message("F", "a Kron", type(F).__name__, "Build it with Kron(G, A)."))
    if not (math.isfinite(scale) and scale >= 0):
        raise ValueError(error_message("scale", "a finite number >= 0", scale))
    d = check_positive(damping, "damping")
    n, m = F.G.shape[0], F.A.shape[0]
    tr_g, tr_a = float(torch.trace(F.G)) / n, float(torch.trace(F.A)) / m
    pi = math.sqrt(tr_g / tr_a) if tr_g > 0 and tr_a > 0 else 1.0
    root_s, root_d = math.sqrt(scale), math.sqrt(d)
    eye_n = torch.eye(n, dtype=F.G.dtype, device=F.G.device)
    eye_m = torch.eye(m, dtype=F.A.dtype, device=F.A.device)
    return Kron(root_s * F.G + pi * root_d * eye_n, root_s * F.A + (root_d / pi) * eye_m)


def learn_prior(model: nn.Module, X: Any, y: Any = None, *, kind: Literal["kronecker", "isotropic"] = "kronecker",
                fisher: Literal["mc", "exact", "empirical"] = "mc", weight_decay: float = 1.0,
                prior_scale: float = 1.0, likelihood_scale: float = 1.0, temperature: float = 1.0,
                head: str | None = None, curvature: Any = None,
                compression: Literal["nearest", "damped"] = "nearest", nkp_method: Literal["gram", "power"] = "gram",
                scaling: Literal["fixed", "pac-bayes", "marglik"] = "fixed", per_layer: bool = True,
                objective: Literal["catoni", "mcallester"] = "catoni", delta: float = 0.025,
                batch_size: int = 256, device: Any = None, generator: torch.Generator | None = None,
                progress: bool | None = None) -> KroneckerPrior:
    r"""Learn a prior from a (pretrained) network and its source data.

    At the network's weights ``theta_s`` compute the K-FAC curvature ``F_s`` of the source
    data; the prior is ``N(theta_s, tau_0 P_0^-1)`` with
    ``P_0 = beta_0 F_s + alpha_0 delta I`` compressed to one Kronecker product per layer
    (``compression``; relative Frobenius error in ``metadata["nkp_error"]``). Parameters outside Linear/Conv2d get
    ``N(theta_s, (alpha_0 delta)^-1 I)``; the ``head`` layer, when named, gets
    ``N(0, delta^-1 I)``.

    Parameters
    ----------
    model : nn.Module
        The pretrained network (not modified).
    X, y : array-like or tensors
        Source data; a DataLoader or Dataset may stand in place of ``X`` (then ``y=None``).
    kind : {"kronecker", "isotropic"}, default="kronecker"
        ``"isotropic"``: the isotropic prior with learned mean ``N(theta_s, delta^-1 I)``
        (no curvature pass).
    fisher : {"mc", "exact", "empirical"}, default="mc"
        Fisher type of the curvature pass (the paper: "mc").
    weight_decay : float, default=1.0
        ``delta``, the isotropic precision: the floor ``alpha_0 delta`` of the prior and the
        head's ``N(0, delta^-1 I)``. The default is the estimators' ``weight_decay`` (the precision
        of their ``prior=None`` and of new heads), so a learned prior and the estimator it goes
        into agree. Small values make the prior (and the Laplace posterior built on it) broad in
        every direction the source curvature does not constrain, and the Monte-Carlo predictive
        of a large network with it is at chance (measured on the relatedness page of the docs).
    prior_scale, likelihood_scale : float, default=1.0
        ``alpha_0`` and ``beta_0``.
    temperature : float, default=1.0
        ``tau_0``, multiplies the prior covariance.
    head : str, optional
        Qualified name of the output layer; it gets the zero-mean isotropic prior, and
        :meth:`KroneckerPrior.match` lets its shape change.
    curvature : Curvature, optional
        A precomputed source curvature (skips the pass).
    compression : {"nearest", "damped"}, default="nearest"
        How ``beta_0 (G (x) A) + c I`` (``c = alpha_0 delta``) becomes one Kronecker product.
        ``"nearest"`` (the paper's): the Frobenius-nearest Kronecker product; it keeps the
        large curvature eigenvalues but can lose the floor ``c``. ``"damped"``: the factored
        Tikhonov damping of Martens & Grosse (2015), :func:`damped_kron`, which keeps it.
        Which is better where (measured) is on the Concepts page, section 5.
    nkp_method : {"gram", "power"}, default="gram"
        The algorithm of ``compression="nearest"``.
    scaling : {"fixed", "pac-bayes", "marglik"}, default="fixed"
        How ``(alpha_0, beta_0, tau_0)`` are chosen. ``"fixed"``: as given. ``"pac-bayes"`` (the
        paper's prior calibration): the values minimizing the paper's approximate PAC-Bayes
        bound (``objective``, confidence ``1 - delta``) on the *source* data for the source
        posterior ``N(theta_s, tau_0 (beta_0 F_s + alpha_0 delta I)^-1)`` against the hyper-prior
        ``N(0, delta^-1 I)`` (:func:`~skkprior.tuning.tune_pac_bayes`, started from the given
        values). ``"marglik"``: ``alpha_0`` maximizing the Laplace evidence of the source data
        under that hyper-prior (:func:`~skkprior.tuning.tune_marglik`; ``beta_0``, ``tau_0`` as
        given). Needs labels ``y`` (the source NLL). The chosen values are in
        ``metadata["calibration"]``.
    per_layer : bool, default=True
        ``scaling="pac-bayes"`` / ``"marglik"``: one value per layer (the paper) or shared.
    objective : {"catoni", "mcallester"}, default="catoni"
        The bound of ``scaling="pac-bayes"``.
    delta : float, default=0.025
        Failure probability of that bound.
    batch_size, device, generator, progress
        Passed to the curvature pass.

    Returns
    -------
    KroneckerPrior
    """
    wd = check_positive(weight_decay, "weight_decay")
    alpha0 = check_positive(prior_scale, "prior_scale")
    beta0 = check_positive(likelihood_scale, "likelihood_scale")
    tau0 = check_positive(temperature, "temperature")
    if kind not in ("kronecker", "isotropic"):
        raise ValueError(error_message("kind", "'kronecker' or 'isotropic'", kind))
    if compression not in ("damped", "nearest"):
        raise ValueError(error_message("compression", "'damped' or 'nearest'", compression))
    if scaling not in ("fixed", "pac-bayes", "marglik"):
        raise ValueError(error_message("scaling", "'fixed', 'pac-bayes' or 'marglik'", scaling))
    if scaling != "fixed" and kind == "isotropic":
        raise ValueError(error_message("scaling", "'fixed' for kind='isotropic'", repr(scaling),
                                       "The calibration weighs the source curvature; use kind='kronecker'."))
    layers = kronecker_layers(model)
    if not layers:
        raise ValueError(error_message("model", "a network with at least one nn.Linear or nn.Conv2d layer",
                                       type(model).__name__, "K-FAC priors need Linear/Conv2d layers."))
    if head is not None and head not in layers:
        raise ValueError(error_message("head", f"one of the Linear/Conv2d layers {list(layers)}", head))
    base_meta = {"weight_decay": wd, "head": head, "fingerprint": architecture_fingerprint(model),
                 "prior_scale": alpha0, "likelihood_scale": beta0, "temperature": tau0}
    if kind == "isotropic":
        gauss = LayerwiseGaussian.isotropic(model, alpha0 * wd, temperature=tau0)
        groups = [(zero_isotropic_layer_group(g.layer, g.parameter_shapes, wd, g.mean.device)
                   if g.name == head else g) for g in gauss]
        return KroneckerPrior(groups, {**base_meta, "kind": "isotropic", "n_source": None, "source_nll": None})

    if curvature is None:
        curvature = kfac(model, X, y, fisher=fisher, batch_size=batch_size, device=device,
                         generator=generator, progress=progress)
    # projected once: the calibration's posterior and the prior reuse the projections (psd_projected)
    rounding = getattr(curvature, "rounding", {})
    positions = getattr(curvature, "positions", {})
    projected = {name: psd_projected(F, rounding.get(name), rank_bound=positions.get(name))[0]
                 for name, F in curvature.factors.items()}
    scales, calibration_C = _calibrated_scales(model, projected, curvature.nll_sum, int(curvature.n_samples),
                                               scaling, wd, alpha0, beta0, tau0, per_layer=per_layer,
                                               objective=objective, delta=delta)
    # the prior keeps the projected factors, not their eigendecompositions (as much memory again)
    source = {name: Kron(projected[name].G, projected[name].A) for name in layers if name != head}
    templates = LayerwiseGaussian.isotropic(model, wd).groups.values()  # means at theta_s, float64
    if head is not None:
        device = curvature.factors[head].device
        templates = [g.to(device) if g.name == head else g for g in templates]
    meta = {**base_meta, "kind": "kronecker", "n_source": int(curvature.n_samples),
            "source_nll": None if curvature.nll_sum is None else float(curvature.nll_sum),
            "fisher": fisher, "compression": compression, "nkp_method": nkp_method,
            "calibration": {"scaling": scaling, "per_layer": bool(per_layer), "catoni_C": calibration_C,
                            "prior_scale": {k: v[0] for k, v in scales.items()},
                            "likelihood_scale": {k: v[1] for k, v in scales.items()},
                            "temperature": {k: v[2] for k, v in scales.items()}}}
    groups, errors = _learned_groups(templates, source, scales, wd, compression, nkp_method, head)
    if errors:
        logger.info("learn_prior: worst relative NKP error %.3g", max(v[0] for v in errors.values()))
    return KroneckerPrior(model_order(groups, model), {**meta, **_approximation_record(errors)},
                          source_factors=source)


def _compressed_precision(F: Kron, beta: float, floor: float, compression: str, nkp_method: str,
                          name: str) -> tuple[Kron, float, bool]:
    """``beta F + floor I`` as one Kronecker product: the product, its relative Frobenius error and
    whether it is exact by construction (``beta = 0``: ``floor I`` itself, whatever the compression).

    The one place where a learned prior's layer precision is formed (:func:`learn_prior` and
    :meth:`KroneckerPrior.reweighted`).
    """
    if beta == 0.0:
        eye_n = torch.eye(F.n, dtype=torch.float64, device=F.device)
        return Kron(eye_n * floor, torch.eye(F.m, dtype=torch.float64, device=F.device)), 0.0, True
    total = KronSum([F, Kron.identity(F.n, F.m, device=F.device)], [beta, floor])
    if compression == "nearest":
        return positive_definite_nearest(total, nkp_method, name), float(total.nearest_error()), False
    prec = damped_kron(F, beta, floor)
    return prec, float((total + prec * -1.0).frobenius_norm() / total.frobenius_norm()), False


def _learned_groups(templates: Any, source: Mapping[str, Kron], scales: Mapping[str, tuple[float, float, float]],
                    weight_decay: float, compression: str, nkp_method: str, head: str | None,
                    ) -> tuple[list[GaussianGroup], dict[str, tuple[float, bool]]]:
    """The groups of a learned prior at ``scales`` (``(alpha_0, beta_0, tau_0)`` per group name).

    ``templates`` give each group's name, parameters, layer and mean (``theta_s``). A Kronecker
    layer with source factors gets ``(beta_0 F_s + alpha_0 delta I)`` compressed
    (:func:`_compressed_precision`) and temperature ``tau_0``; the ``head`` gets
    ``N(0, delta^-1 I)``; a layer without source factors (a head replaced by
    :meth:`KroneckerPrior.match`) is kept; every other parameter gets ``alpha_0 delta I``, ``tau_0``.
    Returns the groups and, per compressed layer, ``(relative Frobenius error, exact)``.
    """
    groups: list[GaussianGroup] = []
    record: dict[str, tuple[float, bool]] = {}
    for g in templates:
        if g.layer is not None:
            if g.name == head:
                groups.append(zero_isotropic_layer_group(g.layer, g.parameter_shapes, weight_decay, g.mean.device))
                continue
            if g.name not in source:
                groups.append(g)
                continue
            a0, b0, t0 = scales[g.name]
            F = source[g.name]
            prec, error, exact = _compressed_precision(F, b0, a0 * weight_decay, compression, nkp_method, g.name)
            record[g.name] = (error, exact)
            groups.append(GaussianGroup(g.name, g.parameter_names, g.parameter_shapes, g.layer,
                                        g.mean.to(device=F.device, dtype=torch.float64), prec, t0))
        else:
            a0, _, t0 = scales[g.name]
            groups.append(GaussianGroup(g.name, g.parameter_names, g.parameter_shapes, None,
                                        g.mean.to(torch.float64), IsotropicPrecision(a0 * weight_decay, g.dim), t0))
    return groups, record


def _approximation_record(record: Mapping[str, tuple[float, bool]]) -> dict[str, dict[str, Any]]:
    """``metadata`` entries stating, per compressed layer, the relative Frobenius error of its
    precision (``nkp_error``) and whether the precision is exact (``precision_exact``)."""
    return {"nkp_error": {k: v[0] for k, v in record.items()},
            "precision_exact": {k: v[1] for k, v in record.items()}}


def _calibrated_scales(model: nn.Module, factors: Mapping[str, Kron], nll_sum: float | None, n_source: int,
                       scaling: str, weight_decay: float, alpha0: float, beta0: float, tau0: float, *,
                       per_layer: bool, objective: str,
                       delta: float) -> tuple[dict[str, tuple[float, float, float]], float | None]:
    """``(alpha_0, beta_0, tau_0)`` per group name, as given or calibrated on the source data, and
    Catoni's constant of the calibrated bound (``None`` unless ``scaling="pac-bayes"`` with Catoni).

    The calibration treats the prior as the Laplace posterior of the source task under the
    hyper-prior ``N(0, delta^-1 I)``: ``Q_s = posterior(N(0, delta^-1 I), F_s, theta_s)`` at the
    given scales, whose scales are then tuned by the paper's objective or the evidence. The
    prior of a layer is ``(beta_0 F_s + alpha_0 delta I) / tau_0``: exactly ``Q_s``'s precision.
    """
    from .tuning import tune_marglik, tune_pac_bayes  # tuning builds on this module's posterior type

    names = [g.name for g in LayerwiseGaussian.isotropic(model, weight_decay)]
    if scaling == "fixed":
        return {k: (alpha0, beta0, tau0) for k in names}, None
    if nll_sum is None:
        raise ValueError(error_message(f"the source data of learn_prior(scaling={scaling!r})",
                                       "labelled (the calibration needs the source NLL)", "no labels y",
                                       "Pass y, or use scaling='fixed'."))
    hyper = isotropic_prior(model, weight_decay=weight_decay, zero_mean=True)
    source = posterior(hyper, factors, model, prior_scale=alpha0, likelihood_scale=beta0, temperature=tau0)
    if scaling == "pac-bayes":
        tuned = tune_pac_bayes(source, nll_sum=float(nll_sum), n=n_source,
                               objective=objective, delta=delta, per_layer=per_layer)
    else:
        tuned = tune_marglik(source, nll_sum=float(nll_sum), per_layer=per_layer)
    logger.info("learn_prior: %s calibration, objective %.4g -> %.4g", scaling, tuned.objective_start,
                tuned.objective_best)
    return {k: (float(tuned.prior_scale[k]), float(tuned.likelihood_scale[k]), float(tuned.temperature[k]))
            for k in names}, tuned.C


def posterior(prior: KroneckerPrior, curvature: Any, model: nn.Module | Mapping[str, torch.Tensor], *,
              prior_scale: ScaleArg = 1.0, likelihood_scale: ScaleArg = 1.0,
              temperature: ScaleArg = 1.0) -> KroneckerPosterior:
    r"""The Laplace posterior ``N(theta_t, tau (beta F_t + alpha P)^-1)`` per layer, exact.

    Parameters
    ----------
    prior : KroneckerPrior
        The prior; it is matched to ``model`` first (:meth:`KroneckerPrior.match`).
    curvature : Curvature or dict of Kron
        Target-task curvature at ``theta_t`` (summed over the target data), per layer name.
    model : nn.Module or dict
        The MAP network (its parameters are the posterior mean; copied).
    prior_scale, likelihood_scale, temperature : float or dict, default=1.0
        ``alpha``, ``beta`` and ``tau``: shared, or a dict per group name.

    Returns
    -------
    KroneckerPosterior

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from skkprior.curvature import kfac
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    >>> X, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    >>> prior = isotropic_prior(net, weight_decay=1.0)
    >>> post = posterior(prior, kfac(net, X, y, progress=False), net)
    >>> kl = post.kl_to_prior()
    >>> float(kl.total) > 0
    True
    >>> float(post.with_scales(temperature=0.1).kl_to_prior().total) != float(kl.total)
    True
    """
    if not isinstance(prior, KroneckerPrior):
        raise TypeError(error_message("prior", "a KroneckerPrior", type(prior).__name__,
                                      "Build one with learn_prior(), isotropic_prior() or as_prior()."))
    if isinstance(model, nn.Module):
        matched = prior.match(model)
        params = {k: v.detach() for k, v in model.named_parameters()}
    else:
        matched = prior
        params = {k: v.detach() for k, v in model.items()}
    factors = curvature if isinstance(curvature, Mapping) else curvature.factors
    rounding = {} if isinstance(curvature, Mapping) else getattr(curvature, "rounding", {})
    positions = {} if isinstance(curvature, Mapping) else getattr(curvature, "positions", {})
    groups: list[GaussianGroup] = []
    for g in matched:
        mean = g.from_params(params).to(torch.float64).to(g.mean.device).clone()
        if g.layer is not None:
            F = factors.get(g.name)
            if F is None:
                raise ValueError(error_message(f"curvature of layer '{g.name}'", "present",
                                               f"layers {list(factors)}",
                                               "Compute the curvature on the same model."))
            P = g.precision
            # The prior's temperature is folded into its precision for the posterior's terms.
            P_eff = P.scaled(1.0 / float(g.temperature)) if float(g.temperature) != 1.0 else P
            # the curvature's structure decides the form (Kronecker: exact joint eigenbasis;
            # diagonal: beta f + alpha diag(P))
            prec, terms = F.posterior_with(P_eff, rounding.get(g.name), rank_bound=positions.get(g.name))
            groups.append(GaussianGroup(g.name, g.parameter_names, g.parameter_shapes, g.layer, mean,
                                        prec, 1.0, terms))
        else:
            groups.append(GaussianGroup(g.name, g.parameter_names, g.parameter_shapes, None, mean,
                                        g.precision, 1.0))
    if any(float(g.temperature) != 1.0 for g in matched):
        # the prior's groups now carry their temperature inside the precision
        matched = matched._new([_fold_temperature(g, groups_by_name)
                                for groups_by_name in [{gg.name: gg for gg in groups}] for g in matched])
    base = KroneckerPosterior(groups, {**prior.metadata, "kind": "posterior",
                                       "n_target": int(getattr(curvature, "n_samples", 0)),
                                       "n_tasks": int(prior.metadata.get("n_tasks", 0)) + 1})
    base.prior = matched
    base.prior_scale = {k: 1.0 for k in base.groups}
    base.likelihood_scale = {k: 1.0 for k in base.groups}
    base.temperature = {k: 1.0 for k in base.groups}
    return base.with_scales(prior_scale, likelihood_scale, temperature)


def _fold_temperature(g: GaussianGroup, posterior_groups: Mapping[str, GaussianGroup]) -> GaussianGroup:
    """The prior group with its temperature folded into the precision (same object as the posterior's term)."""
    tau = float(g.temperature)
    if tau == 1.0:
        return g
    post = posterior_groups[g.name]
    prec = post.terms[1] if post.terms is not None else g.precision.scaled(1.0 / tau)
    return GaussianGroup(g.name, g.parameter_names, g.parameter_shapes, g.layer, g.mean, prec, 1.0)
