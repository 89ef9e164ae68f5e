r"""A layer-wise Gaussian over a network's parameters.

The parameters are split into *groups*. Each ``nn.Linear`` / ``nn.Conv2d`` layer is one group
whose parameters form the matrix ``[W | b]`` (docs/concepts.md, section 1); every other trainable
parameter is a group of its own. Each group holds a mean, a precision and a temperature
``tau``; the group's covariance is ``tau * precision^-1`` and groups are independent (the
precision of the whole network is block diagonal).

The precision of a group is any type of the precision protocol (:mod:`skkprior.precision`):
one Kronecker product ``G (x) A`` (priors), an isotropic ``v I`` (parameters outside
Linear/Conv2d, heads whose shape changed), a diagonal, or a two-term form ``beta F + alpha P``
(posteriors: curvature ``F`` plus prior precision ``P``, Kronecker or diagonal). This module
never asks which: every operation goes through the protocol.

Every operation below is exact in these forms: sampling, the quadratic form, the KL divergence
(split into named parts), ``sum_l tr(F_l Sigma_l)`` and the log-determinant.

Flattening order
----------------
:meth:`LayerwiseGaussian.flatten` and :meth:`LayerwiseGaussian.to_dense` order the parameters
group by group, in the order the groups were created (the model's module order), and within a
Kronecker group as the row-major flattening of ``[W | b]`` (so weight and bias entries of a row
are adjacent). Isotropic groups are flattened as ``parameter.flatten()``.
"""

from __future__ import annotations

import io
import math
import os
import pickle
from dataclasses import dataclass, replace
from typing import Any, Iterable, Iterator, Mapping

import torch
from torch import nn

from ._layers import KroneckerLayer, layer_matrix, split_layer_matrix
from ._validation import error_message
from .kron import Kron
from .precision import IsotropicPrecision, Precision, TwoTermPrecision, precision_from_state

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "GaussianGroup",
    "IsotropicPrecision",
    "KLDivergence",
    "LayerwiseGaussian",
]

FORMAT_NAME = "skkprior-gaussian"
# Version 2 (skkprior 0.x, issue 14): a KroneckerPosterior file also holds its prior and its
# scales (alpha, beta, tau per group); files of other classes are unchanged. Version 1 files
# are still read (a version 1 posterior file only as a LayerwiseGaussian: it lacks its prior).
# Version 3 (issue 12): a learned KroneckerPrior file also holds its source factors
# ("source_factors": G and A per Kronecker layer) for KroneckerPrior.reweighted; files of
# versions 1 and 2 are read without them.
FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)

Scalar = float | torch.Tensor



@dataclass
class GaussianGroup:
    """One independent block of a :class:`LayerwiseGaussian`.

    Attributes
    ----------
    name : str
        Layer name for a Kronecker group, parameter name for an isotropic group.
    parameter_names : tuple of str
        Qualified parameter names covered by the group.
    parameter_shapes : tuple of tuple of int
        Their shapes.
    layer : KroneckerLayer or None
        The layer for a Kronecker group (mean of shape ``(n, m)``); None for a flat group.
    mean : torch.Tensor
        ``(n, m)`` for a layer group, ``(d,)`` otherwise.
    precision : Precision
        The group's precision (before the temperature): any type of the precision protocol
        (:mod:`skkprior.precision`).
    temperature : float or torch.Tensor
        The covariance is ``temperature * precision^-1``.
    terms : tuple of (Precision, Precision) or None
        For a two-term precision (:class:`~skkprior.precision.TwoTermPrecision`, a posterior),
        the unweighted terms ``(F, P)`` it was built from (curvature, prior precision).
    """

    name: str
    parameter_names: tuple[str, ...]
    parameter_shapes: tuple[tuple[int, ...], ...]
    layer: KroneckerLayer | None
    mean: torch.Tensor
    precision: Precision
    temperature: Scalar = 1.0
    terms: tuple[Any, Precision] | None = None

    @property
    def dim(self) -> int:
        return int(self.mean.numel())

    @property
    def is_kronecker(self) -> bool:
        return self.layer is not None

    # -- params <-> group coordinates ---------------------------------------------------------
    def from_params(self, params: Mapping[str, torch.Tensor], batch_dims: int = 0) -> torch.Tensor:
        """Group coordinates (``(*batch, n, m)`` or ``(*batch, d)``) from a parameter dict."""
        if self.layer is not None:
            w = params[self.layer.weight_name]
            b = params[self.layer.bias_name] if self.layer.bias_name is not None else None
            return layer_matrix(w, b, batch_dims=batch_dims)
        (pname,) = self.parameter_names
        p = params[pname]
        return p.reshape(*p.shape[:batch_dims], -1)

    def to_params(self, coords: torch.Tensor, batch_dims: int = 0) -> dict[str, torch.Tensor]:
        """Inverse of :meth:`from_params`."""
        if self.layer is not None:
            w, b = split_layer_matrix(coords, self.layer)
            out = {self.layer.weight_name: w}
            if self.layer.bias_name is not None:
                out[self.layer.bias_name] = b
            return out
        (pname,) = self.parameter_names
        return {pname: coords.reshape(*coords.shape[:batch_dims], *self.parameter_shapes[0])}

    # -- algebra ---------------------------------------------------------------------------
    def precision_quadratic(self, delta: torch.Tensor) -> torch.Tensor:
        """``delta^T precision delta`` (no temperature) for coordinates of shape ``(*batch, ...)``."""
        return self.precision.quadratic(delta).reshape(delta.shape[:delta.ndim - self.mean.ndim])

    def precision_logdet(self) -> torch.Tensor:
        return self.precision.logdet()

    def noise_map(self, z: torch.Tensor) -> torch.Tensor:
        """Map standard normal ``z`` (``(*batch, *mean.shape)``, float64) to ``N(0, tau P^-1)``.

        Linear in ``z``: with ``z`` the identity basis it gives a square root of the covariance.
        """
        return self.precision.sample_map(z) * math.sqrt(float(self.temperature))

    def sample_noise(self, n_samples: int, generator: torch.Generator | None, dtype: torch.dtype) -> torch.Tensor:
        """``n_samples`` draws from ``N(0, temperature * precision^-1)`` in group coordinates."""
        z = torch.randn((n_samples, *self.mean.shape), generator=generator, device=self.mean.device,
                        dtype=torch.float64)
        return self.noise_map(z).to(dtype)

    def to(self, *args: Any, **kwargs: Any) -> "GaussianGroup":
        def mv(t: Any) -> Any:
            return t.to(*args, **kwargs) if isinstance(t, torch.Tensor) else t
        terms = None if self.terms is None else (self.terms[0].to(*args, **kwargs), self.terms[1].to(*args, **kwargs))
        prec = self.precision.to(*args, **kwargs)
        return replace(self, mean=mv(self.mean), precision=prec, temperature=mv(self.temperature),
                       terms=terms)


@dataclass
class KLDivergence:
    """``KL(Q || P)`` with its named parts, per group and in total.

    ``total = 1/2 (trace + mahalanobis - dim + logdet_ratio)`` where, per group,
    ``trace = tr(Sigma_P^-1 Sigma_Q)``, ``mahalanobis = (mu_Q - mu_P)^T Sigma_P^-1 (mu_Q - mu_P)``,
    ``logdet_ratio = logdet Sigma_P - logdet Sigma_Q``. Values are tensors (differentiable when
    the scales are).
    """

    trace: dict[str, torch.Tensor]
    mahalanobis: dict[str, torch.Tensor]
    logdet_ratio: dict[str, torch.Tensor]
    dim: dict[str, int]

    def per_group(self) -> dict[str, torch.Tensor]:
        return {k: 0.5 * (self.trace[k] + self.mahalanobis[k] - self.dim[k] + self.logdet_ratio[k])
                for k in self.trace}

    @property
    def total(self) -> torch.Tensor:
        return sum(self.per_group().values())

    def __float__(self) -> float:
        return float(self.total)

    def as_dict(self) -> dict[str, float]:
        """Per-group KL as plain floats (for certificates and logs)."""
        return {k: float(v) for k, v in self.per_group().items()}


def _to_tensor(x: Scalar, like: torch.Tensor) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.to(device=like.device)
    return torch.tensor(float(x), dtype=torch.float64, device=like.device)


def _trace_prior_over_posterior(q: GaussianGroup, p: GaussianGroup) -> torch.Tensor:
    """``tr(P_p P_q^-1)``: ``O(n m)`` when ``P_p`` is the second term of a two-term ``P_q``."""
    if q.terms is not None and p.precision is q.terms[1]:
        return q.precision.trace_term(1)
    return q.precision.trace_inverse_product(p.precision)


def _logdet_ratio_precisions(q: GaussianGroup, p: GaussianGroup) -> torch.Tensor:
    """``logdet P_q - logdet P_p``, exact without cancellation when P_p is q's prior term."""
    if q.terms is not None and p.precision is q.terms[1]:
        return q.precision.log_eigenvalue_sum()
    return q.precision.logdet() - p.precision.logdet()


def _group_kl(q: GaussianGroup, p: GaussianGroup) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    tau_q = _to_tensor(q.temperature, q.mean)
    tau_p = _to_tensor(p.temperature, q.mean)
    trace = tau_q / tau_p * _trace_prior_over_posterior(q, p)
    diff = (q.mean.to(torch.float64) - p.mean.to(device=q.mean.device, dtype=torch.float64))
    maha = p.precision_quadratic(diff) / tau_p
    d = q.dim
    logdet = _logdet_ratio_precisions(q, p) + d * (torch.log(tau_p) - torch.log(tau_q))
    return trace, maha, logdet


class LayerwiseGaussian:
    r"""A Gaussian over a network's parameters, independent across groups.

    Parameters
    ----------
    groups : iterable of GaussianGroup
        The groups, in the model's order.
    metadata : dict, optional
        Free-form, serializable information (source size, fingerprint, scales, errors).

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> q = LayerwiseGaussian.isotropic(net, precision=10.0)
    >>> p = LayerwiseGaussian.isotropic(net, precision=1.0, zero_mean=True)
    >>> samples = q.sample(5, generator=torch.Generator().manual_seed(0))
    >>> samples["0.weight"].shape
    torch.Size([5, 4, 3])
    >>> abs(float(q.kl(q).total)) < 1e-9   # zero up to rounding
    True
    >>> float(q.kl(p).total) > 0
    True
    """

    def __init__(self, groups: Iterable[GaussianGroup], metadata: dict[str, Any] | None = None) -> None:
        self.groups: dict[str, GaussianGroup] = {}
        for g in groups:
            if g.name in self.groups:
                raise ValueError(error_message("group names", "unique", g.name))
            self.groups[g.name] = g
        self.metadata: dict[str, Any] = dict(metadata or {})

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def isotropic(cls, model: nn.Module, precision: float, *, zero_mean: bool = False,
                  temperature: float = 1.0, dtype: torch.dtype = torch.float64,
                  metadata: dict[str, Any] | None = None) -> "LayerwiseGaussian":
        """``N(theta, precision^-1 I)`` (or zero mean) over the trainable parameters of ``model``.

        Kronecker layers get the Kronecker precision ``precision * (I (x) I)`` so that a
        posterior built on it stays in the exact two-term form.
        """
        from ._layers import kronecker_layers, uncovered_parameters

        params = dict(model.named_parameters())
        layers = kronecker_layers(model)
        groups: list[GaussianGroup] = []
        device = next(iter(params.values())).device
        for name, layer in layers.items():
            mean = layer_matrix(params[layer.weight_name].detach(),
                                params[layer.bias_name].detach() if layer.bias_name else None).to(dtype)
            if zero_mean:
                mean = torch.zeros_like(mean)
            prec = Kron(torch.eye(layer.n, dtype=torch.float64, device=device) * float(precision),
                        torch.eye(layer.m, dtype=torch.float64, device=device))
            groups.append(GaussianGroup(name, layer.parameter_names,
                                        tuple(tuple(params[p].shape) for p in layer.parameter_names),
                                        layer, mean, prec, temperature))
        for pname in uncovered_parameters(model, layers):
            p = params[pname].detach()
            mean = torch.zeros(p.numel(), dtype=dtype, device=device) if zero_mean else p.reshape(-1).to(dtype)
            groups.append(GaussianGroup(pname, (pname,), (tuple(p.shape),), None, mean,
                                        IsotropicPrecision(float(precision), p.numel()), temperature))
        return cls(model_order(groups, model), metadata)

    # -- basic properties ------------------------------------------------------------------------
    def __iter__(self) -> Iterator[GaussianGroup]:
        return iter(self.groups.values())

    def __len__(self) -> int:
        return len(self.groups)

    def __repr__(self) -> str:
        kinds = {}
        for g in self:
            kinds[type(g.precision).__name__] = kinds.get(type(g.precision).__name__, 0) + 1
        return f"{type(self).__name__}(groups={len(self)}, dim={self.dim}, precisions={kinds})"

    @property
    def dim(self) -> int:
        """Number of parameters."""
        return sum(g.dim for g in self)

    @property
    def parameter_names(self) -> list[str]:
        return [p for g in self for p in g.parameter_names]

    @property
    def device(self) -> torch.device:
        return next(iter(self)).mean.device

    def fingerprint(self) -> list[tuple[str, tuple[int, ...]]]:
        """``[(parameter name, shape), ...]``: what a module must have to match this Gaussian."""
        return [(p, tuple(s)) for g in self for p, s in zip(g.parameter_names, g.parameter_shapes)]

    def _new(self, groups: Iterable[GaussianGroup], **meta: Any) -> "LayerwiseGaussian":
        out = object.__new__(type(self))
        LayerwiseGaussian.__init__(out, groups, {**self.metadata, **meta})
        for key, value in self.__dict__.items():
            if key not in ("groups", "metadata"):
                out.__dict__[key] = value
        return out

    def to(self, *args: Any, **kwargs: Any) -> "LayerwiseGaussian":
        """Move every group (means keep their dtype unless one is given)."""
        return self._new([g.to(*args, **kwargs) for g in self])

    # -- parameters ------------------------------------------------------------------------------
    def mean_params(self, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """The mean as a parameter dict (as ``model.named_parameters()`` would give it)."""
        out: dict[str, torch.Tensor] = {}
        for g in self:
            out.update(g.to_params(g.mean if dtype is None else g.mean.to(dtype)))
        return out

    def flatten(self, params: Mapping[str, torch.Tensor] | nn.Module) -> torch.Tensor:
        """Flatten a parameter dict (or a module) in this Gaussian's order (module docstring)."""
        params = _as_params(params)
        return torch.cat([g.from_params(params).reshape(-1) for g in self])

    def sample(self, n_samples: int, generator: torch.Generator | None = None, *,
               dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """Draw ``n_samples`` parameter sets at once.

        Returns
        -------
        dict
            Parameter name to a tensor of shape ``(n_samples, *parameter.shape)``, ready for
            ``torch.func.functional_call`` under ``torch.vmap`` (no ``state_dict`` reloads).
        """
        if not isinstance(n_samples, int) or n_samples < 1:
            raise ValueError(error_message("n_samples", "a positive integer", n_samples))
        out: dict[str, torch.Tensor] = {}
        for g in self:
            dt = g.mean.dtype if dtype is None else dtype
            coords = g.mean.to(dt).unsqueeze(0) + g.sample_noise(n_samples, generator, dt)
            out.update(g.to_params(coords, batch_dims=1))
        return out

    def quadratic(self, params: Mapping[str, torch.Tensor] | nn.Module) -> torch.Tensor:
        r"""``sum_groups (theta - mu)^T (P / tau) (theta - mu)``, differentiable in ``params``.

        This is the prior term of MAP training (twice the negative log-density up to a
        constant). ``params`` may be a module or a dict of (possibly batched) parameters.
        """
        params = _as_params(params, keep_grad=True)
        total = None
        for g in self:
            theta = g.from_params(params)
            delta = theta - g.mean.to(theta.dtype)
            term = g.precision_quadratic(delta) / g.temperature
            total = term if total is None else total + term
        return total

    # -- closed forms ----------------------------------------------------------------------------
    def kl(self, other: "LayerwiseGaussian") -> KLDivergence:
        """``KL(self || other)`` with named parts per group; raises when it comes out negative."""
        self._check_same_structure(other)
        trace, maha, logdet, dims = {}, {}, {}, {}
        for name, q in self.groups.items():
            p = other.groups[name]
            trace[name], maha[name], logdet[name] = _group_kl(q, p)
            dims[name] = q.dim
        out = KLDivergence(trace, maha, logdet, dims)
        for name, value in out.per_group().items():
            v = float(value.detach())
            scale = 1e-9 * (dims[name] + abs(float(trace[name].detach())) + abs(float(logdet[name].detach())))
            if not math.isfinite(v) or v < -scale:
                raise ArithmeticError(
                    error_message(f"KL divergence of group '{name}'", "finite and non-negative",
                                  f"{v:.6g}", "This is a bug or a numerically broken precision; "
                                  "report it with the model and scales.")
                )
        return out

    def trace_term(self, curvature: Any) -> torch.Tensor:
        r"""``sum_l tr(F_l Sigma_l)`` over the Kronecker groups, ``Sigma_l = tau P_l^-1``.

        ``curvature`` is a :class:`~skkprior.curvature.Curvature` (or a dict of
        :class:`~skkprior.kron.Kron` by layer name). Groups without curvature contribute 0.
        When ``F_l`` is the curvature term of a two-term posterior precision, the cost is
        ``O(n m)`` per layer.
        """
        factors = curvature if isinstance(curvature, Mapping) else curvature.factors
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        for name, g in self.groups.items():
            F = factors.get(name)
            if F is None:
                continue
            if g.terms is not None and F is g.terms[0]:
                tr = g.precision.trace_term(0)
            else:
                tr = g.precision.trace_inverse_product(F)
            total = total + _to_tensor(g.temperature, total) * tr
        return total

    def logdet(self) -> torch.Tensor:
        """Log-determinant of the covariance, ``sum_groups (d ln tau - logdet P)``."""
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        for g in self:
            tau = _to_tensor(g.temperature, total)
            total = total + g.dim * torch.log(tau) - g.precision_logdet()
        return total

    def to_dense(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean, precision)`` over the flattened parameters (tests on tiny networks only).

        The precision includes the temperature (it is the inverse of the covariance); the
        order is that of :meth:`flatten`.
        """
        means, blocks = [], []
        for g in self:
            means.append(g.mean.reshape(-1).to(torch.float64))
            P = g.precision.to_dense().to(device=g.mean.device, dtype=torch.float64)
            blocks.append(P / _to_tensor(g.temperature, P))
        return torch.cat(means), torch.block_diag(*blocks)

    # -- structure checks ------------------------------------------------------------------------
    def _check_same_structure(self, other: "LayerwiseGaussian") -> None:
        if self.fingerprint() != other.fingerprint():
            mine, theirs = dict(self.fingerprint()), dict(other.fingerprint())
            diff = sorted(set(mine.items()) ^ set(theirs.items()))[:4]
            raise ValueError(
                error_message("the two Gaussians", "defined over the same parameters and shapes",
                              f"differences {diff}", "Match both to the same module first.")
            )

    # -- persistence --------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """A plain, ``weights_only``-loadable dict describing this Gaussian."""
        groups = []
        for g in self:
            groups.append({
                "name": g.name,
                "parameter_names": list(g.parameter_names),
                "parameter_shapes": [list(s) for s in g.parameter_shapes],
                "layer": None if g.layer is None else {
                    "name": g.layer.name, "weight_name": g.layer.weight_name,
                    "bias_name": g.layer.bias_name, "weight_shape": list(g.layer.weight_shape),
                    "n": g.layer.n, "m": g.layer.m},
                "mean": g.mean.detach(),
                "temperature": float(g.temperature),
                "precision": g.precision.state(),
                "terms": None if g.terms is None else [t.state() for t in g.terms],
            })
        return {"format": FORMAT_NAME, "version": FORMAT_VERSION, "class": type(self).__name__,
                "metadata": self.metadata, "groups": groups}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> "LayerwiseGaussian":
        """Inverse of :meth:`state`; raises a clear ``ValueError`` on a foreign structure."""
        if not isinstance(state, Mapping) or state.get("format") != FORMAT_NAME:
            raise ValueError(error_message("the file", f"an skkprior Gaussian (format '{FORMAT_NAME}')",
                                           "a file of another format",
                                           "Create prior files with KroneckerPrior.save()."))
        version = state.get("version")
        if version not in READABLE_VERSIONS:
            raise ValueError(error_message("the file's format version",
                                           f"one of {list(READABLE_VERSIONS)} (this skkprior reads those)",
                                           f"{version!r}", "Re-create the file with this version of skkprior."))
        try:
            groups = []
            for gs in state["groups"]:
                layer = None if gs["layer"] is None else KroneckerLayer(
                    name=gs["layer"]["name"], weight_name=gs["layer"]["weight_name"],
                    bias_name=gs["layer"]["bias_name"], weight_shape=tuple(gs["layer"]["weight_shape"]),
                    n=int(gs["layer"]["n"]), m=int(gs["layer"]["m"]))
                try:
                    terms = None if gs["terms"] is None else tuple(precision_from_state(t) for t in gs["terms"])
                    precision = precision_from_state(gs["precision"])
                except ValueError as exc:  # e.g. a non-finite or non-symmetric factor
                    raise ValueError(error_message(f"the precision of group {gs['name']!r} in the file",
                                                   "a valid precision", str(exc), _CORRUPT_FIX)) from exc
                group = GaussianGroup(
                    name=gs["name"], parameter_names=tuple(gs["parameter_names"]),
                    parameter_shapes=tuple(tuple(int(d) for d in s) for s in gs["parameter_shapes"]), layer=layer,
                    mean=gs["mean"], precision=precision, temperature=gs["temperature"], terms=terms)
                _check_loaded_group(group)
                group.temperature = float(group.temperature)
                groups.append(group)
            metadata = dict(state["metadata"])
        except (KeyError, TypeError, IndexError) as exc:
            raise ValueError(error_message("the file", "a complete skkprior Gaussian",
                                           f"a structure missing {exc!s}",
                                           "The file is corrupted; re-create it.")) from exc
        if not groups:
            raise ValueError(error_message("the file", "a Gaussian with at least one group", "no groups",
                                           _CORRUPT_FIX))
        return cls(groups, metadata)

    def save(self, path: str | os.PathLike | io.IOBase) -> None:
        """Save to a file readable with ``torch.load(weights_only=True)`` (versioned format)."""
        torch.save(self.state(), path)

    @classmethod
    def load(cls, path: str | os.PathLike | io.IOBase, *, map_location: Any = None) -> "LayerwiseGaussian":
        """Load a file written by :meth:`save`, safely (``weights_only=True``).

        Raises
        ------
        ValueError
            When the file is truncated, corrupted, of a foreign format or version, or holds
            anything but tensors and plain containers (e.g. a pickle with code in it).
        """
        try:
            state = torch.load(path, map_location=map_location, weights_only=True)
        except FileNotFoundError:
            raise
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError,
                OSError, TypeError) as exc:
            raise ValueError(error_message(f"the prior file {str(path)!r}",
                                           "a complete skkprior file loadable with weights_only=True",
                                           f"a file that failed to load ({type(exc).__name__}: {str(exc)[:120]})",
                                           "It is truncated, corrupted, or not an skkprior file; "
                                           "never load untrusted pickles.")) from exc
        return cls.from_state(state)


_CORRUPT_FIX = "The file is corrupted or was edited; re-create it with save()."


def _check_loaded_group(g: GaussianGroup) -> None:
    """Validate one group read from a file, so that a broken file fails at load, not after training.

    Checks: a finite floating-point mean of the shape the parameters imply; a layer consistent
    with its parameter shapes; a positive finite temperature; a precision of the group's size,
    finite, with symmetric positive definite Kronecker factors (positive semi-definite for the
    curvature term of a posterior) and a positive definite two-term form.
    """
    name = g.name

    def fail(what: str, expected: str, got: Any) -> None:
        raise ValueError(error_message(f"{what} of group {name!r} in the file", expected, got, _CORRUPT_FIX))

    names, shapes = g.parameter_names, g.parameter_shapes
    if not names or len(names) != len(shapes) or any(any(d < 0 for d in sh) for sh in shapes):
        fail("the parameters", "one non-negative shape per parameter name", f"names {list(names)}, "
             f"shapes {list(shapes)}")
    if g.layer is not None:
        layer = g.layer
        ws = tuple(layer.weight_shape)
        m = math.prod(ws[1:]) + (1 if layer.bias_name is not None else 0)
        expected_params = [(layer.weight_name, ws)] + ([(layer.bias_name, (ws[0],))] if layer.bias_name else [])
        if (len(ws) < 2 or layer.n != ws[0] or layer.m != m
                or list(zip(names, shapes)) != expected_params):
            fail("the layer", "consistent with its parameters (n = output size, m = input size + 1 with bias)",
                 f"n={layer.n}, m={layer.m}, weight shape {ws}, parameters {list(zip(names, shapes))}")
        size: tuple[int, ...] = (layer.n, layer.m)
    else:
        if len(names) != 1:
            fail("the parameters", "exactly one parameter (a group outside Linear/Conv2d)", list(names))
        size = (math.prod(shapes[0]),)
    mean = g.mean
    if not isinstance(mean, torch.Tensor) or not mean.is_floating_point():
        fail("the mean", "a floating-point tensor", type(mean).__name__ if not isinstance(mean, torch.Tensor) else mean)
    if tuple(mean.shape) != size:
        fail("the mean", f"of shape {size} (from the parameter shapes)", mean)
    if not bool(torch.isfinite(mean).all()):
        fail("the mean", "finite (no NaN or infinity)", f"{int((~torch.isfinite(mean)).sum())} non-finite entries")
    tau = g.temperature
    tau_value = float(tau.detach()) if isinstance(tau, torch.Tensor) else tau
    if isinstance(tau_value, bool) or not isinstance(tau_value, (int, float)) or not (
            math.isfinite(tau_value) and tau_value > 0):
        fail("the temperature", "a positive finite number", repr(tau_value))
    prec = g.precision
    # each precision type validates its own content (shapes, finiteness, definiteness)
    prec.check_loaded(f"the precision of group {name!r} in the file", size)
    if g.terms is not None:
        if not isinstance(prec, TwoTermPrecision) or len(g.terms) != 2:
            fail("the terms", "two terms (curvature, prior) of a two-term precision",
                 f"{len(g.terms)} terms with a {type(prec).__name__} precision")
        g.terms[0].check_loaded(f"the curvature term of group {name!r} in the file", size, semidefinite=True)
        g.terms[1].check_loaded(f"the prior term of group {name!r} in the file", size)


def _as_params(params: Mapping[str, torch.Tensor] | nn.Module, keep_grad: bool = False) -> Mapping[str, torch.Tensor]:
    if isinstance(params, nn.Module):
        return dict(params.named_parameters())
    return params


def model_order(groups: list[GaussianGroup], model: nn.Module) -> list[GaussianGroup]:
    """Sort groups by the position of their first parameter in ``model.named_parameters()``."""
    position = {name: i for i, (name, _) in enumerate(model.named_parameters())}
    return sorted(groups, key=lambda g: position.get(g.parameter_names[0], len(position)))
