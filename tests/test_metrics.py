"""Predictive and continual-learning metrics against scikit-learn and hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, brier_score_loss, log_loss, roc_auc_score

from skkprior.metrics import (
    accuracy,
    average_accuracy,
    backward_transfer,
    brier,
    ece,
    evaluate,
    forgetting,
    nll,
    ood_auroc,
)


def random_proba(rng, n, C, sharpness=2.0):
    logits = sharpness * rng.standard_normal((n, C))
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    p = random_proba(rng, 200, 5)
    y = rng.integers(0, 5, size=200)
    return p, y


# -- predictive metrics vs scikit-learn -----------------------------------------------------------
def test_accuracy_nll_brier_match_sklearn(data):
    p, y = data
    labels = list(range(5))
    assert accuracy(p, y) == pytest.approx(accuracy_score(y, p.argmax(axis=1)), abs=1e-15)
    assert nll(p, y) == pytest.approx(log_loss(y, p, labels=labels), rel=1e-12)
    assert brier(p, y) == pytest.approx(brier_score_loss(y, p, labels=labels), rel=1e-12)


def test_binary_brier_is_twice_sklearn_positive_class():
    rng = np.random.default_rng(1)
    p = random_proba(rng, 50, 2)
    y = rng.integers(0, 2, size=50)
    assert brier(p, y) == pytest.approx(2 * brier_score_loss(y, p[:, 1]), rel=1e-12)


def test_nll_clips_zero_probability():
    p = np.array([[1.0, 0.0], [0.5, 0.5]])
    y = np.array([1, 0])
    expected = (-np.log(np.finfo(np.float64).eps) - np.log(0.5)) / 2
    assert nll(p, y) == pytest.approx(expected, rel=1e-12)
    assert np.isfinite(nll(p, y, eps=1e-300))
    assert nll(p, y) == pytest.approx(log_loss(y, p, labels=[0, 1]), rel=1e-12)


def test_torch_and_list_inputs_agree(data):
    p, y = data
    pt, yt = torch.from_numpy(p).float(), torch.from_numpy(y)
    for f in (accuracy, nll, brier, ece):
        assert f(pt, yt) == pytest.approx(f(p, y), abs=1e-6)
        assert f(p.tolist(), y.tolist()) == f(p, y)
    assert isinstance(nll(pt, yt), float)


def test_perfect_predictions():
    p = np.eye(3)[[0, 1, 2, 1]]
    y = np.array([0, 1, 2, 1])
    assert evaluate(p, y) == {"accuracy": 1.0, "nll": 0.0, "brier": 0.0, "ece": 0.0}


# -- ECE ------------------------------------------------------------------------------------------
def test_ece_hand_computed():
    # 15 bins of width 1/15. Confidences and correctness:
    #   0.95 (correct), 0.97 (wrong)  -> bin (14/15, 1]:     acc 0.5, conf 0.96 -> gap 0.46
    #   0.55 (correct)                -> bin (8/15, 9/15]:   acc 1,   conf 0.55 -> gap 0.45
    #   0.40 (correct), 0.35 (wrong)  -> bin (5/15, 6/15]:   acc 0.5, conf 0.375 -> gap 0.125
    p = np.array([[0.95, 0.05, 0.0], [0.97, 0.03, 0.0], [0.2, 0.55, 0.25],
                  [0.4, 0.3, 0.3], [0.35, 0.33, 0.32]])
    y = np.array([0, 1, 1, 0, 2])
    expected = (2 * 0.46 + 1 * 0.45 + 2 * 0.125) / 5
    assert ece(p, y) == pytest.approx(expected, abs=1e-12)
    # one bin: |accuracy - mean confidence|
    assert ece(p, y, n_bins=1) == pytest.approx(abs(3 / 5 - np.mean([0.95, 0.97, 0.55, 0.4, 0.35])))


def test_ece_matches_naive_loop(data):
    p, y = data
    conf, pred = p.max(axis=1), p.argmax(axis=1)
    for n_bins in (1, 10, 15):
        total = 0.0
        for b in range(n_bins):
            lo, hi = b / n_bins, (b + 1) / n_bins
            mask = (conf > lo) & (conf <= hi) if b > 0 else (conf <= hi)
            if mask.any():
                total += mask.sum() * abs(np.mean(pred[mask] == y[mask]) - conf[mask].mean())
        assert ece(p, y, n_bins=n_bins) == pytest.approx(total / len(y), abs=1e-12)


def test_ece_of_calibrated_predictor_is_small():
    rng = np.random.default_rng(3)
    n = 20_000
    conf = rng.uniform(0.5, 1.0, size=n)
    p = np.stack([conf, 1 - conf], axis=1)
    y = (rng.uniform(size=n) > conf).astype(int)  # label 0 with probability conf
    assert ece(p, y) < 0.02
    assert ece(np.stack([np.ones(n) * 0.99, np.ones(n) * 0.01], axis=1), y) > 0.2


# -- OOD AUROC ------------------------------------------------------------------------------------
def test_ood_auroc_matches_sklearn_with_ties():
    rng = np.random.default_rng(2)
    p_in = np.round(random_proba(rng, 80, 4, sharpness=3.0), 1)
    p_out = np.round(random_proba(rng, 60, 4, sharpness=0.5), 1)
    p_in /= p_in.sum(axis=1, keepdims=True)
    p_out /= p_out.sum(axis=1, keepdims=True)
    s_in, s_out = p_in.max(axis=1), p_out.max(axis=1)
    assert len(np.unique(np.r_[s_in, s_out])) < len(s_in) + len(s_out)  # ties present
    labels = np.r_[np.ones(80), np.zeros(60)]
    expected = roc_auc_score(labels, np.r_[s_in, s_out])
    assert ood_auroc(p_in, p_out) == pytest.approx(expected, abs=1e-12)
    ent = lambda q: np.sum(np.where(q > 0, q * np.log(np.where(q > 0, q, 1)), 0), axis=1)
    expected_ent = roc_auc_score(labels, np.r_[ent(p_in), ent(p_out)])
    assert ood_auroc(p_in, p_out, score="neg_entropy") == pytest.approx(expected_ent, abs=1e-12)


def test_ood_auroc_extremes():
    confident = np.array([[0.99, 0.01], [0.9, 0.1]])
    unsure = np.array([[0.5, 0.5], [0.6, 0.4]])
    assert ood_auroc(confident, unsure) == 1.0
    assert ood_auroc(unsure, confident) == 0.0
    assert ood_auroc(unsure, unsure) == 0.5


# -- continual learning ---------------------------------------------------------------------------
NAN = float("nan")
ACC = np.array([
    [0.95, NAN, NAN, NAN],
    [0.90, 0.97, NAN, NAN],
    [0.85, 0.92, 0.96, NAN],
    [0.80, 0.94, 0.90, 0.98],
])


def test_continual_summaries_hand_made():
    assert average_accuracy(ACC) == pytest.approx((0.80 + 0.94 + 0.90 + 0.98) / 4)
    # max over earlier rows minus final: task0 0.95-0.80, task1 0.97-0.94, task2 0.96-0.90
    assert forgetting(ACC) == pytest.approx((0.15 + 0.03 + 0.06) / 3)
    # final minus just-after-training: same numbers here, negated
    assert backward_transfer(ACC) == pytest.approx(-(0.15 + 0.03 + 0.06) / 3)


def test_forgetting_uses_best_earlier_accuracy_not_the_diagonal():
    acc = np.array([[0.70, 0.10, 0.10], [0.90, 0.80, 0.20], [0.60, 0.85, 0.90]])
    # task 0 peaked after task 1 (0.90), task 1 improved after task 2
    assert forgetting(acc) == pytest.approx(((0.90 - 0.60) + (0.80 - 0.85)) / 2)
    assert backward_transfer(acc) == pytest.approx(((0.60 - 0.70) + (0.85 - 0.80)) / 2)
    assert average_accuracy(acc) == pytest.approx((0.60 + 0.85 + 0.90) / 3)
    assert average_accuracy(torch.tensor(acc)) == pytest.approx(average_accuracy(acc))


def test_no_forgetting():
    acc = np.tril(np.full((3, 3), 0.9)) + np.triu(np.full((3, 3), NAN), 1)
    assert forgetting(acc) == 0.0 and backward_transfer(acc) == 0.0


def test_evaluate_matches_individual_metrics(data):
    p, y = data
    res = evaluate(p, y, n_bins=10)
    assert res == {"accuracy": accuracy(p, y), "nll": nll(p, y), "brier": brier(p, y),
                   "ece": ece(p, y, n_bins=10)}
    assert all(isinstance(v, float) for v in res.values())


# -- bad input ------------------------------------------------------------------------------------
def test_bad_proba():
    y = np.array([0, 1])
    with pytest.raises(ValueError, match=r"proba must be a 2-D array of shape \(n, C\)"):
        accuracy(np.array([0.5, 0.5]), y)
    with pytest.raises(ValueError, match=r"the rows of proba must be probability vectors "
                                         r"summing to 1\. Got a row sum off by"):
        nll(np.array([[0.5, 0.6], [0.5, 0.5]]), y)
    with pytest.raises(ValueError, match=r"proba must be probabilities in \[0, 1\]"):
        brier(np.array([[1.5, -0.5], [0.5, 0.5]]), y)
    with pytest.raises(ValueError, match="proba must be finite"):
        ece(np.array([[np.nan, 0.5], [0.5, 0.5]]), y)
    with pytest.raises(TypeError, match="proba must be an array of numbers"):
        accuracy(np.array([["a", "b"], ["c", "d"]]), y)


def test_bad_labels():
    p = np.array([[0.5, 0.5], [0.2, 0.8]])
    with pytest.raises(ValueError, match=r"y must be a 1-D array of 2 labels"):
        accuracy(p, np.array([0, 1, 1]))
    with pytest.raises(ValueError, match=r"y must be class indices in 0\.\.1"):
        nll(p, np.array([0, 2]))
    with pytest.raises(ValueError, match="y must be integer class indices"):
        brier(p, np.array([0.0, 0.5]))
    with pytest.raises(ValueError, match="n_bins must be a positive integer"):
        ece(p, np.array([0, 1]), n_bins=0)


def test_bad_ood_and_accuracy_matrices():
    with pytest.raises(ValueError, match="proba_out must be of 2 classes like proba_in"):
        ood_auroc(np.array([[0.5, 0.5]]), np.array([[0.2, 0.3, 0.5]]))
    with pytest.raises(ValueError, match="score must be 'max_prob' or 'neg_entropy'"):
        ood_auroc(np.array([[0.5, 0.5]]), np.array([[0.5, 0.5]]), score="energy")
    with pytest.raises(ValueError, match=r"acc must be a square \(T, T\) accuracy matrix with "
                                         "T >= 2"):
        forgetting(np.array([[0.9]]))
    with pytest.raises(ValueError, match=r"acc must be a square"):
        average_accuracy(np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"the lower triangle of acc .* must be finite"):
        backward_transfer(np.array([[0.9, NAN], [NAN, 0.8]]))
