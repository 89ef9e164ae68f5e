"""The low-rank route of the curvature's PSD projection and of the joint eigenbasis.

A few-shot curvature of a wide layer has an input factor ``A`` (``m x m``) summed from ``k << m``
rows, so its rank is at most ``k`` (:attr:`Curvature.positions`). The projection then skips the
``O(m^3)`` ``eigh``: a range finder, Rayleigh-Ritz and a complete QR give the same
eigendecomposition in ``O(m^2 k)``, and the joint eigenbasis with a full prior takes the thin SVD
of ``C^-1 W`` instead of the ``eigh`` of ``C^-1 A C^-T``. Every check here is against the dense
route or dense matrices, in float64, on tiny sizes (well- and ill-conditioned), plus the
fallback when the rank bound does not hold and the end-to-end posterior of a network.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import skkprior.kron as kron
from skkprior import isotropic_prior, kfac, posterior
from skkprior.kron import Kron, _joint_eig, _psd_factor, _rounding_tolerance, psd_projected
from skkprior.testing import random_spd

DT = torch.float64


def _low_rank(m: int, r: int, cond: float, seed: int) -> torch.Tensor:
    """``m x m`` PSD of rank ``r``, eigenvalues log-spaced from 1 down to ``1 / cond``."""
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(m, r, generator=gen, dtype=DT))
    f = torch.logspace(0, -torch.log10(torch.tensor(cond)).item(), r, dtype=DT)
    M = (q * f) @ q.T
    return (M + M.T) / 2


@pytest.mark.parametrize("m, r, cond, seed", [(60, 5, 10.0, 0), (90, 12, 1e8, 1), (75, 1, 1.0, 2), (48, 8, 1e12, 3)])
def test_low_rank_route_equals_the_dense_route(m, r, cond, seed):
    M = _low_rank(m, r, cond, seed)
    assert r + kron._LOW_RANK_OVERSAMPLING <= kron._LOW_RANK_FRACTION * m  # the low-rank route is taken
    low = kron._low_rank_psd(M, r + kron._LOW_RANK_OVERSAMPLING, None, DT)
    assert low is not None, "the check refused an exactly low-rank factor"
    projected, (f, V) = low
    full, (f_full, V_full) = _psd_factor(M)  # no rank bound: eigh of the whole factor
    tol = _rounding_tolerance(M, f_full, None, DT)
    # a complete orthonormal eigenbasis, ascending eigenvalues, non-negative, like eigh
    assert V.shape == (m, m) and f.shape == (m,)
    torch.testing.assert_close(V.T @ V, torch.eye(m, dtype=DT), atol=1e-13, rtol=0)
    assert bool((f[1:] >= f[:-1]).all()) and bool((f >= 0).all())
    # the same eigenvalues (within the projection's rounding bound: Weyl) and the same matrix
    assert float((f - f_full).abs().max()) <= tol
    assert float((projected - full).abs().max()) <= 2 * tol
    torch.testing.assert_close((V * f) @ V.T, projected, atol=1e-14, rtol=0)
    # the kept eigenvalues are the real ones (rank r), within rounding of the truth
    assert int((f > 0).sum()) == int((f_full > 0).sum())


def test_rank_bound_routes_through_psd_factor_and_zero_factor():
    M = _low_rank(90, 10, 1e4, 5)
    with_bound = _psd_factor(M, rank_bound=10)
    without = _psd_factor(M)
    tol = _rounding_tolerance(M, without[1][0], None, DT)
    assert float((with_bound[0] - without[0]).abs().max()) <= 2 * tol
    # an all-zero factor (a layer no example reached): zero eigenvalues, orthonormal basis
    projected, (f, V) = _psd_factor(torch.zeros(60, 60, dtype=DT), rank_bound=0)
    assert bool((f == 0).all()) and bool((projected == 0).all())
    torch.testing.assert_close(V.T @ V, torch.eye(60, dtype=DT), atol=1e-13, rtol=0)


def test_a_wrong_rank_bound_falls_back_to_the_dense_route():
    M = _low_rank(90, 40, 10.0, 6)  # rank 40, but the caller claims 5
    assert kron._low_rank_psd(M, 5 + kron._LOW_RANK_OVERSAMPLING, None, DT) is None
    projected, (f, _) = _psd_factor(M, rank_bound=5)
    reference, (f_ref, _) = _psd_factor(M)
    assert torch.equal(projected, reference) and torch.equal(f, f_ref)  # bit-identical: the same eigh
    assert int((f > 0).sum()) == 40


def test_an_indefinite_factor_still_raises_with_a_rank_bound():
    M = _low_rank(60, 4, 10.0, 7)
    M = M - 0.5 * _low_rank(60, 1, 1.0, 8)  # a negative eigenvalue far beyond rounding
    with pytest.raises(ValueError, match="positive semi-definite"):
        _psd_factor(M, rank_bound=5)


@pytest.mark.parametrize("cond_second", [1.0e2, 1.0e8])
def test_joint_eigenbasis_with_a_low_rank_first_term_against_dense(cond_second):
    m, r = 72, 6
    first = _low_rank(m, r, 1e6, 9)
    second = random_spd(m, cond=cond_second, generator=torch.Generator().manual_seed(10))
    projected, spectrum = _psd_factor(first, rank_bound=r)
    T, T_inv, D, logdet = _joint_eig(projected, second, "A", spectrum)
    eye = torch.eye(m, dtype=DT)
    scale = float(torch.linalg.matrix_norm(first, 2))
    # the float64 accuracy of a pencil reduced through a Cholesky factor: about m eps cond (measured here:
    # 4e-14 / 1e-9 at cond 1e2 / 1e8, the dense eigh route 6e-14 / 1.4e-8)
    tol = m * torch.finfo(DT).eps * cond_second
    # T^T first T = diag(D), T^T second T = I, T_inv T = I (relative to each term's size)
    assert float((T.T @ projected @ T - torch.diag(D)).abs().max()) <= tol * max(1.0, float(D.abs().max()))
    torch.testing.assert_close(T.T @ second @ T, eye, atol=tol, rtol=0)
    torch.testing.assert_close(T_inv @ T, eye, atol=tol, rtol=0)
    # the generalized eigenvalues of the dense pencil: r positive ones, the rest exactly zero
    dense = torch.linalg.eigvalsh(torch.linalg.solve(torch.linalg.cholesky(second), torch.linalg.solve(
        torch.linalg.cholesky(second), projected).T))
    torch.testing.assert_close(D.sort().values, dense.sort().values, atol=tol * scale, rtol=1e-8)
    assert int((D == 0).sum()) == m - r
    torch.testing.assert_close(logdet, torch.logdet(second), atol=1e-9, rtol=1e-12)
    # the same basis quantities as the dense eigh route (no spectrum given: eigh of C^-1 first C^-T)
    _, _, D_dense_route, _ = _joint_eig(projected, second, "A", None)
    torch.testing.assert_close(D.sort().values, D_dense_route.sort().values, atol=tol * scale, rtol=1e-8)


def test_few_shot_posterior_of_a_wide_layer_equals_the_dense_route(monkeypatch):
    """A 150-input layer, 12 examples: the input factor has rank <= 12 and takes the low-rank route
    (counted); the posterior equals the one computed with the route switched off (KL ~ 0, and the
    per-layer precision matrices agree densely)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(150, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    X, y = torch.randn(12, 150, dtype=DT), torch.randint(0, 3, (12,))
    curv = kfac(net, X, y, fisher="exact", progress=False)
    assert curv.positions["0"] == 12
    calls = []
    original = kron._low_rank_psd
    monkeypatch.setattr(kron, "_low_rank_psd", lambda *a, **k: calls.append(a[1]) or original(*a, **k))
    prior = isotropic_prior(net, weight_decay=0.5)
    low = posterior(prior, curv, net)
    assert calls == [12 + kron._LOW_RANK_OVERSAMPLING]  # layer "0" only: the head's A is 7 x 7
    monkeypatch.setattr(kron, "_LOW_RANK_FRACTION", 0.0)
    full = posterior(prior, curv, net)
    for name in ("0", "2"):
        torch.testing.assert_close(low.groups[name].precision.to_dense(), full.groups[name].precision.to_dense(),
                                   atol=1e-10, rtol=1e-10)
    assert abs(float(low.kl(full).total)) <= 1e-9
    torch.testing.assert_close(low.kl_to_prior().total, full.kl_to_prior().total, atol=1e-9, rtol=1e-10)


def test_psd_projected_passes_the_rank_bound_to_the_input_factor_only():
    gen = torch.Generator().manual_seed(11)
    G = random_spd(4, cond=10.0, generator=gen)
    A = _low_rank(80, 5, 100.0, 12)
    projected, ((f_g, _), (f_a, V_a)) = psd_projected(Kron(G, A), rank_bound=5)
    assert bool((f_g > 0).all())  # the output factor is full rank and kept whole
    assert int((f_a > 0).sum()) == 5
    torch.testing.assert_close(projected.A, (V_a * f_a) @ V_a.T, atol=1e-14, rtol=0)


@pytest.mark.parametrize("kind", ["noise", "low rank", "indefinite", "zero"])
def test_spectral_norm_bound_is_an_upper_bound_and_tight_on_noise(kind):
    """The check of the low-rank route: never below the exact spectral norm (eigvalsh), and for
    rounding-like noise spread over all directions (where the Frobenius norm is sqrt(d)/2 times
    too large) within the stated factor (10 sqrt(2/pi) sqrt(d))^(1/8)."""
    from skkprior.kron import _spectral_norm_bound

    d = 300
    gen = torch.Generator().manual_seed(13)
    if kind == "noise":
        R = torch.randn(d, d, generator=gen, dtype=DT) * 1e-7
    elif kind == "low rank":
        R = _low_rank(d, 3, 1e3, 14) * 5.0
    elif kind == "indefinite":
        R = _low_rank(d, 4, 10.0, 15) - 2.0 * _low_rank(d, 2, 10.0, 16)
    else:
        R = torch.zeros(d, d, dtype=DT)
    R = (R + R.T) / 2
    exact = float(torch.linalg.matrix_norm(R, 2))
    bound = _spectral_norm_bound(R, torch.Generator().manual_seed(0))
    assert bound >= exact * (1 - 1e-12)
    factor = (10 * (2 / torch.pi) ** 0.5 * d ** 0.5) ** (1 / 8)
    assert bound <= factor * exact + 1e-300
    if kind == "noise":
        assert bound < float(torch.linalg.matrix_norm(R)) / 3  # far below the Frobenius norm


def test_low_rank_route_with_rounding_noise_in_every_direction():
    """A float32-accumulated few-shot factor is low rank plus noise of about 1e-5 of its largest
    eigenvalue in every direction (measured on the MNIST CNN's 50-shot input factor: signal
    eigenvalues 0.26 - 140, noise 7e-6). The noise tilts a one-pass range finder off the signal
    (there the dropped part's norm exceeded the rounding bound and the route fell back); with the
    subspace iteration the route is taken and agrees with the dense route within the bound."""
    m, r = 600, 40
    gen = torch.Generator().manual_seed(17)
    q, _ = torch.linalg.qr(torch.randn(m, r, generator=gen, dtype=DT))
    signal = (q * torch.logspace(2.15, -0.6, r, dtype=DT)) @ q.T
    noise = torch.randn(m, m, generator=gen, dtype=DT)
    noise = (noise + noise.T) / 2
    noise = noise * (7e-6 / float(torch.linalg.matrix_norm(noise, 2)))
    M = signal + noise
    accumulation = (2.0 ** -24, r + 1)  # a float32 sum of r rows, like the curvature's record
    low = kron._low_rank_psd(M, r + kron._LOW_RANK_OVERSAMPLING, accumulation, torch.float32)
    assert low is not None
    projected, (f, V) = low
    full, (f_full, _) = _psd_factor(M, accumulation)
    tol = _rounding_tolerance(M, f_full, accumulation, torch.float32)
    assert 10 * 7e-6 < tol  # the noise is well within the bound that zeroes it
    assert int((f > 0).sum()) == int((f_full > 0).sum()) == r
    assert float((f - f_full).abs().max()) <= tol
    assert float(torch.linalg.matrix_norm(projected - full, 2)) <= 2 * tol


def test_joint_eigenbasis_with_an_all_zero_first_term():
    """A layer no example reached (curvature 0) under a full prior: the thin route with no columns."""
    m = 30
    second = random_spd(m, cond=10.0, generator=torch.Generator().manual_seed(18))
    projected, spectrum = _psd_factor(torch.zeros(m, m, dtype=DT), rank_bound=0)
    T, T_inv, D, logdet = _joint_eig(projected, second, "A", spectrum)
    assert bool((D == 0).all())
    torch.testing.assert_close(T.T @ second @ T, torch.eye(m, dtype=DT), atol=1e-12, rtol=0)
    torch.testing.assert_close(T_inv @ T, torch.eye(m, dtype=DT), atol=1e-12, rtol=0)
    torch.testing.assert_close(logdet, torch.logdet(second), atol=1e-10, rtol=1e-12)


@pytest.mark.parametrize("bad", [-1, 2.5, "5", True])
def test_psd_projected_refuses_a_bad_rank_bound(bad):
    F = Kron(random_spd(3, cond=10.0, generator=torch.Generator().manual_seed(19)), _low_rank(40, 2, 10.0, 20))
    with pytest.raises(ValueError, match="rank_bound"):
        psd_projected(F, rank_bound=bad)


def test_integer_like_rank_bounds_are_accepted():
    import numpy as np

    F = Kron(random_spd(3, cond=10.0, generator=torch.Generator().manual_seed(21)), _low_rank(60, 3, 10.0, 22))
    reference = psd_projected(F, rank_bound=3)[0]
    for bound in (np.int64(3), torch.tensor(3)):
        torch.testing.assert_close(psd_projected(F, rank_bound=bound)[0].A, reference.A, atol=0, rtol=0)


def test_low_rank_route_declines_overflowing_products():
    """Entries near the float64 limit overflow M Omega: the route declines and the dense route decides."""
    unit = _low_rank(60, 2, 10.0, 23)
    M = (unit / unit.abs().max()) * 1.5e308  # finite, largest entry 1.5e308
    assert bool(torch.isfinite(M).all())
    assert kron._low_rank_psd(M, 2 + kron._LOW_RANK_OVERSAMPLING, None, DT) is None


def test_a_projection_is_its_own_projection_until_modified(monkeypatch):
    """psd_projected of its own result returns it and its eigendecompositions without a new eigh;
    an in-place change of a factor invalidates that (the factor is projected again)."""
    gen = torch.Generator().manual_seed(1)
    G, A = random_spd(3, generator=gen), random_spd(5, generator=gen)
    F, spectra = psd_projected(Kron(G, A))
    calls = []
    real = kron._psd_factor
    monkeypatch.setattr(kron, "_psd_factor", lambda *a, **k: calls.append(1) or real(*a, **k))
    again, spectra_again = psd_projected(F)
    assert again is F and spectra_again is spectra and not calls
    F.A.mul_(2.0)
    moved, (_, (f_a, _)) = psd_projected(F)
    assert len(calls) == 2 and moved is not F
    torch.testing.assert_close(f_a, 2.0 * spectra[1][0], rtol=1e-12, atol=1e-12)


def test_learn_prior_projects_each_source_factor_once(monkeypatch):
    """The calibration's source posterior and the prior's factors share one projection per factor."""
    from skkprior import learn_prior

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    X, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    curv = kfac(net, X, y, progress=False)
    calls = []
    real = kron._psd_factor
    monkeypatch.setattr(kron, "_psd_factor", lambda *a, **k: calls.append(1) or real(*a, **k))
    prior = learn_prior(net, X, y, curvature=curv, weight_decay=0.1, scaling="pac-bayes")
    assert len(calls) == 2 * 2  # G and A of both layers, once each
    # the prior holds the factors, not their cached eigendecompositions
    assert all("psd_projection" not in F._cache for F in prior.source_factors.values())
    # the same prior as from a fresh projection (the factors it keeps are the projected ones)
    for name, F in curv.factors.items():
        ref = psd_projected(F, curv.rounding.get(name), rank_bound=curv.positions.get(name))[0]
        torch.testing.assert_close(prior.source_factors[name].to_dense(), ref.to_dense(), rtol=1e-12, atol=1e-15)


def test_projection_under_inference_mode_is_not_cached():
    with torch.inference_mode():
        F, spectra = psd_projected(Kron(torch.eye(2, dtype=torch.float64), torch.eye(3, dtype=torch.float64)))
        again, _ = psd_projected(F)
    assert "psd_projection" not in F._cache and again is not F
