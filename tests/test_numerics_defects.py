"""Issue 14, numerical defect classes: silent NaN from broad posteriors (class 1), the PSD
projection's tolerance (class 3) and indefinite priors from ``as_prior`` (class 5)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from skkprior.curvature import kfac
from skkprior.laplace import isotropic_prior, posterior
from skkprior.predictive import (
    NonFiniteLogits,
    gibbs_error_count,
    gibbs_predict,
    predict_proba_linearized,
    predict_proba_mc,
)
from skkprior.tuning import tune_validation


# -- class 1: no NaN predictive from scales the parameter checks accept --------------------------------
@pytest.fixture(scope="module")
def small_problem():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    X, y = torch.randn(40, 4), torch.randint(0, 3, (40,))
    return net, X, y, kfac(net, X, y, progress=False)


BROAD = [  # (weight_decay, prior_scale, temperature): each overflows a float32 network's draws
    (1.0, 1.0, 1e300),
    (1e-300, 1.0, 1.0),
    (1.0, 1e-300, 1.0),
]


@pytest.mark.parametrize("wd, alpha, tau", BROAD)
def test_broad_posterior_sampling_predictives_raise_naming_the_scales(small_problem, wd, alpha, tau):
    net, X, y, curv = small_problem
    post = posterior(isotropic_prior(net, weight_decay=wd), curv, net, prior_scale=alpha, temperature=tau)
    gen = torch.Generator().manual_seed(0)
    with pytest.raises(NonFiniteLogits, match="temperature.*prior_scale.*weight_decay"):
        predict_proba_mc(net, post, X, n_samples=4, generator=gen)
    for method in ("fast", "general"):
        with pytest.raises(ValueError, match="Lower temperature, or raise prior_scale or weight_decay"):
            gibbs_error_count(net, post, X, y, generator=gen, method=method)
        with pytest.raises(ValueError, match="non-finite logits"):
            gibbs_predict(net, post, X, generator=gen, method=method)
    # the linearized (probit) predictive has a finite limit: kappa -> 0, the uniform distribution
    p = predict_proba_linearized(net, post, X)
    assert bool(torch.isfinite(p).all())
    assert torch.allclose(p, torch.full_like(p, 1 / 3), atol=1e-12)


def test_large_finite_logits_give_a_finite_mc_predictive(small_problem):
    """Logits far beyond exp's range but finite: the float64 softmax is exact (one-hot rows)."""
    net, X, y, curv = small_problem
    post = posterior(isotropic_prior(net, weight_decay=1.0), curv, net, temperature=1e40)
    p = predict_proba_mc(net, post, X, n_samples=4, generator=torch.Generator().manual_seed(0))
    assert bool(torch.isfinite(p).all())
    assert torch.allclose(p.sum(1), torch.ones(len(X), dtype=torch.float64))


def test_validation_grid_skips_overflowing_points(small_problem):
    net, X, y, curv = small_problem
    post = posterior(isotropic_prior(net, weight_decay=1.0), curv, net)
    gen = torch.Generator().manual_seed(0)
    result = tune_validation(post, net, X, y, prior_scales=[1.0], temperatures=[1e300, 1e-3],
                             n_samples=4, generator=gen)
    assert result.temperature[next(iter(result.temperature))] == pytest.approx(1e-3)
    assert math.isfinite(result.objective_best)
    assert result.history[0] == math.inf
    with pytest.raises(ValueError, match="temperatures"):
        tune_validation(post, net, X, y, prior_scales=[1.0], temperatures=[1e300], n_samples=4, generator=gen)


@pytest.fixture(scope="module")
def iris():
    from sklearn.datasets import load_iris

    X, y = load_iris(return_X_y=True)
    return ((X - X.mean(0)) / X.std(0)).astype(np.float32), y


@pytest.mark.parametrize("kw", [{"temperature": 1e300}, {"weight_decay": 1e-300}, {"prior_scale": 1e-300}])
def test_classifier_never_predicts_from_nan(iris, kw):
    from skkprior.estimators import KroneckerPriorClassifier

    X, y = iris
    clf = KroneckerPriorClassifier(scaling="fixed", predictive="mc", max_epochs=2, n_samples=4,
                                   random_state=0, **kw).fit(X, y)
    name = next(iter(kw))
    with pytest.raises(ValueError, match=name):
        clf.predict_proba(X)
    with pytest.raises(ValueError, match=name):
        clf.predict(X)
    clf.set_params(predictive="linearized")
    p = clf.predict_proba(X)
    assert np.isfinite(p).all() and np.allclose(p.sum(1), 1.0)
    with pytest.raises(ValueError, match="temperatures"):  # the validation grid: every point overflows
        KroneckerPriorClassifier(scaling="validation", max_epochs=2, n_samples=4, random_state=0, **kw).fit(X, y)


def test_pac_bayes_estimator_skips_overflowing_candidates(iris):
    from skkprior.estimators import PACBayesBoundEstimator

    X, y = iris
    est = PACBayesBoundEstimator(max_epochs=2, random_state=0, temperatures=(1.0, 1e300), prior_scales=[1.0]).fit(X, y)
    assert max(float(t) for t in est.posterior_.temperature.values()) < 1e100
    assert np.isfinite(est.predict_proba(X)).all()
    with pytest.raises(ValueError, match="temperatures"):
        PACBayesBoundEstimator(max_epochs=2, random_state=0, temperatures=(1e300,), prior_scales=[1.0]).fit(X, y)


# -- class 3: the PSD projection's tolerance follows the dtype and the accumulation ---------------------
from skkprior.kron import (
    Kron,  # noqa: E402
    psd_projected,  # noqa: E402
)
from skkprior.testing import high_precision_inverse, high_precision_logdet, random_spd  # noqa: E402
from skkprior.tuning import LN2, PACBayesObjective, _bound_from_risk  # noqa: E402

DT = torch.float64


def _dense_kl(mean_q, prec_q, mean_p, prec_p):
    """KL(N(mean_q, prec_q^-1) || N(mean_p, prec_p^-1)) from dense matrices, the inverse and the
    log-determinant in 50-digit arithmetic (the posterior precision has condition 1e10)."""
    d = mean_q.numel()
    diff = (mean_q - mean_p).reshape(-1)
    trace = torch.trace(high_precision_inverse(prec_q) @ prec_p)
    return 0.5 * (trace + diff @ prec_p @ diff - d + high_precision_logdet(prec_q) - high_precision_logdet(prec_p))


@pytest.fixture(scope="module")
def ill_conditioned():
    """A float64 layer curvature of condition 1e12 (factors 1e8 and 1e4) and its posterior."""
    gen = torch.Generator().manual_seed(1)
    net = nn.Sequential(nn.Linear(7, 5)).double()
    F = Kron(random_spd(5, cond=1e8, generator=gen), random_spd(8, cond=1e4, generator=gen))
    wd = 1e-10
    post = posterior(isotropic_prior(net, weight_decay=wd), {"0": F}, net)
    mean = torch.cat([net[0].weight.detach(), net[0].bias.detach()[:, None]], 1)
    prec_p = wd * torch.eye(40, dtype=DT)
    return post, F, mean, prec_p


def test_float64_factor_keeps_its_small_eigenvalues_kl_exact(ill_conditioned):
    post, F, mean, prec_p = ill_conditioned
    dense = _dense_kl(mean, F.to_dense() + prec_p, torch.zeros_like(mean), prec_p)
    ours = post.kl_to_prior().total
    # ours: float64 eigensolves of factors of condition 1e8, about 1e-16 * 1e8 relative in the
    # smallest eigenvalues; the old float32-level cut (size eps_32 max = 6e-7 max) zeroed the
    # output factor's eigenvalue 1e-8 and gave a KL far too low
    assert float(ours) == pytest.approx(float(dense), rel=1e-7)
    (f_g, _), (f_a, _) = psd_projected(F)[1]
    assert bool((f_g > 0).all()) and bool((f_a > 0).all())


def test_pac_bayes_objective_at_fixed_scales_equals_dense(ill_conditioned):
    post, F, mean, prec_p = ill_conditioned
    n, nll_sum = 100, 12.5
    obj = PACBayesObjective(post, nll_sum=nll_sum, n=n, bound="catoni")
    zeros = {k: torch.zeros((), dtype=DT) for k in ("prior_scale", "likelihood_scale", "temperature")}
    prec_q = F.to_dense() + prec_p
    kl = _dense_kl(mean, prec_q, torch.zeros_like(mean), prec_p)
    risk = (nll_sum + 0.5 * torch.trace(high_precision_inverse(prec_q) @ F.to_dense())) / (n * LN2)
    dense = _bound_from_risk(risk, kl, n, 0.025, "catoni", torch.zeros((), dtype=DT))
    assert float(obj(zeros)) == pytest.approx(float(dense), rel=1e-7)


def test_float32_accumulated_cnn_sized_factor_keeps_real_small_eigenvalues():
    """A 1569 x 1569 input factor (a 1568-input dense layer, as in a small CNN) summed in float32
    from 2048 ReLU activations with a decaying spectrum: the projection keeps every eigenvalue that a
    float64 summation of the same data puts above the rounding bound, and agrees with it there."""
    gen = torch.Generator().manual_seed(0)
    m_in, N = 1568, 2048
    q, _ = torch.linalg.qr(torch.randn(m_in, m_in, generator=gen, dtype=DT))
    H = (torch.randn(N, m_in, generator=gen, dtype=DT) * torch.logspace(0, -4, m_in, dtype=DT)) @ q.T
    H = torch.relu(H / H.abs().max()).float()  # non-negative, like ReLU features
    net32 = nn.Linear(m_in, 4)
    net64 = nn.Linear(m_in, 4).double()
    net64.load_state_dict({k: v.double() for k, v in net32.state_dict().items()})
    y = torch.randint(0, 4, (N,), generator=gen)
    c32 = kfac(net32, H, y, fisher="exact", progress=False)
    c64 = kfac(net64, H.double(), y, fisher="exact", progress=False)

    def projected(curv, net):  # the posterior's input-factor spectrum (prior A factor = identity)
        return posterior(isotropic_prior(net, weight_decay=1.0), curv, net).groups[""].precision.D_A

    # the accumulation record the projection's tolerance is derived from: float32 products summed
    # in chains of 4 batches x (256 columns + 1) terms; float64 ones at float64's unit roundoff
    assert c32.rounding[""]["A"] == (2.0 ** -24, 4 * (256 + 1))
    assert c64.rounding[""]["A"][0] == 2.0 ** -53
    merged = c32.merge(c32)  # a merge keeps the worst record
    assert merged.rounding[""]["A"] == c32.rounding[""]["A"]
    A32 = c32.factors[""].A
    f32, f64 = projected(c32, net32), torch.linalg.eigvalsh(c64.factors[""].A)
    # the rounding bound of a float32 sum of chains of k = 4 batches x (256 columns + 1) terms
    u, k, diag = 2.0 ** -24, 4 * (256 + 1), A32.diagonal()
    tol = 4 * math.sqrt(k) * u * math.sqrt(float(diag.max()) * float(diag.sum())) + 1569 * 2.0 ** -52 * float(f64.max())
    kept = f32 > 0
    # what is kept is real: within the rounding bound of the float64 summation's eigenvalues
    assert float((f32[kept] - f64[kept]).abs().max()) <= tol
    # everything real beyond twice the bound is kept
    assert bool(kept[f64 > 2 * tol].all())
    old_tol = 1569 * torch.finfo(torch.float32).eps * float(f64.max())
    assert int(kept.sum()) > 1.3 * int((f64 > old_tol).sum())
    # float64 summation: a float64-level bound, every eigenvalue of this full-rank factor kept
    assert int((projected(c64, net64) > 0).sum()) == 1569


def test_rank_deficient_float32_factors_still_project_to_zero():
    """The head's output factor has the softmax null direction (sum of the logit gradients is
    zero); summed in float32 it comes out as +-1e-7 relative noise: projected to zero, no error."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 5))
    X = torch.randn(500, 6)
    curv = kfac(net, X, torch.randint(0, 5, (500,)), fisher="exact", progress=False)
    F = curv.factors["2"]
    raw = torch.linalg.eigvalsh(F.G)
    assert float(raw.abs().min()) < 1e-5 * float(raw.max())       # the null direction, as noise
    (f_g, V_g), _ = psd_projected(F, curv.rounding.get("2"))[1]
    assert int((f_g == 0).sum()) == 1
    ones = torch.ones(5, dtype=DT) / math.sqrt(5)
    assert float((V_g[:, f_g == 0].T @ ones).abs().max()) == pytest.approx(1.0, abs=1e-6)
    post = posterior(isotropic_prior(net, weight_decay=1.0), curv, net)
    assert math.isfinite(float(post.kl_to_prior().total))


# -- class 5: as_prior returns a positive definite prior, also at curvature condition 1e10 - 1e12 ------
from skkprior.testing import random_psd  # noqa: E402


@pytest.mark.parametrize("seed, cond", [(1, 1e12), (4, 1e10), (5, 1e10), (7, 1e10), (4, 1e12)])
def test_as_prior_is_positive_definite_and_the_next_task_works(seed, cond):
    """A curvature with the softmax-like null direction in G and an input factor of condition
    ``cond``, under a weak Kronecker prior (condition ``cond`` too): the exact NKP factor G has
    a smallest eigenvalue near 1e-20 of its largest, which float64 returned as +-1e-17 (an
    indefinite prior; the next task's Cholesky failed)."""
    gen = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Linear(7, 5)).double()
    F = Kron(random_psd(5, 4, generator=gen, scale=1e3), random_spd(8, cond=cond, generator=gen))
    prior0 = isotropic_prior(net, weight_decay=1.0)
    P = Kron(1e-10 * random_spd(5, cond=cond, generator=gen), random_spd(8, cond=cond, generator=gen))
    prior0.groups["0"].precision = P
    post = posterior(prior0, {"0": F}, net, prior_scale=0.5, likelihood_scale=2.0)
    nxt = post.as_prior()
    K = nxt.groups["0"].precision
    for M in (K.G, K.A):
        assert float(torch.linalg.eigvalsh((M + M.T) / 2).min()) > 0
        assert int(torch.linalg.cholesky_ex(M).info) == 0
        assert torch.equal(M, M.T)
    # dense rebuild of the nearest Kronecker product (Van Loan-Pitsianis on the dense rearrangement)
    total = 2.0 * F.to_dense() + 0.5 * P.to_dense()
    R = total.reshape(5, 8, 5, 8).permute(0, 2, 1, 3).reshape(25, 64)
    U, S, Vh = torch.linalg.svd(R)
    dense_nkp = torch.kron((S[0].sqrt() * U[:, 0]).reshape(5, 5), (S[0].sqrt() * Vh[0]).reshape(8, 8))
    dense_nkp = dense_nkp * torch.sign(torch.trace(dense_nkp))
    # float64 rounding of both routes: a few eps times the sizes, relative to the norm
    assert float(torch.linalg.norm(K.to_dense() - dense_nkp) / torch.linalg.norm(dense_nkp)) < 1e-12
    err = float(torch.linalg.norm(total - dense_nkp) / torch.linalg.norm(total))
    assert nxt.metadata["nkp_error"]["0"] == pytest.approx(err, rel=1e-6, abs=1e-12)
    # the next task: a posterior on the compressed prior, its KL finite and non-negative
    nxt_post = posterior(nxt, {"0": F}, net)
    kl = float(nxt_post.kl_to_prior().total)
    assert math.isfinite(kl) and kl >= 0
