"""``python -m skkprior demo``: the method's three jobs on scikit-learn's bundled digits.

1. Learn a prior: train an MLP on the source task (digits 0-4) and turn its Laplace posterior
   into a prior (:func:`~skkprior.learn_prior`).
2. Few-shot target (digits 5-9, a few images per class): the learned prior against the
   isotropic prior with learned mean and the zero-mean isotropic prior.
3. Certify the target classifier (:class:`~skkprior.PACBayesBoundEstimator`), honest protocol.
4. Continual: two tasks (digits, then pixel-permuted digits) with ``partial_fit``; the
   posterior of the first task is the prior of the second.

Everything runs on the CPU in well under two minutes and needs no download.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from .estimators import KroneckerPriorClassifier, PACBayesBoundEstimator
from .laplace import learn_prior
from .metrics import evaluate

logger = logging.getLogger(__name__)

HIDDEN = (64,)


def _digits() -> tuple[np.ndarray, np.ndarray]:
    X, y = load_digits(return_X_y=True)
    return (X / 16.0).astype(np.float32), y.astype(np.int64)


def _few_shot(X: np.ndarray, y: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.choice(np.flatnonzero(y == c), per_class, replace=False) for c in np.unique(y)])


def run_demo(*, quick: bool = False, seed: int = 0, device: str = "cpu") -> list[dict[str, Any]]:
    """Run the demo and return the table rows (also printed by :func:`main`).

    Parameters
    ----------
    quick : bool, default=False
        Fewer epochs and samples (used by the test suite).
    seed : int, default=0
    device : str, default="cpu"

    Returns
    -------
    list of dict
        One row per method: ``task``, ``method``, ``accuracy``, ``nll``, ``ece``, ``certificate``.
    """
    epochs = 15 if quick else 40
    n_samples = 20 if quick else 100
    common = dict(module__hidden_sizes=HIDDEN, max_epochs=epochs, n_samples=n_samples, device=device,
                  random_state=seed, lr=3e-3)
    X, y = _digits()
    src = y < 5
    X_src, y_src = X[src], y[src]
    X_tgt, y_tgt = X[~src], y[~src] - 5
    rows: list[dict[str, Any]] = []

    # 1. source task and its prior ----------------------------------------------------------
    t0 = time.perf_counter()
    source = KroneckerPriorClassifier(scaling="fixed", predictive="map", **common).fit(X_src, y_src)
    prior_kw = dict(weight_decay=1.0, head="net.2", progress=False,
                    generator=torch.Generator().manual_seed(seed))
    learned = learn_prior(source.module_, torch.from_numpy(X_src), torch.from_numpy(y_src), **prior_kw)
    learned_mean = learn_prior(source.module_, torch.from_numpy(X_src), torch.from_numpy(y_src),
                               kind="isotropic", **prior_kw)
    logger.info("source task and priors in %.1f s", time.perf_counter() - t0)

    # 2. few-shot target ---------------------------------------------------------------------
    per_class = 5 if quick else 10
    train_idx = _few_shot(X_tgt, y_tgt, per_class, seed)
    test_mask = np.ones(len(y_tgt), dtype=bool)
    test_mask[train_idx] = False
    X_tr, y_tr, X_te, y_te = X_tgt[train_idx], y_tgt[train_idx], X_tgt[test_mask], y_tgt[test_mask]
    for name, prior in (("learned Kronecker prior", learned), ("isotropic, learned mean", learned_mean),
                        ("isotropic, zero mean", None)):
        clf = KroneckerPriorClassifier(prior=prior, scaling="validation", **common).fit(X_tr, y_tr)
        metrics = evaluate(clf.predict_proba(X_te), y_te)
        rows.append({"task": f"target, {per_class}/class", "method": name, **metrics, "certificate": ""})

    # 3. certificate on a larger target training set -----------------------------------------
    X_ctr, X_cte, y_ctr, y_cte = train_test_split(X_tgt, y_tgt, test_size=0.5, random_state=seed, stratify=y_tgt)
    for name, prior in (("learned Kronecker prior", learned), ("isotropic, zero mean", None)):
        est = PACBayesBoundEstimator(prior=prior, objective="catoni", **common).fit(X_ctr, y_ctr)
        metrics = evaluate(est.predict_proba(X_cte), y_cte)
        rows.append({"task": f"certified, n={len(y_ctr)}", "method": name, **metrics,
                     "certificate": round(est.bound_, 4)})

    # 4. continual: digits, then permuted digits -----------------------------------------------
    perm = np.random.default_rng(seed).permutation(X.shape[1])
    tasks = [train_test_split(X, y, test_size=0.3, random_state=seed, stratify=y),
             train_test_split(X[:, perm], y, test_size=0.3, random_state=seed, stratify=y)]
    chain = KroneckerPriorClassifier(prior=None, scaling="fixed", prior_scale=1.0, predictive="map", **common)
    plain = KroneckerPriorClassifier(prior=None, scaling="fixed", weight_decay=1e-4, predictive="map", **common)
    for clf, name in ((chain, "posterior -> prior chain"), (plain, "fine-tuning (weak prior)")):
        for k, (Xa, _, ya, _) in enumerate(tasks):
            clf.partial_fit(Xa, ya, classes=np.arange(10) if k == 0 else None)
        for k, (_, Xb, _, yb) in enumerate(tasks):
            rows.append({"task": f"continual, task {k + 1} after 2", "method": name,
                         **evaluate(clf.predict_proba(Xb), yb), "certificate": ""})
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """Plain-text table of the demo rows."""
    header = f"{'task':<28} {'method':<26} {'accuracy':>9} {'NLL':>7} {'ECE':>7} {'certificate':>12}"
    lines = [header, "-" * len(header)]
    for r in rows:
        cert = f"{r['certificate']:.3f}" if isinstance(r["certificate"], float) else ""
        lines.append(f"{r['task']:<28} {r['method']:<26} {r['accuracy']:>9.3f} {r['nll']:>7.3f} "
                     f"{r['ece']:>7.3f} {cert:>12}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m skkprior demo [--quick] [--seed N] [--device D]``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m skkprior", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="learn a prior, transfer, certify and learn two tasks on digits")
    demo.add_argument("--quick", action="store_true", help="fewer epochs and samples")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    start = time.perf_counter()
    rows = run_demo(quick=args.quick, seed=args.seed, device=args.device)
    print(format_table(rows))  # the command line's output, not library logging
    print(f"\nfinished in {time.perf_counter() - start:.0f} s")
    return 0
