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

from skkprior import MLP, KroneckerPriorClassifier  # noqa: E402
from skkprior.datasets import MnistCNN, data_home, load_animal_mnist, subsample_per_class  # noqa: E402
from skkprior.metrics import evaluate  # noqa: E402

log = logging.getLogger("grid_search")


def to_images(X):
    """Flattened 784-pixel rows to (n, 1, 28, 28) float32 images (module level: picklable)."""
    return np.asarray(X, dtype=np.float32).reshape(-1, 1, 28, 28)


CONFIG = {
    "full": dict(digits=dict(prior_scale=[0.01, 0.1, 1.0, 10.0, 100.0], temperature=[1.0, 0.1, 0.01], cv=5,
                             max_epochs=30, n_samples=50),
                 animal=dict(n_per_class=10, prior_scale=[1.0, 10.0, 100.0], temperature=[1.0, 0.1], cv=3,
                             max_epochs=30, n_samples=30)),
    "quick": dict(digits=dict(prior_scale=[0.1, 1.0, 10.0], temperature=[1.0, 0.1], cv=3, max_epochs=15,
                              n_samples=20),
                  animal=None),
}


def _search(pipe, grid, cv, X, y, X_test, y_test, name, n_jobs):
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    search = GridSearchCV(pipe, grid, scoring={"accuracy": "accuracy", "nll": "neg_log_loss"}, refit="nll",
                          cv=StratifiedKFold(cv, shuffle=True, random_state=0), n_jobs=n_jobs, error_score="raise")
    start = time.perf_counter()
    search.fit(X, y)
    seconds = time.perf_counter() - start
    res = search.cv_results_
    rows = [{"task": name, "prior_scale": float(p["clf__prior_scale"]), "temperature": float(p["clf__temperature"]),
             "cv_accuracy": float(res["mean_test_accuracy"][i]), "cv_nll": float(-res["mean_test_nll"][i]),
             "rank": int(res["rank_test_nll"][i])} for i, p in enumerate(res["params"])]
    test = evaluate(search.predict_proba(X_test), np.searchsorted(search.classes_, y_test))
    default = pipe.set_params(clf__prior_scale=1.0, clf__temperature=1.0).fit(X, y)
    test_default = evaluate(default.predict_proba(X_test), np.searchsorted(default.classes_, y_test))
    return {"rows": rows, "best_params": search.best_params_, "test_best": test, "test_default": test_default,
            "seconds": seconds}


def run(args: argparse.Namespace) -> dict:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer, StandardScaler

    cfg = CONFIG["quick" if args.quick else "full"]
    out = {}
    c = cfg["digits"]
    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.3, stratify=y, random_state=0)
    pipe = Pipeline([("scale", StandardScaler()),
                     ("clf", KroneckerPriorClassifier(MLP, module__hidden_sizes=(64,), weight_decay=1.0, scaling="fixed",
                                                      max_epochs=c["max_epochs"], lr=1e-2, batch_size=64,
                                                      n_samples=c["n_samples"], device=args.device, random_state=0))])
    grid = {"clf__prior_scale": c["prior_scale"], "clf__temperature": c["temperature"]}
    out["digits"] = _search(pipe, grid, c["cv"], X_train, y_train, X_test, y_test, "digits (MLP)", 2)
    print(out["digits"])
    c = cfg["animal"]
    if c is not None:
        mnist_prior(weight_decay=1.0)  # make sure the cached file exists; the workers load it by path
        path = str(data_home() / "priors" / "mnist_kronecker_wd1_nall_mc.pt")
        Xa, ya, Xa_test, ya_test = load_animal_mnist()
        Xa, ya = subsample_per_class(Xa, ya, c["n_per_class"], random_state=0)
        pipe = Pipeline([("images", FunctionTransformer(to_images)),
                         ("clf", KroneckerPriorClassifier(MnistCNN, prior=path, weight_decay=1.0, scaling="fixed",
                                                          max_epochs=c["max_epochs"], lr=1e-3, batch_size=32,
                                                          n_samples=c["n_samples"], device=args.device,
                                                          random_state=0))])
        grid = {"clf__prior_scale": c["prior_scale"], "clf__temperature": c["temperature"]}
        out["animal"] = _search(pipe, grid, c["cv"], Xa.reshape(len(Xa), -1), ya,
                                Xa_test.reshape(len(Xa_test), -1), ya_test, "animal 10/class (CNN, MNIST prior)", 2)
    rows = [r for v in out.values() for r in v["rows"]]
    save_results("grid_search", rows, args, extra={k: {kk: vv for kk, vv in v.items() if kk != "rows"}
                                                   for k, v in out.items()})
    return out


if __name__ == "__main__":
    run(parse_args(__doc__.splitlines()[0]))
