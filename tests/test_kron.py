"""Kronecker algebra (skkprior.kron) against dense float64 matrices.

Ill-conditioned factors (condition number up to 1e10 each) make the dense product too
ill-conditioned (up to 1e20) for a float64 dense reference; there the checks are relative
residuals (backward errors) or mpmath references built from the exact factors.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from skkprior.kron import Kron, KronDecomposed, KronSum
from skkprior.testing import (
    KroneckerOperatorTests,
    OperatorCase,
    assert_close_dense,
    assert_small_residual,
    high_precision_inverse,
    high_precision_logdet,
    random_psd,
    random_spd,
    vec_row,
)

D64 = torch.float64


# -- the operator types through the shared mixin ------------------------------------------------
class TestKronOperator(KroneckerOperatorTests):
    def make(self, case: OperatorCase) -> tuple[Kron, torch.Tensor]:
        G = random_spd(case.n, cond=case.cond, scale=3.0, generator=case.generator(1))
        A = random_spd(case.m, cond=case.cond, scale=0.5, generator=case.generator(2))
        return Kron(G, A), torch.kron(G, A), [(1.0, G, A)]


class TestKronSumOperator(KroneckerOperatorTests):
    """Three terms, one of them with non-symmetric factors (checks the ``G X A^T`` convention)."""

    def make(self, case: OperatorCase) -> tuple[KronSum, torch.Tensor]:
        g = case.generator(1)
        terms = [Kron(random_spd(case.n, cond=case.cond, generator=g), random_spd(case.m, cond=case.cond, generator=g)),
                 Kron(torch.randn(case.n, case.n, generator=g, dtype=D64), torch.randn(case.m, case.m, generator=g, dtype=D64)),
                 Kron.identity(case.n, case.m)]
        weights = [2.0, -0.3, 0.7]
        dense = sum(w * torch.kron(t.G, t.A) for w, t in zip(weights, terms))
        return KronSum(terms, weights), dense, [(w, t.G, t.A) for w, t in zip(weights, terms)]


class TestKronDecomposedOperator(KroneckerOperatorTests):
    """``beta F + alpha P`` with a general positive definite prior term ``P``."""

    keeps_float64 = True

    def make(self, case: OperatorCase) -> tuple[KronDecomposed, torch.Tensor]:
        g = case.generator(1)
        F = Kron(random_spd(case.n, cond=case.cond, scale=5.0, generator=g),
                 random_spd(case.m, cond=case.cond, generator=g))
        P = Kron(random_spd(case.n, cond=case.cond, generator=g),
                 random_spd(case.m, cond=case.cond, scale=2.0, generator=g))
        beta, alpha = 1.7, 0.3
        dense = beta * F.to_dense() + alpha * P.to_dense()
        exact = [(beta, F.G, F.A), (alpha, P.G, P.A)]
        return KronSum([F, P], [beta, alpha]).decompose(), dense, exact


class TestKronDecomposedIdentityOperator(KroneckerOperatorTests):
    """``beta F + delta I`` (the isotropic prior), ``F`` rank-deficient in the ill case."""

    keeps_float64 = True

    def make(self, case: OperatorCase) -> tuple[KronDecomposed, torch.Tensor]:
        g = case.generator(1)
        G = random_spd(case.n, cond=case.cond, generator=g)
        A = random_psd(case.m, max(case.m - 1, 1), generator=g) if case.cond > 1e3 else random_spd(case.m, generator=g)
        F = Kron(G, A)
        beta, delta = 2.0, 1e-3 if case.cond > 1e3 else 0.5
        dense = beta * F.to_dense() + delta * torch.eye(case.dim, dtype=D64)
        eye = Kron.identity(case.n, case.m)
        exact = [(beta, G, A), (delta, eye.G, eye.A)]
        return KronSum([F, eye], [beta, delta]).decompose(), dense, exact


# -- helpers ------------------------------------------------------------------------------------
def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _rearrange(dense: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """The explicit Van Loan-Pitsianis rearrangement: ``R[(i, j), (k, l)] = S[i m + k, j m + l]``."""
    return dense.reshape(n, m, n, m).permute(0, 2, 1, 3).reshape(n * n, m * m)


def _nearest_by_svd(dense: torch.Tensor, n: int, m: int) -> torch.Tensor:
    U, s, Vh = torch.linalg.svd(_rearrange(dense, n, m))
    return s[0] * torch.kron(U[:, 0].reshape(n, n), Vh[0].reshape(m, m))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


def _pd_sum(n: int, m: int, seed: int, *, cond: float = 10.0, beta: float = 1.7, alpha: float = 0.3,
            identity: bool = False) -> tuple[Kron, Kron, KronSum, torch.Tensor]:
    g = _gen(seed)
    F = Kron(random_spd(n, cond=cond, scale=4.0, generator=g), random_spd(m, cond=cond, generator=g))
    P = Kron.identity(n, m) if identity else Kron(random_spd(n, cond=cond, generator=g),
                                                  random_spd(m, cond=cond, scale=2.0, generator=g))
    S = KronSum([F, P], [beta, alpha])
    return F, P, S, beta * F.to_dense() + alpha * P.to_dense()


# -- conventions (METHOD.md section 1) ---------------------------------------------------------------
def test_vec_row_outer_product_is_kron_of_outer_products():
    g = torch.randn(3, dtype=D64)
    a = torch.randn(5, dtype=D64)
    v = vec_row(torch.outer(g, a))
    assert_close_dense(torch.outer(v, v), torch.kron(torch.outer(g, g), torch.outer(a, a)), rtol=1e-15,
                       name="vec_row(g a^T) vec_row(g a^T)^T")


def test_convention_on_a_real_linear_layer_gradient():
    torch.manual_seed(3)
    layer = torch.nn.Linear(4, 3).double()
    x = torch.randn(4, dtype=D64)
    out = layer(x)
    out.retain_grad()
    torch.nn.functional.cross_entropy(out[None], torch.tensor([1])).backward()
    grad_wb = torch.cat([layer.weight.grad, layer.bias.grad[:, None]], dim=1)  # [W | b], (n, m)
    g_out, a_bar = out.grad, torch.cat([x, torch.ones(1, dtype=D64)])
    assert_close_dense(grad_wb, torch.outer(g_out, a_bar), rtol=1e-13, atol=1e-16, name="[W|b] gradient = g a^T")
    v = vec_row(grad_wb)
    G, A = torch.outer(g_out, g_out), torch.outer(a_bar, a_bar)
    assert_close_dense(torch.outer(v, v), torch.kron(G, A), rtol=1e-13, atol=1e-16, name="curvature block")
    # matmul acts on the row-major parameter matrix exactly as torch.kron acts on theta.
    Gn, An = torch.randn(3, 3, dtype=D64), torch.randn(5, 5, dtype=D64)  # non-symmetric on purpose
    expected = (torch.kron(Gn, An) @ grad_wb.flatten()).reshape(3, 5)
    assert_close_dense(Kron(Gn, An).matmul(grad_wb), expected, rtol=1e-12, atol=1e-15, name="Kron.matmul")
    Gp, Ap = G + torch.eye(3, dtype=D64), A + torch.eye(5, dtype=D64)
    assert_close_dense(Kron(Gp, Ap).quadratic(grad_wb), v @ torch.kron(Gp, Ap) @ v, rtol=1e-12,
                       name="Kron.quadratic")
