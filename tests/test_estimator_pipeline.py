"""The one task pipeline of skkprior.estimators: fit = partial_fit, named seed streams, the shared
scaling dispatch, and the ``curvature=`` structure on every estimator."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits, load_iris
from sklearn.preprocessing import StandardScaler

import skkprior.estimators._base as base
from skkprior import KroneckerPriorClassifier, PACBayesBoundEstimator, ProgressivePriorClassifier
from skkprior.estimators._base import SeedStreams, seed_streams
from skkprior.precision import DiagonalDecomposed

FAST = dict(max_epochs=5, n_samples=10, device="cpu", random_state=0)


@pytest.fixture(scope="module")
def iris():
    X, y = load_iris(return_X_y=True)
    return StandardScaler().fit_transform(X).astype(np.float32), y


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return (X / 16.0).astype(np.float32), y


def same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and np.allclose(a, b, rtol=0, atol=1e-12)


# -- fit equals partial_fit on one task ---------------------------------------------------------------
@pytest.mark.parametrize("scaling", ["validation", "marglik", "pac-bayes", "fixed"])
def test_classifier_fit_equals_first_partial_fit(iris, scaling):
    X, y = iris
    fitted = KroneckerPriorClassifier(scaling=scaling, **FAST).fit(X, y)
    partial = KroneckerPriorClassifier(scaling=scaling, **FAST).partial_fit(X, y, classes=np.unique(y))
    assert same(fitted.predict_proba(X), partial.predict_proba(X))
    assert fitted.n_tasks_ == partial.n_tasks_ == 1
    # a refit resets: equal to a fresh fit, also after partial_fit calls
    partial.partial_fit(X, y)
    assert same(partial.fit(X, y).predict_proba(X), fitted.predict_proba(X))


def test_progressive_fit_equals_first_partial_fit(digits):
    X, y = digits
    keep = np.isin(y, [0, 1, 2])
    kw = dict(module__hidden_sizes=(16, 16), **FAST)
    fitted = ProgressivePriorClassifier(**kw).fit(X[keep], y[keep])
    partial = ProgressivePriorClassifier(**kw).partial_fit(X[keep], y[keep], classes=np.unique(y[keep]))
    assert same(fitted.predict_proba(X[keep]), partial.predict_proba(X[keep]))
    assert fitted.tasks_ == partial.tasks_ == [0]


def test_pac_bayes_fit_is_reproducible(iris):
    """No partial_fit (one certified task); the same random_state gives the same certificate."""
    X, y = iris
    a = PACBayesBoundEstimator(temperatures=[1.0, 0.1], prior_fraction=0.0, prior_scales=[1.0], **FAST).fit(X, y)
    b = PACBayesBoundEstimator(temperatures=[1.0, 0.1], prior_fraction=0.0, prior_scales=[1.0], **FAST).fit(X, y)
    assert a.bound_ == b.bound_ and same(a.predict_proba(X), b.predict_proba(X))


# -- named seed streams ---------------------------------------------------------------------------------
def test_seed_streams_are_distinct_and_reproducible():
    streams = seed_streams(0)
    seeds = {(name, i): streams.seed(name, i) for name in SeedStreams.NAMES for i in range(3)}
    assert len(set(seeds.values())) == len(seeds)  # every name and task index its own stream
    again = seed_streams(0)
    assert all(again.seed(name, i) == s for (name, i), s in seeds.items())
    assert seed_streams(1).seed("init", 0) != streams.seed("init", 0)
    assert all(0 <= s < 2**63 for s in seeds.values())
    assert 0 <= streams.seed32("split", 0) < 2**32
    # a stream is a SeedSequence child: spawn_key (index of the name, *indices)
    seq = streams.sequence("predict", 2)
    assert seq.spawn_key == (SeedStreams.NAMES.index("predict"), 2) and seq.entropy == 0
    g1, g2 = streams.generator("shuffle", 1), again.generator("shuffle", 1)
    assert torch.equal(torch.randperm(50, generator=g1), torch.randperm(50, generator=g2))
    with pytest.raises(KeyError, match="seed stream"):
        streams.seed("nope")
    # a RandomState draws the entropy (consuming it); None is fresh entropy
    assert seed_streams(np.random.RandomState(3)).entropy == seed_streams(np.random.RandomState(3)).entropy
    assert seed_streams(None).entropy != seed_streams(None).entropy


def test_estimators_draw_from_the_named_streams(iris, monkeypatch):
    """Each piece of a task asks its own stream, indexed by the task."""
    X, y = iris
    asked: list[tuple] = []
    original = SeedStreams.sequence

    def recording(self, name, *index):
        asked.append((name, *index))
        return original(self, name, *index)

    monkeypatch.setattr(SeedStreams, "sequence", recording)
    clf = KroneckerPriorClassifier(**FAST).fit(X, y)
    clf.partial_fit(X, y)
    clf.predict_proba(X[:3])
    for name in ("shuffle", "train", "split", "curvature", "validation"):
        assert (name, 0) in asked and (name, 1) in asked, name
    assert ("init", 0) in asked and ("init", 1) not in asked  # the network is built once
    assert ("predict", 1) in asked
    asked.clear()
    est = PACBayesBoundEstimator(temperatures=[1.0, 0.1], prior_fraction=0.0, prior_scales=[1.0], **FAST).fit(X, y)
    est.certify(X, y)
    assert {("select", i) for i in range(4)} <= set(asked) and ("certify",) in asked and ("recertify",) in asked


# -- one scaling dispatch ---------------------------------------------------------------------------------
def test_every_estimator_scales_through_scale_posterior(iris, digits, monkeypatch):
    calls: list[tuple[str, str]] = []
    original = base.scale_posterior

    def recording(post, scaling, **kwargs):
        calls.append((scaling, kwargs["predictive"]))
        return original(post, scaling, **kwargs)

    monkeypatch.setattr(base, "scale_posterior", recording)
    X, y = iris
    KroneckerPriorClassifier(scaling="validation", predictive="linearized", **FAST).fit(X, y)
    assert calls == [("validation", "linearized")]
    PACBayesBoundEstimator(temperatures=[1.0], prior_fraction=0.0, prior_scales=[1.0], **FAST).fit(X, y)
    assert calls[1:] == [("pac-bayes", "mc")]
    Xd, yd = digits
    keep = np.isin(yd, [0, 1])
    ProgressivePriorClassifier(module__hidden_sizes=(8,), predictive="map", **FAST).fit(Xd[keep], yd[keep])
    assert calls[2:] == [("validation", "map")]


def test_progressive_passes_predictive_to_the_validation_grid(digits, monkeypatch):
    """The drift of issue 16: the validation grid sees the estimator's predictive, as for the classifier."""
    seen: list[str] = []
    original = base.tune_validation

    def recording(*args, **kwargs):
        seen.append(kwargs["predictive"])
        return original(*args, **kwargs)

    monkeypatch.setattr(base, "tune_validation", recording)
    X, y = digits
    keep = np.isin(y, [0, 1])
    ProgressivePriorClassifier(module__hidden_sizes=(8,), **FAST).fit(X[keep], y[keep])
    KroneckerPriorClassifier(predictive="linearized", **FAST).fit(X[keep], y[keep])
    assert seen == ["mc", "linearized"]


# -- curvature structure ---------------------------------------------------------------------------------
@pytest.mark.parametrize("scaling", ["validation", "marglik", "pac-bayes", "fixed"])
@pytest.mark.parametrize("predictive", ["mc", "linearized", "map"])
def test_classifier_with_diagonal_curvature(iris, scaling, predictive):
    X, y = iris
    clf = KroneckerPriorClassifier(curvature="diag", scaling=scaling, predictive=predictive,
                                   temperature=0.1 if scaling == "fixed" else 1.0,
                                   **{**FAST, "max_epochs": 15}).fit(X, y)
    assert all(isinstance(g.precision, DiagonalDecomposed) for g in clf.posterior_)
    proba = clf.predict_proba(X)
    assert proba.shape == (150, 3) and np.all(np.isfinite(proba))
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-10)
    # accuracy pinned where it is stable over seeds: the Monte-Carlo predictive at the scales of
    # marglik / fixed / pac-bayes scored 0.59 - 0.93 over seeds 0 - 7 (tau = 1 is too broad)
    if scaling == "validation" or predictive != "mc":
        assert clf.score(X, y) > 0.8, (scaling, predictive)
    # the continual hand-over of a diagonal posterior
    clf.partial_fit(X, y)
    assert clf.n_tasks_ == 2 and all(isinstance(g.precision, DiagonalDecomposed) for g in clf.posterior_)


def test_pac_bayes_with_diagonal_curvature_certifies(iris):
    X, y = iris
    est = PACBayesBoundEstimator(curvature="diag", temperatures=[1.0, 0.1, 0.01], prior_fraction=0.0, prior_scales=[1.0],
                                 **{**FAST, "max_epochs": 15})
    est.fit(X, y)
    assert all(isinstance(g.precision, DiagonalDecomposed) for g in est.posterior_)
    assert 0 < est.bound_ <= 1 and est.certificate_.protocol == "certificate"
    assert est.certify(X, y).risk_bound <= 1


@pytest.mark.parametrize("sample_earlier", ["predict", "train+predict"])
def test_progressive_with_diagonal_curvature(digits, sample_earlier):
    X, y = digits
    clf = ProgressivePriorClassifier(module__hidden_sizes=(16, 16), curvature="diag", sample_earlier=sample_earlier,
                                     **FAST)
    first, second = np.isin(y, [0, 1]), np.isin(y, [2, 3])
    clf.partial_fit(X[first], y[first])
    before = clf.predict_proba(X[first], task=0)
    clf.partial_fit(X[second], y[second])
    assert all(isinstance(g.precision, DiagonalDecomposed) for post in clf.posteriors_ for g in post)
    assert np.array_equal(clf.predict_proba(X[first], task=0), before)  # no forgetting
    assert clf.score(X[second], y[second]) > 0.8


def test_kfoc_curvature_and_bad_value(iris):
    X, y = iris
    clf = KroneckerPriorClassifier(curvature="kfoc", **FAST).fit(X, y)
    assert clf.curvature_.method == "kfoc"
    assert clf.predict_proba(X[:2]).shape == (2, 3)
    for Est in (KroneckerPriorClassifier, PACBayesBoundEstimator, ProgressivePriorClassifier):
        with pytest.raises(ValueError, match="'curvature' parameter"):
            Est(curvature="full", **FAST).fit(X, y)
