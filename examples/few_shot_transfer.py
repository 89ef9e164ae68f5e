"""Few-shot transfer with a learned prior (the paper's Fig. 2b on offline data).

The MNIST CNN with a new head is trained on 1 to all examples per class of Fashion-MNIST and
Animal-MNIST under the prior learned from the pretrained MNIST CNN, the isotropic prior with the
learned mean and the zero-mean isotropic prior, over several seeds (accuracy, NLL, ECE).

Run::

    python examples/few_shot_transfer.py --quick            # Animal-MNIST, 10 per class, CPU
    python examples/few_shot_transfer.py --device cuda      # full size
    python examples/few_shot_transfer.py --quick --set "sizes=(1, 5, 10)" --set seeds=3

Settings: ``QUICK`` / ``FULL`` below (``--set KEY=VALUE``); ``TEST`` is the size the tests run.
Results: ``examples/results/few_shot_transfer*``; measurements and discussion:
``docs/examples/few_shot_transfer.md``.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
import warnings
from typing import Any

import numpy as np

from _shared import (
    append_jsonl,
    config,
    example_parser,
    mean_std,
    mnist_prior,
    parse_args,
    progress_file,
    save_figure,
    save_results,
)
from skkprior import KroneckerPriorClassifier
from skkprior.datasets import MnistCNN, load_animal_mnist, load_fashion_mnist, subsample_per_class
from skkprior.metrics import evaluate

NAME = "few_shot_transfer"
PRIORS = ("learned", "isotropic, learned mean", "isotropic, zero mean")
RAW = "learned, nearest NKP (no floor)"  # learn_prior(compression="nearest"): documents the trade-off
RAW_SIZES = (10,)  # the sizes at which RAW is run
LOADERS = {"Fashion-MNIST": load_fashion_mnist, "Animal-MNIST": load_animal_mnist}

HYPER = {"weight_decay": 1e-2, "lr": 1e-3, "batch_size": 64, "steps": 200}
HYPER_NOTES = ("delta=1e-2: weak for the zero-mean baseline, far below the learned curvature; lr 1e-3 Adam; "
               "~200 steps (training loss < 0.02 at 10/class); scaling='validation' (estimator default), "
               "MC predictive; one setting, the same for every prior, no search")

# raw_prior: also run RAW (at RAW_SIZES; on the first raw_seeds seeds, None: all)
FULL = {"datasets": ("Fashion-MNIST", "Animal-MNIST"), "sizes": (1, 5, 10, 50, 100, None), "seeds": 3,
        "first_seed": 0, "n_test": None, "n_samples": 100, "steps": HYPER["steps"], "raw_prior": True,
        "raw_seeds": None}
QUICK = {"datasets": ("Animal-MNIST",), "sizes": (10,), "seeds": 2, "first_seed": 0, "n_test": 300,
         "n_samples": 5, "steps": HYPER["steps"], "raw_prior": True, "raw_seeds": 1}
# The size tests/test_examples_transfer.py runs (``--set`` of each entry over QUICK; one seed, fewer steps,
# test images and posterior samples): the CPU budget of the test suite.
TEST = {"seeds": 1, "n_test": 200, "n_samples": 4, "steps": 100, "raw_prior": False}

logger = logging.getLogger("examples." + NAME)


def make_classifier(prior: Any, n_train: int, *, n_samples: int, device: str, seed: int,
                    steps: int = HYPER["steps"]) -> KroneckerPriorClassifier:
    """The estimator with the shared hyperparameters (only the prior differs between methods)."""
    batches = math.ceil(n_train / HYPER["batch_size"])
    epochs = max(1, math.ceil(steps / batches))
    return KroneckerPriorClassifier(MnistCNN, prior=prior, weight_decay=HYPER["weight_decay"], lr=HYPER["lr"],
                                    batch_size=HYPER["batch_size"], max_epochs=epochs, scaling="validation",
                                    predictive="mc", n_samples=n_samples, device=device, random_state=seed)


def build_parser() -> argparse.ArgumentParser:
    return example_parser(NAME, __doc__, FULL)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the comparison (the settings: :func:`_shared.config`)."""
    cfg = config(args, QUICK, FULL)
    start = time.perf_counter()
    wd = HYPER["weight_decay"]
    priors: dict[str, Any] = {
        "learned": mnist_prior(weight_decay=wd, compression="damped", device=args.device),
        "isotropic, learned mean": mnist_prior(weight_decay=wd, kind="isotropic", device=args.device),
        "isotropic, zero mean": None,
    }
    if cfg["raw_prior"]:
        priors[RAW] = mnist_prior(weight_decay=wd, compression="nearest", device=args.device)
    runs: list[dict[str, Any]] = []
    progress = progress_file(NAME, args)  # each finished fit, as it ends
    for ds in cfg["datasets"]:
        X_train, y_train, X_test, y_test = LOADERS[ds]()
        if cfg["n_test"] is not None and cfg["n_test"] < len(y_test):
            keep = np.sort(np.random.default_rng(0).choice(len(y_test), cfg["n_test"], replace=False))
            X_test, y_test = X_test[keep], y_test[keep]
        for k in cfg["sizes"]:
            for seed in range(cfg["first_seed"], cfg["first_seed"] + cfg["seeds"]):
                if k is None:
                    X, y = X_train, y_train
                else:
                    X, y = subsample_per_class(X_train, y_train, k, random_state=seed)
                for name in priors:
                    if name == RAW and (k not in RAW_SIZES or (cfg["raw_seeds"] is not None
                                                               and seed >= cfg["first_seed"] + cfg["raw_seeds"])):
                        continue
                    t0 = time.perf_counter()
                    clf = make_classifier(priors[name], len(y), n_samples=cfg["n_samples"], device=args.device,
                                          seed=seed, steps=cfg["steps"])
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
                                 "train_loss": float(clf.history_[-1]["train_loss"]) if clf.history_ else None,
                                 "seconds": time.perf_counter() - t0})
                    r = runs[-1]
                    append_jsonl(progress, r)
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
    """Pin the measured picture (docs/examples/few_shot_transfer.md) so that a library change that alters it is noticed.

    The full configuration (full test sets, 100 posterior samples) and the scaled-down ones
    (``--quick``, ``TEST``) are checked against their own measured runs: the NLL order of the
    learned and the zero-mean prior at 10 per class differs between them.
    """
    if result["config"]["n_test"] is None:
        _check_full(result)
    else:
        _check_scaled(result)


def _check_full(result: dict[str, Any]) -> None:
    """Full size (3 seeds): the zero-mean prior is the most accurate up to 100 per class."""
    by = {(r["dataset"], r["per_class"], r["prior"]): r for r in result["rows"]}
    for (ds, k, name), learned in by.items():
        if name != "learned":
            continue
        iso, zero = by[(ds, k, PRIORS[1])], by[(ds, k, PRIORS[2])]
        # learned vs isotropic prior with the same mean: within 0.031 in accuracy at every size
        assert abs(learned["accuracy_mean"] - iso["accuracy_mean"]) <= 0.05, (learned, iso)
        if k != "all":  # training from scratch is more accurate by 0.027 - 0.108 (measured)
            assert zero["accuracy_mean"] > learned["accuracy_mean"] + 0.01, (zero, learned)
        if ds == "Animal-MNIST" and k in (1, 5):  # the MNIST mean helps the NLL there (by 1.48 / 0.75)
            assert learned["nll_mean"] < zero["nll_mean"] - 0.3, (learned, zero)
        raw = by.get((ds, k, RAW))
        if raw is not None:  # no floor: 0.307 / 0.205 against 0.634 / 0.490 at 10 per class
            assert raw["accuracy_mean"] < learned["accuracy_mean"] - 0.15, (raw, learned)


def _check_scaled(result: dict[str, Any]) -> None:
    """Quick and test size, Animal-MNIST at 10 per class (thresholds from 2 quick and 3 test-size seeds).

    These asserts pin what was stable in every measured run of these configurations, with
    margins. Orders that flipped between runs are not asserted.
    """
    by = {(r["dataset"], r["per_class"], r["prior"]): r for r in result["rows"]}
    key = ("Animal-MNIST", 10)
    if key + ("learned",) not in by:
        return
    learned, iso, zero = (by[key + (name,)] for name in PRIORS)
    for r in (learned, iso, zero):
        assert r["accuracy_mean"] > 0.3, r  # far above chance (0.1) with 100 images; measured 0.40 - 0.64
    # learned vs zero-mean prior NLL: no stable order. Lower by 0.08 - 0.27 in the 5 runs before
    # the estimators' named seed streams, higher by 0.10 (seed 0) and 0.02 (seed 1) with them, so
    # the difference is Monte-Carlo and seed noise at this size (4 posterior samples): a band only
    assert abs(learned["nll_mean"] - zero["nll_mean"]) <= 0.45, (learned, zero)
    # training from scratch is at least as accurate (by 0.013 - 0.15; a one-seed dip allowed)
    assert zero["accuracy_mean"] > learned["accuracy_mean"] - 0.03, (zero, learned)
    # learned prior vs isotropic prior with the same (MNIST) mean: close, no stable order
    # (measured differences: accuracy 0.01 - 0.05, NLL 0.04 - 0.22)
    assert abs(learned["accuracy_mean"] - iso["accuracy_mean"]) <= 0.12, (learned, iso)
    assert abs(learned["nll_mean"] - iso["nll_mean"]) <= 0.45, (learned, iso)
    raw = by.get(key + (RAW,))
    if raw is not None:
        # the nearest (floorless) compression: near chance (quick, seed 0: accuracy 0.113, NLL 14.2)
        assert raw["accuracy_mean"] < learned["accuracy_mean"] - 0.2, (raw, learned)
        assert raw["nll_mean"] > learned["nll_mean"] + 2.0, (raw, learned)


def _plot(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        print("matplotlib is not installed: no plot")
        return

    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    metrics = (("accuracy", "test accuracy"), ("nll", "test NLL"), ("ece", "test ECE"))
    fig, axes = plt.subplots(len(datasets), 3, figsize=(12, 3.3 * len(datasets)), squeeze=False)
    for i, ds in enumerate(datasets):
        for j, (metric, label) in enumerate(metrics):
            ax = axes[i, j]
            for name, marker in zip((*PRIORS, RAW), "os^v"):
                sel = sorted((r for r in rows if r["dataset"] == ds and r["prior"] == name),
                             key=lambda r: r["n_per_class"])
                if not sel:
                    continue
                x = np.array([r["n_per_class"] for r in sel], dtype=float)
                m = np.array([r[metric + "_mean"] for r in sel])
                s = np.array([r[metric + "_std"] for r in sel])
                ax.plot(x, m, marker=marker, label=name)
                ax.fill_between(x, m - s, m + s, alpha=0.2)
            ax.set_xscale("log")
            ax.set_xlabel("training examples per class")
            ax.set_title(f"{ds}: {label}", fontsize=10)
    axes[0, 0].legend(fontsize=8)
    save_figure(fig, NAME, args)


if __name__ == "__main__":
    run(parse_args(build_parser()))
