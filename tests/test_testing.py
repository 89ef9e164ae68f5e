"""The dense-comparison helpers of skkprior.testing fail loudly and informatively."""

from __future__ import annotations

import math

import pytest
import torch

from skkprior.kron import Kron
from skkprior.testing import (
    KroneckerOperatorTests,
    OperatorCase,
    assert_close_dense,
    assert_small_residual,
    high_precision_inverse,
    high_precision_logdet,
    high_precision_solve,
    random_psd,
    random_spd,
    vec_row,
)

D64 = torch.float64


def test_assert_close_dense_reports_the_worst_entries_first():
    expected = torch.zeros(3, 4, dtype=D64)
    actual = expected.clone()
    actual[0, 1], actual[2, 3], actual[1, 1] = 1e-3, 5e-1, 2e-2
    with pytest.raises(AssertionError) as info:
        assert_close_dense(actual, expected, atol=1e-6, name="M", max_report=2)
    lines = str(info.value).splitlines()
    assert lines[0].startswith("M: 3 of 12 entries differ beyond atol=1e-06")
    assert "max abs err 0.5" in lines[0]
    assert lines[1].startswith("  index (2, 3): actual 0.5") and lines[2].startswith("  index (1, 1)")
    assert len(lines) == 3


def test_assert_close_dense_nan_inf_and_shapes():
    assert_close_dense(torch.tensor([math.inf, 1.0]), [math.inf, 1.0])
    with pytest.raises(AssertionError, match="1 of 2 entries"):
        assert_close_dense(torch.tensor([math.nan, 1.0]), [math.nan, 1.0])
    with pytest.raises(AssertionError, match="1 of 1 entries"):
        assert_close_dense(torch.tensor([math.inf]), [-math.inf])
    with pytest.raises(AssertionError, match=r"shape \(2,\) differs from the expected shape \(3,\)"):
        assert_close_dense(torch.zeros(2), torch.zeros(3))
    assert_close_dense(torch.tensor(1.0 + 1e-12), 1.0, rtol=1e-11)


def test_assert_small_residual():
    M = random_spd(6, cond=1e12, generator=torch.Generator().manual_seed(0))
    b = torch.randn(6, 2, dtype=D64)
    assert_small_residual(M, torch.linalg.solve(M, b), b, tol=1e-14)
    W = random_spd(6, cond=10.0, generator=torch.Generator().manual_seed(1))
    with pytest.raises(AssertionError, match=r"backward error .* exceeds tol"):
        assert_small_residual(W, torch.linalg.solve(W, b) * (1 + 1e-6), b, tol=1e-14)
    with pytest.raises(AssertionError, match="shapes do not match"):
        assert_small_residual(M, b[:3], b[:3])


def test_high_precision_references():
    pytest.importorskip("mpmath")
    G = random_spd(2, cond=1e10, generator=torch.Generator().manual_seed(1))
    A = random_spd(3, cond=1e10, generator=torch.Generator().manual_seed(2))
    exact = [(1.0, G, A)]
    # logdet(G (x) A) = m logdet G + n logdet A, each factor well within float64
    expected = 3 * high_precision_logdet(G) + 2 * high_precision_logdet(A)
    assert abs(high_precision_logdet(exact) - expected) < 1e-9
    inv = high_precision_inverse(exact)
    assert_close_dense(inv, torch.kron(high_precision_inverse(G), high_precision_inverse(A)), rtol=1e-14,
                       atol=1e-14 * float(inv.abs().max()))
    b = torch.randn(6, dtype=D64)
    assert_close_dense(high_precision_solve(exact, b), inv @ b, rtol=1e-12, atol=1e-12 * float((inv @ b).abs().max()))
    with pytest.raises(ValueError, match="matrix must be of positive determinant"):
        high_precision_logdet(-torch.eye(1, dtype=D64))


def test_inputs():
    gen = torch.Generator().manual_seed(3)
    M = random_spd(5, cond=1e8, scale=2.0, generator=gen)
    ev = torch.linalg.eigvalsh(M)
    assert torch.equal(M, M.T)
    assert abs(float(ev.max()) - 2.0) < 1e-12 and abs(float(ev.max() / ev.min()) / 1e8 - 1) < 1e-4
    assert int(torch.linalg.matrix_rank(random_psd(6, 2, generator=gen))) == 2
    with pytest.raises(ValueError, match="cond of random_spd must be a finite number >= 1"):
        random_spd(3, cond=0.5)
    assert vec_row(torch.arange(6).reshape(1, 2, 3)).tolist() == [[0, 1, 2, 3, 4, 5]]


class _BrokenKron(Kron):
    """A Kron whose matmul uses the column-major convention by mistake."""

    __slots__ = ()

    def matmul(self, X):  # noqa: D102
        return super().matmul(X.mT.reshape(X.shape)) if self.n != self.m else self.G @ X @ self.A


def test_mixin_catches_a_wrong_convention():
    class Suite(KroneckerOperatorTests):
        sizes = ((2, 2),)
        conditions = (10.0,)

        def make(self, case):
            g = case.generator()
            G, A = torch.randn(2, 2, generator=g, dtype=D64), torch.randn(2, 2, generator=g, dtype=D64)
            return _BrokenKron(G, A), torch.kron(G, A)

    suite = Suite()
    (case,) = suite.cases()
    assert case == OperatorCase(2, 2, 10.0, seed=0)
    suite.test_to_dense(case)
    with pytest.raises(AssertionError, match=r"matmul \[n2-m2-cond1e\+01-seed0\]: .* entries differ"):
        suite.test_matmul(case)
