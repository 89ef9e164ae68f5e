"""KroneckerPriorClassifier(scaling="cv"): scales (and a learned prior's source weight) by k-fold CV."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
from torch import nn

import skkprior.estimators._base as base
from skkprior import KroneckerPriorClassifier, learn_prior
from skkprior.estimators._base import VALIDATION_PRIOR_GRID, VALIDATION_TEMPERATURE_GRID, cv_folds
from skkprior.networks import MLP

GRID = len(VALIDATION_PRIOR_GRID) * len(VALIDATION_TEMPERATURE_GRID)
FAST = {"module__hidden_sizes": (8,), "max_epochs": 40, "lr": 0.05, "batch_size": 32, "n_samples": 8,
        "device": "cpu", "weight_decay": 0.01}


def _blobs(n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = np.array([[3.0, 0.0], [-1.5, 2.6], [-1.5, -2.6]])
    X = np.concatenate([c + 0.6 * rng.standard_normal((n_per_class, 2)) for c in centres]).astype(np.float32)
    y = np.repeat(np.arange(3), n_per_class)
    return X, y


def _wrong_network() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """``(net, X, wrong labels)``: a network trained to predict the *wrong* class (labels rotated)."""
    X, y = _blobs(100, 1)
    torch.manual_seed(0)
    net = MLP(2, 3, hidden_sizes=(8,))
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    wrong = torch.from_numpy((y + 1) % 3)
    for _ in range(30):
        opt.zero_grad()
        nn.functional.cross_entropy(net(torch.from_numpy(X)), wrong).backward()
        opt.step()
    return net, torch.from_numpy(X), wrong


@pytest.fixture(scope="module")
def wrong_prior():
    """A learned prior centred at a network that predicts the *wrong* class with confidence, made
    very strong (beta_0 = 1e7: precision ~1e7 per weight; no head named, so the whole network is
    pinned to it)."""
    net, X, wrong = _wrong_network()
    return learn_prior(net, X, wrong, weight_decay=0.01, likelihood_scale=1e7, progress=False)


def test_cv_drops_a_strong_wrong_prior(wrong_prior):
    X, y = _blobs(20, 2)
    clf = KroneckerPriorClassifier(MLP, prior=wrong_prior, scaling="cv", cv=3, source_weights=(0.0, 1.0),
                                   cv_zero_mean=False, random_state=0, **FAST).fit(X, y)
    assert clf.scales_["source_weight"] == 0.0 and not clf.scales_["zero_mean"]
    # the prior trained under is the re-weighted one: the isotropic prior with the (wrong) learned mean
    assert clf.prior_.metadata["calibration"]["likelihood_scale"]["net.0"] == 0.0
    means = {w: min(r["mean_nll"] for r in clf.cv_results_ if r["source_weight"] == w) for w in (0.0, 1.0)}
    assert means[0.0] < means[1.0] - 1.0, means  # by a margin, not by chance
    X_test, y_test = _blobs(100, 3)
    assert clf.score(X_test, y_test) > 0.9


@pytest.mark.parametrize("scoring", ["nll", "accuracy", "nll-1se"])
def test_chosen_scales_are_the_best_held_out_score(wrong_prior, scoring):
    X, y = _blobs(6, 4)
    clf = KroneckerPriorClassifier(MLP, prior=wrong_prior, scaling="cv", cv=3, source_weights=(0.0, 0.1, 1.0),
                                   cv_scoring=scoring, random_state=1, **FAST).fit(X, y)
    res = clf.cv_results_
    assert len(res) == 4 * GRID  # three source weights and the zero-mean prior
    assert [r["zero_mean"] for r in res[::GRID]] == [False, False, False, True]
    sizes = np.full(3, 6)  # 18 examples, 3 stratified folds of 2 per class
    for r in res:
        assert len(r["fold_nll"]) == 3 and len(r["fold_accuracy"]) == 3
        assert r["mean_nll"] == pytest.approx(float(np.mean(r["fold_nll"])), rel=1e-12)
        assert r["mean_accuracy"] == pytest.approx(float(np.dot(r["fold_accuracy"], sizes) / 18), rel=1e-12)
        assert all(v * 6 == pytest.approx(round(v * 6), abs=1e-9) for v in r["fold_accuracy"])  # counts
    if scoring == "nll":
        best = min(res, key=lambda r: r["mean_nll"])
    elif scoring == "nll-1se":
        top = max(r["mean_accuracy"] for r in res)
        floor = top - np.sqrt(top * (1 - top) / 18)
        best = min((r for r in res if r["mean_accuracy"] >= floor - 1e-9), key=lambda r: r["mean_nll"])
    else:
        top = max(r["mean_accuracy"] for r in res)
        best = min((r for r in res if r["mean_accuracy"] == pytest.approx(top, abs=1e-9)),
                   key=lambda r: r["mean_nll"])
    for key in ("source_weight", "zero_mean", "prior_scale", "likelihood_scale", "temperature", "mean_nll",
                "mean_accuracy"):
        assert clf.scales_[key] == best[key]
    assert clf.scales_["n_folds"] == 3 and clf.scales_["scoring"] == scoring
    # the predictive posterior is at the chosen scales
    g = clf.posterior_.groups["net.0"]
    assert float(g.temperature) == pytest.approx(best["temperature"], rel=1e-12)
    assert float(g.precision.alpha) == pytest.approx(best["prior_scale"], rel=1e-12)


def _row(nll: float, acc: float) -> dict:
    return {"mean_nll": nll, "mean_accuracy": acc}


def test_cv_choice_on_known_scores():
    """The rule on hand-made scores: accuracy first (as counts), NLL breaks ties, overflow last."""
    # the nearly uniform predictive (NLL ln 3, at chance) beats confident, mostly right ones on NLL only
    rows = [_row(1.20, 0.80), _row(1.0986, 1 / 3), _row(1.15, 0.80), _row(1.30, 0.70)]
    assert base.cv_choice(rows, "nll", n_held_out=30) == 1
    assert base.cv_choice(rows, "accuracy", n_held_out=30) == 2  # 24 of 30 right twice; lower NLL wins
    # accuracies that differ by rounding only are the same count: the NLL decides
    rows = [_row(0.9, 0.8 + 1e-12), _row(0.5, 0.8 - 1e-12)]
    assert base.cv_choice(rows, "accuracy", n_held_out=30) == 1
    # an overflowing point (infinite NLL, NaN accuracy) is never chosen while another exists
    rows = [_row(math.inf, math.nan), _row(2.0, 0.1)]
    assert base.cv_choice(rows, "accuracy", n_held_out=10) == 1 and base.cv_choice(rows, "nll", n_held_out=10) == 1
    # full ties: the first in grid order
    assert base.cv_choice([_row(1.0, 0.5), _row(1.0, 0.5)], "accuracy", n_held_out=10) == 0
    with pytest.raises(ValueError, match="cv_scoring"):
        base.cv_choice(rows, "brier", n_held_out=10)


def test_cv_choice_one_standard_error_rule_on_known_scores():
    """"nll-1se": the lowest NLL among points within one standard error of the best accuracy."""
    # 50 held out, best 43 right (0.86): SE = sqrt(0.86 * 0.14 / 50) = 0.049, so >= 41 right is eligible
    rows = [_row(0.60, 0.86), _row(0.45, 0.82), _row(0.30, 0.80), _row(2.2, 0.10)]
    assert base.cv_choice(rows, "nll-1se", n_held_out=50) == 1  # 41 right: eligible, lowest NLL there
    assert base.cv_choice(rows, "accuracy", n_held_out=50) == 0
    assert base.cv_choice(rows, "nll", n_held_out=50) == 2  # 40 right: one example too few for 1se
    # the near-uniform predictive with the lowest NLL (Fashion CNN > Animal-MNIST, seed 2) is excluded
    rows = [_row(2.62, 0.12), _row(2.90, 0.44), _row(3.10, 0.48)]
    assert base.cv_choice(rows, "nll", n_held_out=50) == 0
    assert base.cv_choice(rows, "nll-1se", n_held_out=50) == 1  # 22 right >= 24 - 3.5
    # a perfect best accuracy has no spread: only the perfect points are eligible
    rows = [_row(0.3, 1.0), _row(0.1, 0.98)]
    assert base.cv_choice(rows, "nll-1se", n_held_out=50) == 0
    # overflowing points are never eligible
    rows = [_row(math.inf, math.nan), _row(0.9, 0.5)]
    assert base.cv_choice(rows, "nll-1se", n_held_out=10) == 1


def test_cv_chooses_the_zero_mean_prior_when_the_learned_mean_pins_a_wrong_network():
    """Known answer: a learned prior whose mean predicts the wrong classes, with a floor so sharp
    (delta = 1e3) that every member with the learned mean pins the network there; only the zero-mean
    member N(0, weight_decay^-1 I) can learn the task, and cross-validation must find it."""
    net, X, wrong = _wrong_network()
    pinned = learn_prior(net, X, wrong, weight_decay=1e3, progress=False)
    X, y = _blobs(8, 2)
    X_test, y_test = _blobs(100, 3)
    kw = dict(prior=pinned, scaling="cv", cv=4, source_weights=(0.0, 1.0), random_state=0, **FAST)
    with_zero = KroneckerPriorClassifier(MLP, **kw).fit(X, y)
    assert with_zero.scales_["zero_mean"] and with_zero.scales_["source_weight"] is None
    for g in with_zero.prior_.groups.values():  # the network trained under the zero-mean prior
        assert torch.count_nonzero(g.mean) == 0
    assert with_zero.score(X_test, y_test) > 0.9
    without = KroneckerPriorClassifier(MLP, **kw, cv_zero_mean=False).fit(X, y)
    assert not any(r["zero_mean"] for r in without.cv_results_)
    assert without.score(X_test, y_test) < 0.6  # the learned mean pins the wrong network


def test_zero_mean_member_only_for_a_reweightable_learned_prior(wrong_prior):
    X, y = _blobs(4, 5)
    kw = dict(scaling="cv", cv=2, random_state=0, **{**FAST, "max_epochs": 2})
    iso = learn_prior(MLP(2, 3, hidden_sizes=(8,)), torch.from_numpy(X), torch.from_numpy(y), kind="isotropic",
                      weight_decay=0.01, progress=False)
    for prior in (None, iso):  # scored as they are
        clf = KroneckerPriorClassifier(MLP, prior=prior, **kw).fit(X, y)
        assert len(clf.cv_results_) == GRID and not any(r["zero_mean"] for r in clf.cv_results_)


def test_every_score_is_computed_on_held_out_data_only(wrong_prior, monkeypatch):
    """Instrumented: each fold's MAP, curvature and posterior see only its training rows, and the
    grid is scored only on the held-out rows; every example is held out exactly once per weight."""
    X, y = _blobs(5, 5)
    X = X + np.arange(len(y), dtype=np.float32)[:, None] * 1e-3  # rows identifiable by their values
    rows = {tuple(x): i for i, x in enumerate(X)}

    def ids(A) -> set[int]:
        return {rows[tuple(a)] for a in np.asarray(A, dtype=np.float32)}

    trained, scored = [], []
    real_train, real_tune = base.BaseKroneckerEstimator._train, base.tune_validation

    def spy_train(self, module, Xf, yf, loss, task):
        trained.append(ids(Xf))
        return real_train(self, module, Xf, yf, loss, task)

    def spy_tune(post, model, X_val, y_val, **kw):
        scored.append(ids(X_val.numpy()))
        return real_tune(post, model, X_val, y_val, **kw)

    monkeypatch.setattr(base.BaseKroneckerEstimator, "_train", spy_train)
    monkeypatch.setattr(base, "tune_validation", spy_tune)
    KroneckerPriorClassifier(MLP, prior=wrong_prior, scaling="cv", cv=5, source_weights=(0.0, 1.0), random_state=0,
                             **{**FAST, "max_epochs": 3}).fit(X, y)
    assert len(scored) == 5 * 3 and len(trained) == 5 * 3 + 1  # weights 0 and 1, and the zero mean
    for fit_rows, held_out in zip(trained[:-1], scored):
        assert fit_rows.isdisjoint(held_out)
        assert fit_rows | held_out == set(range(len(y)))
    for w in range(3):
        per_weight = scored[w::3]
        assert sorted(i for s in per_weight for i in s) == list(range(len(y)))
    assert trained[-1] == set(range(len(y)))  # the refit uses all data


def test_cv_is_deterministic_under_random_state(wrong_prior):
    X, y = _blobs(4, 6)
    kw = dict(prior=wrong_prior, scaling="cv", cv=2, source_weights=(0.0, 1.0), random_state=7,
              **{**FAST, "max_epochs": 10})
    a = KroneckerPriorClassifier(MLP, **kw).fit(X, y)
    b = KroneckerPriorClassifier(MLP, **kw).fit(X, y)
    assert a.cv_results_ == b.cv_results_ and a.scales_ == b.scales_
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))
    c = KroneckerPriorClassifier(MLP, **{**kw, "random_state": 8}).fit(X, y)
    assert c.cv_results_ != a.cv_results_


@pytest.mark.parametrize("shots", [1, 2])
@pytest.mark.parametrize("learned", [True, False])
def test_one_and_two_shot_data_run(wrong_prior, shots, learned, caplog):
    X, y = _blobs(shots, 8)
    prior = wrong_prior if learned else None
    with caplog.at_level(logging.WARNING, logger="skkprior.estimators"):
        clf = KroneckerPriorClassifier(MLP, prior=prior, scaling="cv", cv=5, source_weights=(0.0, 1.0),
                                       random_state=0, **{**FAST, "max_epochs": 5}).fit(X, y)
    assert clf.scales_["n_folds"] == (3 if shots == 1 else 2)
    assert len(clf.cv_results_) == (3 if learned else 1) * GRID
    if not learned:  # the zero-mean isotropic prior: no source-weight axis
        assert {r["source_weight"] for r in clf.cv_results_} == {None}
    assert ("single example" in caplog.text) == (shots == 1)
    assert np.isfinite(clf.predict_proba(X)).all()


def test_cv_folds_are_stratified_and_partition_the_data():
    y = np.repeat(np.arange(4), [3, 5, 7, 3])
    folds = cv_folds(y, 5, seed=0)
    assert len(folds) == 3  # the smallest class has 3 examples
    held = np.concatenate([t for _, t in folds])
    assert sorted(held) == list(range(len(y)))
    for train, test in folds:
        assert set(np.unique(y[test])) == set(range(4)) and set(np.unique(y[train])) == set(range(4))
    # 1-shot: min(cv, n) folds, each example held out once, classes spread over the folds
    y1 = np.arange(10)
    folds1 = cv_folds(y1, 5, seed=0)
    assert len(folds1) == 5 and all(len(t) == 2 for _, t in folds1)
    assert sorted(np.concatenate([t for _, t in folds1])) == list(range(10))
    # the split depends on the seed only
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds1, cv_folds(y1, 5, seed=0)))


def test_cv_parameters_are_validated_and_listed():
    clf = KroneckerPriorClassifier(scaling="cv", cv=4, source_weights=(0.0, 1.0))
    assert clf.get_params()["cv"] == 4 and clf.get_params()["source_weights"] == (0.0, 1.0)
    X, y = _blobs(3, 9)
    for bad in ({"cv": 1}, {"cv": 2.5}, {"source_weights": ()}, {"source_weights": (-1.0,)},
                {"cv_scoring": "brier"}, {"cv_scoring": "1se"}, {"cv_zero_mean": "yes"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            KroneckerPriorClassifier(scaling="cv", device="cpu", **bad).fit(X, y)


def test_weight_zero_is_the_plain_isotropic_learned_mean_prior(wrong_prior):
    """Source weight 0 is N(theta_s, delta^-1 I) whatever alpha_0 / tau_0 the prior was learned with
    (a calibrated floor alpha_0 delta / tau_0 would not be the isotropic prior it is compared with)."""
    sharp = wrong_prior.reweighted(prior_scale=50.0, temperature=0.1)
    clf = KroneckerPriorClassifier(MLP, prior=sharp, scaling="cv", random_state=0, **FAST)
    flat = clf._weighted_prior(sharp, 0.0)
    for name in ("net.0", "net.2"):
        g = flat.groups[name]
        torch.testing.assert_close(g.precision.to_dense() / float(g.temperature),
                                   torch.eye(g.mean.numel(), dtype=torch.float64) * 0.01, rtol=1e-12, atol=0)


def test_cv_warns_when_a_learned_prior_cannot_be_reweighted(wrong_prior, caplog):
    old = wrong_prior.reweighted(likelihood_scale=1.0)
    old.source_factors = {}  # as loaded from a file written before the factors were kept
    X, y = _blobs(6, 4)
    with caplog.at_level(logging.WARNING, logger="skkprior.estimators"):
        clf = KroneckerPriorClassifier(MLP, prior=old, scaling="cv", cv=2, random_state=0,
                                       **{**FAST, "max_epochs": 2}).fit(X, y)
    assert clf.scales_["source_weight"] is None
    assert "holds no source factors" in caplog.text


def test_tune_validation_accuracy_is_each_grid_points_held_out_accuracy():
    """TuningResult.accuracy: one entry per grid point, in the order of history (prior scale outer),
    equal to the accuracy of that point's predictive (linearized: deterministic, recomputed here)."""
    from skkprior import isotropic_prior, kfac, posterior
    from skkprior.metrics import accuracy
    from skkprior.predictive import predict_proba_linearized

    X, y = _blobs(10, 11)
    torch.manual_seed(0)
    net = MLP(2, 3, hidden_sizes=(8,))
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    post = posterior(isotropic_prior(net, weight_decay=1.0), kfac(net, Xt, yt, progress=False), net)
    scales, temps = (0.1, 10.0), (1.0, 0.01)
    result = base.tune_validation(post, net, Xt, yt, prior_scales=scales, temperatures=temps,
                                  predictive="linearized")
    assert len(result.accuracy) == len(result.history) == 4
    for value, (a, t) in zip(result.accuracy, [(a, t) for a in scales for t in temps]):
        proba = predict_proba_linearized(net, post.with_scales(prior_scale=a, temperature=t), Xt)
        assert value == pytest.approx(accuracy(proba.numpy(), y), abs=1e-12)
