r"""The precision protocol: what every precision of a parameter group offers, in one place per type.

A :class:`~skkprior.gaussian.LayerwiseGaussian` gives each parameter group a precision matrix
``S`` (``d x d``; a layer's ``d = n m`` coordinates form the ``(n, m)`` matrix ``[W | b]``, a flat
group's ``d`` coordinates a vector). Everything skkprior computes with it (sampling, the quadratic
form, the log-determinant, the KL divergence and its trace term, the linearized predictive, the
tuning objectives, saving and loading) is written against the protocol :class:`Precision`, never
against a concrete type. The one idea that makes this possible: every precision exposes its
inverse in *scaled-basis form*

.. math::
    S^{-1} = (L \otimes R)\, \mathrm{diag}(s)\, (L \otimes R)^\top,

with ``L`` (``n x n``) and ``R`` (``m x m``) basis factors (``None`` stands for the identity) and
``s`` the inverse eigenvalues (``(n, m)``, or a scalar). Sampling is ``L (Z * sqrt(s)) R^T``;
the trace ``tr(K S^-1)`` of any other precision ``K`` is ``sum(K.projected_diagonal(L, R) * s)``,
where ``projected_diagonal`` is the diagonal of ``(L (x) R)^T K (L (x) R)``. So a pair of types
needs no table of its own: each type answers for itself.

The types:

- :class:`IsotropicPrecision`: ``v I`` (flat groups, heads of a new size);
- :class:`DiagonalPrecision`: ``diag(v)`` (diagonal priors and posteriors);
- :class:`~skkprior.kron.Kron`: one Kronecker product ``G (x) A`` (priors, curvatures);
- :class:`TwoTermPrecision` (abstract): ``beta F + alpha P``, exact in a basis where the second
  term is the identity and the first is diagonal, ``d``; new weights cost ``O(n m)``.
  Implementations: :class:`~skkprior.kron.KronDecomposed` (Kronecker curvature and prior) and
  :class:`DiagonalDecomposed` (diagonal curvature).

A new precision type implements the abstract methods of :class:`Precision` (and, to serve as a
posterior, of :class:`TwoTermPrecision`), sets ``kind`` for the file format, and inherits the
dense-truth checks of :class:`skkprior.testing.PrecisionTests` in its tests.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Mapping, NamedTuple

import torch

from ._validation import error_message

__all__ = [
    "DiagonalCurvature",
    "DiagonalDecomposed",
    "DiagonalPrecision",
    "InverseFactors",
    "IsotropicPrecision",
    "Precision",
    "TwoTermPrecision",
    "precision_from_state",
]

Scalar = float | torch.Tensor
_F64 = torch.float64
_REGISTRY: dict[str, type["Precision"]] = {}
_CORRUPT_FIX = "The file is corrupted or was edited; re-create it with save()."


class InverseFactors(NamedTuple):
    """``S^-1 = (left (x) right) diag(scale) (left (x) right)^T``; ``None`` is the identity."""

    left: torch.Tensor | None
    right: torch.Tensor | None
    scale: torch.Tensor


def _colsq(M: torch.Tensor) -> torch.Tensor:
    """Squared column norms, ``diag(M^T M)``."""
    return (M * M).sum(dim=0)


def project_kron(G: torch.Tensor, A: torch.Tensor, left: torch.Tensor | None,
                  right: torch.Tensor | None) -> torch.Tensor:
    """``diag((L (x) R)^T (G (x) A) (L (x) R))`` as an ``(n, m)`` matrix."""
    G, A = G.to(_F64), A.to(_F64)
    dg = torch.diagonal(G) if left is None else ((G @ left) * left).sum(dim=0)
    da = torch.diagonal(A) if right is None else ((A @ right) * right).sum(dim=0)
    return torch.outer(dg, da)


def _project_diagonal(values: torch.Tensor, left: torch.Tensor | None,
                      right: torch.Tensor | None) -> torch.Tensor:
    """``diag((L (x) R)^T diag(V) (L (x) R))`` for an ``(n, m)`` matrix ``V`` of diagonal entries."""
    out = values.to(_F64)
    if left is not None:
        out = (left * left).T @ out
    if right is not None:
        out = out @ (right * right)
    return out


def _as_f64(value: Scalar, device: torch.device | None = None) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.to(device=device if device is not None else value.device)
    return torch.tensor(float(value), dtype=_F64, device=device)


def _sum_trailing(X: torch.Tensor, size: int) -> torch.Tensor:
    """Sum over the trailing dimensions of ``X`` that hold ``size`` entries (the batch stays).

    Coordinates are ``(*batch, d)`` or ``(*batch, n, m)``; trailing dimensions of length one
    next to them count as coordinates (a ``(B, 1, 1)`` input of a one-parameter layer gives ``(B,)``).
    """
    count, k = 1, 0
    while count < size and k < X.ndim:
        k += 1
        count *= X.shape[-k]
    while count == size and k < X.ndim - 1 and X.shape[-(k + 1)] == 1 and k < 2:
        k += 1
    if count != size:
        raise ValueError(error_message("the coordinates", f"trailing dimensions of {size} entries in all",
                                       tuple(X.shape), "Pass group coordinates of the precision's size."))
    return X.sum(dim=tuple(range(-k, 0))) if k else X


def _check_finite(t: torch.Tensor, name: str) -> None:
    if not bool(torch.isfinite(t).all()):
        raise ValueError(error_message(name, "finite", "non-finite entries (NaN or inf)",
                                       "The file or the curvature is corrupted; re-create it."))


class Precision(ABC):
    """The protocol every precision of a parameter group implements.

    Subclasses set ``kind`` (the name in saved files) and implement the abstract methods; the
    concrete methods (:meth:`sample_map`, :meth:`trace_inverse_product`, :meth:`scaled`) follow
    from them and may be overridden by faster type-specific versions.
    """

    kind: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("kind"):  # only classes that name their own kind (not subclasses of one)
            _REGISTRY.setdefault(cls.kind, cls)

    # -- description ------------------------------------------------------------------------
    @property
    @abstractmethod
    def dim(self) -> int:
        """Number of parameters ``d``."""

    @property
    def shape(self) -> tuple[int, int]:
        """``(d, d)``."""
        return (self.dim, self.dim)

    @property
    @abstractmethod
    def device(self) -> torch.device:
        """Device of the stored tensors."""

    @abstractmethod
    def to(self, *args: Any, **kwargs: Any) -> "Precision":
        """Move (arguments as in ``torch.Tensor.to``)."""

    @abstractmethod
    def to_dense(self) -> torch.Tensor:
        """The dense ``d x d`` matrix (tests on tiny sizes only)."""

    # -- evaluations ------------------------------------------------------------------------
    @abstractmethod
    def quadratic(self, X: torch.Tensor) -> torch.Tensor:
        """``vec(X)^T S vec(X)`` for coordinates ``X`` of shape ``(*batch, n, m)`` or ``(*batch, d)``."""

    @abstractmethod
    def logdet(self) -> torch.Tensor:
        """``logdet S`` (float64)."""

    @abstractmethod
    def inverse_factors(self) -> InverseFactors:
        """The scaled-basis form of ``S^-1`` (module docstring)."""

    @abstractmethod
    def projected_diagonal(self, left: torch.Tensor | None, right: torch.Tensor | None) -> torch.Tensor:
        """``diag((L (x) R)^T S (L (x) R))`` as an ``(n, m)`` matrix (a 0-d tensor when constant)."""

    @abstractmethod
    def scaled(self, factor: Scalar) -> "Precision":
        """``factor * S``."""

    @abstractmethod
    def state(self) -> dict[str, Any]:
        """A plain dict of tensors and numbers (``weights_only``-loadable), with ``"type": kind``."""

    @classmethod
    @abstractmethod
    def from_state(cls, state: Mapping[str, Any]) -> "Precision":
        """Inverse of :meth:`state`; validates what it reads."""

    # -- derived operations -----------------------------------------------------------------
    def sample_map(self, Z: torch.Tensor) -> torch.Tensor:
        """Map standard normal ``Z`` (coordinates, any batch) to ``N(0, S^-1)``: ``L (Z * sqrt(s)) R^T``.

        Linear in ``Z``; float64.
        """
        left, right, scale = self.inverse_factors()
        X = Z.to(_F64) * scale.sqrt()
        if left is not None:
            X = left @ X
        if right is not None:
            X = X @ right.mT
        return X

    def trace_inverse_product(self, other: "Precision") -> torch.Tensor:
        """``tr(K S^-1)`` for another precision ``K`` of the same size (``other``)."""
        left, right, scale = self.inverse_factors()
        terms = other.projected_diagonal(left, right) * scale
        return terms * self.dim if terms.ndim == 0 else terms.sum()

    def check_loaded(self, name: str, size: tuple[int, ...], *, semidefinite: bool = False) -> None:
        """Validate a precision read from a file for a group of coordinate shape ``size``.

        Raises a clear ``ValueError`` naming ``name`` when the sizes do not match or the values do
        not describe a positive definite matrix (``semidefinite``: positive semi-definite, for a
        curvature term). Types with more structure check it too.
        """
        if self.dim != math.prod(size):
            raise ValueError(error_message(name, f"of {math.prod(size)} parameters (shape {size})",
                                           f"{self.dim} parameters", _CORRUPT_FIX))
        self.check_valid(name)

    def check_valid(self, name: str) -> None:
        """Raise a clear ``ValueError`` unless the stored values describe a positive definite matrix."""
        left, right, scale = self.inverse_factors()
        for t, what in ((left, "basis"), (right, "basis"), (scale, "inverse eigenvalues")):
            if t is not None:
                _check_finite(t, f"the {what} of {name}")
        if not bool((scale > 0).all()):
            raise ValueError(error_message(name, "positive definite", "a non-positive eigenvalue",
                                           "The file is corrupted; re-create it."))


class TwoTermPrecision(Precision):
    r"""``beta F + alpha P``, exact in a basis ``W`` with ``W^T P W = I`` and ``W^T F W = diag(d)``.

    The eigenvalues in that basis are ``Lambda = beta d + alpha``; the log-determinant, the traces
    of either term against the inverse and the weights' gradients then cost ``O(n m)``. This is
    the form of every Laplace posterior: ``F`` the curvature, ``P`` the prior precision.
    Implementations provide :meth:`whitened_curvature` and the basis; the rest follows.
    """

    @property
    @abstractmethod
    def beta(self) -> Scalar:
        """Weight of the first (curvature) term."""

    @property
    @abstractmethod
    def alpha(self) -> Scalar:
        """Weight of the second (prior) term."""

    @abstractmethod
    def with_weights(self, beta: Scalar | None = None, alpha: Scalar | None = None) -> "TwoTermPrecision":
        """The same terms with new weights, sharing the decomposition."""

    @abstractmethod
    def whitened_curvature(self) -> torch.Tensor:
        """``d``: the first term's eigenvalues in the second term's metric, ``(n, m)``, ``>= 0``."""

    @abstractmethod
    def compress(self, terms: tuple[Precision, Precision], beta: float, alpha: float, *,
                 method: str = "gram", name: str = "") -> tuple[Precision, float]:
        """``beta F + alpha P`` as one precision of the prior family, and its relative Frobenius error."""

    @property
    def logdet_gap(self) -> float:
        """``logdet S - logdet(beta F + alpha P_true) >= 0`` when the second term stands for a prior ``P_true``
        that the form keeps only in part (0 when exact)."""
        return 0.0

    def eigenvalues(self) -> torch.Tensor:
        """``Lambda = beta d + alpha`` of shape ``(n, m)``."""
        return self.whitened_curvature() * self.beta + self.alpha

    def log_eigenvalue_sum(self) -> torch.Tensor:
        """``logdet S - logdet(second term) = sum log Lambda`` (exact, no cancellation)."""
        return torch.log(self.eigenvalues()).sum()

    def trace_term(self, term: int) -> torch.Tensor:
        """``tr(F S^-1) = sum d / Lambda`` (``term=0``) or ``tr(P S^-1) = sum 1 / Lambda`` (``term=1``)."""
        inv = torch.reciprocal(self.eigenvalues())
        return (self.whitened_curvature() * inv).sum() if term == 0 else inv.sum()

    def scaled(self, factor: Scalar) -> "TwoTermPrecision":
        return self.with_weights(beta=self.beta * factor, alpha=self.alpha * factor)


# --------------------------------------------------------------------------------------------
# isotropic
# --------------------------------------------------------------------------------------------
class IsotropicPrecision(Precision):
    """The precision ``value * I`` of a group of ``size`` parameters.

    Parameters
    ----------
    value : float or torch.Tensor
        Positive precision (may be a 0-d tensor that requires gradients).
    size : int
        Number of parameters.

    Examples
    --------
    >>> p = IsotropicPrecision(4.0, 3)
    >>> round(float(p.logdet()), 6), p.to_dense().shape
    (4.158883, torch.Size([3, 3]))
    """

    kind = "isotropic"
    __slots__ = ("value", "size")

    def __init__(self, value: Scalar, size: int) -> None:
        v = value.detach() if isinstance(value, torch.Tensor) else value
        if not (float(v) > 0 and math.isfinite(float(v))):
            raise ValueError(error_message("isotropic precision", "a finite positive number", float(v),
                                           "Pass weight_decay > 0."))
        self.value = value
        self.size = int(size)

    def __repr__(self) -> str:
        return f"IsotropicPrecision(value={float(self.value):.4g}, size={self.size})"

    @property
    def dim(self) -> int:
        return self.size

    @property
    def device(self) -> torch.device:
        return self.value.device if isinstance(self.value, torch.Tensor) else torch.device("cpu")

    def to(self, *args: Any, **kwargs: Any) -> "IsotropicPrecision":
        v = self.value.to(*args, **kwargs) if isinstance(self.value, torch.Tensor) else self.value
        return IsotropicPrecision(v, self.size)

    def to_dense(self, dtype: torch.dtype = _F64, device: torch.device | str | None = None) -> torch.Tensor:
        return torch.eye(self.size, dtype=dtype, device=device) * self.value

    def quadratic(self, X: torch.Tensor) -> torch.Tensor:
        return self.value * _sum_trailing(X * X, self.size)

    def logdet(self) -> torch.Tensor:
        return self.size * torch.log(_as_f64(self.value))

    def inverse_factors(self) -> InverseFactors:
        return InverseFactors(None, None, torch.reciprocal(_as_f64(self.value)))

    def projected_diagonal(self, left: torch.Tensor | None, right: torch.Tensor | None) -> torch.Tensor:
        v = _as_f64(self.value)
        if left is None and right is None:
            return v
        n = left.shape[0] if left is not None else self.size // right.shape[0]
        m = right.shape[0] if right is not None else self.size // left.shape[0]
        dg = _colsq(left.to(_F64)) if left is not None else torch.ones(n, dtype=_F64, device=v.device)
        da = _colsq(right.to(_F64)) if right is not None else torch.ones(m, dtype=_F64, device=v.device)
        return v * torch.outer(dg, da)

    def scaled(self, factor: Scalar) -> "IsotropicPrecision":
        return IsotropicPrecision(self.value * factor, self.size)

    def as_kron(self, n: int, m: int):
        """The same matrix as a Kronecker product ``(v I_n) (x) I_m`` (``n m`` must be the size)."""
        from .kron import Kron

        if n * m != self.size:
            raise ValueError(error_message("n * m of IsotropicPrecision.as_kron", f"the size {self.size}",
                                           n * m))
        dev = self.device
        return Kron(torch.eye(n, dtype=_F64, device=dev) * float(self.value), torch.eye(m, dtype=_F64, device=dev))

    def state(self) -> dict[str, Any]:
        return {"type": self.kind, "value": float(self.value), "size": self.size}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> "IsotropicPrecision":
        return cls(float(state["value"]), int(state["size"]))


# --------------------------------------------------------------------------------------------
# diagonal
# --------------------------------------------------------------------------------------------
class DiagonalPrecision(Precision):
    """A diagonal precision ``diag(values)``; ``values`` has the group's coordinate shape.

    Parameters
    ----------
    values : torch.Tensor
        Positive diagonal entries, ``(n, m)`` for a layer group (row-major ``[W | b]``) or
        ``(d,)`` for a flat group; stored in float64.

    Examples
    --------
    >>> import torch
    >>> P = DiagonalPrecision(torch.tensor([[1.0, 2.0], [4.0, 8.0]]))
    >>> round(float(P.logdet()), 6), float(P.quadratic(torch.ones(2, 2)))
    (4.158883, 15.0)
    """

    kind = "diagonal"

    def __init__(self, values: torch.Tensor) -> None:
        if not isinstance(values, torch.Tensor) or values.ndim not in (1, 2) or values.numel() == 0:
            raise ValueError(error_message("values of DiagonalPrecision", "a non-empty 1-D or 2-D tensor",
                                           values))
        values = values.to(_F64)
        if not bool(torch.isfinite(values).all()) or not bool((values > 0).all()):
            raise ValueError(error_message("values of DiagonalPrecision", "finite and positive",
                                           f"smallest {float(values.min()):.3g}",
                                           "A diagonal precision must be positive definite."))
        self.values = values

    def __repr__(self) -> str:
        return f"DiagonalPrecision(shape={tuple(self.values.shape)})"

    @property
    def dim(self) -> int:
        return int(self.values.numel())

    @property
    def device(self) -> torch.device:
        return self.values.device

    def to(self, *args: Any, **kwargs: Any) -> "DiagonalPrecision":
        probe = torch.empty(0, dtype=_F64, device=self.device).to(*args, **kwargs)
        return DiagonalPrecision(self.values.to(device=probe.device))

    def to_dense(self) -> torch.Tensor:
        return torch.diag(self.values.reshape(-1))

    def quadratic(self, X: torch.Tensor) -> torch.Tensor:
        V = self.values.to(device=X.device)
        return _sum_trailing(X.to(_F64) * X.to(_F64) * V, self.dim)

    def logdet(self) -> torch.Tensor:
        return torch.log(self.values).sum()

    def inverse_factors(self) -> InverseFactors:
        return InverseFactors(None, None, torch.reciprocal(self.values))

    def projected_diagonal(self, left: torch.Tensor | None, right: torch.Tensor | None) -> torch.Tensor:
        if left is None and right is None:
            return self.values
        if self.values.ndim != 2:
            raise ValueError(error_message("a flat diagonal precision", "projected with identity bases only",
                                           "basis factors", "Flat groups have no Kronecker basis."))
        return _project_diagonal(self.values, left, right)

    def scaled(self, factor: Scalar) -> "DiagonalPrecision":
        if isinstance(factor, torch.Tensor) and factor.requires_grad:
            out = object.__new__(DiagonalPrecision)
            out.values = self.values * factor
            return out
        return DiagonalPrecision(self.values * float(factor))

    def check_loaded(self, name: str, size: tuple[int, ...], *, semidefinite: bool = False) -> None:
        if tuple(self.values.shape) not in (tuple(size), (math.prod(size),)):
            raise ValueError(error_message(name, f"diagonal values of shape {tuple(size)}",
                                           tuple(self.values.shape), _CORRUPT_FIX))

    def state(self) -> dict[str, Any]:
        return {"type": self.kind, "values": self.values.detach()}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> "DiagonalPrecision":
        return cls(state["values"])


class DiagonalDecomposed(TwoTermPrecision):
    r"""``beta diag(f) + alpha diag(p)``: a diagonal curvature plus the diagonal of a prior precision.

    Exact when the prior precision is diagonal (an isotropic prior); for a Kronecker prior
    ``P`` only its diagonal ``p`` enters the posterior precision (an approximation, stated). The
    KL to the full prior stays exact: ``tr(P S^-1) = sum p / Lambda`` because ``S`` is diagonal,
    and the log-determinant differs from the two-term identity by the constant
    ``sum log p - logdet P >= 0`` (:attr:`logdet_gap`, Hadamard's inequality).

    Parameters
    ----------
    curvature : torch.Tensor
        ``f >= 0``, shape ``(n, m)``.
    prior_diagonal : torch.Tensor
        ``p > 0``, shape ``(n, m)``.
    beta, alpha : float or torch.Tensor
        Weights (positive; tensors may require gradients).
    logdet_second : torch.Tensor or float, optional
        ``logdet P`` of the full prior term; default ``sum log p`` (a diagonal prior).

    Examples
    --------
    >>> import torch
    >>> S = DiagonalDecomposed(torch.tensor([[0.0, 3.0]]), torch.tensor([[1.0, 2.0]]), beta=2.0, alpha=0.5)
    >>> S.to_dense().diagonal().tolist()
    [0.5, 7.0]
    """

    kind = "diagonal-decomposed"

    def __init__(self, curvature: torch.Tensor, prior_diagonal: torch.Tensor, *, beta: Scalar = 1.0,
                 alpha: Scalar = 1.0, logdet_second: Scalar | None = None) -> None:
        f, p = curvature.to(_F64), prior_diagonal.to(device=curvature.device, dtype=_F64)
        if f.shape != p.shape or f.ndim != 2:
            raise ValueError(error_message("the terms of DiagonalDecomposed", "two (n, m) tensors of one shape",
                                           f"{tuple(f.shape)} and {tuple(p.shape)}"))
        if not bool(torch.isfinite(f).all()) or bool((f < 0).any()):
            raise ValueError(error_message("the diagonal curvature", "finite and non-negative",
                                           f"smallest {float(f.min()):.3g}", "Recompute the curvature."))
        if not bool(torch.isfinite(p).all()) or not bool((p > 0).all()):
            raise ValueError(error_message("the prior's diagonal", "finite and positive",
                                           f"smallest {float(p.min()):.3g}", "Use a positive definite prior."))
        own = torch.log(p).sum()
        second = own if logdet_second is None else _as_f64(logdet_second, f.device)
        self._set(f, p, beta, alpha, second, float(own - second))

    def _set(self, f: torch.Tensor, p: torch.Tensor, beta: Scalar, alpha: Scalar, logdet_second: torch.Tensor,
             gap: float) -> None:
        for w, what in ((beta, "beta"), (alpha, "alpha")):
            v = float(w.detach()) if isinstance(w, torch.Tensor) else float(w)
            if not (v > 0 and math.isfinite(v)):
                raise ValueError(error_message(f"{what} of DiagonalDecomposed", "finite and positive", v))
        self.f, self.p, self._beta, self._alpha = f, p, beta, alpha
        self.logdet_second, self._gap = logdet_second, gap

    def __repr__(self) -> str:
        return f"DiagonalDecomposed(shape={tuple(self.f.shape)}, beta={float(self.beta):.4g}, alpha={float(self.alpha):.4g})"

    @property
    def beta(self) -> Scalar:
        return self._beta

    @property
    def alpha(self) -> Scalar:
        return self._alpha

    @property
    def logdet_gap(self) -> float:
        return self._gap

    @property
    def dim(self) -> int:
        return int(self.f.numel())

    @property
    def device(self) -> torch.device:
        return self.f.device

    def with_weights(self, beta: Scalar | None = None, alpha: Scalar | None = None) -> "DiagonalDecomposed":
        # the terms were validated once: only the new weights are checked
        out = object.__new__(DiagonalDecomposed)
        out._set(self.f, self.p, self.beta if beta is None else beta, self.alpha if alpha is None else alpha,
                 self.logdet_second, self._gap)
        return out

    def to(self, *args: Any, **kwargs: Any) -> "DiagonalDecomposed":
        probe = torch.empty(0, dtype=_F64, device=self.device).to(*args, **kwargs)

        def move(w: Scalar) -> Scalar:
            return w.to(device=probe.device) if isinstance(w, torch.Tensor) else w

        return DiagonalDecomposed(self.f.to(probe.device), self.p.to(probe.device), beta=move(self.beta),
                                  alpha=move(self.alpha), logdet_second=self.logdet_second.to(probe.device))

    def _values(self) -> torch.Tensor:
        return self.f * self.beta + self.p * self.alpha

    def to_dense(self) -> torch.Tensor:
        return torch.diag(self._values().reshape(-1))

    def whitened_curvature(self) -> torch.Tensor:
        return self.f / self.p

    def quadratic(self, X: torch.Tensor) -> torch.Tensor:
        return _sum_trailing(X.to(_F64) * X.to(_F64) * self._values().to(X.device), self.dim)

    def logdet(self) -> torch.Tensor:
        return torch.log(self._values()).sum()

    def log_eigenvalue_sum(self) -> torch.Tensor:
        return torch.log(self.eigenvalues()).sum() + self._gap

    def inverse_factors(self) -> InverseFactors:
        return InverseFactors(None, None, torch.reciprocal(self._values()))

    def projected_diagonal(self, left: torch.Tensor | None, right: torch.Tensor | None) -> torch.Tensor:
        return _project_diagonal(self._values(), left, right)

    def compress(self, terms: tuple[Precision, Precision], beta: float, alpha: float, *,
                 method: str = "gram", name: str = "") -> tuple[Precision, float]:
        # the posterior is diagonal: as a prior it is exact
        return DiagonalPrecision((self.f * beta + self.p * alpha).detach()), 0.0

    def check_loaded(self, name: str, size: tuple[int, ...], *, semidefinite: bool = False) -> None:
        if tuple(self.f.shape) != tuple(size):
            raise ValueError(error_message(name, f"terms of shape {tuple(size)}", tuple(self.f.shape), _CORRUPT_FIX))

    def state(self) -> dict[str, Any]:
        return {"type": self.kind, "f": self.f, "p": self.p, "beta": float(self.beta), "alpha": float(self.alpha),
                "logdet_second": float(self.logdet_second)}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> "DiagonalDecomposed":
        return cls(state["f"], state["p"], beta=float(state["beta"]), alpha=float(state["alpha"]),
                   logdet_second=float(state["logdet_second"]))


class DiagonalCurvature:
    """A diagonal curvature block ``diag(f)``, ``f >= 0`` of shape ``(n, m)`` (a layer's ``[W | b]``).

    What :func:`skkprior.curvature.diagonal_fisher` returns per layer. It is a curvature, not a
    precision (it may be singular), and offers what a curvature needs: its diagonal projected
    onto a basis (:meth:`projected_diagonal`, for ``tr(F Sigma)``) and the posterior precision it
    forms with a prior precision (:meth:`posterior_with`).

    Examples
    --------
    >>> import torch
    >>> F = DiagonalCurvature(torch.tensor([[0.0, 2.0]]))
    >>> S, terms = F.posterior_with(IsotropicPrecision(1.0, 2))
    >>> S.to_dense().diagonal().tolist()
    [1.0, 3.0]
    """

    kind = "diagonal-curvature"

    def __init__(self, values: torch.Tensor) -> None:
        if not isinstance(values, torch.Tensor) or values.ndim != 2:
            raise ValueError(error_message("values of DiagonalCurvature", "an (n, m) tensor", values))
        values = values.to(_F64)
        if not bool(torch.isfinite(values).all()) or bool((values < 0).any()):
            raise ValueError(error_message("the diagonal curvature", "finite and non-negative",
                                           "negative or non-finite entries",
                                           "Recompute it (check the data and the network for NaN)."))
        self.values = values

    def __repr__(self) -> str:
        return f"DiagonalCurvature(n={self.n}, m={self.m})"

    @property
    def n(self) -> int:
        return int(self.values.shape[0])

    @property
    def m(self) -> int:
        return int(self.values.shape[1])

    @property
    def dim(self) -> int:
        return self.n * self.m

    @property
    def device(self) -> torch.device:
        return self.values.device

    def to(self, *args: Any, **kwargs: Any) -> "DiagonalCurvature":
        probe = torch.empty(0, dtype=_F64, device=self.device).to(*args, **kwargs)
        return DiagonalCurvature(self.values.to(device=probe.device))

    def to_dense(self) -> torch.Tensor:
        return torch.diag(self.values.reshape(-1))

    def projected_diagonal(self, left: torch.Tensor | None, right: torch.Tensor | None) -> torch.Tensor:
        return _project_diagonal(self.values, left, right)

    def posterior_with(self, prior: Precision, accumulation: Any = None, *, rank_bound: int | None = None,
                       ) -> tuple[DiagonalDecomposed, tuple[Any, Precision]]:
        """``f + diag(P)``: a :class:`DiagonalDecomposed` whose KL to ``P`` stays exact, and its terms.

        (``accumulation`` and ``rank_bound`` are not needed: sums of squares are non-negative in
        any rounding, and a diagonal needs no eigendecomposition.)
        """
        p = prior.projected_diagonal(None, None).to(device=self.device, dtype=_F64)
        if p.ndim == 0:
            p = p.expand(self.n, self.m).clone()
        return DiagonalDecomposed(self.values, p.reshape(self.n, self.m),
                                  logdet_second=prior.logdet().detach()), (self, prior)

    def check_loaded(self, name: str, size: tuple[int, ...], *, semidefinite: bool = True) -> None:
        if tuple(self.values.shape) != tuple(size):
            raise ValueError(error_message(name, f"a diagonal curvature of shape {tuple(size)}",
                                           tuple(self.values.shape), _CORRUPT_FIX))

    def state(self) -> dict[str, Any]:
        return {"type": self.kind, "values": self.values}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> "DiagonalCurvature":
        return cls(state["values"])


def precision_from_state(state: Mapping[str, Any]) -> Precision:
    """Rebuild a precision from :meth:`Precision.state` by its ``"type"`` (the registry of kinds)."""
    kind = state.get("type") if isinstance(state, Mapping) else None
    cls = _REGISTRY.get(kind) if isinstance(kind, str) else None
    if kind == DiagonalCurvature.kind:
        cls = DiagonalCurvature
    if cls is None:
        raise ValueError(error_message("precision type", f"one of {sorted(_REGISTRY)}", repr(kind),
                                       "The file is corrupted or from another program."))
    return cls.from_state(state)
