"""GridSearchCV over the prior scale and the temperature of KroneckerPriorClassifier, in a Pipeline.

``KroneckerPriorClassifier(scaling="fixed")`` in a scikit-learn ``Pipeline``, searched over
``prior_scale`` and ``temperature`` by ``GridSearchCV`` (``n_jobs=2``, accuracy and log loss) on
scikit-learn's digits (MLP, zero-mean prior) and, in the full run, on Animal-MNIST with 10 images
per class (MNIST CNN, the learned MNIST prior passed by file path).

Run::

    python examples/grid_search.py --quick --device cpu --threads 1   # a 3 x 3 grid on digits
    python examples/grid_search.py --device cuda                      # full

Settings: ``QUICK`` / ``FULL`` below (``--set KEY=VALUE``). Results:
``examples/results/grid_search*``; measurements and discussion: ``docs/examples/grid_search.md``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _shared import config, example_parser, mnist_prior, parse_args, prior_path, save_figure, save_results  # noqa: E402
from skkprior import MLP, KroneckerPriorClassifier  # noqa: E402
from skkprior.datasets import MnistCNN, load_animal_mnist, subsample_per_class  # noqa: E402
from skkprior.metrics import evaluate  # noqa: E402

log = logging.getLogger("grid_search")

NAME = "grid_search"
# digits / animal: the search on each task (animal None: not run)
FULL = dict(digits=dict(prior_scale=[0.1, 1.0, 10.0, 100.0], temperature=[1.0, 0.1, 0.01, 0.001], cv=3,
                        max_epochs=30, n_samples=50),
            animal=dict(n_per_class=10, prior_scale=[1.0, 10.0, 100.0], temperature=[1.0, 0.1, 0.01], cv=3,
                        max_epochs=30, n_samples=30))
QUICK = dict(digits=dict(prior_scale=[1.0, 10.0, 100.0], temperature=[1.0, 0.1, 0.01], cv=3, max_epochs=15,
                         n_samples=20),
             animal=None)


def build_parser():
    return example_parser(NAME, __doc__, FULL)


def to_images(X):
    """Flattened 784-pixel rows to ``(n, 1, 28, 28)`` float32 images (module level, so it pickles)."""
    return np.asarray(X, dtype=np.float32).reshape(-1, 1, 28, 28)


def _search(pipe, grid, cv, X, y, X_test, y_test, name):
    from sklearn.base import clone
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    search = GridSearchCV(pipe, grid, scoring={"accuracy": "accuracy", "nll": "neg_log_loss"}, refit="nll",
                          cv=StratifiedKFold(cv, shuffle=True, random_state=0), n_jobs=2, error_score="raise")
    start = time.perf_counter()
    search.fit(X, y)
    seconds = time.perf_counter() - start
    res = search.cv_results_
    rows = [{"task": name, "prior_scale": float(p["clf__prior_scale"]), "temperature": float(p["clf__temperature"]),
             "cv_accuracy": float(res["mean_test_accuracy"][i]), "cv_nll": float(-res["mean_test_nll"][i]),
             "rank_nll": int(res["rank_test_nll"][i])} for i, p in enumerate(res["params"])]
    labels = np.searchsorted(search.classes_, y_test)
    test_best = evaluate(search.predict_proba(X_test), labels)
    default = clone(pipe).set_params(clf__prior_scale=1.0, clf__temperature=1.0).fit(X, y)
    test_default = evaluate(default.predict_proba(X_test), labels)
    log.info("%s: best %s, test %s, default test %s, %.1f s", name, search.best_params_, test_best, test_default,
             seconds)
    return {"rows": rows, "best_params": {k: float(v) for k, v in search.best_params_.items()},
            "test_best": test_best, "test_default": test_default, "seconds": seconds,
            "pipeline": [step for step, _ in search.best_estimator_.steps]}


def run(args: argparse.Namespace) -> dict:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer, StandardScaler

    cfg = config(args, QUICK, FULL)
    out = {}
    c = cfg["digits"]
    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.3, stratify=y, random_state=0)
    pipe = Pipeline([("scale", StandardScaler()),
                     ("clf", KroneckerPriorClassifier(MLP, module__hidden_sizes=(64,), weight_decay=1.0,
                                                      scaling="fixed", max_epochs=c["max_epochs"], lr=1e-2,
                                                      batch_size=64, n_samples=c["n_samples"], device=args.device,
                                                      random_state=0))])
    grid = {"clf__prior_scale": c["prior_scale"], "clf__temperature": c["temperature"]}
    out["digits"] = _search(pipe, grid, c["cv"], X_train, y_train, X_test, y_test, "digits, MLP")
    c = cfg.get("animal")
    if c is not None:
        # make sure the cached file exists; the workers load it by path
        mnist_prior(weight_decay=1.0, device=args.device)
        path = str(prior_path(weight_decay=1.0))
        Xa, ya, Xa_test, ya_test = load_animal_mnist()
        Xa, ya = subsample_per_class(Xa, ya, c["n_per_class"], random_state=0)
        pipe = Pipeline([("images", FunctionTransformer(to_images)),
                         ("clf", KroneckerPriorClassifier(MnistCNN, prior=path, weight_decay=1.0, scaling="fixed",
                                                          max_epochs=c["max_epochs"], lr=1e-3, batch_size=32,
                                                          n_samples=c["n_samples"], device=args.device,
                                                          random_state=0))])
        grid = {"clf__prior_scale": c["prior_scale"], "clf__temperature": c["temperature"]}
        out["animal"] = _search(pipe, grid, c["cv"], Xa.reshape(len(Xa), -1), ya,
                                Xa_test.reshape(len(Xa_test), -1), ya_test, "animal 10/class, CNN + MNIST prior")
    rows = [r for v in out.values() for r in v["rows"]]
    summary = [{"task": v["rows"][0]["task"], "best": str(v["best_params"]),
                "test_acc_best": v["test_best"]["accuracy"], "test_nll_best": v["test_best"]["nll"],
                "test_acc_default": v["test_default"]["accuracy"], "test_nll_default": v["test_default"]["nll"],
                "search_s": v["seconds"]} for v in out.values()]
    table = save_results(NAME, rows, args, extra={"summary": summary})
    print()
    save_results("grid_search_summary", summary, args)
    _plot(out, args)
    _check(out)
    return {**out, "table": table, "summary": summary}


def _check(out: dict) -> None:
    """The claims, with thresholds from the measured runs (see docs/examples/grid_search.md)."""
    for name, v in out.items():
        assert len(v["rows"]) > 1 and all(np.isfinite(r["cv_nll"]) for r in v["rows"])
        assert v["pipeline"][-1] == "clf"
        best = min(v["rows"], key=lambda r: r["cv_nll"])
        default = [r for r in v["rows"] if r["prior_scale"] == 1.0 and r["temperature"] == 1.0][0]
        assert best["cv_nll"] <= default["cv_nll"]
    d = out["digits"]
    # measured (quick): the default's MC predictive is near chance, the searched scales are not
    assert d["test_best"]["nll"] < d["test_default"]["nll"], d
    assert d["test_best"]["accuracy"] > 0.9, d["test_best"]


def _plot(out: dict, args: argparse.Namespace) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        return
    fig, axes = plt.subplots(1, len(out), figsize=(5 * len(out), 4), squeeze=False)
    for ax, (name, v) in zip(axes[0], out.items()):
        alphas = sorted({r["prior_scale"] for r in v["rows"]})
        taus = sorted({r["temperature"] for r in v["rows"]})
        grid = np.full((len(alphas), len(taus)), np.nan)
        for r in v["rows"]:
            grid[alphas.index(r["prior_scale"]), taus.index(r["temperature"])] = r["cv_nll"]
        im = ax.imshow(np.log10(grid), cmap="viridis_r")
        ax.set_xticks(range(len(taus)), [f"{t:g}" for t in taus])
        ax.set_yticks(range(len(alphas)), [f"{a:g}" for a in alphas])
        ax.set_xlabel("temperature tau")
        ax.set_ylabel("prior scale alpha")
        ax.set_title(f"{v['rows'][0]['task']}: log10 CV NLL", fontsize=9)
        for i in range(len(alphas)):
            for j in range(len(taus)):
                ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", color="w", fontsize=8)
        fig.colorbar(im, ax=ax)
    save_figure(fig, NAME, args)


if __name__ == "__main__":
    run(parse_args(build_parser()))
