"""Few-shot transfer from MNIST to Fashion-MNIST and Animal-MNIST with a learned prior (Fig. 2b).

What it shows
-------------
The same small CNN (:class:`skkprior.datasets.MnistCNN`, a new 10-class head) is trained on
1, 5, 10, 50, 100 and all examples per class of Fashion-MNIST and of Animal-MNIST with
:class:`skkprior.KroneckerPriorClassifier` under three priors:

- ``learned``: the Laplace posterior of the pretrained MNIST CNN on MNIST, one Kronecker
  product per layer (``mnist_prior(weight_decay=delta)``; the head gets ``N(0, 1/delta I)``);
- ``isotropic, learned mean``: ``N(theta_MNIST, 1/delta I)`` (``mnist_prior(kind="isotropic")``);
- ``isotropic, zero mean``: ``N(0, 1/delta I)`` (``prior=None``; the network starts from a
  random initialization, the other two start at the MNIST weights).

Test accuracy, NLL and ECE of the posterior predictive (mean +- std over seeds; each seed
draws its own few-shot training set and initialization) are plotted against the number of
examples per class, like the paper's Fig. 2b (whose target was NotMNIST).

Hyperparameters (the same for the three priors, fixed before the runs)
---------------------------------------------------------------------
``HYPER`` below: ``delta`` (``weight_decay``), Adam with ``lr``, batch size, and a budget of
about ``steps`` optimizer steps (``max_epochs = ceil(steps / batches per epoch)``, at least
one epoch, so every training set size gets a comparable amount of optimization). The
posterior's scales come from the estimator's default ``scaling="validation"``: a 10 %
held-out part of the few-shot training set scores a grid of prior scales and temperatures by
the predictive NLL; below about 19 examples per class nothing can be held out and the grid is
scored on the training data (the estimator warns). See ``HYPER_NOTES`` for why these values.

Run
---
``python examples/few_shot_transfer.py --device cuda`` (full: both data sets, all six sizes,
3 seeds, full test sets, 100 posterior samples); ``--quick`` is the scaled-down CPU run the
tests use (Animal-MNIST, 10 examples per class, 2 seeds, 500 test images, 30 samples).

Measured
--------
(filled in from the measured runs)
"""

from __future__ import annotations

import argparse
import logging
import math
import time
import warnings
from typing import Any

import numpy as np
import torch

from _shared import mean_std, mnist_prior, parse_args, save_results
from skkprior import KroneckerPriorClassifier
from skkprior.datasets import MnistCNN, load_animal_mnist, load_fashion_mnist, subsample_per_class
from skkprior.metrics import evaluate

NAME = "few_shot_transfer"
PRIORS = ("learned", "isotropic, learned mean", "isotropic, zero mean")
LOADERS = {"Fashion-MNIST": load_fashion_mnist, "Animal-MNIST": load_animal_mnist}

HYPER = {"weight_decay": 1e-2, "lr": 1e-3, "batch_size": 64, "steps": 500}
HYPER_NOTES = "(filled in)"

FULL = {"datasets": ("Fashion-MNIST", "Animal-MNIST"), "sizes": (1, 5, 10, 50, 100, None), "seeds": 3,
        "n_test": None, "n_samples": 100}
QUICK = {"datasets": ("Animal-MNIST",), "sizes": (10,), "seeds": 2, "n_test": 500, "n_samples": 30}

logger = logging.getLogger("examples." + NAME)


def make_classifier(prior: Any, n_train: int, *, n_samples: int, device: str, seed: int) -> KroneckerPriorClassifier:
    """The estimator with the shared hyperparameters (only the prior differs between methods)."""
    batches = math.ceil(n_train / HYPER["batch_size"])
    epochs = max(1, math.ceil(HYPER["steps"] / batches))
    return KroneckerPriorClassifier(MnistCNN, prior=prior, weight_decay=HYPER["weight_decay"], lr=HYPER["lr"],
                                    batch_size=HYPER["batch_size"], max_epochs=epochs, scaling="validation",
                                    predictive="mc", n_samples=n_samples, device=device, random_state=seed)


def run(args: argparse.Namespace) -> dict[str, Any]:
    cfg = dict(QUICK if args.quick else FULL)
    if args.seeds is not None:
        cfg["seeds"] = args.seeds
    start = time.perf_counter()
    priors = {
        "learned": mnist_prior(weight_decay=HYPER["weight_decay"], device=args.device),
        "isotropic, learned mean": mnist_prior(weight_decay=HYPER["weight_decay"], kind="isotropic",
                                               device=args.device),
        "isotropic, zero mean": None,
    }
    runs: list[dict[str, Any]] = []
    for ds in cfg["datasets"]:
        X_train, y_train, X_test, y_test = LOADERS[ds]()
        if cfg["n_test"] is not None and cfg["n_test"] < len(y_test):
            keep = np.sort(np.random.default_rng(0).choice(len(y_test), cfg["n_test"], replace=False))
            X_test, y_test = X_test[keep], y_test[keep]
        for k in cfg["sizes"]:
            for seed in range(cfg["seeds"]):
                if k is None:
                    X, y = X_train, y_train
                else:
                    X, y = subsample_per_class(X_train, y_train, k, random_state=seed)
                for name in PRIORS:
                    t0 = time.perf_counter()
                    clf = make_classifier(priors[name], len(y), n_samples=cfg["n_samples"], device=args.device,
                                          seed=seed)
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        clf.fit(X, y)
                    proba = clf.predict_proba(X_test)
                    post = clf.posterior_
                    runs.append({"dataset": ds, "per_class": "all" if k is None else k,
                                 "n_per_class": int(len(y) // len(np.unique(y))), "prior": name, "seed": seed,
                                 **evaluate(proba, y_test),
                                 "prior_scale": float(next(iter(post.prior_scale.values()))),
                                 "temperature": float(next(iter(post.temperature.values()))),
                                 "seconds": time.perf_counter() - t0})
                    r = runs[-1]
                    logger.info("%s k=%s seed=%d %-24s acc %.4f nll %.4f ece %.4f (%.1f s)", ds, r["per_class"],
                                seed, name, r["accuracy"], r["nll"], r["ece"], r["seconds"])
    rows = _aggregate(runs)
    elapsed = time.perf_counter() - start
    extra = {"config": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}, "hyper": HYPER,
             "hyper_notes": HYPER_NOTES, "runs": runs, "seconds": elapsed}
    save_results(NAME, rows, args, extra=extra,
                 columns=["dataset", "per_class", "prior", "accuracy", "nll", "ece", "seeds"])
    _plot(rows, args)
    print(f"{elapsed:.0f} s")
    result = {"rows": rows, **extra}
    _check(result)
    return result


def _aggregate(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    keys = []
    for r in runs:
        key = (r["dataset"], r["per_class"], r["prior"])
        if key not in keys:
            keys.append(key)
    for ds, k, name in keys:
        sel = [r for r in runs if (r["dataset"], r["per_class"], r["prior"]) == (ds, k, name)]
        row: dict[str, Any] = {"dataset": ds, "per_class": k, "n_per_class": sel[0]["n_per_class"], "prior": name,
                               "seeds": len(sel)}
        for metric in ("accuracy", "nll", "ece", "brier"):
            m, s = mean_std(r[metric] for r in sel)
            row[metric] = f"{m:.4f} ± {s:.4f}"
            row[metric + "_mean"], row[metric + "_std"] = m, s
        rows.append(row)
    return rows


def _check(result: dict[str, Any]) -> None:
    """The claims, with thresholds from the measured runs (see the module docstring)."""
    by = {(r["dataset"], r["per_class"], r["prior"]): r for r in result["rows"]}
    key = ("Animal-MNIST", 10)
    if key + ("learned",) in by:
        learned = by[key + ("learned",)]
        for other in PRIORS[1:]:
            base = by[key + (other,)]
            assert learned["accuracy_mean"] > base["accuracy_mean"], (learned, base)
            assert learned["nll_mean"] < base["nll_mean"], (learned, base)


def _plot(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        print("matplotlib is not installed: no plot")
        return
    from pathlib import Path

    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    metrics = (("accuracy", "test accuracy"), ("nll", "test NLL"), ("ece", "test ECE"))
    fig, axes = plt.subplots(len(datasets), 3, figsize=(12, 3.3 * len(datasets)), squeeze=False)
    for i, ds in enumerate(datasets):
        for j, (metric, label) in enumerate(metrics):
            ax = axes[i, j]
            for name, marker in zip(PRIORS, "os^"):
                sel = sorted((r for r in rows if r["dataset"] == ds and r["prior"] == name),
                             key=lambda r: r["n_per_class"])
                x = np.array([r["n_per_class"] for r in sel], dtype=float)
                m = np.array([r[metric + "_mean"] for r in sel])
                s = np.array([r[metric + "_std"] for r in sel])
                ax.plot(x, m, marker=marker, label=name)
                ax.fill_between(x, m - s, m + s, alpha=0.2)
            ax.set_xscale("log")
            ax.set_xlabel("training examples per class")
            ax.set_title(f"{ds}: {label}", fontsize=10)
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    out = Path(args.out) / f"{NAME}{'_quick' if args.quick else ''}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    print(f"plot: {out}")


if __name__ == "__main__":
    run(parse_args(__doc__.splitlines()[0]))
