"""The data-dependent prior of PACBayesBoundEstimator (``prior_fraction``) and the quadratic objective."""

import math

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV
from sklearn.preprocessing import StandardScaler

from skkprior import PACBayesBoundEstimator
from skkprior.bounds import kl_inv
from skkprior.estimators import _pac_bayes
from skkprior.tuning import PACBayesObjective, training_objective, tune_pac_bayes

FAST = dict(max_epochs=8, batch_size=32, n_samples=10, device="cpu", temperatures=(1.0, 0.1))


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return StandardScaler().fit_transform(X).astype(np.float32), y


@pytest.fixture(scope="module")
def iris_like():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 40)
    X = (rng.normal(size=(120, 4)) + 2.0 * np.eye(3, 4)[y]).astype(np.float32)
    return X, y


def test_split_sizes_and_certificate_n(iris_like):
    X, y = iris_like
    est = PACBayesBoundEstimator(prior_fraction=0.25, prior_scales=[1.0], random_state=0, **FAST).fit(X, y)
    split = est.prior_split_
    assert (split["n_prior"], split["n_bound"]) == (30, 90)
    assert est.certificate_.n == 90
    assert est.certificate_.m == 90 * est.mc_passes
    rows = split["bound_indices"]
    assert len(rows) == 90 and len(np.unique(rows)) == 90 and rows.min() >= 0 and rows.max() < 120


def test_no_split_certifies_all_data(iris_like):
    X, y = iris_like
    est = PACBayesBoundEstimator(prior_fraction=0.0, prior_scales=[1.0], random_state=0, **FAST).fit(X, y)
    assert est.prior_split_["n_prior"] == 0 and est.certificate_.n == len(y)


def test_split_ignores_data_values_and_labels(iris_like):
    """The split is a seeded permutation: other values and labels give the same rows (i.i.d. bound part)."""
    X, y = iris_like
    kw = dict(prior_fraction=0.5, prior_scales=[1.0], random_state=3, **FAST)
    fitted_a = PACBayesBoundEstimator(**kw).fit(X, y).prior_split_["bound_indices"]
    fitted_b = PACBayesBoundEstimator(**kw).fit(X[::-1].copy() * 2.0, np.roll(y, 7)).prior_split_["bound_indices"]
    np.testing.assert_array_equal(fitted_a, fitted_b)
    other_seed = PACBayesBoundEstimator(**{**kw, "random_state": 4}).fit(X, y).prior_split_["bound_indices"]
    assert not np.array_equal(fitted_a, other_seed)


def test_prior_never_sees_the_bound_part(iris_like):
    """Changing the bound part's examples leaves the data-dependent prior exactly as it was."""
    X, y = iris_like
    kw = dict(prior_fraction=0.5, prior_scales=[1.0], random_state=1, **FAST)
    est = PACBayesBoundEstimator(**kw).fit(X, y)
    bound = est.prior_split_["bound_indices"]
    X2, y2 = X.copy(), y.copy()
    X2[bound] = np.random.default_rng(5).normal(size=X2[bound].shape).astype(np.float32) * 5.0
    y2[bound] = np.random.default_rng(6).permutation(y2[bound])
    other = PACBayesBoundEstimator(**kw).fit(X2, y2)
    for name, g in est.prior_.groups.items():
        torch.testing.assert_close(g.mean, other.prior_.groups[name].mean, rtol=0, atol=0)
        torch.testing.assert_close(g.precision.to_dense(), other.prior_.groups[name].precision.to_dense(),
                                   rtol=0, atol=0)
    # ... while the posterior, trained on the bound part, differs
    assert any(not torch.equal(g.mean, other.posterior_.groups[k].mean) for k, g in est.posterior_.groups.items())


def test_data_dependent_prior_is_much_tighter_on_digits(digits):
    """Measured (seeds 0-2, MLP, 20 epochs, quadratic objective, scales (100, 1000)): with the split
    0.090 / 0.104 / 0.120, without 0.628 / 0.623 / 0.616. Asserted with a margin of more than
    twice the measured spread: below 0.25, and at least 0.3 below the certificate without it."""
    X, y = digits
    kw = dict(max_epochs=20, random_state=0, device="cpu", objective="quadratic", prior_scales=(100, 1000),
              temperatures=(1.0, 0.1))
    split = PACBayesBoundEstimator(prior_fraction=0.5, **kw).fit(X, y)
    whole = PACBayesBoundEstimator(prior_fraction=0.0, **kw).fit(X, y)
    assert split.bound_ < 0.25
    assert split.bound_ < whole.bound_ - 0.3
    # the certificate is about the bound part, with the union over the two scales paid
    assert split.certificate_.n == len(y) - round(0.5 * len(y))
    assert split.certificate_.union_size == 2


def test_auto_fraction_keeps_small_data_whole():
    """Below 100 examples "auto" certifies all the data against the prior as given (the kl bound
    needs n >= 8; a split of 16 examples would leave 8 on each side)."""
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(2), 8)
    X = (rng.normal(size=(16, 3)) + y[:, None]).astype(np.float32)
    est = PACBayesBoundEstimator(prior_scales=[1.0], random_state=0, **FAST).fit(X, y)
    assert est.prior_split_["prior_fraction"] == 0.0 and est.certificate_.n == 16


@pytest.mark.parametrize("fraction", [1.0, -0.1, 1.5, True, "half"])
def test_bad_fraction_is_refused(iris_like, fraction):
    X, y = iris_like
    with pytest.raises((ValueError, TypeError), match="prior_fraction"):
        PACBayesBoundEstimator(prior_fraction=fraction, **FAST).fit(X, y)


def test_split_without_an_example_in_a_part_is_refused():
    X = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    y = np.array([0, 1, 0, 1])
    with pytest.raises(ValueError, match="at least one example in each part"):
        PACBayesBoundEstimator(prior_fraction=0.01, prior_scales=[1.0], **FAST).fit(X, y)


def test_grid_search_tunes_prior_fraction(iris_like):
    X, y = iris_like
    est = PACBayesBoundEstimator(prior_scales=[1.0], random_state=0, **{**FAST, "max_epochs": 3})
    search = GridSearchCV(est, {"prior_fraction": [0.0, 0.5]}, cv=2).fit(X, y)
    assert search.best_params_["prior_fraction"] in (0.0, 0.5)
    assert search.best_estimator_.prior_split_["prior_fraction"] == search.best_params_["prior_fraction"]


def test_default_grid_is_paid(iris_like):
    X, y = iris_like
    est = PACBayesBoundEstimator(random_state=0, **{**FAST, "max_epochs": 3}).fit(X, y)
    assert est.prior_fraction == "auto" and est.prior_split_["prior_fraction"] == 0.5  # 120 examples
    assert [s["prior_scale"] for s in est.selection_] == list(_pac_bayes.DEFAULT_PRIOR_SCALES)
    assert est.certificate_.union_size == len(_pac_bayes.DEFAULT_PRIOR_SCALES)


def test_selection_on_a_subset_certifies_all_bound_examples(iris_like, monkeypatch):
    """Candidates are scored on a seeded subset; the certificate still uses every bound example."""
    monkeypatch.setattr(_pac_bayes, "SELECTION_EXAMPLES", 20)
    X, y = iris_like
    est = PACBayesBoundEstimator(prior_fraction=0.5, prior_scales=[1.0], random_state=0, **FAST).fit(X, y)
    assert est.certificate_.n == 60 and est.certificate_.m == 60


# -- the PAC-Bayes-quadratic objective ------------------------------------------------------------------
def test_quadratic_training_objective_formula():
    ce, q, n, d, delta = torch.tensor(0.3), torch.tensor(50.0), 1000, 10, 0.025
    r = (0.3 + d / (2 * n)) / math.log(2)
    b = (25.0 + math.log(2 * math.sqrt(n) / delta)) / (2 * n)
    expected = (math.sqrt(r + b) + math.sqrt(b)) ** 2
    got = float(training_objective("quadratic", ce, q, n=n, n_params=d, delta=delta))
    assert math.isclose(got, expected, rel_tol=1e-6)


@pytest.mark.parametrize("risk,kl,n", [(0.01, 5.0, 1000), (0.2, 300.0, 5000), (0.4, 10.0, 100)])
def test_quadratic_bound_upper_bounds_the_kl_bound(risk, kl, n):
    """The quadratic bound relaxes the kl-inverse (Pinsker-type), so it is never below it."""
    from skkprior.tuning import _bound_from_risk

    delta = 0.025
    quad = float(_bound_from_risk(torch.tensor(risk, dtype=torch.float64), torch.tensor(kl, dtype=torch.float64),
                                  n, delta, "quadratic", None))
    exact = kl_inv(risk, (kl + math.log(2 * math.sqrt(n) / delta)) / n)
    assert quad >= exact - 1e-12


def test_tune_pac_bayes_with_the_quadratic_objective():
    from torch import nn

    from skkprior.curvature import kfac
    from skkprior.laplace import isotropic_prior, posterior

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    X, y = torch.randn(200, 4, dtype=torch.float64), torch.randint(0, 3, (200,))
    curv = kfac(net, X, y, progress=False, generator=torch.Generator().manual_seed(0))
    post = posterior(isotropic_prior(net, weight_decay=1.0), curv, net)
    res = tune_pac_bayes(post, nll_sum=curv.nll_sum, n=200, objective="quadratic")
    assert res.objective_best <= res.objective_start
    obj = PACBayesObjective(post, nll_sum=curv.nll_sum, n=200, bound="quadratic")
    assert 0 < float(obj.reference(post)) < math.inf
