r"""Predictive and continual-learning metrics.

Predictive metrics take predicted class probabilities ``proba`` of shape ``(n, C)`` (rows on
the simplex, e.g. a Monte-Carlo model average) and integer labels ``y`` of shape ``(n,)`` in
``0 .. C-1``; numpy arrays, torch tensors (any device) and nested lists are accepted. All
arithmetic is float64 numpy and every function returns a Python ``float``.

Continual-learning summaries take an accuracy matrix ``acc`` of shape ``(T, T)`` with
``acc[i, j]`` the accuracy on task ``j`` after training on task ``i`` (0-based). Entries above
the diagonal (tasks not yet seen) may be NaN; the lower triangle must be finite.

References
----------
.. [1] C. Guo, G. Pleiss, Y. Sun, K. Q. Weinberger, "On calibration of modern neural
   networks", ICML 2017 (expected calibration error).
.. [2] G. W. Brier, "Verification of forecasts expressed in terms of probability", Monthly
   Weather Review 78, 1950.
.. [3] D. Hendrycks and K. Gimpel, "A baseline for detecting misclassified and
   out-of-distribution examples in neural networks", ICLR 2017 (max-probability score).
.. [4] A. Chaudhry, P. K. Dokania, T. Ajanthan, P. H. S. Torr, "Riemannian walk for
   incremental learning: understanding forgetting and intransigence", ECCV 2018.
.. [5] D. Lopez-Paz and M. Ranzato, "Gradient episodic memory for continual learning",
   NeurIPS 2017 (backward transfer).
"""

from __future__ import annotations

from numbers import Integral
from typing import Any, Literal

import numpy as np

from ._validation import describe, error_message

__all__ = [
    "accuracy",
    "average_accuracy",
    "backward_transfer",
    "brier",
    "ece",
    "evaluate",
    "forgetting",
    "nll",
    "ood_auroc",
]

_SUM_ATOL = 1e-4  # tolerance on row sums (float32 softmax outputs pass)


# -- input conversion and checks --------------------------------------------------------------
def _to_numpy(value: Any, name: str) -> np.ndarray:
    """A float64 or integer numpy array from numpy / torch / lists, without importing torch."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # torch.Tensor
        value = value.detach().cpu().numpy()
    try:
        arr = np.asarray(value)
    except Exception as exc:  # ragged lists and other oddities
        raise TypeError(error_message(name, "an array-like of numbers", type(value).__name__,
                                      "Pass a numpy array or a torch tensor.")) from exc
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number)
                                   or arr.dtype == np.bool_):
        raise TypeError(error_message(name, "an array of numbers", f"dtype {arr.dtype}",
                                      "Pass a numeric numpy array or torch tensor."))
    return arr


def _check_proba(proba: Any, name: str = "proba") -> np.ndarray:
    p = _to_numpy(proba, name)
    if p.ndim != 2 or p.shape[0] == 0 or p.shape[1] < 2:
        raise ValueError(error_message(name, "a 2-D array of shape (n, C) with n >= 1, C >= 2",
                                       p, "Pass predict_proba output, one row per example."))
    p = p.astype(np.float64)
    if not np.isfinite(p).all():
        raise ValueError(error_message(name, "finite", f"{int((~np.isfinite(p)).sum())} "
                                       f"non-finite entries in {describe(p)}",
                                       "Check the model's outputs for NaN."))
    if p.min() < 0.0 or p.max() > 1.0:
        raise ValueError(error_message(name, "probabilities in [0, 1]",
                                       f"values in [{p.min():.3g}, {p.max():.3g}]",
                                       "Apply softmax to logits first."))
    err = float(np.abs(p.sum(axis=1) - 1.0).max())
    if err > _SUM_ATOL:
        raise ValueError(error_message(f"the rows of {name}", "probability vectors summing to 1",
                                       f"a row sum off by {err:.3g}",
                                       "Apply softmax to logits first."))
    return p


def _check_labels(y: Any, n: int, n_classes: int, name: str = "y") -> np.ndarray:
    t = _to_numpy(y, name)
    if t.ndim != 1 or t.shape[0] != n:
        raise ValueError(error_message(name, f"a 1-D array of {n} labels (one per row of proba)",
                                       t, "Pass integer labels of shape (n,)."))
    if np.issubdtype(t.dtype, np.floating):
        if not (np.isfinite(t).all() and (t == np.round(t)).all()):
            raise ValueError(error_message(name, "integer class indices", "non-integer values",
                                           "Encode labels with sklearn's LabelEncoder."))
    elif not np.issubdtype(t.dtype, np.integer):
        raise TypeError(error_message(name, "integer class indices", f"dtype {t.dtype}",
                                      "Encode labels with sklearn's LabelEncoder."))
    t = t.astype(np.int64)
    if t.min() < 0 or t.max() >= n_classes:
        raise ValueError(error_message(name, f"class indices in 0..{n_classes - 1}",
                                       f"labels in [{t.min()}, {t.max()}]",
                                       "Encode labels with sklearn's LabelEncoder."))
    return t


def _check_pair(proba: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    p = _check_proba(proba)
    return p, _check_labels(y, p.shape[0], p.shape[1])


def _check_n_bins(n_bins: Any) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, Integral) or n_bins < 1:
        raise ValueError(error_message("n_bins", "a positive integer", n_bins,
                                       "Pass n_bins=15 (the usual choice)."))
    return int(n_bins)


# -- predictive metrics -----------------------------------------------------------------------
def accuracy(proba: Any, y: Any) -> float:
    """Fraction of examples whose most probable class is the label.

    Parameters
    ----------
    proba : array-like of shape (n, C)
        Predicted class probabilities.
    y : array-like of shape (n,)
        Integer labels in ``0 .. C-1``.

    Returns
    -------
    float
        ``mean(argmax(proba, axis=1) == y)``; ties go to the lowest class index.

    Examples
    --------
    >>> accuracy([[0.9, 0.1], [0.4, 0.6], [0.7, 0.3]], [0, 1, 1])
    0.6666666666666666
    """
    p, t = _check_pair(proba, y)
    return float(np.mean(p.argmax(axis=1) == t))


def nll(proba: Any, y: Any, *, eps: float = float(np.finfo(np.float64).eps)) -> float:
    r"""Mean negative log-likelihood (natural log) of the labels under the predictive.

    Parameters
    ----------
    proba : array-like of shape (n, C)
        Predicted class probabilities.
    y : array-like of shape (n,)
        Integer labels in ``0 .. C-1``.
    eps : float, default=machine epsilon of float64
        Probabilities are clipped to ``[eps, 1]`` before the log, so a zero probability on the
        label costs ``-ln(eps)`` (about 36) instead of infinity.

    Returns
    -------
    float
        :math:`-\frac{1}{n} \sum_i \ln \max(p_{i, y_i}, \epsilon)`.

    Notes
    -----
    With the default ``eps`` this matches :func:`sklearn.metrics.log_loss` on normalized
    probabilities.

    Examples
    --------
    >>> round(nll([[0.5, 0.5], [0.9, 0.1]], [0, 0]), 6)
    0.399254
    """
    p, t = _check_pair(proba, y)
    if not (isinstance(eps, float) and 0.0 < eps < 1.0):
        raise ValueError(error_message("eps", "a float in (0, 1)", eps, "Pass e.g. eps=1e-15."))
    picked = np.clip(p[np.arange(p.shape[0]), t], eps, 1.0)
    return float(-np.mean(np.log(picked)))


def brier(proba: Any, y: Any) -> float:
    r"""Multi-class Brier score: squared error to the one-hot label, summed over classes.

    Parameters
    ----------
    proba : array-like of shape (n, C)
        Predicted class probabilities.
    y : array-like of shape (n,)
        Integer labels in ``0 .. C-1``.

    Returns
    -------
    float
        :math:`\frac{1}{n} \sum_i \sum_c (p_{ic} - [y_i = c])^2`, in ``[0, 2]``.

    Notes
    -----
    Brier's original definition (sum over classes). For two classes it is twice the binary
    score of :func:`sklearn.metrics.brier_score_loss` on the positive class.

    Examples
    --------
    >>> round(brier([[0.8, 0.2], [0.3, 0.7]], [0, 0]), 6)
    0.53
    """
    p, t = _check_pair(proba, y)
    onehot = np.zeros_like(p)
    onehot[np.arange(p.shape[0]), t] = 1.0
    return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))


def ece(proba: Any, y: Any, *, n_bins: int = 15) -> float:
    r"""Expected calibration error of the top-1 prediction, equal-width confidence bins.

    Parameters
    ----------
    proba : array-like of shape (n, C)
        Predicted class probabilities.
    y : array-like of shape (n,)
        Integer labels in ``0 .. C-1``.
    n_bins : int, default=15
        Number of equal-width bins on ``[0, 1]``.

    Returns
    -------
    float
        :math:`\sum_b \frac{|B_b|}{n} |\mathrm{acc}(B_b) - \mathrm{conf}(B_b)|`, with
        ``conf`` the top-1 probability and ``acc`` whether the top-1 class is correct.

    Notes
    -----
    Bin ``b`` (``b = 1 .. n_bins``) holds confidences in ``((b-1)/n_bins, b/n_bins]``, the
    first bin also 0 (Guo et al. 2017). Empty bins contribute nothing.

    Examples
    --------
    >>> round(ece([[0.9, 0.1], [0.6, 0.4], [0.45, 0.55]], [0, 1, 1]), 6)
    0.083333
    """
    p, t = _check_pair(proba, y)
    n_bins = _check_n_bins(n_bins)
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == t).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    gap = np.bincount(idx, weights=correct - conf, minlength=n_bins)
    return float(np.sum(np.abs(gap)) / p.shape[0])


def _ood_score(p: np.ndarray, score: str) -> np.ndarray:
    if score == "max_prob":
        return p.max(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(p > 0.0, p * np.log(np.where(p > 0.0, p, 1.0)), 0.0)
    return plogp.sum(axis=1)  # negative entropy: higher = more confident


def _auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Probability that a positive outranks a negative, ties counting one half (Mann-Whitney)."""
    scores = np.concatenate([pos, neg])
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(scores.shape[0], dtype=np.float64)
    # average ranks (1-based) over runs of ties
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], scores.shape[0]]
    avg = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(avg, ends - starts)
    n_pos, n_neg = pos.shape[0], neg.shape[0]
    u = ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def ood_auroc(proba_in: Any, proba_out: Any, *,
              score: Literal["max_prob", "neg_entropy"] = "max_prob") -> float:
    r"""Area under the ROC curve for telling in-distribution from out-of-distribution inputs.

    Parameters
    ----------
    proba_in : array-like of shape (n_in, C)
        Predicted probabilities on in-distribution inputs (the positives).
    proba_out : array-like of shape (n_out, C)
        Predicted probabilities on out-of-distribution inputs (the negatives).
    score : {"max_prob", "neg_entropy"}, default="max_prob"
        Confidence score: the maximum probability (Hendrycks and Gimpel 2017), or the
        negative predictive entropy.

    Returns
    -------
    float
        :math:`\Pr[s_{in} > s_{out}] + \frac{1}{2} \Pr[s_{in} = s_{out}]`, in ``[0, 1]``;
        0.5 is chance.

    Notes
    -----
    Computed exactly from average ranks (Mann-Whitney U), equal to
    :func:`sklearn.metrics.roc_auc_score` with in-distribution labeled 1.

    Examples
    --------
    >>> ood_auroc([[0.9, 0.1], [0.8, 0.2]], [[0.6, 0.4], [0.8, 0.2]])
    0.875
    """
    p_in = _check_proba(proba_in, "proba_in")
    p_out = _check_proba(proba_out, "proba_out")
    if p_in.shape[1] != p_out.shape[1]:
        raise ValueError(error_message("proba_out", f"of {p_in.shape[1]} classes like proba_in",
                                       p_out, "Predict both with the same model."))
    if score not in ("max_prob", "neg_entropy"):
        raise ValueError(error_message("score", "'max_prob' or 'neg_entropy'", score))
    return _auroc(_ood_score(p_in, score), _ood_score(p_out, score))


def evaluate(proba: Any, y: Any, *, n_bins: int = 15) -> dict[str, float]:
    """Accuracy, NLL, Brier score and ECE of a predictive in one call.

    Parameters
    ----------
    proba : array-like of shape (n, C)
        Predicted class probabilities.
    y : array-like of shape (n,)
        Integer labels in ``0 .. C-1``.
    n_bins : int, default=15
        Bins of the ECE.

    Returns
    -------
    dict
        ``{"accuracy", "nll", "brier", "ece"}`` as floats.

    Examples
    --------
    >>> res = evaluate([[0.9, 0.1], [0.2, 0.8]], [0, 1])
    >>> sorted(res), res["accuracy"]
    (['accuracy', 'brier', 'ece', 'nll'], 1.0)
    """
    p, t = _check_pair(proba, y)
    return {"accuracy": accuracy(p, t), "nll": nll(p, t), "brier": brier(p, t),
            "ece": ece(p, t, n_bins=n_bins)}


# -- continual learning -----------------------------------------------------------------------
def _check_acc_matrix(acc: Any, min_tasks: int = 1) -> np.ndarray:
    a = _to_numpy(acc, "acc").astype(np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] < min_tasks:
        raise ValueError(error_message(
            "acc", f"a square (T, T) accuracy matrix with T >= {min_tasks}", a,
            "Pass acc[i, j] = accuracy on task j after training on task i."))
    lower = a[np.tril_indices(a.shape[0])]
    if not np.isfinite(lower).all():
        raise ValueError(error_message("the lower triangle of acc (tasks already trained)",
                                       "finite", "NaN or infinity",
                                       "Evaluate every seen task after each task."))
    return a


def average_accuracy(acc: Any) -> float:
    r"""Average accuracy over all tasks after training on the last one.

    Parameters
    ----------
    acc : array-like of shape (T, T)
        ``acc[i, j]``: accuracy on task ``j`` after training on task ``i``.

    Returns
    -------
    float
        :math:`\frac{1}{T} \sum_j \mathrm{acc}[T-1, j]`.

    Examples
    --------
    >>> average_accuracy([[0.9, float("nan")], [0.7, 0.95]])
    0.825
    """
    a = _check_acc_matrix(acc)
    return float(np.mean(a[-1]))


def forgetting(acc: Any) -> float:
    r"""Average forgetting (Chaudhry et al. 2018) after training on the last task.

    Parameters
    ----------
    acc : array-like of shape (T, T), T >= 2
        ``acc[i, j]``: accuracy on task ``j`` after training on task ``i``.

    Returns
    -------
    float
        :math:`\frac{1}{T-1} \sum_{j < T-1} \big(\max_{i < T-1} \mathrm{acc}[i, j]
        - \mathrm{acc}[T-1, j]\big)` (0-based; NaN entries above the diagonal are skipped in
        the max). Positive means accuracy was lost.

    Examples
    --------
    >>> acc = [[0.9, float("nan"), float("nan")], [0.8, 0.9, float("nan")], [0.6, 0.7, 0.9]]
    >>> round(forgetting(acc), 6)
    0.25
    """
    a = _check_acc_matrix(acc, 2)
    T = a.shape[0]
    best = np.nanmax(a[: T - 1, : T - 1], axis=0)
    return float(np.mean(best - a[T - 1, : T - 1]))


def backward_transfer(acc: Any) -> float:
    r"""Backward transfer (Lopez-Paz and Ranzato 2017) after training on the last task.

    Parameters
    ----------
    acc : array-like of shape (T, T), T >= 2
        ``acc[i, j]``: accuracy on task ``j`` after training on task ``i``.

    Returns
    -------
    float
        :math:`\frac{1}{T-1} \sum_{j < T-1} (\mathrm{acc}[T-1, j] - \mathrm{acc}[j, j])`;
        negative means forgetting.

    Examples
    --------
    >>> acc = [[0.9, float("nan"), float("nan")], [0.8, 0.9, float("nan")], [0.6, 0.7, 0.9]]
    >>> round(backward_transfer(acc), 6)
    -0.25
    """
    a = _check_acc_matrix(acc, 2)
    T = a.shape[0]
    return float(np.mean(a[T - 1, : T - 1] - np.diagonal(a)[: T - 1]))
