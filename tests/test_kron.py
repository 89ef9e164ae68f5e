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
        n, m = case.n, case.m
        terms = [Kron(random_spd(n, cond=case.cond, generator=g), random_spd(m, cond=case.cond, generator=g)),
                 Kron(torch.randn(n, n, generator=g, dtype=D64), torch.randn(m, m, generator=g, dtype=D64)),
                 Kron.identity(n, m)]
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
        ill = case.cond > 1e3
        A = random_psd(case.m, max(case.m - 1, 1), generator=g) if ill else random_spd(case.m, generator=g)
        F = Kron(G, A)
        beta, delta = 2.0, (1e-3 if ill else 0.5)
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


# -- conventions (docs/concepts.md, section 1) -------------------------------------------------
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


# -- Kron ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("cond", [10.0, 1e10])
def test_kron_sqrt_inverse_is_a_square_root_of_the_inverse(cond):
    G, A = random_spd(3, cond=cond, generator=_gen(1)), random_spd(2, cond=cond, generator=_gen(2))
    K = Kron(G, A)
    L = K.sqrt_inverse()
    tol = 100 * torch.finfo(D64).eps * cond  # forward error of an inverse: eps cond
    for name, factor, root in (("G", G, L.G), ("A", A, L.A)):
        eye = torch.eye(factor.shape[0], dtype=D64)
        assert_close_dense(root.T @ factor @ root, eye, rtol=0, atol=tol, name=f"L_{name}^T {name} L_{name}")
        assert torch.equal(root, torch.triu(root))  # C^-T: upper triangular
    if cond < 1e3:
        assert_close_dense(L.to_dense() @ L.to_dense().T, torch.linalg.inv(K.to_dense()), rtol=1e-10, atol=1e-12)
    else:
        pytest.importorskip("mpmath")
        inv = high_precision_inverse([(1.0, G, A)])
        assert _rel(L.to_dense() @ L.to_dense().T, inv) < tol


def test_kron_inner_norm_scaling_identity_and_sums():
    g = _gen(4)
    K1 = Kron(torch.randn(3, 3, generator=g, dtype=D64), torch.randn(2, 2, generator=g, dtype=D64))
    K2 = Kron(torch.randn(3, 3, generator=g, dtype=D64), torch.randn(2, 2, generator=g, dtype=D64))
    assert_close_dense(K1.inner(K2), (K1.to_dense() * K2.to_dense()).sum(), rtol=1e-12)
    assert_close_dense(K1.frobenius_norm(), torch.linalg.norm(K1.to_dense()), rtol=1e-13)
    assert_close_dense((2.5 * K1).to_dense(), 2.5 * K1.to_dense(), rtol=1e-15)
    assert_close_dense((K1 * torch.tensor(-0.5, dtype=D64)).to_dense(), -0.5 * K1.to_dense(), rtol=1e-15)
    assert torch.equal(Kron.identity(3, 2).to_dense(), torch.eye(6, dtype=D64))
    assert Kron.identity(2, 2, dtype=torch.float32).dtype == torch.float32
    total = K1 + K2
    assert isinstance(total, KronSum) and len(total) == 2
    assert_close_dense(total.to_dense(), K1.to_dense() + K2.to_dense(), rtol=1e-14, atol=1e-14)
    longer = (K1 + total) + K2
    assert len(longer) == 4
    assert_close_dense(longer.to_dense(), 2 * (K1.to_dense() + K2.to_dense()), rtol=1e-14, atol=1e-14)
    assert_close_dense((3.0 * total).to_dense(), 3.0 * total.to_dense(), rtol=1e-14, atol=1e-14)


def test_kron_float32_factors_give_float64_logdet_and_inverse():
    G, A = random_spd(3, generator=_gen(5)), random_spd(4, generator=_gen(6))
    K32 = Kron(G.float(), A.float())
    ld = K32.logdet()
    assert ld.dtype == D64
    assert_close_dense(ld, torch.linalg.slogdet(torch.kron(G.float().double(), A.float().double()))[1], rtol=1e-12)
    assert K32.inverse().dtype == D64
    X = torch.randn(3, 4)
    assert K32.matmul(X).dtype == torch.float32 and K32.solve(X).dtype == torch.float32


# -- nearest Kronecker product ------------------------------------------------------------------
def _random_terms(n, m, K, seed, *, spd=True):
    g = _gen(seed)
    if spd:
        return [Kron(random_spd(n, cond=100.0, generator=g), random_spd(m, cond=100.0, generator=g))
                for _ in range(K)]
    return [Kron(torch.randn(n, n, generator=g, dtype=D64), torch.randn(m, m, generator=g, dtype=D64))
            for _ in range(K)]


@pytest.mark.parametrize("n,m,K", [(1, 1, 2), (1, 3, 3), (2, 3, 2), (4, 2, 4), (5, 5, 3)])
@pytest.mark.parametrize("spd", [True, False])
def test_nearest_matches_rank_one_svd_of_rearrangement(n, m, K, spd):
    terms = _random_terms(n, m, K, seed=10 * n + m + K, spd=spd)
    weights = [0.5 + k for k in range(K)] if spd else [1.0, -2.0, 0.7, 3.0][:K]
    S = KronSum(terms, weights)
    dense = S.to_dense()
    expected = _nearest_by_svd(dense, n, m)
    gram, power = S.nearest("gram"), S.nearest("power")
    scale = float(torch.linalg.norm(dense))
    assert_close_dense(gram.to_dense(), expected, rtol=1e-9, atol=1e-11 * scale, name="nearest('gram')")
    assert_close_dense(power.to_dense(), gram.to_dense(), rtol=1e-9, atol=1e-11 * scale, name="nearest('power')")
    # equal Frobenius norms; dense relative error equals nearest_error()
    assert_close_dense(torch.linalg.norm(gram.G), torch.linalg.norm(gram.A), rtol=1e-12)
    dense_error = torch.linalg.norm(dense - gram.to_dense()) / torch.linalg.norm(dense)
    assert_close_dense(S.nearest_error(), dense_error, rtol=1e-7, atol=1e-12, name="nearest_error")
    if spd:
        assert torch.equal(gram.G, gram.G.T) and torch.equal(gram.A, gram.A.T)
        assert float(torch.linalg.eigvalsh(gram.G).min()) > 0 and float(torch.linalg.eigvalsh(gram.A).min()) > 0


def test_nearest_of_an_exact_kronecker_product_is_exact():
    F = _random_terms(3, 2, 1, seed=3)[0]
    S = KronSum([F, 2.0 * F, F], [1.0, 0.5, 2.0])  # = 4 F
    assert float(S.nearest_error()) < 1e-14
    assert_close_dense(S.nearest().to_dense(), 4 * F.to_dense(), rtol=1e-13, atol=1e-14)
    single = KronSum([F], [-3.0]).nearest()
    assert float(torch.trace(single.G)) >= 0  # sign fixed on G
    assert_close_dense(single.to_dense(), -3.0 * F.to_dense(), rtol=1e-13, atol=1e-14)


def test_nearest_keeps_positive_definiteness_across_scales():
    """Curvature ~1e12 times the prior: the small directions of the NKP factors survive (thin QR)."""
    mpmath = pytest.importorskip("mpmath")
    n, m = 3, 2
    g, a = torch.randn(n, 1, generator=_gen(7), dtype=D64), torch.randn(m, 1, generator=_gen(8), dtype=D64)
    S = KronSum([Kron(1e6 * g @ g.T, 1e6 * a @ a.T), Kron.identity(n, m)], [1.0, 1.0])  # rank-1 curvature + I
    N = S.nearest()
    with mpmath.workdps(60):
        # exact rearrangement from the factors (the float64 dense sum rounds the identity away)
        R = mpmath.matrix(n * n, m * m)
        for w, t in zip(S.weights.tolist(), S.terms):
            vg, va = t.G.reshape(-1).tolist(), t.A.reshape(-1).tolist()
            for i in range(n * n):
                for j in range(m * m):
                    R[i, j] += mpmath.mpf(w) * mpmath.mpf(vg[i]) * mpmath.mpf(va[j])
        U, s, V = mpmath.svd_r(R)
        G_exact = mpmath.matrix(n, n)
        for i in range(n * n):
            G_exact[i // n, i % n] = U[i, 0] * mpmath.sqrt(s[0])
        sign = 1 if sum(G_exact[i, i] for i in range(n)) > 0 else -1
        smallest = float(min(mpmath.eigsy(sign * G_exact)[0]))
    ours = float(torch.linalg.eigvalsh(N.G).min())
    assert smallest > 0 and ours > 0
    # the smallest eigenvalue (~1e-12 ||G||) is resolved to float64 precision of ||G||
    assert abs(ours - smallest) <= 100 * torch.finfo(D64).eps * float(torch.linalg.norm(N.G))


def test_nearest_power_warns_when_not_converged():
    eye2 = torch.eye(2, dtype=D64)
    e1, e2 = torch.diag(torch.tensor([1.0, 0.0], dtype=D64)), torch.diag(torch.tensor([0.0, 1.0], dtype=D64))
    S = KronSum([Kron(e1 + 0.1 * eye2, e1 + 0.1 * eye2), Kron(e2 + 0.1 * eye2, e2 + 0.1 * eye2)], [1.0, 0.999])
    with pytest.warns(RuntimeWarning, match="did not converge in max_iter=3"):
        S.nearest("power", max_iter=3)


# -- the exact two-term form ----------------------------------------------------------------------
@pytest.mark.parametrize("identity", [False, True])
@pytest.mark.parametrize("n,m", [(1, 1), (1, 4), (3, 2), (5, 5)])
def test_decompose_against_dense(n, m, identity):
    F, P, S, dense = _pd_sum(n, m, seed=n * 7 + m, identity=identity)
    D = S.decompose()
    d = n * m
    inv = torch.linalg.inv(dense)
    assert_close_dense(D.to_dense(), dense, rtol=1e-11, atol=1e-12, name="to_dense")
    assert_close_dense(D.inverse_to_dense(), inv, rtol=1e-10, atol=1e-12, name="inverse")
    assert_close_dense(D.logdet(), torch.linalg.slogdet(dense)[1], rtol=1e-12, atol=1e-12, name="logdet")
    assert_close_dense(D.trace(), torch.trace(dense), rtol=1e-12, name="trace")
    assert_close_dense(D.logdet_second, torch.linalg.slogdet(P.to_dense())[1], rtol=1e-12, atol=1e-12)
    # tr(K S^-1) for the two terms and for an unrelated Kron
    K = Kron(random_spd(n, generator=_gen(99)), torch.randn(m, m, generator=_gen(98), dtype=D64))
    assert_close_dense(D.trace_product(term=0), torch.trace(F.to_dense() @ inv), rtol=1e-10, name="tr(F S^-1)")
    assert_close_dense(D.trace_product(term=1), torch.trace(P.to_dense() @ inv), rtol=1e-10, name="tr(P S^-1)")
    assert_close_dense(D.trace_product(K), torch.trace(K.to_dense() @ inv), rtol=1e-10, atol=1e-12, name="tr(K S^-1)")
    assert_close_dense(D.trace_product(F), D.trace_product(term=0), rtol=1e-11)
    # solve, quadratic
    B = torch.randn(3, n, m, generator=_gen(5), dtype=D64)
    X = D.solve(B)
    assert_close_dense(vec_row(X), torch.linalg.solve(dense, vec_row(B).T).T, rtol=1e-10, atol=1e-12, name="solve")
    # joint eigenbasis: T^T F T = diag(D), T^T P T = I (per factor)
    assert_close_dense(D.T_G.T @ P.G @ D.T_G, torch.eye(n, dtype=D64), rtol=0, atol=1e-12)
    assert_close_dense(D.T_A.T @ F.A @ D.T_A, torch.diag(D.D_A), rtol=0, atol=1e-12)
    assert_close_dense(D.T_G @ D.T_G_inv, torch.eye(n, dtype=D64), rtol=0, atol=1e-12)
    assert d == D.shape[0]


@pytest.mark.parametrize("identity", [False, True])
def test_sample_map_covariance_is_the_inverse(identity):
    n, m = 3, 2
    _, _, S, dense = _pd_sum(n, m, seed=21, identity=identity)
    D = S.decompose()
    d = n * m
    basis = torch.eye(d, dtype=D64).reshape(d, n, m)
    L = vec_row(D.sample_map(basis)).T  # columns: images of the unit vectors
    inv = torch.linalg.inv(dense)
    assert_close_dense(L @ L.T, inv, rtol=1e-10, atol=1e-12, name="T Lambda^-1 T^T")
    assert_close_dense(L @ L.T, D.inverse_to_dense(), rtol=1e-12, atol=1e-14)
    # seeded Monte Carlo: the empirical covariance of 40000 draws
    Z = torch.randn(40_000, n, m, generator=_gen(0), dtype=D64)
    x = vec_row(D.sample_map(Z))
    emp = x.T @ x / x.shape[0]
    err = float(torch.linalg.norm(emp - inv) / torch.linalg.norm(inv))
    assert err < 0.03, err  # ~ sqrt(2 d / N) ≈ 0.017 expected


def test_kl_from_decomposed_pieces_matches_dense_formula():
    n, m, tau, alpha0 = 3, 4, 0.7, 0.3
    F, P, S, dense = _pd_sum(n, m, seed=31, beta=2.0, alpha=alpha0)
    D = S.decompose()
    d = n * m
    diff = torch.randn(n, m, generator=_gen(3), dtype=D64)  # M_q - M_p
    prior_prec = alpha0 * P.to_dense()
    # Q = N(M_q, tau S^-1), prior = N(M_p, (alpha0 P)^-1)
    kl = 0.5 * (tau * alpha0 * D.trace_product(term=1) + alpha0 * P.quadratic(diff) - d - d * math.log(tau)
                - (d * math.log(alpha0) + D.logdet_second) + D.logdet())
    cov_q, cov_p = tau * torch.linalg.inv(dense), torch.linalg.inv(prior_prec)
    v = vec_row(diff)
    kl_dense = 0.5 * (torch.trace(prior_prec @ cov_q) + v @ prior_prec @ v - d
                      + torch.linalg.slogdet(cov_p)[1] - torch.linalg.slogdet(cov_q)[1])
    assert float(kl_dense) > 0
    assert_close_dense(kl, kl_dense, rtol=1e-10, name="KL")
    # Q equal to the prior: KL = 0
    same = D.with_weights(beta=0.0, alpha=alpha0)
    kl0 = 0.5 * (alpha0 * same.trace_product(term=1) - d
                 - (d * math.log(alpha0) + same.logdet_second) + same.logdet())
    assert abs(float(kl0)) < 1e-12


@pytest.mark.parametrize("identity", [False, True])
def test_with_weights_equals_a_fresh_decomposition(identity):
    n, m = 4, 3
    F, P, S, _ = _pd_sum(n, m, seed=41, identity=identity)
    D = S.decompose()
    B = torch.randn(n, m, generator=_gen(1), dtype=D64)
    for beta, alpha in [(0.01, 5.0), (30.0, 1e-3), (1.0, 1.0)]:
        re = D.with_weights(beta=beta, alpha=alpha)
        fresh = KronSum([F, P], [beta, alpha]).decompose()
        dense = beta * F.to_dense() + alpha * P.to_dense()
        assert (re.beta, re.alpha) == (beta, alpha)
        assert_close_dense(re.to_dense(), dense, rtol=1e-11, atol=1e-12 * float(dense.abs().max()))
        assert_close_dense(re.logdet(), fresh.logdet(), rtol=1e-12, atol=1e-12)
        for term in (0, 1):
            assert_close_dense(re.trace_product(term=term), fresh.trace_product(term=term), rtol=1e-11)
        assert_close_dense(re.solve(B), fresh.solve(B), rtol=1e-10, atol=1e-12 * float(fresh.solve(B).abs().max()))
    only_alpha = D.with_weights(alpha=2.0)
    assert (only_alpha.beta, only_alpha.alpha) == (D.beta, 2.0)


def test_gradients_with_respect_to_tensor_weights():
    n, m = 3, 2
    F, P, _, _ = _pd_sum(n, m, seed=51)
    D = KronSum([F, P], [1.0, 1.0]).decompose()
    K = Kron(random_spd(n, generator=_gen(2)), random_spd(m, generator=_gen(3)))
    beta = torch.tensor(1.3, dtype=D64, requires_grad=True)
    alpha = torch.tensor(0.4, dtype=D64, requires_grad=True)

    def pieces(b, a):
        S = D.with_weights(beta=b, alpha=a)
        return S.logdet(), S.trace_product(term=0), S.trace_product(term=1), S.trace_product(K)

    assert torch.autograd.gradcheck(pieces, (beta, alpha))
    # the same gradients through KronSum(..., [tensor, tensor]).decompose()
    S = KronSum([F, P], [beta, alpha]).decompose()
    grads = torch.autograd.grad(S.logdet(), (beta, alpha))
    dense = beta.detach() * F.to_dense() + alpha.detach() * P.to_dense()
    inv = torch.linalg.inv(dense)
    assert_close_dense(grads[0], torch.trace(inv @ F.to_dense()), rtol=1e-10)  # d logdet / d beta
    assert_close_dense(grads[1], torch.trace(inv @ P.to_dense()), rtol=1e-10)
    # several backward passes on one instance (eigenvalues are not cached while they need grad)
    S.logdet().backward()
    S.trace_product(term=0).backward()
    assert beta.grad is not None


def test_decompose_ill_conditioned_factors_against_high_precision():
    """cond 1e10 per factor, F and P in unrelated bases: no spurious 'not positive definite'."""
    pytest.importorskip("mpmath")
    n, m = 3, 3
    for seed in range(3):
        F, P, S, dense = _pd_sum(n, m, seed=100 + seed, cond=1e10)
        D = S.decompose()
        exact = [(1.7, F.G, F.A), (0.3, P.G, P.A)]
        # the joint eigenbasis from the Cholesky factor of P alone missed this by up to 2e-3
        assert abs(float(D.logdet()) - high_precision_logdet(exact)) < 1e-4
        inv = high_precision_inverse(exact)
        assert _rel(D.inverse_to_dense(), inv) < 1e-6  # was up to 5e-4
        assert _rel(D.to_dense(), dense) < 1e-13
        B = torch.randn(5, n, m, generator=_gen(seed), dtype=D64)
        assert_small_residual(dense, vec_row(D.solve(B)).T, vec_row(B).T, tol=1e-14)


def test_decompose_rank_deficient_curvature():
    n, m = 4, 3
    G, A = random_psd(n, 2, generator=_gen(1)), random_psd(m, 1, generator=_gen(2))
    P = Kron(random_spd(n, generator=_gen(3)), random_spd(m, generator=_gen(4)))
    for second in (P, Kron.identity(n, m)):
        D = KronSum([Kron(G, A), second], [10.0, 0.1]).decompose()
        dense = 10.0 * torch.kron(G, A) + 0.1 * second.to_dense()
        assert_close_dense(D.to_dense(), dense, rtol=1e-11, atol=1e-12)
        assert_close_dense(D.logdet(), torch.linalg.slogdet(dense)[1], rtol=1e-11)
        assert int((D.eigenvalues() > 0.1 * (1 + 1e-9)).sum()) == 2  # rank 2 x rank 1 curvature
        # extreme weight ratio: the null space of the curvature gives exactly alpha (no noise
        # times the largest eigenvalue of the other factor, which made the sum "indefinite")
        extreme = D.with_weights(beta=1e8, alpha=1e-8)
        assert int((extreme.eigenvalues() == 1e-8).sum()) == n * m - 2
        assert int((extreme.D_G == 0).sum()) == n - 2 and int((extreme.D_A == 0).sum()) == m - 1


@pytest.mark.parametrize("n,m,rank_g,rank_a", [(12, 10, 4, 3), (20, 16, 5, 4)])
def test_decompose_rank_deficient_curvature_with_ill_conditioned_prior(n, m, rank_g, rank_a):
    """A curvature from fewer data than the layer is wide, a prior with cond 1e6 per factor.

    The reduction with the Cholesky factor of the prior alone gave a smallest eigenvalue far below
    zero here (rounding noise of the curvature's null space times the other factor's largest
    eigenvalue) and refused a positive definite sum.
    """
    g = _gen(0)
    F = Kron(random_psd(n, rank_g, generator=g), random_psd(m, rank_a, generator=g))
    P = Kron(random_spd(n, cond=1e6, generator=g), random_spd(m, cond=1e6, generator=g))
    D = KronSum([F, P], [100.0, 0.01]).decompose()
    assert int((D.D_G == 0).sum()) == n - rank_g and int((D.D_A == 0).sum()) == m - rank_a
    assert int((D.eigenvalues() == 0.01).sum()) == n * m - rank_g * rank_a
    dense = 100.0 * F.to_dense() + 0.01 * P.to_dense()
    assert _rel(D.to_dense(), dense) < 1e-12
    B = torch.randn(2, n, m, generator=_gen(1), dtype=D64)
    assert_small_residual(dense, vec_row(D.solve(B)).T, vec_row(B).T, tol=1e-13)


def test_decompose_identity_second_term_gives_orthonormal_basis():
    F, _, S, _ = _pd_sum(3, 2, seed=61, identity=True)
    D = S.decompose()
    assert torch.equal(D.logdet_second, torch.zeros((), dtype=D64))
    assert_close_dense(D.T_G.T @ D.T_G, torch.eye(3, dtype=D64), rtol=0, atol=1e-14)
    assert_close_dense(D.T_A_inv, D.T_A.T, rtol=0, atol=0)


def test_decompose_float32_terms_and_to():
    X = torch.randn(20, 3, generator=_gen(1))
    A32 = X.T @ X  # float32 product: symmetric only up to rounding
    G32 = random_spd(2, generator=_gen(2), dtype=torch.float32)
    S = KronSum([Kron(G32, A32), Kron.identity(2, 3, dtype=torch.float32)], [1.0, 0.1])
    D = S.decompose()
    assert D.dtype == D64 and D.T_A.dtype == D64
    dense = torch.kron(G32.double(), A32.double()) + 0.1 * torch.eye(6, dtype=D64)
    assert_close_dense(D.to_dense(), dense, rtol=1e-6, atol=1e-6)
    moved = D.to(torch.float32)
    assert moved.dtype == D64 and torch.equal(moved.T_G, D.T_G) and torch.equal(moved.T_A_inv, D.T_A_inv)
    assert moved.to("cpu").device.type == "cpu"


def test_blocked_reductions_match_full_arrays():
    """Large n m: logdet and trace_product(term=...) use row blocks on the CPU; same values."""
    n, m = 300, 500  # 150000 entries > one block
    g = _gen(81)
    F = Kron(random_psd(n, 40, generator=g), random_psd(m, 60, generator=g))
    P = Kron(random_spd(n, cond=1e3, generator=g), random_spd(m, cond=1e3, generator=g))
    D = KronSum([F, P], [2.0, 0.5]).decompose()
    for beta, alpha in [(1.0, 1.0), (1e3, 1e-3)]:
        blocked = D.with_weights(beta=beta, alpha=alpha)
        full = D.with_weights(beta=beta, alpha=alpha)
        lam = full.eigenvalues()  # materialized: the full-array route
        assert_close_dense(blocked.logdet(), full.logdet(), rtol=1e-13)
        assert_close_dense(blocked.logdet() - D.logdet_second, torch.log(lam).sum(), rtol=1e-13)
        assert_close_dense(blocked.trace_product(term=1), (1 / lam).sum(), rtol=1e-13)
        assert_close_dense(blocked.trace_product(term=0), (torch.outer(D.D_G, D.D_A) / lam).sum(), rtol=1e-12)


@pytest.mark.parametrize("beta,alpha", [(1.0, 0.1), (-0.5, 3.0), (0.0, 1.0), (1e-8, 1e-12)])
def test_positivity_check_uses_the_exact_smallest_eigenvalue(beta, alpha):
    g = _gen(82)
    B = torch.randn(4, 4, generator=g, dtype=D64)
    D = KronSum([Kron(B + B.T, random_spd(3, generator=g)), Kron.identity(4, 3)], [0.0, 1.0]).decompose()
    D._beta, D._alpha = beta, alpha  # bypass the check to compare the corner formula with the grid
    D._lam = None
    assert float(D._smallest_eigenvalue()) == float(D.eigenvalues().min())


# -- property tests -------------------------------------------------------------------------------
_sizes = st.integers(min_value=1, max_value=5)
_weights = st.floats(min_value=1e-3, max_value=1e3, allow_nan=False, allow_infinity=False)


@settings(max_examples=30, deadline=None)
@given(n=_sizes, m=_sizes, K=st.integers(1, 4), seed=st.integers(0, 10_000),
       weights=st.lists(_weights, min_size=4, max_size=4))
def test_property_nearest(n, m, K, seed, weights):
    S = KronSum(_random_terms(n, m, K, seed), weights[:K])
    dense = S.to_dense()
    scale = float(torch.linalg.norm(dense))
    gram = S.nearest()
    assert_close_dense(gram.to_dense(), _nearest_by_svd(dense, n, m), rtol=1e-8, atol=1e-10 * scale)
    assert float(torch.linalg.eigvalsh(gram.G).min()) > 0 and float(torch.linalg.eigvalsh(gram.A).min()) > 0
    err = float(torch.linalg.norm(dense - gram.to_dense())) / scale
    # both sides are accurate to rounding level of ||S||: an exact product gives 0 from the
    # singular values and ~1e-15 from the dense difference
    assert abs(float(S.nearest_error()) - err) <= 1e-7 * err + 1e-12
    # the nearest product is never worse than any single scaled term
    assert err <= min(float(torch.linalg.norm(dense - w * t.to_dense())) / scale
                      for w, t in zip(S.weights.tolist(), S.terms)) + 1e-12


@settings(max_examples=30, deadline=None)
@given(n=_sizes, m=_sizes, seed=st.integers(0, 10_000), beta=_weights, alpha=_weights,
       identity=st.booleans(), log_cond=st.floats(0.0, 8.0))
def test_property_decompose(n, m, seed, beta, alpha, identity, log_cond):
    F, P, S, dense = _pd_sum(n, m, seed, cond=10.0 ** log_cond, beta=beta, alpha=alpha, identity=identity)
    D = S.decompose()
    assert _rel(D.to_dense(), dense) < 1e-12
    B = torch.randn(2, n, m, generator=_gen(seed), dtype=D64)
    assert_small_residual(dense, vec_row(D.solve(B)).T, vec_row(B).T, tol=1e-13)
    if log_cond <= 2:
        assert_close_dense(D.logdet(), torch.linalg.slogdet(dense)[1], rtol=1e-10, atol=1e-9)
        inv = torch.linalg.inv(dense)
        assert_close_dense(D.trace_product(term=0), torch.trace(F.to_dense() @ inv), rtol=1e-8)
    fresh = KronSum([F, P], [alpha, beta]).decompose()
    swapped = D.with_weights(beta=alpha, alpha=beta)
    assert_close_dense(swapped.logdet(), fresh.logdet(), rtol=1e-11, atol=1e-10)


# -- bad input ------------------------------------------------------------------------------------
def test_bad_factors():
    with pytest.raises(ValueError, match=r"G \(output factor of Kron\) must be a non-empty square 2-D matrix"):
        Kron(torch.zeros(2, 3, dtype=D64), torch.eye(2, dtype=D64))
    with pytest.raises(ValueError, match=r"A \(input factor of Kron\) must be a non-empty square"):
        Kron(torch.eye(2, dtype=D64), torch.zeros(3, dtype=D64))
    with pytest.raises(ValueError, match=r"A \(input factor of Kron\) must be finite .*1 non-finite"):
        Kron(torch.eye(2, dtype=D64), torch.tensor([[1.0, math.nan], [0.0, 1.0]], dtype=D64))
    with pytest.raises(ValueError, match=r"the factors of Kron must be of the same dtype and device"):
        Kron(torch.eye(2, dtype=D64), torch.eye(2))
    with pytest.raises(TypeError, match=r"G \(output factor of Kron\) must be a torch.Tensor"):
        Kron([[1.0]], torch.eye(1))
    with pytest.raises(TypeError, match=r"must be a floating-point tensor"):
        Kron(torch.eye(2, dtype=torch.int64), torch.eye(2, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"n of Kron.identity must be a positive int"):
        Kron.identity(0, 2)
    with pytest.raises(TypeError, match=r"the scale factor of a Kron must be a real number"):
        Kron.identity(2, 2) * "2"
    with pytest.raises(ValueError, match=r"the scale factor of a Kron must be a real scalar"):
        Kron.identity(2, 2) * torch.ones(2, dtype=D64)


def test_bad_operands_and_factorizations():
    K = Kron(torch.tensor([[1.0, 2.0], [2.0, 1.0]], dtype=D64), torch.eye(3, dtype=D64))  # G indefinite
    with pytest.raises(ValueError, match=r"G \(output factor\) must be symmetric positive definite"):
        K.logdet()
    with pytest.raises(ValueError, match=r"G \(output factor\) must be symmetric positive definite"):
        K.solve(torch.ones(2, 3, dtype=D64))
    nonsym = Kron(torch.tensor([[2.0, 1.0], [0.0, 2.0]], dtype=D64), torch.eye(3, dtype=D64))
    with pytest.raises(ValueError, match=r"G \(output factor\) must be symmetric\. Got a matrix with max"):
        nonsym.inverse()
    with pytest.raises(TypeError, match=r"X must be a torch.Tensor"):
        Kron.identity(2, 3).matmul([[0.0] * 3] * 2)
    with pytest.raises(TypeError, match=r"X must be a floating-point tensor"):
        Kron.identity(2, 3).matmul(torch.zeros(2, 3, dtype=torch.int64))


def test_bad_kron_sums():
    a, b = Kron.identity(2, 3), Kron.identity(3, 2)
    with pytest.raises(ValueError, match=r"terms of KronSum must be of the same factor sizes"):
        KronSum([a, b])
    with pytest.raises(ValueError, match=r"terms of KronSum must be a non-empty sequence of Kron"):
        KronSum([])
    with pytest.raises(TypeError, match=r"terms of KronSum must be a sequence"):
        KronSum(a)
    with pytest.raises(ValueError, match=r"weights of KronSum must be 2 weights \(one per term\)"):
        KronSum([a, a], [1.0])
    with pytest.raises(ValueError, match=r"weights of KronSum must be finite"):
        KronSum([a, a], [1.0, math.inf])
    with pytest.raises(ValueError, match=r"terms of KronSum must be of one dtype and device"):
        KronSum([a, Kron.identity(2, 3, dtype=torch.float32)])
    with pytest.raises(ValueError, match=r"method of KronSum.nearest must be 'gram' or 'power'"):
        KronSum([a, a]).nearest("svd")


def test_decompose_errors():
    n, m = 3, 2
    F, P, _, _ = _pd_sum(n, m, seed=71)
    with pytest.raises(ValueError, match=r"KronSum.decompose\(\) must be called on exactly two terms.*"
                                         r"Got 3 terms instead.*nearest\(\)"):
        KronSum([F, P, P]).decompose()
    with pytest.raises(ValueError, match=r"KronSum.decompose\(\) must be called on exactly two terms"):
        KronSum([F]).decompose()
    indefinite = Kron(P.G, torch.tensor([[1.0, 0.0], [0.0, -1.0]], dtype=D64))
    with pytest.raises(ValueError, match=r"A of the second term must be symmetric positive definite"):
        KronSum([F, indefinite]).decompose()
    singular = Kron(torch.zeros(n, n, dtype=D64), P.A)
    with pytest.raises(ValueError, match=r"G of the second term must be symmetric positive definite"):
        KronSum([F, singular]).decompose()
    skew = F.G + torch.triu(torch.ones(n, n, dtype=D64), 1)
    with pytest.raises(ValueError, match=r"G of the first term must be symmetric"):
        KronSum([Kron(skew, F.A), P]).decompose()
    with pytest.raises(ValueError, match=r"A of the second term must be symmetric"):
        KronSum([F, Kron(P.G, P.A + torch.triu(torch.ones(m, m, dtype=D64), 1))]).decompose()
    with pytest.raises(ValueError, match=r"the two-term sum beta K_1 \+ alpha K_2 must be positive definite"):
        KronSum([F, P], [-1.0, 0.1]).decompose()
    D = KronSum([F, P]).decompose()
    with pytest.raises(ValueError, match=r"beta \(weight of the first term\) must be a finite real number"):
        D.with_weights(beta=math.nan)
    with pytest.raises(ValueError, match=r"alpha \(weight of the second term\) must be a scalar"):
        D.with_weights(alpha=torch.ones(2, dtype=D64))
    with pytest.raises(ValueError, match=r"the two-term sum .* must be positive definite"):
        D.with_weights(alpha=-10.0)
    with pytest.raises(ValueError, match=r"trace_product must be given exactly one of K or term"):
        D.trace_product()
    with pytest.raises(ValueError, match=r"trace_product must be given exactly one of K or term"):
        D.trace_product(F, term=0)
    with pytest.raises(ValueError, match=r"term of KronDecomposed.trace_product must be 0 or 1"):
        D.trace_product(term=2)
    with pytest.raises(ValueError, match=r"K must be a Kron with factor sizes \(n, m\) = \(3, 2\)"):
        D.trace_product(Kron.identity(2, 3))
    with pytest.raises(TypeError, match=r"K must be a Kron"):
        D.trace_product(torch.eye(6, dtype=D64))
    with pytest.raises(ValueError, match=r"Z must be a tensor of shape \(\.\.\., 3, 2\)"):
        D.sample_map(torch.zeros(2, 3, dtype=D64))
    with pytest.raises(TypeError, match=r"the first term of KronDecomposed.from_terms must be a Kron"):
        KronDecomposed.from_terms(F.to_dense(), P)


# -- decompositions with precomputed spectra and scalar second terms --------------------------------
@pytest.mark.parametrize("second_kind", ["general", "scalar", "identity"])
def test_from_terms_with_precomputed_spectra_against_dense(second_kind):
    g = torch.Generator().manual_seed(21)
    low = torch.randn(5, 2, generator=g, dtype=torch.float64)
    F = Kron(low @ low.T, random_spd(4, generator=g, cond=1e8))  # rank-deficient G, ill-conditioned A
    if second_kind == "general":
        P = Kron(random_spd(5, generator=g, cond=1e3), random_spd(4, generator=g))
    elif second_kind == "scalar":
        P = Kron(0.37 * torch.eye(5, dtype=torch.float64), 2.5 * torch.eye(4, dtype=torch.float64))
    else:
        P = Kron.identity(5, 4)
    spectra = tuple(torch.linalg.eigh(M) for M in (F.G, F.A))
    spectra = tuple((f.clamp_min(0), V) for f, V in spectra)
    plain = KronDecomposed.from_terms(F, P, beta=2.0, alpha=0.3)
    fast = KronDecomposed.from_terms(F, P, beta=2.0, alpha=0.3, first_eigh=spectra)
    dense = 2.0 * F.to_dense() + 0.3 * P.to_dense()
    scale = float(dense.norm())
    for S in (plain, fast):
        assert_close_dense(S.to_dense(), dense, rtol=1e-9, atol=1e-11 * scale)
        torch.testing.assert_close(S.logdet(), torch.linalg.slogdet(dense)[1], rtol=1e-10, atol=1e-9)
    with pytest.raises(ValueError, match="non-negative"):
        KronDecomposed.from_terms(F, P, first_eigh=((-torch.ones(5, dtype=torch.float64), torch.eye(5)), spectra[1]))


@pytest.mark.parametrize("K", [1, 2, 5])
def test_kronsum_frobenius_norm_against_dense(K):
    g = torch.Generator().manual_seed(30 + K)
    terms = [Kron(torch.randn(3, 3, generator=g, dtype=D64) * 10.0 ** (3 * k),
                  torch.randn(4, 4, generator=g, dtype=D64)) for k in range(K)]  # magnitudes 1 .. 1e12
    S = KronSum(terms, [float(k) - 1.5 for k in range(K)])  # negative weights too
    torch.testing.assert_close(S.frobenius_norm(), torch.linalg.norm(S.to_dense()), rtol=1e-12, atol=0.0)
    # a sum that nearly cancels: the core keeps the small difference, a Gram difference would not
    tiny = Kron(torch.eye(3, dtype=D64) * 1e-9, torch.eye(4, dtype=D64))
    almost = KronSum([terms[0], terms[0] * -1.0, tiny])
    torch.testing.assert_close(almost.frobenius_norm(), torch.linalg.norm(tiny.to_dense()), rtol=1e-6, atol=0.0)


def test_from_terms_rejects_spectra_of_the_wrong_shape():
    F, P = Kron.identity(3, 2), Kron.identity(3, 2)
    good = (torch.ones(3, dtype=D64), torch.eye(3, dtype=D64))
    with pytest.raises(ValueError, match="first_eigh of factor A"):
        KronDecomposed.from_terms(F, P, first_eigh=(good, (torch.ones(3, dtype=D64), torch.eye(3, dtype=D64))))
