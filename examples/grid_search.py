"""GridSearchCV over the prior scale and the temperature of KroneckerPriorClassifier (DRAFT)."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _shared import mnist_prior, parse_args, save_results  # noqa: E402

from skkprior import KroneckerPriorClassifier  # noqa: E402
from skkprior.datasets import MnistCNN, load_animal_mnist, subsample_per_class  # noqa: E402

log = logging.getLogger("grid_search")


def to_images(X):
    """Flattened 784-pixel rows to (n, 1, 28, 28) float32 images (module level: picklable)."""
    return np.asarray(X, dtype=np.float32).reshape(-1, 1, 28, 28)


CONFIG = {
    "full": dict(n_per_class=50, max_epochs=20, n_samples=50, prior_scale=[1.0, 10.0, 100.0, 1000.0],
                 temperature=[1.0, 0.1, 0.01, 0.001], cv=3),
    "quick": dict(n_per_class=20, max_epochs=10, n_samples=20, prior_scale=[1.0, 100.0],
                  temperature=[1.0, 0.01], cv=3),
}
WEIGHT_DECAY = 1.0


def run(args: argparse.Namespace) -> dict:
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    cfg = CONFIG["quick" if args.quick else "full"]
    prior = mnist_prior(weight_decay=WEIGHT_DECAY)
    X, y, X_test, y_test = load_animal_mnist()
    X, y = subsample_per_class(X, y, cfg["n_per_class"], random_state=0)
    pipe = Pipeline([
        ("images", FunctionTransformer(to_images)),
        ("clf", KroneckerPriorClassifier(MnistCNN, prior=prior, weight_decay=WEIGHT_DECAY, scaling="fixed",
                                         max_epochs=cfg["max_epochs"], lr=1e-3, batch_size=32,
                                         n_samples=cfg["n_samples"], device=args.device, random_state=0)),
    ])
    grid = {"clf__prior_scale": cfg["prior_scale"], "clf__temperature": cfg["temperature"]}
    search = GridSearchCV(pipe, grid, scoring={"accuracy": "accuracy", "nll": "neg_log_loss"},
                          refit="nll", cv=StratifiedKFold(cfg["cv"], shuffle=True, random_state=0),
                          n_jobs=2, error_score="raise")
    start = time.perf_counter()
    search.fit(X.reshape(len(X), -1), y)
    elapsed = time.perf_counter() - start
    res = search.cv_results_
    rows = [{"prior_scale": float(p["clf__prior_scale"]), "temperature": float(p["clf__temperature"]),
             "cv_accuracy": float(res["mean_test_accuracy"][i]), "cv_nll": float(-res["mean_test_nll"][i]),
             "rank_nll": int(res["rank_test_nll"][i])} for i, p in enumerate(res["params"])]
    best = search.best_estimator_
    test_acc = float(best.score(X_test.reshape(len(X_test), -1), y_test))
    print(rows, search.best_params_, test_acc, elapsed)
    save_results("grid_search", rows, args, extra={"best_params": search.best_params_, "test_accuracy": test_acc,
                                                   "seconds": elapsed})
    return {"rows": rows, "best_params": search.best_params_, "test_accuracy": test_acc, "seconds": elapsed}


if __name__ == "__main__":
    run(parse_args(__doc__.splitlines()[0]))
