r"""Kronecker algebra: a Kronecker product, weighted sums of them, and their exact forms.

Conventions (docs/concepts.md, section 1)
---------------------------------
A layer's parameters form a matrix ``X`` of shape ``(n, m)`` (``n`` outputs, ``m`` inputs with
the bias as the last column). The parameter vector is the *row-major* flattening
``x = X.flatten()``. With this ordering

.. math:: (G \otimes A)\, \mathrm{vec}_{row}(X) = \mathrm{vec}_{row}(G X A^\top),

so a Kronecker matrix ``G (x) A`` acts on parameter matrices as ``X -> G @ X @ A.T``. ``G`` is
the *output* factor (``n x n``), ``A`` the *input* factor (``m x m``).

Types and what is closed on them
--------------------------------
- :class:`Kron`: one product ``G (x) A``. Inverse, square root of the inverse, log-determinant,
  trace, products and quadratic forms are exact and cost ``O(n^3 + m^3)`` or less.
- :class:`KronSum`: a weighted sum ``sum_k w_k G_k (x) A_k``. Matrix products are exact; the
  inverse is not closed. :meth:`KronSum.nearest` gives the Frobenius-nearest single product
  (Van Loan-Pitsianis), :meth:`KronSum.decompose` the exact form of a two-term sum.
- :class:`KronDecomposed`: the exact joint-eigenbasis form of ``beta (G_1 (x) A_1) +
  alpha (G_2 (x) A_2)`` with ``G_2 (x) A_2`` positive definite. Inverse, log-determinant,
  traces of products and sampling are exact; new weights ``(beta, alpha)`` cost ``O(n m)``.

All decompositions run in float64 on the factors' device. There is no hidden jitter: a factor
that is not positive definite where one is required raises a ``ValueError``. The one numerical
cut is documented on :class:`KronDecomposed`: eigenvalues at the rounding level of ``eigh``
(the rank tolerance ``k eps max|.|``) are stored as exact zeros.
"""

from __future__ import annotations

import math
import operator
import warnings
from typing import Any, Literal, Mapping, Sequence

import torch

from ._validation import check_square, error_message
from .precision import InverseFactors, Precision, TwoTermPrecision, project_kron

__all__ = ["Kron", "KronDecomposed", "KronSum", "positive_definite_nearest", "psd_projected"]

_Number = float | int
_Weight = float | torch.Tensor
_BLOCK = 1 << 17  # entries per row block of the blocked CPU reductions in KronDecomposed


def _cholesky(matrix: torch.Tensor, name: str) -> torch.Tensor:
    """Lower Cholesky factor in float64, or a ``ValueError`` naming the factor.

    The factor is checked for symmetry first: a Cholesky decomposition reads only the lower
    triangle, so a non-symmetric factor would otherwise give silently wrong results.
    """
    _check_symmetric(matrix, name)
    chol, info = torch.linalg.cholesky_ex(matrix.to(torch.float64))
    if int(info) != 0:
        raise ValueError(
            error_message(
                name,
                "symmetric positive definite",
                f"a matrix whose Cholesky decomposition failed at column {int(info)}",
                "Add damping explicitly, e.g. KronSum([K, Kron.identity(n, m)], "
                "[1.0, damping]).decompose(), or check the factor for rank deficiency.",
            )
        )
    return chol


def _check_symmetric(matrix: torch.Tensor, name: str, rtol: float | None = None) -> None:
    """Raise a ``ValueError`` naming ``name`` when ``matrix`` is not symmetric.

    The tolerance is relative to the largest entry: ``1e-8`` in float64, ``1000 eps`` in lower
    precisions (a float32 ``X^T X`` is symmetric only to rounding).
    """
    if rtol is None:
        eps = torch.finfo(matrix.dtype).eps if matrix.is_floating_point() else 0.0
        rtol = max(1e-8, 1000.0 * eps)
    scale = float(matrix.abs().max()) if matrix.numel() else 0.0
    asym = float((matrix - matrix.mT).abs().max()) if matrix.numel() else 0.0
    if asym > rtol * max(scale, 1e-300):
        raise ValueError(
            error_message(name, "symmetric", f"a matrix with max |M - M^T| = {asym:.3g} "
                          f"(largest entry {scale:.3g})",
                          "Symmetrize it with (M + M.T) / 2.")
        )


def _as_weight(value: _Weight, name: str) -> _Weight:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(error_message(name, "a scalar", value))
        if not value.is_floating_point():
            raise TypeError(error_message(name, "a floating-point scalar", value,
                                          "Pass a float or a floating-point tensor."))
        if not bool(torch.isfinite(value.detach()).all()):
            raise ValueError(error_message(name, "finite", value))
        return value.reshape(())
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(error_message(name, "a finite real number", value))
    return float(value)


def _float(value: _Weight) -> float:
    """A weight as a Python float (detached; one device sync for a CUDA tensor)."""
    return float(value.detach()) if isinstance(value, torch.Tensor) else float(value)


def _check_scalar(value: Any, name: str) -> None:
    """A finite real number or a one-element floating-point tensor (for scaling)."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or not value.is_floating_point():
            raise ValueError(error_message(name, "a real scalar or a one-element floating-point tensor",
                                           value, "Scale by a Python float or a 0-d tensor."))
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(error_message(name, "a real number or a one-element tensor", type(value).__name__))
    if not math.isfinite(value):
        raise ValueError(error_message(name, "a finite real number", value))


class Kron(Precision):
    r"""The Kronecker product ``G (x) A`` of an output factor and an input factor.

    Parameters
    ----------
    G : torch.Tensor of shape (n, n)
        Output factor.
    A : torch.Tensor of shape (m, m)
        Input factor. Must have the same dtype and device as ``G``.

    Attributes
    ----------
    G, A : torch.Tensor
        The factors, as given.
    n, m : int
        Sizes of ``G`` and ``A``; the product is ``(n m) x (n m)``.

    Notes
    -----
    ``matmul(X)`` computes ``G @ X @ A.T`` on ``(..., n, m)`` matrices, which is the product
    of the dense matrix with the row-major flattening of ``X``.

    Examples
    --------
    >>> import torch
    >>> K = Kron(torch.eye(2, dtype=torch.float64) * 2, torch.eye(3, dtype=torch.float64))
    >>> K.shape, float(K.trace()), round(float(K.logdet()), 6)
    ((6, 6), 12.0, 4.158883)
    >>> torch.allclose(K.to_dense(), torch.kron(K.G, K.A))
    True
    """

    kind = "kron"
    __slots__ = ("G", "A", "_cache")

    def __init__(self, G: torch.Tensor, A: torch.Tensor) -> None:
        G = check_square(G, "G (output factor of Kron)")
        A = check_square(A, "A (input factor of Kron)")
        if G.dtype != A.dtype or G.device != A.device:
            raise ValueError(
                error_message("the factors of Kron", "of the same dtype and device",
                              f"G: {G.dtype} on {G.device}, A: {A.dtype} on {A.device}",
                              "Move both with .to(dtype=..., device=...).")
            )
        self.G = G
        self.A = A
        self._cache: dict[str, Any] = {}

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def identity(cls, n: int, m: int, *, dtype: torch.dtype = torch.float64,
                 device: torch.device | str | None = None) -> "Kron":
        """The identity ``I_n (x) I_m``.

        Parameters
        ----------
        n, m : int
            Sizes of the output and input factor (positive).
        dtype : torch.dtype, default=torch.float64
            Floating-point dtype of the factors.
        device : torch.device or str, optional
            Device of the factors.

        Examples
        --------
        >>> Kron.identity(2, 3).shape
        (6, 6)
        """
        for value, name in ((n, "n of Kron.identity"), (m, "m of Kron.identity")):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(error_message(name, "a positive int", value))
        return cls(torch.eye(n, dtype=dtype, device=device), torch.eye(m, dtype=dtype, device=device))

    # -- shape and placement ------------------------------------------------------------
    @property
    def n(self) -> int:
        return self.G.shape[0]

    @property
    def m(self) -> int:
        return self.A.shape[0]

    @property
    def dim(self) -> int:
        return self.n * self.m

    @property
    def dtype(self) -> torch.dtype:
        return self.G.dtype

    @property
    def device(self) -> torch.device:
        return self.G.device

    def to(self, *args: Any, **kwargs: Any) -> "Kron":
        """Move or cast both factors (arguments as in ``torch.Tensor.to``).

        Examples
        --------
        >>> Kron.identity(2, 2).to(torch.float32).dtype
        torch.float32
        """
        return Kron(self.G.to(*args, **kwargs), self.A.to(*args, **kwargs))

    def __repr__(self) -> str:
        return f"Kron(n={self.n}, m={self.m}, dtype={self.dtype}, device={self.device})"

    # -- algebra --------------------------------------------------------------------------
    def to_dense(self) -> torch.Tensor:
        """The dense ``(n m) x (n m)`` matrix ``torch.kron(G, A)``."""
        # contiguous: torch.kron fails on some non-contiguous inputs in torch 2.11
        return torch.kron(self.G.contiguous(), self.A.contiguous())

    def matmul(self, X: torch.Tensor) -> torch.Tensor:
        """``G @ X @ A.T`` for ``X`` of shape ``(..., n, m)``: the product with vec_row(X).

        Computed in the dtype of ``X``; leading dimensions are batch dimensions.

        Examples
        --------
        >>> import torch
        >>> G, A = torch.randn(2, 2, dtype=torch.float64), torch.randn(3, 3, dtype=torch.float64)
        >>> X = torch.randn(2, 3, dtype=torch.float64)
        >>> torch.allclose(Kron(G, A).matmul(X).flatten(), torch.kron(G, A) @ X.flatten())
        True
        """
        _check_matrix_operand(X, self.n, self.m, "X")
        return self.G.to(X.dtype) @ X @ self.A.to(X.dtype).mT

    def quadratic(self, X: torch.Tensor) -> torch.Tensor:
        """``vec(X)^T (G (x) A) vec(X) = tr(X^T G X A^T)`` for ``X`` of shape ``(..., n, m)``.

        Computed in the dtype of ``X``; ``O(n m)`` when both factors are diagonal (isotropic priors).
        """
        diag = self._diagonals()
        if diag is not None:
            dg, da = diag
            _check_matrix_operand(X, self.n, self.m, "X")
            return (X * X * torch.outer(dg, da).to(X.dtype)).sum(dim=(-2, -1))
        return (X * self.matmul(X)).sum(dim=(-2, -1))

    def _diagonals(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The diagonals of both factors when both are diagonal (cached), else None."""
        if "diagonals" not in self._cache:
            G, A = self.G, self.A
            is_diag = bool(torch.count_nonzero(G - torch.diag(torch.diagonal(G))) == 0) and bool(
                torch.count_nonzero(A - torch.diag(torch.diagonal(A))) == 0)
            self._cache["diagonals"] = (torch.diagonal(G).clone(), torch.diagonal(A).clone()) if is_diag else None
        return self._cache["diagonals"]

    def trace(self) -> torch.Tensor:
        """``tr(G) tr(A)``."""
        return torch.trace(self.G) * torch.trace(self.A)

    def logdet(self) -> torch.Tensor:
        """``m logdet(G) + n logdet(A)`` in float64 (both factors must be positive definite)."""
        lg = 2.0 * torch.log(torch.diagonal(_cholesky(self.G, "G (output factor)"))).sum()
        la = 2.0 * torch.log(torch.diagonal(_cholesky(self.A, "A (input factor)"))).sum()
        return self.m * lg + self.n * la

    def inverse(self) -> "Kron":
        """``G^-1 (x) A^-1`` (float64, via Cholesky; positive definite factors required)."""
        return Kron(torch.cholesky_inverse(_cholesky(self.G, "G (output factor)")),
                    torch.cholesky_inverse(_cholesky(self.A, "A (input factor)")))

    def solve(self, X: torch.Tensor) -> torch.Tensor:
        """``G^-1 X A^-T`` for ``X`` of shape ``(..., n, m)``: the product of the inverse with vec_row(X).

        Two Cholesky solves in float64; the result has the promoted dtype of ``X`` and the factors.

        Examples
        --------
        >>> import torch
        >>> K = Kron(2.0 * torch.eye(2, dtype=torch.float64), 4.0 * torch.eye(3, dtype=torch.float64))
        >>> round(K.solve(torch.ones(2, 3, dtype=torch.float64))[0, 0].item(), 12)
        0.125
        """
        _check_matrix_operand(X, self.n, self.m, "X")
        cg = _cholesky(self.G, "G (output factor)")
        ca = _cholesky(self.A, "A (input factor)")
        Y = torch.cholesky_solve(X.to(torch.float64), cg)
        Y = torch.cholesky_solve(Y.mT, ca).mT
        return Y.to(torch.promote_types(X.dtype, self.dtype))

    def sqrt_inverse(self) -> "Kron":
        """``L_G (x) L_A`` with ``L_G L_G^T = G^-1`` and ``L_A L_A^T = A^-1`` (for sampling).

        ``X = M + L_G @ Z @ L_A.T`` with standard normal ``Z`` has covariance ``(G (x) A)^-1``.
        ``L_G = C_G^-T`` is upper triangular (``C_G`` the Cholesky factor of ``G``).

        Examples
        --------
        >>> import torch
        >>> K = Kron(torch.tensor([[4.0, 1.0], [1.0, 3.0]], dtype=torch.float64), torch.eye(2, dtype=torch.float64))
        >>> L = K.sqrt_inverse()
        >>> torch.allclose(L.G @ L.G.T, torch.linalg.inv(K.G))
        True
        """
        eye_g = torch.eye(self.n, dtype=torch.float64, device=self.device)
        eye_a = torch.eye(self.m, dtype=torch.float64, device=self.device)
        cg = _cholesky(self.G, "G (output factor)")
        ca = _cholesky(self.A, "A (input factor)")
        # G = C C^T  =>  G^-1 = C^-T C^-1, so L = C^-T.
        lg = torch.linalg.solve_triangular(cg, eye_g, upper=False).mT
        la = torch.linalg.solve_triangular(ca, eye_a, upper=False).mT
        return Kron(lg, la)

    def inner(self, other: "Kron") -> torch.Tensor:
        """Frobenius inner product ``<self, other>_F = <G_1, G_2>_F <A_1, A_2>_F``.

        Examples
        --------
        >>> float(Kron.identity(2, 3).inner(Kron.identity(2, 3)))
        6.0
        """
        _check_same_shape(self, other)
        return (self.G * other.G).sum() * (self.A * other.A).sum()

    def frobenius_norm(self) -> torch.Tensor:
        """``||G (x) A||_F = ||G||_F ||A||_F``."""
        return torch.linalg.matrix_norm(self.G) * torch.linalg.matrix_norm(self.A)

    # -- the precision protocol (skkprior.precision) -----------------------------------------
    def inverse_factors(self) -> InverseFactors:
        """``(L_G, L_A, 1)`` with ``L L^T`` the factors' inverses (:meth:`sqrt_inverse`, cached)."""
        if "root" not in self._cache:
            root = self.sqrt_inverse()
            self._cache["root"] = InverseFactors(root.G, root.A, torch.ones((), dtype=torch.float64,
                                                                            device=self.device))
        return self._cache["root"]

    def projected_diagonal(self, left: torch.Tensor | None, right: torch.Tensor | None) -> torch.Tensor:
        """``diag((L (x) R)^T (G (x) A) (L (x) R)) = diag(L^T G L) diag(R^T A R)^T``."""
        return project_kron(self.G, self.A, left, right)

    def scaled(self, factor: _Number | torch.Tensor) -> "Kron":
        """``factor * (G (x) A)`` (same as ``self * factor``)."""
        return self * factor

    def check_loaded(self, name: str, size: tuple[int, ...], *, semidefinite: bool = False) -> None:
        """Factors of sizes ``size = (n, m)``, symmetric, positive definite (``semidefinite``: up to rounding)."""
        if tuple(size) != (self.n, self.m):
            raise ValueError(error_message(name, f"Kronecker factors of sizes {tuple(size)} (a Linear/Conv2d group)",
                                           f"sizes {(self.n, self.m)}", _CORRUPT_FIX))
        check_factors_definite(self, name, semi=semidefinite)

    def state(self) -> dict[str, Any]:
        return {"type": self.kind, "G": self.G, "A": self.A}

    @classmethod
    def from_state(cls, state: Any) -> "Kron":
        return cls(state["G"], state["A"])

    def posterior_with(self, prior: Precision, accumulation: Mapping[str, Any] | None = None, *,
                       rank_bound: int | None = None,
                       ) -> tuple["KronDecomposed", tuple[Precision, Precision]]:
        """The exact two-term precision ``F + P`` of this curvature ``F`` and a prior precision ``P``.

        The curvature is projected onto the positive semi-definite cone first (rounding noise
        only, :func:`psd_projected`, with ``accumulation`` from
        :attr:`~skkprior.curvature.Curvature.rounding` and ``rank_bound`` from
        :attr:`~skkprior.curvature.Curvature.positions`); an isotropic prior becomes
        ``(v I) (x) I``. Returns the decomposition and its two terms ``(F, P)``.
        """
        as_kron = getattr(prior, "as_kron", None)
        P = as_kron(self.n, self.m) if as_kron is not None else prior
        if not isinstance(P, Kron):
            raise ValueError(error_message("the prior precision of a Kronecker curvature",
                                           "one Kronecker product (or isotropic)", type(prior).__name__,
                                           "Compress the prior with as_prior(), or use a diagonal curvature."))
        F = self if self.device == P.device else self.to(device=P.device)  # keeps a projection's cache
        F, spectra = psd_projected(F, accumulation, rank_bound=rank_bound)
        return KronDecomposed.from_terms(F, P, beta=1.0, alpha=1.0, first_eigh=spectra), (F, P)

    def __mul__(self, scalar: _Number | torch.Tensor) -> "Kron":
        """Scaling: ``c (G (x) A) = (c G) (x) A``.

        Examples
        --------
        >>> float((3.0 * Kron.identity(2, 2)).trace())
        12.0
        """
        if isinstance(scalar, (Kron, KronSum, KronDecomposed)):
            return NotImplemented
        _check_scalar(scalar, "the scale factor of a Kron")
        if isinstance(scalar, torch.Tensor):
            scalar = scalar.reshape(()).to(self.G.dtype)
        return Kron(self.G * scalar, self.A)

    __rmul__ = __mul__

    def __add__(self, other: "Kron | KronSum") -> "KronSum":
        """``K_1 + K_2`` is a :class:`KronSum` (a sum is not closed on ``Kron``)."""
        if isinstance(other, Kron):
            return KronSum([self, other])
        if isinstance(other, KronSum):
            return KronSum([self, *other.terms],
                           torch.cat([torch.ones(1, dtype=other.weights.dtype,
                                                 device=other.weights.device), other.weights]))
        return NotImplemented


def _check_same_shape(a: Kron, b: Kron, what: str = "the two Kronecker products") -> None:
    if a.n != b.n or a.m != b.m:
        raise ValueError(
            error_message(what, "of the same factor sizes",
                          f"(n, m) = {(a.n, a.m)} and {(b.n, b.m)}",
                          "Every Kronecker product must act on the same (n, m) parameter matrix.")
        )


def _check_matrix_operand(X: torch.Tensor, n: int, m: int, name: str) -> None:
    if not isinstance(X, torch.Tensor):
        raise TypeError(error_message(name, "a torch.Tensor", type(X).__name__,
                                      "Convert it with torch.as_tensor(...)."))
    if X.ndim < 2 or tuple(X.shape[-2:]) != (n, m):
        raise ValueError(
            error_message(name, f"a tensor of shape (..., {n}, {m}) (a parameter matrix)", X,
                          "Reshape the row-major parameter vector with .reshape(n, m).")
        )
    if not X.is_floating_point():
        raise TypeError(error_message(name, "a floating-point tensor", X,
                                      "Convert it with .double() or .float()."))


class KronSum:
    r"""A weighted sum of Kronecker products ``sum_k w_k G_k (x) A_k``.

    Parameters
    ----------
    terms : sequence of Kron
        The summands; all must share the factor sizes ``(n, m)``, dtype and device.
    weights : sequence of float or torch.Tensor, optional
        One weight per term (default: all ones). A tensor (or a list of 0-d tensors) that
        requires gradients keeps them, also through :meth:`decompose`.

    Notes
    -----
    The inverse of a sum is not a Kronecker product. Two routes are offered:

    - :meth:`nearest`: the Frobenius-nearest single product (Van Loan and Pitsianis 1993),
      solved exactly from the ``K x K`` core of the rearrangement;
      :meth:`nearest_error` reports the relative Frobenius error from the same core.
    - :meth:`decompose`: the exact joint-eigenbasis form of a two-term sum.

    Examples
    --------
    >>> import torch
    >>> g = torch.randn(3, 3, dtype=torch.float64); a = torch.randn(4, 4, dtype=torch.float64)
    >>> S = KronSum([Kron(g @ g.T, a @ a.T), Kron.identity(3, 4)], [2.0, 0.5])
    >>> torch.allclose(S.to_dense(), 2 * torch.kron(g @ g.T, a @ a.T) + 0.5 * torch.eye(12))
    True
    >>> float(S.nearest_error()) < 1
    True
    """

    def __init__(self, terms: Sequence[Kron], weights: Sequence[_Weight] | torch.Tensor | None = None) -> None:
        if isinstance(terms, Kron) or not isinstance(terms, Sequence):
            raise TypeError(error_message("terms of KronSum", "a sequence (list or tuple) of Kron",
                                          type(terms).__name__, "Wrap a single term in a list."))
        terms = list(terms)
        if not terms or not all(isinstance(t, Kron) for t in terms):
            raise ValueError(error_message("terms of KronSum", "a non-empty sequence of Kron",
                                           f"[{', '.join(type(t).__name__ for t in terms)}]"))
        first = terms[0]
        for t in terms[1:]:
            _check_same_shape(first, t, "terms of KronSum")
            if t.dtype != first.dtype or t.device != first.device:
                raise ValueError(error_message("terms of KronSum", "of one dtype and device",
                                               f"{first.dtype}/{first.device} and {t.dtype}/{t.device}",
                                               "Move every term with .to(dtype=..., device=...)."))
        if weights is None:
            w = torch.ones(len(terms), dtype=first.dtype, device=first.device)
        elif isinstance(weights, torch.Tensor):
            w = weights.to(dtype=first.dtype, device=first.device).reshape(-1)
        else:
            weights = list(weights)
            if any(isinstance(x, torch.Tensor) for x in weights):
                w = torch.stack([torch.as_tensor(x, dtype=first.dtype, device=first.device).reshape(())
                                 for x in weights])
            else:
                w = torch.as_tensor(weights, dtype=first.dtype, device=first.device).reshape(-1)
        if w.numel() != len(terms):
            raise ValueError(error_message("weights of KronSum", f"{len(terms)} weights (one per term)",
                                           f"{w.numel()} weights"))
        if not bool(torch.isfinite(w.detach()).all()):
            raise ValueError(error_message("weights of KronSum", "finite", w))
        self.terms = terms
        self.weights = w

    @property
    def n(self) -> int:
        return self.terms[0].n

    @property
    def m(self) -> int:
        return self.terms[0].m

    @property
    def shape(self) -> tuple[int, int]:
        return self.terms[0].shape

    @property
    def dtype(self) -> torch.dtype:
        return self.terms[0].dtype

    @property
    def device(self) -> torch.device:
        return self.terms[0].device

    def __len__(self) -> int:
        return len(self.terms)

    def __repr__(self) -> str:
        return f"KronSum(K={len(self)}, n={self.n}, m={self.m}, dtype={self.dtype})"

    def to(self, *args: Any, **kwargs: Any) -> "KronSum":
        """Move or cast every term and the weights."""
        return KronSum([t.to(*args, **kwargs) for t in self.terms], self.weights.to(*args, **kwargs))

    def __add__(self, other: "Kron | KronSum") -> "KronSum":
        """Concatenate the terms (a :class:`Kron` enters with weight one).

        Examples
        --------
        >>> len(KronSum([Kron.identity(2, 2)]) + Kron.identity(2, 2))
        2
        """
        if isinstance(other, Kron):
            other = KronSum([other])
        if not isinstance(other, KronSum):
            return NotImplemented
        return KronSum([*self.terms, *other.terms],
                       torch.cat([self.weights, other.weights.to(self.weights.dtype)]))

    def __mul__(self, scalar: _Number | torch.Tensor) -> "KronSum":
        """Scaling multiplies every weight."""
        if isinstance(scalar, (Kron, KronSum, KronDecomposed)):
            return NotImplemented
        _check_scalar(scalar, "the scale factor of a KronSum")
        if isinstance(scalar, torch.Tensor):
            scalar = scalar.reshape(())
        return KronSum(self.terms, self.weights * scalar)

    __rmul__ = __mul__

    def to_dense(self) -> torch.Tensor:
        """The dense ``(n m) x (n m)`` matrix."""
        return sum(w * t.to_dense() for w, t in zip(self.weights, self.terms))

    def matmul(self, X: torch.Tensor) -> torch.Tensor:
        """``sum_k w_k G_k X A_k^T`` for ``X`` of shape ``(..., n, m)``."""
        _check_matrix_operand(X, self.n, self.m, "X")
        return sum(w.to(X.dtype) * t.matmul(X) for w, t in zip(self.weights, self.terms))

    def quadratic(self, X: torch.Tensor) -> torch.Tensor:
        """``vec(X)^T S vec(X)`` for ``X`` of shape ``(..., n, m)``."""
        return (X * self.matmul(X)).sum(dim=(-2, -1))

    def trace(self) -> torch.Tensor:
        """``sum_k w_k tr(G_k) tr(A_k)``."""
        return sum(w * t.trace() for w, t in zip(self.weights, self.terms))

    def frobenius_norm(self) -> torch.Tensor:
        """``||sum_k w_k G_k (x) A_k||_F`` in float64 from the ``K x K`` rearrangement core.

        The rearrangement is an isometry and its thin-QR factors are orthonormal, so the norm
        of the sum is the norm of the core: no ``(n m) x (n m)`` matrix, and no cancellation
        between large Gram entries when the terms (nearly) cancel.

        Examples
        --------
        >>> import torch
        >>> K = Kron(torch.eye(2, dtype=torch.float64), 3 * torch.eye(2, dtype=torch.float64))
        >>> round(float(KronSum([K, K]).frobenius_norm()), 12)   # 12 up to rounding (QR)
        12.0
        >>> float((K + K * -1.0).frobenius_norm()) < 1e-12   # zero up to rounding
        True
        """
        _, _, core = self._rearrangement_core()
        return torch.linalg.matrix_norm(core)

    # -- nearest Kronecker product ----------------------------------------------------------
    def gram(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The Gram matrices ``(<G_k, G_l>_F, <A_k, A_l>_F)`` in float64, each ``K x K``."""
        vg = torch.stack([t.G.reshape(-1) for t in self.terms]).to(torch.float64)
        va = torch.stack([t.A.reshape(-1) for t in self.terms]).to(torch.float64)
        return vg @ vg.T, va @ va.T

    def _rearrangement_core(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Thin QR factors and the small core of the Van Loan-Pitsianis rearrangement.

        The rearrangement is ``R = sum_k w_k vec(G_k) vec(A_k)^T = V_G W V_A^T`` with
        ``V_G = [vec(G_1), ..., vec(G_K)]`` (``n^2 x K``). With thin QR ``V_G = Q_G R_G``
        (``R_G^T R_G`` is the Gram matrix ``<G_k, G_l>_F``), ``R = Q_G (R_G W R_A^T) Q_A^T``, so
        the singular triplets of ``R`` are those of the ``K x K`` core rotated by ``Q_G, Q_A``.
        The QR works on the square root of the Gram matrix and so keeps its full float64
        accuracy when the terms differ by many orders of magnitude.
        """
        w = self.weights.to(torch.float64)
        vg = torch.stack([t.G.reshape(-1) for t in self.terms], dim=1).to(torch.float64)
        va = torch.stack([t.A.reshape(-1) for t in self.terms], dim=1).to(torch.float64)
        qg, rg = torch.linalg.qr(vg)
        qa, ra = torch.linalg.qr(va)
        return qg, qa, (rg * w) @ ra.T

    def _symmetric_terms(self) -> bool:
        return all(torch.equal(t.G, t.G.mT) and torch.equal(t.A, t.A.mT) for t in self.terms)

    def nearest(self, method: Literal["gram", "power"] = "gram", *, tol: float = 1e-12,
                max_iter: int = 1000) -> Kron:
        """The Frobenius-nearest single Kronecker product ``G (x) A``.

        Parameters
        ----------
        method : {"gram", "power"}, default="gram"
            ``"gram"``: exact, from the rank-``K`` structure of the rearrangement (a thin QR of
            the stacked ``vec(G_k)`` and ``vec(A_k)``, whose ``R`` factors are the square roots
            of the ``K x K`` Gram matrices, and an SVD of the ``K x K`` core; cost
            ``O(K^2 (n^2 + m^2))``).
            ``"power"``: the alternating power iteration
            ``G <- sum_k w_k <A_k, A> G_k``, ``A <- sum_k w_k <G_k, G> A_k`` (cost
            ``O(K (n^2 + m^2))`` per iteration), stopped when the Frobenius change of the
            unit-norm factors (a bound on the relative change of ``G (x) A``) falls below ``tol``.
        tol : float, default=1e-12
            Tolerance of the power iteration.
        max_iter : int, default=1000
            Iteration cap of the power iteration; reaching it warns (``RuntimeWarning``).

        Returns
        -------
        Kron
            Factors in float64 with equal Frobenius norms, signed so that ``tr(G) >= 0``
            (positive definite when every summand and weight is positive). When every factor
            of every term is exactly symmetric, so are the returned factors.

        Examples
        --------
        >>> import torch
        >>> K = Kron(torch.diag(torch.tensor([1.0, 2.0], dtype=torch.float64)), Kron.identity(1, 3).A)
        >>> S = KronSum([K, K], [1.0, 2.0])        # a sum that is one Kronecker product
        >>> torch.allclose(S.nearest().to_dense(), S.to_dense())
        True
        >>> torch.allclose(S.nearest("power").to_dense(), S.to_dense())
        True
        """
        if method == "gram":
            qg, qa, core = self._rearrangement_core()
            p, sigma, rt = torch.linalg.svd(core, full_matrices=False)
            root = sigma[0].sqrt()
            G = (root * (qg @ p[:, 0])).reshape(self.n, self.n)
            A = (root * (qa @ rt[0, :])).reshape(self.m, self.m)
        elif method == "power":
            if not (isinstance(tol, (int, float)) and tol > 0):
                raise ValueError(error_message("tol of KronSum.nearest", "a positive float", tol))
            if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
                raise ValueError(error_message("max_iter of KronSum.nearest", "a positive int", max_iter))
            G, A = self._nearest_power(float(tol), max_iter)
        else:
            raise ValueError(error_message("method of KronSum.nearest", "'gram' or 'power'", method))
        if self._symmetric_terms():
            G, A = (G + G.mT) / 2, (A + A.mT) / 2
        if torch.trace(G) < 0:
            G, A = -G, -A
        return Kron(G, A)

    def _nearest_power(self, tol: float, max_iter: int) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.weights.to(torch.float64)
        Gs = [t.G.to(torch.float64) for t in self.terms]
        As = [t.A.to(torch.float64) for t in self.terms]
        norms_g = torch.stack([torch.linalg.matrix_norm(g) for g in Gs])
        norms_a = torch.stack([torch.linalg.matrix_norm(a) for a in As])
        # Start from the first half-step of the iteration with <G_k, G> = ||G_k||; fall back to
        # the dominant term when that start cancels.
        A = sum(wk * ng * Ak for wk, ng, Ak in zip(w, norms_g, As))
        size = float(torch.linalg.matrix_norm(A))
        if size <= 1e-12 * float((w.abs() * norms_g * norms_a).sum()):
            A = As[int(torch.argmax(w.abs() * norms_g * norms_a))]
            size = float(torch.linalg.matrix_norm(A))
        if size == 0.0:
            zero_g = torch.zeros(self.n, self.n, dtype=torch.float64, device=self.device)
            return zero_g, torch.zeros(self.m, self.m, dtype=torch.float64, device=self.device)
        A = A / size
        G = torch.zeros(self.n, self.n, dtype=torch.float64, device=self.device)
        for _ in range(max_iter):
            G_new = sum(wk * (Ak * A).sum() * Gk for wk, Ak, Gk in zip(w, As, Gs))
            G_new = G_new / torch.linalg.matrix_norm(G_new).clamp_min(1e-300)
            A_new = sum(wk * (Gk * G_new).sum() * Ak for wk, Ak, Gk in zip(w, As, Gs))
            sigma = torch.linalg.matrix_norm(A_new)
            A_new = A_new / sigma.clamp_min(1e-300)
            change = float(torch.linalg.matrix_norm(G_new - G) + torch.linalg.matrix_norm(A_new - A))
            G, A = G_new, A_new
            if change <= tol:
                break
        else:
            warnings.warn(
                f"KronSum.nearest(method='power') did not converge in max_iter={max_iter} "
                f"iterations (last change {change:.3g} > tol={tol:.3g}); the two leading "
                "singular values are close. Use method='gram' (exact) or raise max_iter.",
                RuntimeWarning, stacklevel=3,
            )
        root = sigma.sqrt()
        return G * root, A * root

    def nearest_error(self) -> torch.Tensor:
        """Relative Frobenius error ``||S - nearest()||_F / ||S||_F`` from the ``K x K`` core.

        Computed as ``sqrt(sum_{i>=2} s_i^2 / sum_i s_i^2)`` over the singular values of the
        rearrangement, without forming any ``(n m) x (n m)`` matrix.

        Examples
        --------
        >>> import torch
        >>> eye = torch.eye(2, dtype=torch.float64)
        >>> S = KronSum([Kron(eye, 2 * eye), Kron(2 * eye, eye)])   # 4 I, a Kronecker product
        >>> float(S.nearest_error()) < 1e-12
        True
        """
        _, _, core = self._rearrangement_core()
        sigma = torch.linalg.svdvals(core)
        total = (sigma ** 2).sum()
        if float(total) == 0.0:
            return torch.zeros((), dtype=torch.float64, device=self.device)
        return ((sigma[1:] ** 2).sum() / total).sqrt()

    # -- exact two-term form -------------------------------------------------------------
    def decompose(self) -> "KronDecomposed":
        """The exact joint-eigenbasis form of a two-term sum ``w_0 K_0 + w_1 K_1``.

        The second term must be positive definite (both factors), the first symmetric. The
        result represents ``beta (G_0 (x) A_0) + alpha (G_1 (x) A_1)`` with
        ``beta, alpha = weights``; see :class:`KronDecomposed`. Weights that require gradients
        stay differentiable.

        Raises
        ------
        ValueError
            For three or more terms (use :meth:`nearest` to compress first), a factor that is
            not symmetric, a second term that is not positive definite, or a sum that is not
            positive definite.

        Examples
        --------
        >>> import torch
        >>> S = KronSum([Kron.identity(2, 3), Kron.identity(2, 3)], [1.0, 2.0]).decompose()
        >>> round(float(S.logdet()), 6) == round(6 * float(torch.log(torch.tensor(3.0))), 6)
        True
        """
        if len(self) != 2:
            raise ValueError(
                error_message(
                    "KronSum.decompose()", "called on exactly two terms (the exact form holds two)",
                    f"{len(self)} terms",
                    "Compress with KronSum(...).nearest() (the Frobenius-nearest Kronecker product) "
                    "and decompose the two-term sum nearest_part + remaining_term, or call nearest() alone.",
                )
            )
        beta, alpha = self.weights[0], self.weights[1]
        return KronDecomposed.from_terms(
            self.terms[0], self.terms[1],
            beta=beta if beta.requires_grad else beta.item(),
            alpha=alpha if alpha.requires_grad else alpha.item(),
        )


_CORRUPT_FIX = "The file is corrupted or was edited; re-create it with save()."


def check_factors_definite(K: Kron, what: str, *, semi: bool) -> None:
    """Both factors symmetric and positive definite (``semi``: positive semi-definite up to rounding).

    Semi-definiteness is tested by a Cholesky decomposition of ``M + t I`` with ``t`` at the
    float32 rounding level of the factor (``2 n eps ||M||_F``), the level at which curvature
    factors are projected onto the cone when they are built.
    """
    for M, factor in ((K.G, "G"), (K.A, "A")):
        rtol = max(1e-8, 1000.0 * torch.finfo(M.dtype).eps)  # as Kron's Cholesky checks symmetry
        M = M.to(torch.float64)
        scale = float(M.abs().max()) if M.numel() else 0.0
        if not bool(torch.isfinite(M).all()):
            raise ValueError(error_message(f"factor {factor} of {what}", "finite (no NaN or infinity)",
                                           "non-finite entries", _CORRUPT_FIX))
        if float((M - M.mT).abs().max()) > rtol * max(scale, 1e-300):
            raise ValueError(error_message(f"factor {factor} of {what}", "symmetric",
                                           f"a matrix with max |M - M^T| = {float((M - M.mT).abs().max()):.3g}",
                                           _CORRUPT_FIX))
        if semi:
            shift = 2.0 * M.shape[0] * torch.finfo(torch.float32).eps * float(torch.linalg.matrix_norm(M))
            M = M + (shift if shift > 0 else 1e-300) * torch.eye(M.shape[0], dtype=M.dtype, device=M.device)
        _, info = torch.linalg.cholesky_ex(M)
        if int(info) != 0:
            expected = "positive semi-definite" if semi else "positive definite"
            raise ValueError(error_message(f"factor {factor} of {what}", expected,
                                           f"a matrix whose Cholesky decomposition failed at column {int(info)}",
                                           _CORRUPT_FIX))


Accumulation = tuple[float, int]  # (unit roundoff u, chain length k) of a factor's summation


def _rounding_tolerance(M: torch.Tensor, f: torch.Tensor, accumulation: Accumulation | None,
                        dtype: torch.dtype) -> float:
    r"""A bound on how far rounding can have moved the eigenvalues ``f`` of the factor ``M``.

    Two sources, added:

    - the float64 ``eigh`` of ``M``: ``size eps_64 max|f|`` (the rank tolerance of
      ``numpy.linalg.matrix_rank``);
    - the summation that produced ``M = sum_t p_t p_t^T / c``: with ``k`` terms summed in a dtype
      of unit roundoff ``u``, entry ``(i, j)`` errs by at most about
      ``b_ij = sqrt(k) u sqrt(M_ii M_jj)`` (the probabilistic bound of Higham & Mary 2019, with
      ``sum_t |p_ti p_tj| <= sqrt(M_ii M_jj)`` by Cauchy-Schwarz; the worst case ``k u`` is not
      attained by blocked BLAS sums). With independent rounding errors of random sign, the
      error matrix has spectral norm at most about twice its largest row norm,
      ``2 sqrt(max_i sum_j b_ij^2) = 2 sqrt(k) u sqrt(max_i M_ii tr M)``; doubled once more for
      safety, and by Weyl's inequality every eigenvalue moves by at most
      ``4 sqrt(k) u sqrt(max_i M_ii tr M)`` (how far below it the realized error lies: Concepts,
      section 2).

    ``accumulation = (u, k)`` comes from :attr:`Curvature.rounding`; without it the factor's
    own dtype gives ``u`` and ``k`` is taken as its size (a factor given as a tensor of unknown
    origin). A float64 factor therefore gets a float64-level tolerance.
    """
    size = M.shape[0]
    f_max = float(f.abs().max()) if f.numel() else 0.0
    tol = size * torch.finfo(torch.float64).eps * f_max
    if accumulation is None:
        unit = torch.finfo(dtype).eps / 2 if dtype.is_floating_point else torch.finfo(torch.float64).eps / 2
        chain = size
    else:
        unit, chain = float(accumulation[0]), int(accumulation[1])
        unit = max(unit, torch.finfo(torch.float64).eps / 2)
    diag = torch.diagonal(M).abs()
    spread = math.sqrt(float(diag.max()) * float(diag.sum())) if diag.numel() else 0.0
    return tol + 4.0 * math.sqrt(max(chain, 1)) * unit * spread


# The low-rank route of :func:`_psd_factor`: taken when the factor's rank bound plus the oversampling is at
# most this fraction of its size (its cost, a few ``d^2 k`` products and one complete QR, against the
# ``O(d^3)`` of ``eigh``; measured 1.0 s against 7.8 s for ``d = 3137``, ``k = 58`` on one CPU thread).
_LOW_RANK_FRACTION = 1.0 / 3.0
_LOW_RANK_OVERSAMPLING = 8


def _psd_factor(M: torch.Tensor, accumulation: Accumulation | None = None, *,
                name: str = "a curvature factor", rank_bound: int | None = None,
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """The projected float64 factor and its eigendecomposition ``(f, V)`` (``f >= 0``).

    Eigenvalues within the rounding bound of :func:`_rounding_tolerance` are set to zero (the
    zero eigenvalues of a rank-deficient factor come out as +-noise); every other eigenvalue
    is kept as computed. A negative eigenvalue beyond the bound raises.

    ``rank_bound``: an upper bound on the exact factor's rank (a curvature factor summed from
    ``k`` rows has rank at most ``k``). When it is small against the size, :func:`_low_rank_psd`
    gives the same projection in ``O(d^2 k)``; it checks its own result and falls back to the full
    ``eigh`` when the check fails.
    """
    dtype = M.dtype
    M = M.to(torch.float64)
    M = (M + M.mT) / 2
    if rank_bound is not None and rank_bound + _LOW_RANK_OVERSAMPLING <= _LOW_RANK_FRACTION * M.shape[0]:
        low = _low_rank_psd(M, rank_bound + _LOW_RANK_OVERSAMPLING, accumulation, dtype)
        if low is not None:
            return low
    f, V = torch.linalg.eigh(M)
    tol = _rounding_tolerance(M, f, accumulation, dtype)
    if f.numel() and float(f.min()) < -tol:
        raise ValueError(error_message(
            name, "positive semi-definite up to rounding",
            f"a smallest eigenvalue {float(f.min()):.3g} (largest {float(f.max()):.3g}, rounding bound "
            f"{tol:.3g} for {'a ' + str(dtype) + ' factor' if accumulation is None else 'its accumulation'})",
            "The curvature is broken; recompute it (check for non-finite data). A float32 factor "
            "converted to float64 by hand: pass the Curvature object, which records how it was summed."))
    f = torch.where(f <= tol, torch.zeros_like(f), f)
    return (V * f) @ V.mT, (f, V)


def _low_rank_psd(M: torch.Tensor, k: int, accumulation: Accumulation | None, dtype: torch.dtype,
                  ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]] | None:
    """:func:`_psd_factor` for a symmetric float64 ``M`` of rank at most ``k`` (up to rounding), or ``None``.

    A range finder (``Q``: orthonormal basis of ``M Omega``, ``Omega`` a fixed-seed Gaussian
    ``d x k``, refined by one subspace iteration ``M Q``) holds the range of ``M`` exactly when its
    rank is at most ``k``; the eigenvalues
    and eigenvectors of ``Q^T M Q`` are then those of ``M`` (Rayleigh-Ritz), and an orthonormal
    complement of the kept eigenvectors (a complete QR) carries the zero eigenvalues. The result
    is checked, not assumed: the dropped part ``R = M - V diag(f) V^T`` must have a spectral
    norm within ``tol``, the rounding bound under which the full route zeroes eigenvalues
    (:func:`_spectral_norm_bound`). Then, by Weyl's inequality, every eigenvalue of the result is
    within ``tol`` of the full route's. Otherwise (``M`` is not of rank ``<= k``, e.g. a rank
    bound that does not hold) ``None``: the caller takes the full ``eigh``.
    """
    size = M.shape[0]
    gen = torch.Generator(device=M.device).manual_seed(0)
    omega = torch.randn(size, k, generator=gen, dtype=torch.float64, device=M.device)
    Q, _ = torch.linalg.qr(M @ omega)
    # one subspace iteration: the rounding noise of M (eigenvalues ~1e-5 of the largest in a float32
    # accumulation, in every direction) tilts range(M Omega) off the signal by about noise / smallest
    # signal eigenvalue; a second product with M shrinks that tilt by the same ratio again (measured on a
    # 50-shot MNIST CNN factor: the dropped part's norm 1.4e-4 -> 6.9e-6, the noise level itself)
    Q, _ = torch.linalg.qr(M @ Q)
    B = Q.mT @ M @ Q
    if not bool(torch.isfinite(B).all()):  # products that overflowed: the dense route and its checks decide
        return None
    fb, W = torch.linalg.eigh((B + B.mT) / 2)
    tol = _rounding_tolerance(M, fb, accumulation, dtype)
    if fb.numel() and float(fb.min()) < -tol:
        return None  # the full route names the negative eigenvalue in its error
    keep = fb > tol
    V_kept, f_kept = Q @ W[:, keep], fb[keep]
    low = (V_kept * f_kept) @ V_kept.mT
    R = M - low
    if not _spectral_norm_bound(R, gen) <= tol:
        return None
    return (low + low.mT) / 2, _with_null_space(f_kept, V_kept)


def _with_null_space(f: torch.Tensor, V: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A complete eigendecomposition from the ``r`` non-zero eigenpairs ``(f, V)`` (``V``: ``d x r``, ascending ``f``).

    The other ``d - r`` eigenvalues are exactly zero; their eigenvectors are an orthonormal
    complement of ``V`` (a complete QR, ``O(d^2 r)``). Ascending order, zeros first, like ``eigh``.
    """
    size, r = V.shape
    complete, _ = torch.linalg.qr(V, mode="complete")
    basis = torch.cat([complete[:, r:], V], dim=1)
    return torch.cat([torch.zeros(size - r, dtype=f.dtype, device=f.device), f]), basis


def _spectral_norm_bound(R: torch.Tensor, generator: torch.Generator, power: int = 8, probes: int = 10) -> float:
    """An upper bound on ``||R||_2`` of a symmetric ``R``, valid with probability ``>= 1 - 10^-probes``.

    ``min(||R||_F, ||R||_1, b)`` with the randomized bound ``b`` of Halko, Martinsson and Tropp
    (2011, lemma 4.1) applied to ``R^q``: for Gaussian probes ``w_i``,
    ``||R^q||_2 <= 10 sqrt(2 / pi) max_i ||R^q w_i||`` except with probability ``10^-probes``,
    and ``||R||_2 = ||R^q||_2^(1/q)``. Rounding noise spread over all directions has a Frobenius
    norm about ``sqrt(d)`` times its spectral norm, while ``b`` overestimates it by at most
    ``(10 sqrt(2 / pi) sqrt(d))^(1/q)`` (2.1 for ``d = 3137``, ``q = 8``). The probes are
    renormalized at each power step (their log norms are summed), so nothing under- or overflows.
    """
    if R.numel() == 0:
        return 0.0
    exact = min(float(torch.linalg.matrix_norm(R)), float(R.abs().sum(dim=0).max()))
    W = torch.randn(R.shape[0], probes, generator=generator, dtype=R.dtype, device=R.device)
    log_norm = torch.zeros(probes, dtype=R.dtype, device=R.device)
    for _ in range(power):
        W = R @ W
        norms = torch.linalg.vector_norm(W, dim=0)
        if not bool((norms > 0).all()):  # a probe in R's null space (R = 0, in practice): the exact bounds
            return exact
        log_norm = log_norm + torch.log(norms)
        W = W / norms
    randomized = math.exp((math.log(10.0 * math.sqrt(2.0 / math.pi)) + float(log_norm.max())) / power)
    return min(exact, randomized)


def psd_projected(F: Kron, accumulation: Mapping[str, Accumulation] | None = None, *,
                  rank_bound: int | None = None,
                  ) -> tuple[Kron, tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]]:
    """The curvature factors as exactly symmetric positive semi-definite float64 matrices.

    K-FAC factors are positive semi-definite by construction, but they are summed from
    (float32) products, so they are symmetric only to rounding and their zero eigenvalues (e.g.
    the softmax's null direction in a head's output factor) come out as +-noise. Eigenvalues
    within a rounding bound that follows from the dtype and the length of the summation
    (``accumulation``, per factor ``"G"``/``"A"``, from :attr:`Curvature.rounding`; else the
    factor's dtype; see :func:`_rounding_tolerance`) are set to exactly zero: a projection of
    rounding noise onto the cone the factor belongs to, not damping. Real small eigenvalues
    above the bound are kept. A negative eigenvalue beyond it raises. Returns the factors and
    their eigendecompositions (for :meth:`KronDecomposed.from_terms`, which then needs one
    ``eigh`` fewer per factor).

    ``rank_bound``: the number of rows the input factor ``A`` was summed from
    (:attr:`Curvature.positions`), an upper bound on its rank; when it is small against the
    factor's size (few examples, a wide layer) the projection takes a checked low-rank route in
    ``O(m^2 k)`` instead of an ``O(m^3)`` ``eigh`` (:func:`_low_rank_psd`).

    A product returned by this function is its own projection: projecting it again returns it
    and its eigendecompositions at no cost (while its factors are not modified in place), so a
    caller that projects once may hand the result to :func:`~skkprior.laplace.posterior`.
    """
    if rank_bound is not None:
        try:
            bound = operator.index(rank_bound) if not isinstance(rank_bound, bool) else -1
        except TypeError:
            bound = -1
        if bound < 0:
            raise ValueError(error_message("rank_bound", "None or a non-negative integer (the number of rows "
                                           "the input factor was summed from)", rank_bound,
                                           "Pass Curvature.positions[layer], or None for no bound."))
        rank_bound = bound
    cached = F._cache.get("psd_projection")
    if cached is not None and cached[0] == _versions(F):
        return F, cached[1]
    acc = accumulation or {}
    G, eigh_g = _psd_factor(F.G, acc.get("G"), name="the output factor G of a curvature")
    A, eigh_a = _psd_factor(F.A, acc.get("A"), name="the input factor A of a curvature", rank_bound=rank_bound)
    out, spectra = Kron(G, A), (eigh_g, eigh_a)
    versions = _versions(out)
    if versions is not None:  # inference tensors have no version counter: not cached
        out._cache["psd_projection"] = (versions, spectra)
    return out, spectra


def _versions(F: Kron) -> tuple[int, int] | None:
    """The in-place version counters of ``F``'s factors (None for inference-mode tensors)."""
    try:
        return F.G._version, F.A._version
    except RuntimeError:
        return None


def positive_definite_nearest(total: KronSum, method: str, name: str) -> Kron:
    r"""The Frobenius-nearest Kronecker product of a sum of positive (semi-)definite terms with
    positive weights, with factors that are positive definite in float64.

    In exact arithmetic the optimal factors of such a sum are positive semi-definite (the
    leading singular vectors of the rearrangement are non-negative combinations of the terms'
    factors) and positive definite when one term is. In float64 a factor is known only to
    ``tol = 4 size eps_64 max|lambda|`` in each eigenvalue (the rounding of the rearrangement's QR
    and SVD and of the reconstruction, with the rank tolerance ``size eps max`` of
    ``numpy.linalg.matrix_rank``, times a safety factor): when the curvature's condition
    reaches about 1e10, an exact smallest eigenvalue of ``1e-20 max`` (a weak prior on the
    softmax's null direction, say) comes out as ``+-1e-17 max``, an indefinite prior that only
    the next task's Cholesky would notice. Eigenvalues below ``tol`` are therefore raised to
    ``tol``: a change of at most ``tol`` in every eigenvalue, within the rounding of the
    computed factor, and the nearest matrix (spectral and Frobenius norm) with eigenvalues
    ``>= tol``. An eigenvalue below ``-tol`` cannot come from rounding and raises.
    """
    nearest = total.nearest(method=method)
    factors = []
    for M, which in ((nearest.G, "G (output factor)"), (nearest.A, "A (input factor)")):
        M = (M + M.mT) / 2
        f, V = torch.linalg.eigh(M)
        tol = 4.0 * M.shape[0] * torch.finfo(torch.float64).eps * float(f.abs().max())
        if float(f.min()) < -tol:
            raise ValueError(error_message(
                f"the compressed prior precision of layer '{name}', factor {which}",
                "positive definite (the nearest Kronecker product of positive semi-definite terms)",
                f"a smallest eigenvalue {float(f.min()):.3g} (largest {float(f.max()):.3g}, rounding "
                f"bound {tol:.3g})",
                "A term of the sum is not positive semi-definite; check the curvature and the prior."))
        if float(f.min()) < tol:
            M = (V * f.clamp_min(tol)) @ V.mT
            M = (M + M.mT) / 2
        factors.append(M)
    return Kron(*factors)


def _joint_eig(first: torch.Tensor, second: torch.Tensor, name: str,
               first_eigh: tuple[torch.Tensor, torch.Tensor] | None = None,
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Joint eigenbasis: ``T^T first T = diag(D)``, ``T^T second T = I``; returns ``T, T^-1, D, logdet(second)``.

    ``second`` must be positive definite. When it is the identity, ``T`` is the orthonormal
    eigenbasis of ``first``. Otherwise the pencil is reduced with the Cholesky factor ``C`` of
    the balanced sum ``B = s first + second`` (``s = ||second||_F / ||first||_F``) rather than of
    ``second`` alone: with ``C^-1 first C^-T = U diag(mu) U^T`` and ``T_0 = C^-T U``,
    ``T_0^T second T_0 = diag(nu)``, ``nu = 1 - s mu``, so ``T = T_0 diag(nu)^(-1/2)`` and
    ``D = mu / nu``. ``B`` is never worse conditioned than ``second`` alone (up to the scale s)
    and usually far better, so the generalized eigenvalues carry an absolute error of about
    ``eps cond(B)`` instead of ``eps cond(second) ||first||`` (which made ``beta D_G D_A^T``
    spuriously negative for ill-conditioned factors). When ``first`` is positive semi-definite
    (a curvature), ``C^-1 first C^-T`` is formed as ``Y Y^T`` with ``Y = C^-1 W``,
    ``W W^T = first`` (Cholesky, or ``eigh`` when ``first`` is singular), so its eigenvalues stay
    non-negative whatever the rounding in ``Y``. Cost: two or three Cholesky factorizations and
    one or two ``eigh`` of the factor size.

    Eigenvalues of the first factor (``mu``) with ``|mu| <= k eps max|mu|`` (``k`` the size, the
    rank tolerance of ``numpy.linalg.matrix_rank``) are set to exactly zero: they are rounding
    noise of ``eigh`` (the zero eigenvalues of a rank-deficient curvature come out as +-1e-16
    relative), and a negative one multiplied by the other factor's largest eigenvalue could make
    ``beta D_G D_A^T + alpha`` spuriously negative.

    ``first_eigh``, the eigendecomposition ``(f, V)`` of a positive semi-definite ``first``
    (``f >= 0``), saves one ``eigh``: it is the eigenbasis when ``second`` is a multiple of the
    identity (then no eigensolve runs at all) and gives the root ``V diag(f)^(1/2)`` otherwise.
    """
    _check_symmetric(first, f"{name} of the first term")
    _check_symmetric(second, f"{name} of the second term")
    first = first.to(torch.float64)
    second = second.to(torch.float64)
    first = (first + first.mT) / 2
    eye = torch.eye(first.shape[0], dtype=torch.float64, device=first.device)
    c = float(second[0, 0]) if second.numel() else 1.0
    if c > 0 and torch.equal(second, c * eye):  # a multiple of the identity: a plain eigenproblem
        if first_eigh is not None:
            D, U = (t.to(device=first.device, dtype=torch.float64) for t in first_eigh)
        else:
            D, U = torch.linalg.eigh(first)
        logdet = torch.full((), first.shape[0] * math.log(c), dtype=torch.float64, device=first.device)
        root_c = math.sqrt(c)
        return U / root_c, root_c * U.T.contiguous(), _zero_noise(D) / c, logdet
    # The second term must be positive definite on its own (clear error naming it).
    C_second = _cholesky(second, f"{name} of the second term")
    logdet_second = 2.0 * torch.log(torch.diagonal(C_second)).sum()
    norm_first = torch.linalg.matrix_norm(first)
    s = torch.linalg.matrix_norm(second) / norm_first if float(norm_first) > 0 else norm_first
    balanced = s * first + second
    C = _cholesky((balanced + balanced.mT) / 2, f"{name} of the balanced sum of both terms")
    if first_eigh is not None:
        f, V = (t.to(device=first.device, dtype=torch.float64) for t in first_eigh)
        nonzero = f > 0
        root = V[:, nonzero] * f[nonzero].sqrt()  # the zero eigenvalues add nothing to W W^T
    else:
        root = _psd_root(first)
    if root is not None and root.shape[1] <= _LOW_RANK_FRACTION * root.shape[0]:
        # a low-rank first term (a few-shot curvature): C^-1 first C^-T = Y Y^T with Y thin, whose
        # eigenvectors are Y's left singular vectors (no O(d^3) eigh) plus an orthonormal complement
        Y = torch.linalg.solve_triangular(C, root, upper=False)
        mu, U = _thin_gram_eigh(Y)
    else:
        if root is not None:  # C^-1 first C^-T = Y Y^T: positive semi-definite by construction
            Y = torch.linalg.solve_triangular(C, root, upper=False)
            X = Y @ Y.mT
        else:  # an indefinite first term
            X = torch.linalg.solve_triangular(C, first, upper=False)  # C^-1 first
            X = torch.linalg.solve_triangular(C, X.mT, upper=False)  # C^-1 first C^-T
        mu, U = torch.linalg.eigh((X + X.mT) / 2)
    mu = _zero_noise(mu)
    nu = 1.0 - s * mu
    if not bool((nu > 0).all()):
        raise ValueError(
            error_message(f"{name} of the second term", "positive definite relative to the first term",
                          f"a generalized eigenvalue ratio with 1 - s mu = {float(nu.min()):.3g} <= 0",
                          "The two factors are too ill-conditioned for float64; add damping explicitly.")
        )
    root_nu = nu.sqrt()
    T = torch.linalg.solve_triangular(C.mT, U, upper=True) / root_nu  # C^-T U diag(nu)^-1/2
    T_inv = root_nu[:, None] * (U.mT @ C.mT)  # diag(nu)^1/2 U^T C^T
    return T, T_inv, mu / nu, logdet_second


def _thin_gram_eigh(Y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The eigendecomposition of ``Y Y^T`` (``d x d``) for a thin ``Y`` (``d x r``, ``r < d``), ascending like ``eigh``.

    ``Y = U_r diag(s) W^T`` (thin SVD) gives ``Y Y^T = U_r diag(s^2) U_r^T``, computed without
    forming the square (so without squaring ``Y``'s condition); the other ``d - r`` eigenvalues are
    exactly zero, with an orthonormal complement of ``U_r`` (:func:`_with_null_space`) as their
    eigenvectors. Cost ``O(d^2 r)`` instead of ``eigh``'s ``O(d^3)``.
    """
    U_r, sv, _ = torch.linalg.svd(Y, full_matrices=False)
    return _with_null_space((sv * sv).flip(-1), U_r.flip(-1))


def _psd_root(matrix: torch.Tensor) -> torch.Tensor | None:
    """``W`` with ``W W^T = matrix`` for a positive semi-definite float64 matrix, else ``None``.

    The Cholesky factor when it exists; otherwise the eigendecomposition with the eigenvalues at
    the rounding level (``|f| <= k eps max|f|``) set to zero. ``None`` when an eigenvalue is
    negative beyond that level (an indefinite matrix).
    """
    chol, info = torch.linalg.cholesky_ex(matrix)
    if int(info) == 0:
        return chol
    f, V = torch.linalg.eigh(matrix)
    f = _zero_noise(f)
    if bool((f < 0).any()):
        return None
    return V * f.sqrt()


def _zero_noise(eigenvalues: torch.Tensor) -> torch.Tensor:
    """Set eigenvalues below the rank tolerance ``k eps max|.|`` (rounding noise) to exactly zero."""
    k = eigenvalues.shape[-1]
    if k == 0:
        return eigenvalues
    tol = k * torch.finfo(eigenvalues.dtype).eps * eigenvalues.abs().max()
    return torch.where(eigenvalues.abs() <= tol, torch.zeros_like(eigenvalues), eigenvalues)


class KronDecomposed(TwoTermPrecision):
    r"""Exact form of ``beta (G_1 (x) A_1) + alpha (G_2 (x) A_2)``, second term positive definite.

    With ``T_A^T A_1 T_A = diag(D_A)``, ``T_A^T A_2 T_A = I`` (likewise for ``G``)

    .. math::
        \beta F + \alpha P = (T_G \otimes T_A)^{-\top}
        (\beta D_G \otimes D_A + \alpha I) (T_G \otimes T_A)^{-1}.

    Inverse, log-determinant, ``tr(K S^-1)``, quadratic forms and sampling are exact. The
    decomposition is computed once in float64 (``O(n^3 + m^3)``); :meth:`with_weights` gives the
    form for new ``(beta, alpha)`` without a new eigensolve, and :meth:`logdet` and
    :meth:`trace_product` with ``term=`` then cost ``O(n m)`` elementwise work; products with a
    matrix (:meth:`matmul`, :meth:`solve`, :meth:`sample_map`) cost the ``n x n`` / ``m x m``
    matrix products they need. ``beta`` and ``alpha`` may be tensors that require gradients
    (for tuning); without gradients, the eigenvalues ``Lambda`` and ``1 / Lambda`` are computed
    once per instance and kept (an instance is immutable: ``beta`` and ``alpha`` are read-only).

    Build it with ``KronSum([K_1, K_2], [beta, alpha]).decompose()`` or :meth:`from_terms`.
    Every result is float64, whatever the dtype of the operand. Generalized eigenvalues at the
    rounding level of ``eigh`` (``|D| <= k eps max|D|`` before scaling, ``k`` the factor size) are
    stored as exact zeros, so a rank-deficient curvature gives ``Lambda = alpha`` exactly on its
    null space instead of ``alpha`` plus noise times the other factor's largest eigenvalue.

    Attributes
    ----------
    T_G, T_A : torch.Tensor
        Joint eigenbases (float64).
    T_G_inv, T_A_inv : torch.Tensor
        Their inverses.
    D_G, D_A : torch.Tensor
        Generalized eigenvalues of the first term's factors (float64).
    beta, alpha : float or torch.Tensor
        Weights of the first and second term (read-only).
    logdet_second : torch.Tensor
        ``logdet(G_2 (x) A_2)``.

    Examples
    --------
    >>> import torch
    >>> g = torch.randn(3, 3, dtype=torch.float64); a = torch.randn(2, 2, dtype=torch.float64)
    >>> F = Kron(g @ g.T, a @ a.T); P = Kron.identity(3, 2)
    >>> S = KronSum([F, P], [1.0, 0.1]).decompose()
    >>> dense = F.to_dense() + 0.1 * torch.eye(6, dtype=torch.float64)
    >>> torch.allclose(S.to_dense(), dense) and torch.allclose(S.logdet(), torch.logdet(dense))
    True
    >>> torch.allclose(S.with_weights(beta=2.0).to_dense(), 2 * F.to_dense() + 0.1 * torch.eye(6, dtype=torch.float64))
    True
    """

    kind = "decomposed"

    def __init__(self, T_G: torch.Tensor, T_G_inv: torch.Tensor, D_G: torch.Tensor,
                 T_A: torch.Tensor, T_A_inv: torch.Tensor, D_A: torch.Tensor,
                 *, beta: _Weight, alpha: _Weight, logdet_second: torch.Tensor) -> None:
        self.T_G, self.T_G_inv, self.D_G = T_G, T_G_inv, D_G
        self.T_A, self.T_A_inv, self.D_A = T_A, T_A_inv, D_A
        self._beta = _as_weight(beta, "beta (weight of the first term)")
        self._alpha = _as_weight(alpha, "alpha (weight of the second term)")
        self.logdet_second = logdet_second
        self._lam: torch.Tensor | None = None
        self._inv_lam: torch.Tensor | None = None
        self._sums: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._shared: dict[str, Any] = {}  # weight-independent values, shared by with_weights

    @property
    def beta(self) -> _Weight:
        """Weight of the first term (read-only; use :meth:`with_weights`)."""
        return self._beta

    @property
    def alpha(self) -> _Weight:
        """Weight of the second term (read-only; use :meth:`with_weights`)."""
        return self._alpha

    @classmethod
    def from_terms(cls, first: Kron, second: Kron, *, beta: _Weight = 1.0, alpha: _Weight = 1.0,
                   first_eigh: tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
                   | None = None) -> "KronDecomposed":
        """Decompose ``beta first + alpha second`` (``second`` positive definite).

        ``first_eigh``: optional eigendecompositions ``((f_G, V_G), (f_A, V_A))`` of the first
        term's factors (positive semi-definite, ``f >= 0``), when the caller has them already
        (e.g. from projecting a curvature onto the PSD cone); each saves one ``eigh`` of the
        factor size.

        Examples
        --------
        >>> import torch
        >>> S = KronDecomposed.from_terms(Kron.identity(2, 2), 2.0 * Kron.identity(2, 2), alpha=0.5)
        >>> torch.allclose(S.to_dense(), 2.0 * torch.eye(4, dtype=torch.float64))
        True
        """
        for term, what in ((first, "first"), (second, "second")):
            if not isinstance(term, Kron):
                raise TypeError(error_message(f"the {what} term of KronDecomposed.from_terms", "a Kron",
                                              type(term).__name__, "Build it with Kron(G, A)."))
        _check_same_shape(first, second, "the two terms of KronDecomposed.from_terms")
        eigh_g, eigh_a = first_eigh if first_eigh is not None else (None, None)
        for spectrum, what, size in ((eigh_g, "G", first.n), (eigh_a, "A", first.m)):
            if spectrum is None:
                continue
            f, V = spectrum
            if tuple(f.shape) != (size,) or tuple(V.shape) != (size, size):
                raise ValueError(error_message(f"first_eigh of factor {what}",
                                               f"eigenvalues of shape ({size},) and eigenvectors ({size}, {size})",
                                               f"shapes {tuple(f.shape)} and {tuple(V.shape)}",
                                               "Pass torch.linalg.eigh of the first term's factors."))
            if bool((spectrum[0] < 0).any()):
                raise ValueError(error_message(f"first_eigh of factor {what}", "non-negative eigenvalues",
                                               f"smallest {float(spectrum[0].min()):.3g}",
                                               "Pass the spectra of positive semi-definite factors only."))
        T_G, T_G_inv, D_G, ld_g = _joint_eig(first.G, second.G, "G", eigh_g)
        T_A, T_A_inv, D_A, ld_a = _joint_eig(first.A, second.A, "A", eigh_a)
        out = cls(T_G, T_G_inv, D_G, T_A, T_A_inv, D_A, beta=beta, alpha=alpha,
                  logdet_second=first.m * ld_g + first.n * ld_a)
        out._check_positive()
        return out

    def _smallest_eigenvalue(self) -> float:
        """``min Lambda`` in ``O(n + m)``: ``beta a b + alpha`` is bilinear in ``(a, b)``, so its
        minimum over the grid ``D_G x D_A`` is at one of the four corners (evaluated with the same
        floating-point operations as :meth:`eigenvalues`, whose rounding is monotone)."""
        if "extremes" not in self._shared:  # one device sync per decomposition, not per weight
            self._shared["extremes"] = (
                (float(self.D_G.detach().min()), float(self.D_G.detach().max())),
                (float(self.D_A.detach().min()), float(self.D_A.detach().max())))
        (g_lo, g_hi), (a_lo, a_hi) = self._shared["extremes"]
        beta, alpha = _float(self.beta), _float(self.alpha)  # Python floats: IEEE float64 like torch
        return min(g * beta * a + alpha for g in (g_lo, g_hi) for a in (a_lo, a_hi))

    def _check_positive(self) -> None:
        smallest = float(self._smallest_eigenvalue())
        if not smallest > 0:
            raise ValueError(
                error_message("the two-term sum beta K_1 + alpha K_2", "positive definite",
                              f"smallest eigenvalue {smallest:.3g} in the joint eigenbasis "
                              f"(beta={_float(self.beta):.4g}, alpha={_float(self.alpha):.4g})",
                              "Use positive weights and a positive semi-definite first term.")
            )

    def with_weights(self, beta: _Weight | None = None, alpha: _Weight | None = None) -> "KronDecomposed":
        """The same two terms with new weights, sharing the decomposition (no new eigensolve).

        Examples
        --------
        >>> import torch
        >>> S = KronSum([Kron.identity(2, 2), Kron.identity(2, 2)], [1.0, 1.0]).decompose()
        >>> round(float(S.with_weights(beta=3.0).trace()), 12)   # 16 up to rounding (eigh)
        16.0
        """
        out = KronDecomposed(self.T_G, self.T_G_inv, self.D_G, self.T_A, self.T_A_inv, self.D_A,
                             beta=self.beta if beta is None else beta,
                             alpha=self.alpha if alpha is None else alpha,
                             logdet_second=self.logdet_second)
        out._shared = self._shared
        out._check_positive()
        return out

    @property
    def n(self) -> int:
        return self.T_G.shape[0]

    @property
    def m(self) -> int:
        return self.T_A.shape[0]

    @property
    def dim(self) -> int:
        return self.n * self.m

    @property
    def device(self) -> torch.device:
        return self.T_G.device

    @property
    def dtype(self) -> torch.dtype:
        return torch.float64

    def __repr__(self) -> str:
        return (f"KronDecomposed(n={self.n}, m={self.m}, beta={_float(self.beta):.4g}, "
                f"alpha={_float(self.alpha):.4g})")

    def to(self, *args: Any, **kwargs: Any) -> "KronDecomposed":
        """Move the decomposition to another device (arguments as in ``torch.Tensor.to``).

        The decomposition stays float64: a requested dtype is ignored, so that moving never
        rounds the eigenbases.
        """
        probe = torch.empty(0, dtype=torch.float64, device=self.device).to(*args, **kwargs)

        def mv(t: torch.Tensor) -> torch.Tensor:
            return t.to(device=probe.device, dtype=torch.float64)

        def move(w: _Weight) -> _Weight:
            return mv(w) if isinstance(w, torch.Tensor) else w

        return KronDecomposed(mv(self.T_G), mv(self.T_G_inv), mv(self.D_G), mv(self.T_A),
                              mv(self.T_A_inv), mv(self.D_A), beta=move(self.beta),
                              alpha=move(self.alpha), logdet_second=mv(self.logdet_second))

    # -- evaluations -----------------------------------------------------------------------
    def eigenvalues(self) -> torch.Tensor:
        """``Lambda = beta D_G D_A^T + alpha``, shape ``(n, m)``, in the joint eigenbasis."""
        if self._lam is not None:
            return self._lam
        lam = torch.outer(self.D_G * self.beta, self.D_A)
        if lam.requires_grad or (isinstance(self.alpha, torch.Tensor) and self.alpha.requires_grad):
            return lam + self.alpha
        self._lam = lam.add_(self.alpha)
        return self._lam

    def _inverse_eigenvalues(self) -> torch.Tensor:
        if self._inv_lam is not None:
            return self._inv_lam
        inv = torch.reciprocal(self.eigenvalues())
        if not inv.requires_grad:
            self._inv_lam = inv
        return inv

    def _requires_grad(self) -> bool:
        return any(isinstance(w, torch.Tensor) and w.requires_grad for w in (self.beta, self.alpha)) or (
            self.D_G.requires_grad or self.D_A.requires_grad)

    def _weight_sums(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(sum log Lambda, sum 1 / Lambda, D_G^T Lambda^-1 D_A)``: what logdet and the traces need.

        Kept per instance when no gradient is needed. On the CPU, without gradients and without
        materialized eigenvalues, the sums run over row blocks of about 2^17 entries, so that
        ``Lambda`` is never stored whole (about twice as fast for n m of millions: the blocks stay
        in cache); elsewhere they use the full ``(n, m)`` arrays.
        """
        if self._sums is not None:
            return self._sums
        grad = self._requires_grad()
        if grad or self.device.type != "cpu" or self._lam is not None or self.n * self.m <= _BLOCK:
            lam, inv = self.eigenvalues(), self._inverse_eigenvalues()
            sums = (torch.log(lam).sum(), inv.sum(), self.D_G @ inv @ self.D_A)
        else:
            rows = max(1, _BLOCK // self.m)
            dg_beta = self.D_G * self.beta
            logs, invs, traces = [], [], []
            for start in range(0, self.n, rows):
                lam = torch.outer(dg_beta[start:start + rows], self.D_A).add_(self.alpha)
                logs.append(torch.log(lam).sum())
                inv = lam.reciprocal_()
                invs.append(inv.sum())
                traces.append(self.D_G[start:start + rows] @ (inv @ self.D_A))
            sums = (torch.stack(logs).sum(), torch.stack(invs).sum(), torch.stack(traces).sum())
        if not grad:
            self._sums = sums
        return sums

    def to_dense(self) -> torch.Tensor:
        """The dense matrix ``(T_G (x) T_A)^-T diag(Lambda) (T_G (x) T_A)^-1``."""
        Tinv = torch.kron(self.T_G_inv.contiguous(), self.T_A_inv.contiguous())
        return Tinv.T @ (self.eigenvalues().reshape(-1, 1) * Tinv)

    def _to_eig(self, X: torch.Tensor) -> torch.Tensor:
        """Coordinates in the eigenbasis: ``T_G^-1 X T_A^-T``."""
        return self.T_G_inv @ X @ self.T_A_inv.T

    def matmul(self, X: torch.Tensor) -> torch.Tensor:
        """The product with vec_row(X) for ``X`` of shape ``(..., n, m)`` (float64 result)."""
        _check_matrix_operand(X, self.n, self.m, "X")
        Y = self._to_eig(X.to(torch.float64)) * self.eigenvalues()
        return self.T_G_inv.T @ Y @ self.T_A_inv

    def quadratic(self, X: torch.Tensor) -> torch.Tensor:
        """``vec(X)^T S vec(X)`` for ``X`` of shape ``(..., n, m)``."""
        _check_matrix_operand(X, self.n, self.m, "X")
        Y = self._to_eig(X.to(torch.float64))
        return (Y * Y * self.eigenvalues()).sum(dim=(-2, -1))

    def solve(self, X: torch.Tensor) -> torch.Tensor:
        """``S^-1 vec(X)`` as a matrix: ``T_G [(T_G^T X T_A) / Lambda] T_A^T``."""
        _check_matrix_operand(X, self.n, self.m, "X")
        Y = self.T_G.T @ X.to(torch.float64) @ self.T_A
        return self.T_G @ (Y * self._inverse_eigenvalues()) @ self.T_A.T

    def inverse_to_dense(self) -> torch.Tensor:
        """The dense inverse ``(T_G (x) T_A) diag(1/Lambda) (T_G (x) T_A)^T`` (tests only)."""
        T = torch.kron(self.T_G.contiguous(), self.T_A.contiguous())
        return (T * self._inverse_eigenvalues().reshape(1, -1)) @ T.T

    def logdet(self) -> torch.Tensor:
        """``logdet(S) = logdet(G_2 (x) A_2) + sum log(Lambda)``."""
        return self.logdet_second + self._weight_sums()[0]

    def trace(self) -> torch.Tensor:
        """``tr(S) = sum_ij Lambda_ij (T_G^-1 T_G^-T)_ii (T_A^-1 T_A^-T)_jj``."""
        dg = (self.T_G_inv ** 2).sum(dim=1)
        da = (self.T_A_inv ** 2).sum(dim=1)
        return dg @ self.eigenvalues() @ da

    def _check_kron(self, K: Kron, name: str) -> None:
        if not isinstance(K, Kron):
            raise TypeError(error_message(name, "a Kron", type(K).__name__, "Build it with Kron(G, A)."))
        if (K.n, K.m) != (self.n, self.m):
            raise ValueError(error_message(name, f"a Kron with factor sizes (n, m) = {(self.n, self.m)}",
                                           f"(n, m) = {(K.n, K.m)}"))

    def projected_diagonals(self, K: Kron) -> tuple[torch.Tensor, torch.Tensor]:
        """``diag(T_G^T G_K T_G)`` and ``diag(T_A^T A_K T_A)``: cache these to re-evaluate traces."""
        self._check_kron(K, "K")
        dg = ((K.G.to(torch.float64) @ self.T_G) * self.T_G).sum(dim=0)
        da = ((K.A.to(torch.float64) @ self.T_A) * self.T_A).sum(dim=0)
        return dg, da

    def trace_product(self, K: Kron | None = None, *, term: int | None = None) -> torch.Tensor:
        """``tr(K S^-1)`` for a Kronecker product ``K``.

        Parameters
        ----------
        K : Kron, optional
            Any ``n x m`` Kronecker product (one ``O(n^3 + m^3)`` projection).
        term : {0, 1}, optional
            Instead of ``K``, one of the decomposed terms, unweighted: ``0`` gives
            ``tr((G_1 (x) A_1) S^-1) = sum D_G D_A^T / Lambda``, ``1`` gives
            ``tr((G_2 (x) A_2) S^-1) = sum 1 / Lambda``. Both cost ``O(n m)``.

        Examples
        --------
        >>> import torch
        >>> S = KronSum([Kron.identity(2, 3), Kron.identity(2, 3)], [1.0, 1.0]).decompose()
        >>> round(float(S.trace_product(term=0)), 12), round(float(S.trace_product(Kron.identity(2, 3))), 12)
        (3.0, 3.0)
        """
        if (K is None) == (term is None):
            raise ValueError(error_message("trace_product", "given exactly one of K or term",
                                           f"K={K!r}, term={term!r}"))
        if term is not None:
            if isinstance(term, bool) or term not in (0, 1):
                raise ValueError(error_message("term of KronDecomposed.trace_product", "0 or 1", term,
                                               "0 is the first (curvature) term, 1 the second (prior) term."))
            _, inv_sum, trace_first = self._weight_sums()
            return inv_sum if term == 1 else trace_first
        dg, da = self.projected_diagonals(K)
        return dg @ self._inverse_eigenvalues() @ da

    def sample_map(self, Z: torch.Tensor) -> torch.Tensor:
        """Map standard normal ``Z`` of shape ``(..., n, m)`` to ``N(0, S^-1)``: ``T_G (Z / sqrt(Lambda)) T_A^T``.

        The map is linear: applied to the unit matrices it gives a square root ``L`` of the
        covariance, ``L L^T = S^-1``. The eigenbasis is not unique (eigenvalue signs, repeated
        eigenvalues), so two decompositions of one matrix (say on two devices) map the same
        ``Z`` to different draws of the same distribution.

        Examples
        --------
        >>> import torch
        >>> S = KronSum([Kron.identity(2, 2), Kron.identity(2, 2)], [1.0, 3.0]).decompose()
        >>> x = S.sample_map(torch.randn(10000, 2, 2, dtype=torch.float64))
        >>> abs(float(x.var()) - 0.25) < 0.02
        True
        """
        _check_matrix_operand(Z, self.n, self.m, "Z")
        return self.T_G @ (Z.to(torch.float64) * self._inverse_eigenvalues().sqrt()) @ self.T_A.T

    # -- the precision protocol (skkprior.precision) -----------------------------------------
    def inverse_factors(self) -> InverseFactors:
        """``(T_G, T_A, 1 / Lambda)``."""
        return InverseFactors(self.T_G, self.T_A, self._inverse_eigenvalues())

    def projected_diagonal(self, left: torch.Tensor | None, right: torch.Tensor | None) -> torch.Tensor:
        """``((M_G o M_G)^T Lambda (M_A o M_A))`` with ``M_G = T_G^-1 L``, ``M_A = T_A^-1 R``."""
        MG = self.T_G_inv if left is None else self.T_G_inv @ left.to(torch.float64)
        MA = self.T_A_inv if right is None else self.T_A_inv @ right.to(torch.float64)
        return (MG * MG).T @ self.eigenvalues() @ (MA * MA)

    def whitened_curvature(self) -> torch.Tensor:
        """``D_G D_A^T``, the curvature's eigenvalues in the prior's metric."""
        return torch.outer(self.D_G, self.D_A)

    def log_eigenvalue_sum(self) -> torch.Tensor:
        return self._weight_sums()[0]

    def trace_term(self, term: int) -> torch.Tensor:
        return self.trace_product(term=term)

    def compress(self, terms: tuple[Precision, Precision], beta: float, alpha: float, *,
                 method: Literal["gram", "power"] = "gram", name: str = "") -> tuple["Kron", float]:
        """The Frobenius-nearest single Kronecker product of ``beta F + alpha P`` (``method`` of
        :meth:`KronSum.nearest`) and its relative Frobenius error."""
        total = KronSum(list(terms), [beta, alpha])
        return positive_definite_nearest(total, method, name), float(total.nearest_error())

    def check_loaded(self, name: str, size: tuple[int, ...], *, semidefinite: bool = False) -> None:
        """Arrays of the shapes ``size = (n, m)`` implies, finite, positive weights, positive definite."""
        if tuple(size) != (self.n, self.m):
            raise ValueError(error_message(name, f"a two-term precision of sizes {tuple(size)}",
                                           f"sizes {(self.n, self.m)}", _CORRUPT_FIX))
        n, m = size
        arrays = {"T_G": (n, n), "T_G_inv": (n, n), "D_G": (n,), "T_A": (m, m), "T_A_inv": (m, m), "D_A": (m,),
                  "logdet_second": ()}
        for attr, shape in arrays.items():
            value = getattr(self, attr)
            if not isinstance(value, torch.Tensor) or tuple(value.shape) != shape:
                raise ValueError(error_message(f"{attr} of {name}", f"a tensor of shape {shape}", value, _CORRUPT_FIX))
            if not bool(torch.isfinite(value).all()):
                raise ValueError(error_message(f"{attr} of {name}", "finite (no NaN or infinity)", value,
                                               _CORRUPT_FIX))
        for attr in ("beta", "alpha"):
            w = _float(getattr(self, attr))
            if not (math.isfinite(w) and w > 0):
                raise ValueError(error_message(f"{attr} of {name}", "a positive finite number", repr(w), _CORRUPT_FIX))
        try:
            self._check_positive()
        except ValueError as exc:
            raise ValueError(error_message(name, "positive definite", str(exc), _CORRUPT_FIX)) from exc

    def state(self) -> dict[str, Any]:
        return {"type": self.kind, "T_G": self.T_G, "T_G_inv": self.T_G_inv, "D_G": self.D_G,
                "T_A": self.T_A, "T_A_inv": self.T_A_inv, "D_A": self.D_A, "beta": float(self.beta),
                "alpha": float(self.alpha), "logdet_second": self.logdet_second}

    @classmethod
    def from_state(cls, state: Any) -> "KronDecomposed":
        return cls(state["T_G"], state["T_G_inv"], state["D_G"], state["T_A"], state["T_A_inv"], state["D_A"],
                   beta=float(state["beta"]), alpha=float(state["alpha"]),
                   logdet_second=state["logdet_second"])
