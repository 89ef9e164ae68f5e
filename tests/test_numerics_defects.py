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
from skkprior.predictive import (gibbs_error_count, gibbs_predict, predict_proba_linearized,
                                 predict_proba_mc)
from skkprior.tuning import tune_validation

torch.set_num_threads(1)


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
    with pytest.raises(ValueError, match="temperature.*prior_scale.*weight_decay"):
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
    est = PACBayesBoundEstimator(max_epochs=2, random_state=0, temperatures=(1.0, 1e300)).fit(X, y)
    assert max(float(t) for t in est.posterior_.temperature.values()) < 1e100
    assert np.isfinite(est.predict_proba(X)).all()
    with pytest.raises(ValueError, match="temperatures"):
        PACBayesBoundEstimator(max_epochs=2, random_state=0, temperatures=(1e300,)).fit(X, y)
