"""Kronecker algebra (skkprior.kron) against dense float64 matrices."""

from __future__ import annotations

import torch

from skkprior.kron import Kron, KronDecomposed, KronSum
from skkprior.testing import KroneckerOperatorTests, OperatorCase, random_psd, random_spd

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
