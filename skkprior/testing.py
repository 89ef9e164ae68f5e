r"""Helpers for testing Kronecker-structured operators against their dense matrices.

Every structured operation in :mod:`skkprior.kron` has a dense twin. This module holds what the
tests (ours, and those of code built on skkprior) need to compare the two well:

- :func:`assert_close_dense`: an ``allclose`` that, on failure, reports the worst entries
  (index, actual, expected, absolute and relative error) instead of a bare ``False``;
- :func:`assert_small_residual`: a normwise backward-error check for solves, the well-posed
  comparison when the dense matrix is too ill-conditioned for a dense float64 solve to be a
  reference (a product of two factors with condition number ``1e10`` has ``1e20``);
- :func:`high_precision_logdet`, :func:`high_precision_inverse`, :func:`high_precision_solve`:
  references computed with ``mpmath`` (optional dependency) from the exact float64 entries;
- :func:`random_spd`, :func:`random_psd`, :func:`vec_row`: inputs with a chosen condition number
  or rank, and the row-major vectorization of docs/concepts.md, section 1;
- :class:`KroneckerOperatorTests`: a pytest mixin. A Kronecker type supplies only a
  constructor ``make(case) -> (operator, dense)`` and inherits the checks of ``to_dense``,
  ``matmul`` (single and batched), ``quadratic``, ``trace``, and, where the type offers them,
  ``logdet``, ``solve``, ``inverse`` / ``inverse_to_dense``, plus ``to(dtype/device)`` and the
  error on a wrongly shaped operand, over several sizes (rectangular ``n != m`` included) and
  condition numbers.

Examples
--------
>>> import torch
>>> from skkprior.kron import Kron
>>> G, A = random_spd(2, cond=1e3), random_spd(3)
>>> assert_close_dense(Kron(G, A).to_dense(), torch.kron(G, A), rtol=1e-14, atol=0.0, name="kron")
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import torch

from ._validation import error_message

__all__ = [
    "KroneckerOperatorTests",
    "OperatorCase",
    "PrecisionTests",
    "assert_close_dense",
    "assert_small_residual",
    "high_precision_inverse",
    "high_precision_logdet",
    "high_precision_solve",
    "random_psd",
    "random_spd",
    "vec_row",
]

_EPS64 = float(torch.finfo(torch.float64).eps)


# -- comparisons ---------------------------------------------------------------------------
def _as_float64(value: Any, name: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().to(device="cpu", dtype=torch.float64)
    try:
        return torch.as_tensor(value, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TypeError(error_message(name, "a tensor or an array-like of numbers",
                                      type(value).__name__)) from exc


def assert_close_dense(actual: Any, expected: Any, *, rtol: float = 1e-10, atol: float = 0.0,
                       name: str = "value", max_report: int = 5) -> None:
    """Assert ``|actual - expected| <= atol + rtol |expected|`` entrywise, reporting the worst entries.

    Both are compared in float64 on the CPU. NaN never matches (not even NaN); an infinity
    matches only the same infinity.

    Parameters
    ----------
    actual, expected : torch.Tensor or array-like
        Values to compare; shapes must be equal.
    rtol : float, default=1e-10
        Relative tolerance.
    atol : float, default=0.0
        Absolute tolerance (set it to a multiple of the scale of ``expected`` when entries that
        should be zero are compared).
    name : str, default="value"
        What is compared, for the message.
    max_report : int, default=5
        How many of the worst entries the message lists.

    Raises
    ------
    AssertionError
        On a shape mismatch, or when an entry is outside the tolerance. The message lists the
        worst entries (largest error relative to its tolerance) with index, actual, expected,
        absolute and relative error.

    Examples
    --------
    >>> import torch
    >>> assert_close_dense(torch.tensor([1.0, 2.0]), [1.0, 2.0 + 1e-12], rtol=1e-9)
    >>> try:
    ...     assert_close_dense(torch.tensor([[1.0, 2.0]]), [[1.0, 2.5]], rtol=1e-9, name="M")
    ... except AssertionError as err:
    ...     print(err)
    M: 1 of 2 entries differ beyond atol=0 + rtol=1e-09 * |expected| (max abs err 0.5, max rel err 0.2)
      index (0, 1): actual 2, expected 2.5, abs err 0.5, rel err 0.2
    """
    a = _as_float64(actual, "actual")
    e = _as_float64(expected, "expected")
    if a.shape != e.shape:
        raise AssertionError(f"{name}: shape {tuple(a.shape)} differs from the expected shape {tuple(e.shape)}")
    if a.numel() == 0:
        return
    same_inf = torch.isinf(a) & torch.isinf(e) & (a == e)
    err = (a - e).abs()
    err = torch.where(same_inf, torch.zeros_like(err), err)
    err = torch.where(torch.isnan(a) | torch.isnan(e), torch.full_like(err, math.inf), err)
    tol = atol + rtol * e.abs()
    tol = torch.where(torch.isinf(e), torch.zeros_like(tol), tol)
    bad = ~(err <= tol)
    if not bool(bad.any()):
        return
    rel = err / e.abs()
    excess = torch.where(tol > 0, err / tol, torch.where(err > 0, math.inf, 0.0))
    excess = torch.where(bad, excess, torch.full_like(excess, -1.0)).reshape(-1)
    order = torch.argsort(excess, descending=True, stable=True)[:min(max_report, int(bad.sum()))]
    finite = bad & torch.isfinite(err)
    max_abs = float(err[finite].max()) if bool(finite.any()) else math.inf
    max_rel = float(rel[finite].max()) if bool(finite.any()) else math.inf
    lines = [f"{name}: {int(bad.sum())} of {a.numel()} entries differ beyond atol={atol:.3g} + "
             f"rtol={rtol:.3g} * |expected| (max abs err {max_abs:.3g}, max rel err {max_rel:.3g})"]
    flat_a, flat_e, flat_err, flat_rel = a.reshape(-1), e.reshape(-1), err.reshape(-1), rel.reshape(-1)
    for k in order.tolist():
        index = tuple(int(i) for i in torch.unravel_index(torch.tensor(k), a.shape)) if a.ndim else ()
        lines.append(f"  index {index}: actual {float(flat_a[k]):.17g}, expected {float(flat_e[k]):.17g}, "
                     f"abs err {float(flat_err[k]):.3g}, rel err {float(flat_rel[k]):.3g}")
    raise AssertionError("\n".join(lines))


def assert_small_residual(matrix: Any, solution: Any, rhs: Any, *, tol: float = 1e-12,
                          name: str = "solve") -> None:
    """Assert the normwise backward error of a solve is at most ``tol``.

    The backward error ``||M x - b||_F / (||M||_F ||x||_F + ||b||_F)`` is what a backward-stable
    solver keeps near machine precision whatever the condition number of ``M``, so it is the
    well-posed check when ``M`` is too ill-conditioned for a dense float64 solve to serve as
    reference.

    Parameters
    ----------
    matrix : torch.Tensor of shape (d, d)
        The dense matrix ``M``.
    solution, rhs : torch.Tensor of shape (d,) or (d, k)
        The computed ``x`` and the right-hand side ``b``.
    tol : float, default=1e-12
        Largest accepted backward error.
    name : str, default="solve"
        What is checked, for the message.

    Raises
    ------
    AssertionError
        When the backward error exceeds ``tol``.

    Examples
    --------
    >>> import torch
    >>> M = torch.diag(torch.tensor([1.0, 1e-12], dtype=torch.float64))
    >>> b = torch.tensor([1.0, 1.0], dtype=torch.float64)
    >>> assert_small_residual(M, torch.linalg.solve(M, b), b, tol=1e-15)
    """
    M = _as_float64(matrix, "matrix")
    x = _as_float64(solution, "solution")
    b = _as_float64(rhs, "rhs")
    if M.ndim != 2 or M.shape[0] != M.shape[1] or x.shape != b.shape or x.shape[0] != M.shape[1]:
        raise AssertionError(f"{name}: shapes do not match: matrix {tuple(M.shape)}, "
                             f"solution {tuple(x.shape)}, rhs {tuple(b.shape)}")
    residual = torch.linalg.norm(M @ x - b)
    scale = torch.linalg.norm(M) * torch.linalg.norm(x) + torch.linalg.norm(b)
    backward = float(residual / scale) if float(scale) > 0 else float(residual)
    if not backward <= tol:
        raise AssertionError(f"{name}: backward error {backward:.3g} exceeds tol={tol:.3g} "
                             f"(residual {float(residual):.3g}, ||M|| ||x|| + ||b|| = {float(scale):.3g})")


# -- high-precision references (optional mpmath) ------------------------------------------
def _mpmath() -> Any:
    try:
        import mpmath
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("The high-precision references need mpmath: pip install mpmath. "
                          "In tests, guard with pytest.importorskip('mpmath').") from exc
    return mpmath


def _to_mp(mp: Any, matrix: torch.Tensor) -> Any:
    rows = matrix.detach().to(device="cpu", dtype=torch.float64).tolist()
    return mp.matrix([[mp.mpf(v) for v in row] for row in rows])  # exact: mpf(float) is exact


def _is_terms(matrix: Any) -> bool:
    return (isinstance(matrix, (list, tuple)) and len(matrix) > 0
            and all(isinstance(t, (list, tuple)) and len(t) == 3 for t in matrix))


def _mp_square(mp: Any, matrix: Any, name: str) -> Any:
    """An mpmath matrix, from a dense matrix or exactly from ``[(weight, G, A), ...]``."""
    if _is_terms(matrix):
        out = None
        for weight, G, A in matrix:
            g, a = _to_mp(mp, _as_float64(G, "G")), _to_mp(mp, _as_float64(A, "A"))
            w = mp.mpf(float(weight))
            n, m = g.rows, a.rows
            term = mp.matrix(n * m, n * m)
            for i, j, k, l in itertools.product(range(n), range(n), range(m), range(m)):
                term[i * m + k, j * m + l] = w * g[i, j] * a[k, l]
            if out is not None and (out.rows != term.rows):
                raise ValueError(error_message(name, "terms of one size", f"sizes {out.rows} and {term.rows}"))
            out = term if out is None else out + term
        return out
    M = _as_float64(matrix, name)
    if M.ndim != 2 or M.shape[0] != M.shape[1] or M.shape[0] == 0:
        raise ValueError(error_message(name, "a non-empty square 2-D matrix or a list of "
                                       "(weight, G, A) terms", M))
    return _to_mp(mp, M)


def high_precision_logdet(matrix: Any, *, dps: int = 50) -> float:
    """``log det(M)`` of a positive-determinant matrix in ``dps`` digits.

    ``matrix`` is a dense float64 matrix, whose entries are taken as exact, or a list of
    ``(weight, G, A)`` triples meaning ``sum_k weight_k G_k (x) A_k`` with the Kronecker products
    formed exactly in high precision. Use the second form for ill-conditioned factors: rounding
    the entries of ``G (x) A`` to float64 perturbs it by ``eps ||G (x) A||``, which is larger than
    the smallest eigenvalue once ``cond(G) cond(A) > 1 / eps``.

    Uses ``mpmath`` (an optional dependency); cost ``O(d^3)`` multiprecision operations, so keep
    ``d`` small (tens).

    Examples
    --------
    >>> import torch
    >>> M = torch.diag(torch.tensor([1e10, 1e-10], dtype=torch.float64))
    >>> abs(high_precision_logdet(M)) < 1e-12
    True
    >>> G = torch.diag(torch.tensor([1.0, 1e-10], dtype=torch.float64))
    >>> round(high_precision_logdet([(1.0, G, G)]), 6) == round(4 * math.log(1e-10), 6)
    True
    """
    mp = _mpmath()
    with mp.workdps(dps):
        det = mp.det(_mp_square(mp, matrix, "matrix"))
        if det <= 0:
            raise ValueError(error_message("matrix", "of positive determinant",
                                           f"a determinant of {mp.nstr(det, 5)}"))
        return float(mp.log(det))


def high_precision_inverse(matrix: Any, *, dps: int = 50) -> torch.Tensor:
    """The inverse of ``M`` in ``dps`` digits, rounded to float64.

    ``matrix`` as in :func:`high_precision_logdet` (dense, or ``(weight, G, A)`` terms).

    Examples
    --------
    >>> import torch
    >>> M = torch.tensor([[1.0, 1.0], [1.0, 1.0 + 1e-15]], dtype=torch.float64)
    >>> inv = high_precision_inverse(M)
    >>> float((inv @ M - torch.eye(2, dtype=torch.float64)).abs().max()) < 1e-15 * float(inv.abs().max())
    True
    """
    mp = _mpmath()
    with mp.workdps(dps):
        inv = mp.inverse(_mp_square(mp, matrix, "matrix"))
        return torch.tensor([[float(inv[i, j]) for j in range(inv.cols)] for i in range(inv.rows)],
                            dtype=torch.float64)


def high_precision_solve(matrix: Any, rhs: Any, *, dps: int = 50) -> torch.Tensor:
    """``M^-1 b`` for ``b`` of shape ``(d,)`` or ``(d, k)`` in ``dps`` digits, rounded to float64.

    ``matrix`` as in :func:`high_precision_logdet` (dense, or ``(weight, G, A)`` terms).

    Examples
    --------
    >>> import torch
    >>> M = torch.diag(torch.tensor([2.0, 1e-12], dtype=torch.float64))
    >>> high_precision_solve(M, torch.tensor([1.0, 1.0], dtype=torch.float64)).tolist()
    [0.5, 1000000000000.0]
    """
    mp = _mpmath()
    b = _as_float64(rhs, "rhs")
    vector = b.ndim == 1
    b2 = b.reshape(-1, 1) if vector else b
    with mp.workdps(dps):
        M = _mp_square(mp, matrix, "matrix")
        if b2.ndim != 2 or b2.shape[0] != M.rows:
            raise ValueError(error_message("rhs", f"of shape ({M.rows},) or ({M.rows}, k)", b))
        columns = []
        for j in range(b2.shape[1]):
            x = mp.lu_solve(M, mp.matrix([mp.mpf(v) for v in b2[:, j].tolist()]))
            columns.append([float(x[i]) for i in range(M.rows)])
        out = torch.tensor(columns, dtype=torch.float64).T.contiguous()
    return out.reshape(-1) if vector else out


# -- inputs -------------------------------------------------------------------------------
def random_spd(n: int, *, cond: float = 10.0, scale: float = 1.0,
               generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64,
               device: torch.device | str | None = None) -> torch.Tensor:
    """A random symmetric positive definite ``n x n`` matrix with condition number about ``cond``.

    Eigenvalues are log-spaced from ``scale`` down to ``scale / cond`` in a random orthonormal
    basis; the result is built in float64, symmetrized exactly, then cast to ``dtype``.

    Examples
    --------
    >>> import torch
    >>> M = random_spd(4, cond=1e6, generator=torch.Generator().manual_seed(0))
    >>> bool(torch.equal(M, M.T)), round(float(torch.linalg.cond(M)), -3)
    (True, 1000000.0)
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(error_message("n of random_spd", "a positive int", n))
    if not (isinstance(cond, (int, float)) and math.isfinite(cond) and cond >= 1):
        raise ValueError(error_message("cond of random_spd", "a finite number >= 1", cond))
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise ValueError(error_message("scale of random_spd", "a finite positive number", scale))
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    ev = scale * torch.logspace(0.0, -math.log10(cond), n, dtype=torch.float64)
    M = (q * ev) @ q.T
    return ((M + M.T) / 2).to(dtype=dtype, device=device)


def random_psd(n: int, rank: int, *, scale: float = 1.0, generator: torch.Generator | None = None,
               dtype: torch.dtype = torch.float64,
               device: torch.device | str | None = None) -> torch.Tensor:
    """A random symmetric positive semi-definite ``n x n`` matrix of rank ``rank`` (``B B^T``).

    Examples
    --------
    >>> import torch
    >>> int(torch.linalg.matrix_rank(random_psd(5, 2)))
    2
    """
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank <= n:
        raise ValueError(error_message("rank of random_psd", f"an int in [0, {n}]", rank))
    B = torch.randn(n, rank, generator=generator, dtype=torch.float64) * math.sqrt(scale)
    M = B @ B.T
    return ((M + M.T) / 2).to(dtype=dtype, device=device)


def vec_row(X: torch.Tensor) -> torch.Tensor:
    """Row-major vectorization of the last two axes: ``(..., n, m) -> (..., n m)`` (docs/concepts.md, section 1).

    Examples
    --------
    >>> import torch
    >>> vec_row(torch.tensor([[1, 2], [3, 4]])).tolist()
    [1, 2, 3, 4]
    """
    if not isinstance(X, torch.Tensor) or X.ndim < 2:
        raise ValueError(error_message("X of vec_row", "a tensor with at least two dimensions", X))
    return X.reshape(*X.shape[:-2], X.shape[-2] * X.shape[-1])


# -- the test mixin ---------------------------------------------------------------------------
@dataclass(frozen=True)
class OperatorCase:
    """One test case of :class:`KroneckerOperatorTests`: factor sizes, condition number, seed.

    Examples
    --------
    >>> case = OperatorCase(2, 3, 1e10, seed=1)
    >>> case.id, case.dim
    ('n2-m3-cond1e+10-seed1', 6)
    """

    n: int
    m: int
    cond: float
    seed: int = 0

    @property
    def dim(self) -> int:
        """``n m``, the side of the dense matrix."""
        return self.n * self.m

    @property
    def id(self) -> str:
        return f"n{self.n}-m{self.m}-cond{self.cond:.0e}-seed{self.seed}"

    def generator(self, offset: int = 0) -> torch.Generator:
        """A CPU generator seeded from the case (and ``offset``), for reproducible inputs."""
        return torch.Generator().manual_seed(1_000_003 * self.seed + 1009 * self.n + 17 * self.m + offset)


class KroneckerOperatorTests:
    r"""pytest mixin: dense-comparison checks for a Kronecker-structured operator type.

    Subclass it in a class whose name starts with ``Test`` and implement :meth:`make`; pytest
    then runs every ``test_*`` method below once per case of :meth:`cases` (sizes ``sizes``
    times condition numbers ``conditions``). Optional operations are checked when the operator
    has them: ``logdet``, ``solve``, ``inverse`` (returning an operator with ``to_dense``) and
    ``inverse_to_dense``.

    The operator must offer ``n``, ``m``, ``shape``, ``dtype``, ``device``, ``to_dense()``,
    ``matmul(X)`` and ``quadratic(X)`` on ``(..., n, m)`` matrices (the product of the dense
    matrix with ``vec_row(X)``), ``trace()`` and ``to(...)``.

    ``make(case)`` returns ``(operator, dense)`` or ``(operator, dense, exact)``. For
    ill-conditioned factors return ``exact``, the list of ``(weight, G, A)`` triples whose sum
    is the operator: the high-precision references are then formed from the factors. (Rounding
    the entries of ``G (x) A`` to float64 perturbs the matrix by ``eps ||G (x) A||``, more than
    its smallest eigenvalue once ``cond(G) cond(A) > 1 / eps``: the rounded dense matrix can
    even have a negative determinant.)

    Tolerances. Forward operations (``to_dense``, ``matmul``, ``quadratic``, ``trace``) are
    compared entrywise with ``rtol`` relative to the scale of the exact sum (``|M| |x|``).
    ``logdet``, ``inverse`` and forward errors of ``solve`` depend on the conditioning:
    with ``kappa = case.cond`` (per factor), they are compared with tolerance
    ``ill_factor * eps * kappa`` (times ``d`` for the log-determinant), against dense float64
    when ``kappa <= well_conditioned``, else against an ``mpmath`` reference when the dimension is
    at most ``high_precision_max_dim`` (skipped without mpmath). A solve is always checked by its
    backward error (:func:`assert_small_residual`, tolerance ``residual_tol``), which needs no
    reference.

    Attributes
    ----------
    sizes : sequence of (int, int)
        Factor sizes ``(n, m)``; rectangular ones included by default.
    conditions : sequence of float
        Condition numbers per factor handed to :meth:`make` through the case.
    keeps_float64 : bool
        ``True`` for types whose ``to(dtype)`` keeps float64 (decompositions).
    rtol, residual_tol, ill_factor, well_conditioned, high_precision_max_dim : float or int
        Tolerances and thresholds described above.

    Examples
    --------
    A complete test class for :class:`~skkprior.kron.Kron` (pytest collects ``TestMyKron``):

    >>> from skkprior.kron import Kron
    >>> class TestMyKron(KroneckerOperatorTests):
    ...     sizes = ((1, 2), (3, 2))
    ...     def make(self, case):
    ...         G = random_spd(case.n, cond=case.cond, generator=case.generator(1))
    ...         A = random_spd(case.m, cond=case.cond, generator=case.generator(2))
    ...         return Kron(G, A), torch.kron(G, A)
    >>> suite = TestMyKron()
    >>> case = suite.cases()[0]
    >>> suite.test_matmul(case); suite.test_logdet(case); suite.test_solve(case)
    >>> len(suite.cases())
    4
    """

    sizes: ClassVar[Sequence[tuple[int, int]]] = ((1, 1), (1, 4), (3, 1), (2, 3), (4, 2), (6, 6))
    conditions: ClassVar[Sequence[float]] = (10.0, 1e10)
    keeps_float64: ClassVar[bool] = False
    rtol: ClassVar[float] = 1e-11
    residual_tol: ClassVar[float] = 1e-13
    ill_factor: ClassVar[float] = 100.0
    well_conditioned: ClassVar[float] = 1e3
    high_precision_max_dim: ClassVar[int] = 16

    # -- to implement / override -------------------------------------------------------------
    def make(self, case: OperatorCase) -> tuple[Any, torch.Tensor] | tuple[Any, torch.Tensor, Any]:
        """Return ``(operator, dense)`` or ``(operator, dense, exact)`` for ``case``.

        ``dense`` is the float64 matrix. ``exact``, optional, lists ``(weight, G, A)`` triples
        whose sum is the operator exactly; the high-precision references are then built from the
        factors rather than from the rounded ``dense`` (needed for ill-conditioned factors).
        """
        raise NotImplementedError("Subclasses of KroneckerOperatorTests implement make(case).")

    def _make(self, case: OperatorCase) -> tuple[Any, torch.Tensor, Any]:
        made = self.make(case)
        if len(made) == 2:
            return made[0], made[1], made[1]
        return made[0], made[1], made[2]

    def cases(self) -> list[OperatorCase]:
        """Every ``(n, m)`` of ``sizes`` with every condition number of ``conditions``."""
        return [OperatorCase(n, m, float(c), seed=i)
                for i, ((n, m), c) in enumerate(itertools.product(self.sizes, self.conditions))]

    def pytest_generate_tests(self, metafunc: Any) -> None:
        """pytest hook: parametrize every test that takes ``case`` over :meth:`cases`."""
        if "case" in metafunc.fixturenames:
            cases = self.cases()
            metafunc.parametrize("case", cases, ids=[c.id for c in cases])

    # -- helpers -----------------------------------------------------------------------------
    def _operand(self, case: OperatorCase, *batch: int, offset: int = 100) -> torch.Tensor:
        return torch.randn(*batch, case.n, case.m, generator=case.generator(offset), dtype=torch.float64)

    def _ill_tol(self, case: OperatorCase) -> float:
        return self.ill_factor * _EPS64 * max(case.cond, 1.0)

    def _reference(self, case: OperatorCase) -> bool:
        """Whether a float64 dense reference is trusted (else high precision, else skip)."""
        return case.cond <= self.well_conditioned

    def _need_high_precision(self, case: OperatorCase) -> Any:
        import pytest

        if case.dim > self.high_precision_max_dim:
            pytest.skip(f"ill-conditioned case of dimension {case.dim} > high_precision_max_dim; "
                        "covered by the residual checks")
        return pytest.importorskip("mpmath")

    # -- checks ----------------------------------------------------------------------------------
    def test_shape(self, case: OperatorCase) -> None:
        op, dense, exact = self._make(case)
        assert (op.n, op.m) == (case.n, case.m), f"{case.id}: (n, m) = {(op.n, op.m)}"
        assert tuple(op.shape) == (case.dim, case.dim) == tuple(dense.shape), case.id
        assert "(" in repr(op) and type(op).__name__ in repr(op)

    def test_to_dense(self, case: OperatorCase) -> None:
        op, dense, exact = self._make(case)
        scale = float(dense.abs().max())
        assert_close_dense(op.to_dense(), dense, rtol=self.rtol, atol=self.rtol * scale * case.dim,
                           name=f"to_dense [{case.id}]")

    def _check_matmul(self, op: Any, dense: torch.Tensor, X: torch.Tensor, case: OperatorCase) -> None:
        Y = op.matmul(X)
        assert Y.shape == X.shape, f"matmul [{case.id}]: shape {tuple(Y.shape)} != {tuple(X.shape)}"
        x = vec_row(X).unsqueeze(-1)
        expected = (dense @ x).squeeze(-1)
        bound = (dense.abs() @ x.abs()).squeeze(-1)
        assert_close_dense(vec_row(Y), expected, rtol=self.rtol, atol=self.rtol * float(bound.max()) * case.dim,
                           name=f"matmul [{case.id}]")

    def test_matmul(self, case: OperatorCase) -> None:
        op, dense, exact = self._make(case)
        self._check_matmul(op, dense, self._operand(case), case)

    def test_matmul_batched(self, case: OperatorCase) -> None:
        op, dense, exact = self._make(case)
        self._check_matmul(op, dense, self._operand(case, 2, 3), case)

    def test_quadratic(self, case: OperatorCase) -> None:
        op, dense, exact = self._make(case)
        X = self._operand(case, 4)
        x = vec_row(X)
        expected = torch.einsum("bi,ij,bj->b", x, dense, x)
        bound = torch.einsum("bi,ij,bj->b", x.abs(), dense.abs(), x.abs())
        assert_close_dense(op.quadratic(X), expected, rtol=self.rtol,
                           atol=self.rtol * float(bound.max()) * case.dim, name=f"quadratic [{case.id}]")

    def test_trace(self, case: OperatorCase) -> None:
        op, dense, exact = self._make(case)
        bound = float(dense.diagonal().abs().sum())
        assert_close_dense(op.trace(), torch.trace(dense), rtol=self.rtol,
                           atol=self.rtol * bound * case.dim, name=f"trace [{case.id}]")

    def test_logdet(self, case: OperatorCase) -> None:
        import pytest

        op, dense, exact = self._make(case)
        if not hasattr(op, "logdet"):
            pytest.skip(f"{type(op).__name__} has no logdet")
        if self._reference(case):
            sign, expected = torch.linalg.slogdet(dense)
            assert float(sign) > 0, f"{case.id}: the dense matrix must be positive definite"
            tol = 1e3 * _EPS64 * case.dim * max(1.0, abs(float(expected)))
        else:
            self._need_high_precision(case)
            expected = high_precision_logdet(exact)
            tol = self._ill_tol(case) * case.dim
        assert_close_dense(op.logdet(), expected, rtol=0.0, atol=tol, name=f"logdet [{case.id}]")

    def test_solve(self, case: OperatorCase) -> None:
        import pytest

        op, dense, exact = self._make(case)
        if not hasattr(op, "solve"):
            pytest.skip(f"{type(op).__name__} has no solve")
        B = self._operand(case, 3, offset=200)
        X = op.solve(B)
        assert X.shape == B.shape, f"solve [{case.id}]: shape {tuple(X.shape)} != {tuple(B.shape)}"
        x, b = vec_row(X).T, vec_row(B).T
        assert_small_residual(dense, x, b, tol=self.residual_tol, name=f"solve residual [{case.id}]")
        if self._reference(case):
            expected = torch.linalg.solve(dense, b)
            tol = 1e3 * _EPS64 * case.cond ** 2
        elif case.dim <= self.high_precision_max_dim and _has_mpmath():
            expected = high_precision_solve(exact, b)
            tol = self._ill_tol(case)
        else:
            return
        scale = float(expected.abs().max())
        assert_close_dense(x, expected, rtol=tol, atol=tol * scale, name=f"solve [{case.id}]")

    def test_solve_batched_matches_single(self, case: OperatorCase) -> None:
        import pytest

        op, _, _ = self._make(case)
        if not hasattr(op, "solve"):
            pytest.skip(f"{type(op).__name__} has no solve")
        B = self._operand(case, 2, 2, offset=300)
        X = op.solve(B)
        for i, j in itertools.product(range(2), range(2)):
            assert_close_dense(X[i, j], op.solve(B[i, j]), rtol=1e-12, atol=1e-12 * float(X.abs().max()),
                               name=f"batched solve [{case.id}]")

    def test_inverse(self, case: OperatorCase) -> None:
        import pytest

        op, dense, exact = self._make(case)
        if hasattr(op, "inverse"):
            inv = op.inverse().to_dense()
        elif hasattr(op, "inverse_to_dense"):
            inv = op.inverse_to_dense()
        else:
            pytest.skip(f"{type(op).__name__} has no inverse")
        if self._reference(case):
            expected = torch.linalg.inv(dense)
            tol = 1e3 * _EPS64 * case.cond ** 2
        else:
            self._need_high_precision(case)
            expected = high_precision_inverse(exact)
            tol = self._ill_tol(case)
        scale = float(expected.abs().max())
        assert_close_dense(inv, expected, rtol=tol, atol=tol * scale, name=f"inverse [{case.id}]")

    def test_to_dtype_and_device(self, case: OperatorCase) -> None:
        op, dense, exact = self._make(case)
        same = op.to("cpu")
        assert same.device.type == "cpu"
        assert_close_dense(same.to_dense(), dense, rtol=self.rtol,
                           atol=self.rtol * float(dense.abs().max()) * case.dim, name=f"to('cpu') [{case.id}]")
        low = op.to(torch.float32)
        expected_dtype = torch.float64 if self.keeps_float64 else torch.float32
        assert low.dtype == expected_dtype, f"{case.id}: to(float32) gave {low.dtype}"
        assert low.to_dense().dtype == expected_dtype
        rtol = self.rtol if self.keeps_float64 else 1e-5
        assert_close_dense(low.to_dense(), dense, rtol=rtol, atol=rtol * float(dense.abs().max()) * case.dim,
                           name=f"to(float32) [{case.id}]")

    def test_matmul_rejects_wrong_shape(self, case: OperatorCase) -> None:
        import pytest

        op, _, _ = self._make(case)
        with pytest.raises(ValueError, match=r"X must be a tensor of shape \(\.\.\., "):
            op.matmul(torch.zeros(case.n + 1, case.m, dtype=torch.float64))
        with pytest.raises(ValueError, match=r"X must be a tensor of shape"):
            op.matmul(torch.zeros(case.n * case.m, dtype=torch.float64))


def _has_mpmath() -> bool:
    try:
        import mpmath  # noqa: F401
    except ImportError:  # pragma: no cover - depends on the environment
        return False
    return True


class PrecisionTests:
    r"""pytest mixin: dense-truth checks of the precision protocol (:mod:`skkprior.precision`).

    A precision type supplies :meth:`make` (``case -> (precision, dense)``) and inherits checks of
    ``to_dense``, ``quadratic`` (batched), ``logdet``, the scaled-basis form of the inverse
    (``inverse_factors`` and ``sample_map`` against the dense inverse, as residuals),
    ``projected_diagonal`` on random bases, ``trace_inverse_product`` against a Kronecker, an
    isotropic and a diagonal precision, ``scaled``, and the ``weights_only`` file round trip.
    A two-term type also supplies :meth:`make_terms` (the dense ``F``, the dense second term and
    the weights it was built with) and inherits checks of ``eigenvalues`` / ``logdet_second``,
    both trace terms, ``with_weights`` and ``compress``.

    Tolerances are relative, ``rtol`` times the case's condition number (per factor) where an
    inverse is involved; sizes are tiny (float64 dense references).

    Examples
    --------
    >>> from skkprior.precision import DiagonalPrecision
    >>> class TestMyDiagonal(PrecisionTests):
    ...     def make(self, case):
    ...         v = torch.rand(case.n, case.m, generator=case.generator(1), dtype=torch.float64) + 0.5
    ...         return DiagonalPrecision(v), torch.diag(v.reshape(-1))
    >>> suite = TestMyDiagonal()
    >>> for case in suite.cases()[:2]:
    ...     suite.test_logdet(case); suite.test_inverse_factors(case); suite.test_state_round_trip(case)
    """

    sizes: ClassVar[Sequence[tuple[int, int]]] = ((1, 1), (1, 3), (3, 1), (2, 3), (4, 2))
    conditions: ClassVar[Sequence[float]] = (10.0, 1e4)
    rtol: ClassVar[float] = 1e-10

    def make(self, case: OperatorCase) -> tuple[Any, torch.Tensor]:
        """Return ``(precision, dense)`` for ``case``."""
        raise NotImplementedError("Subclasses of PrecisionTests implement make(case).")

    def make_terms(self, case: OperatorCase) -> tuple[torch.Tensor, torch.Tensor, float, float]:
        """Two-term types: ``(F_dense, second_dense, beta, alpha)`` of the precision :meth:`make` returns."""
        raise NotImplementedError("Two-term precision types implement make_terms(case).")

    cases = KroneckerOperatorTests.cases
    pytest_generate_tests = KroneckerOperatorTests.pytest_generate_tests

    # -- helpers -------------------------------------------------------------------------------
    def _tol(self, case: OperatorCase, inverse: bool = False) -> float:
        return self.rtol * (case.cond ** 2 if inverse else 1.0) * case.dim

    @staticmethod
    def _coords(op: Any, case: OperatorCase, *batch: int, offset: int = 100) -> torch.Tensor:
        return torch.randn(*batch, case.n, case.m, generator=case.generator(offset), dtype=torch.float64)

    @staticmethod
    def _is_two_term(op: Any) -> bool:
        from .precision import TwoTermPrecision

        return isinstance(op, TwoTermPrecision)

    def _others(self, case: OperatorCase) -> list[tuple[Any, torch.Tensor]]:
        from .kron import Kron
        from .precision import DiagonalPrecision, IsotropicPrecision

        G = random_spd(case.n, cond=5.0, generator=case.generator(7))
        A = random_spd(case.m, cond=5.0, generator=case.generator(8))
        v = torch.rand(case.n, case.m, generator=case.generator(9), dtype=torch.float64) + 0.1
        return [(Kron(G, A), torch.kron(G, A)), (IsotropicPrecision(2.5, case.dim), 2.5 * torch.eye(case.dim,
                 dtype=torch.float64)), (DiagonalPrecision(v), torch.diag(v.reshape(-1)))]

    # -- checks ----------------------------------------------------------------------------------
    def test_to_dense(self, case: OperatorCase) -> None:
        op, dense = self.make(case)
        assert op.dim == case.dim and tuple(op.shape) == (case.dim, case.dim), case.id
        scale = float(dense.abs().max())
        assert_close_dense(op.to_dense(), dense, rtol=self._tol(case), atol=self._tol(case) * scale,
                           name=f"to_dense [{case.id}]")

    def test_quadratic(self, case: OperatorCase) -> None:
        op, dense = self.make(case)
        X = self._coords(op, case, 3)
        x = vec_row(X)
        expected = torch.einsum("bi,ij,bj->b", x, dense, x)
        bound = torch.einsum("bi,ij,bj->b", x.abs(), dense.abs(), x.abs())
        got = op.quadratic(X).to(torch.float64)
        assert_close_dense(got, expected, rtol=self._tol(case), atol=self._tol(case) * float(bound.max()),
                           name=f"quadratic [{case.id}]")

    def test_logdet(self, case: OperatorCase) -> None:
        op, dense = self.make(case)
        expected = torch.linalg.slogdet(dense)[1]
        tol = self._tol(case, inverse=True) * max(1.0, abs(float(expected)))
        assert abs(float(op.logdet()) - float(expected)) <= tol, f"logdet [{case.id}]"

    def test_inverse_factors(self, case: OperatorCase) -> None:
        op, dense = self.make(case)
        left, right, scale = op.inverse_factors()
        L = torch.eye(case.n, dtype=torch.float64) if left is None else left.to(torch.float64)
        R = torch.eye(case.m, dtype=torch.float64) if right is None else right.to(torch.float64)
        B = torch.kron(L.contiguous(), R.contiguous())
        s = torch.broadcast_to(scale.to(torch.float64), (case.n, case.m)).reshape(-1)
        residual = dense @ (B * s) @ B.T - torch.eye(case.dim, dtype=torch.float64)
        assert float(residual.abs().max()) <= self._tol(case, inverse=True) * 10, f"inverse_factors [{case.id}]"

    def test_sample_map(self, case: OperatorCase) -> None:
        op, dense = self.make(case)
        eye = torch.eye(case.dim, dtype=torch.float64).reshape(case.dim, case.n, case.m)
        W = vec_row(op.sample_map(eye)).T  # columns: images of the unit vectors
        residual = dense @ W @ W.T - torch.eye(case.dim, dtype=torch.float64)
        assert float(residual.abs().max()) <= self._tol(case, inverse=True) * 10, f"sample_map [{case.id}]"

    def test_projected_diagonal(self, case: OperatorCase) -> None:
        op, dense = self.make(case)
        L = torch.randn(case.n, case.n, generator=case.generator(11), dtype=torch.float64)
        R = torch.randn(case.m, case.m, generator=case.generator(12), dtype=torch.float64)
        for left, right in ((None, None), (L, R)):
            Lm = torch.eye(case.n, dtype=torch.float64) if left is None else left
            Rm = torch.eye(case.m, dtype=torch.float64) if right is None else right
            B = torch.kron(Lm.contiguous(), Rm.contiguous())
            expected = torch.diagonal(B.T @ dense @ B).reshape(case.n, case.m)
            got = torch.broadcast_to(op.projected_diagonal(left, right).to(torch.float64), (case.n, case.m))
            bound = torch.diagonal(B.abs().T @ dense.abs() @ B.abs()).reshape(case.n, case.m)
            assert_close_dense(got, expected, rtol=self._tol(case), atol=self._tol(case) * float(bound.max()),
                               name=f"projected_diagonal [{case.id}]")

    def test_trace_inverse_product(self, case: OperatorCase) -> None:
        op, dense = self.make(case)
        inv = torch.linalg.inv(dense)
        for other, other_dense in self._others(case):
            expected = torch.trace(other_dense @ inv)
            got = op.trace_inverse_product(other)
            tol = self._tol(case, inverse=True) * float(expected.abs()) * 10
            assert abs(float(got) - float(expected)) <= tol, f"trace_inverse_product {type(other).__name__} [{case.id}]"

    def test_scaled(self, case: OperatorCase) -> None:
        op, dense = self.make(case)
        assert_close_dense(op.scaled(2.5).to_dense(), 2.5 * dense, rtol=self._tol(case),
                           atol=self._tol(case) * float(dense.abs().max()), name=f"scaled [{case.id}]")

    def test_state_round_trip(self, case: OperatorCase) -> None:
        import io

        from .precision import precision_from_state

        op, dense = self.make(case)
        buffer = io.BytesIO()
        torch.save(op.state(), buffer)
        buffer.seek(0)
        back = precision_from_state(torch.load(buffer, weights_only=True))
        assert type(back) is type(op), case.id
        assert_close_dense(back.to_dense(), op.to_dense(), rtol=1e-14, atol=0.0, name=f"state [{case.id}]")

    # -- two-term types --------------------------------------------------------------------------
    def test_two_term_identities(self, case: OperatorCase) -> None:
        import pytest

        op, dense = self.make(case)
        if not self._is_two_term(op):
            pytest.skip("not a two-term precision")
        F, P, beta, alpha = self.make_terms(case)
        Sinv = torch.linalg.inv(dense)
        tol = self._tol(case, inverse=True) * 10
        full = torch.linalg.slogdet(dense)[1]
        assert abs(float(op.log_eigenvalue_sum() + op.logdet_second) - float(full)) <= tol * max(1.0, abs(float(full)))
        for term, M in ((0, F), (1, P)):
            expected = torch.trace(M @ Sinv)
            assert abs(float(op.trace_term(term)) - float(expected)) <= tol * max(1.0, float(expected.abs())), term
        new = op.with_weights(beta=2.0 * beta, alpha=0.5 * alpha)
        assert_close_dense(new.to_dense(), 2.0 * beta * F + 0.5 * alpha * P, rtol=self._tol(case),
                           atol=self._tol(case) * float(dense.abs().max()) * 4, name=f"with_weights [{case.id}]")

    def test_compress(self, case: OperatorCase) -> None:
        import pytest

        op, dense = self.make(case)
        if not self._is_two_term(op):
            pytest.skip("not a two-term precision")
        terms = self.make_term_objects(case)
        F, P, beta, alpha = self.make_terms(case)
        compressed, error = op.compress(terms, 2.0, 3.0)
        target = 2.0 * F + 3.0 * P
        actual = float(torch.linalg.matrix_norm(compressed.to_dense() - target) / torch.linalg.matrix_norm(target))
        assert abs(actual - error) <= 1e-8 + 1e-6 * actual, f"compress error [{case.id}]: {actual} vs {error}"

    def make_term_objects(self, case: OperatorCase) -> tuple[Any, Any]:
        """Two-term types: the term objects ``(F, P)`` of :meth:`make` (for ``compress``)."""
        raise NotImplementedError("Two-term precision types implement make_term_objects(case).")
