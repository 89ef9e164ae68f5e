"""Few-shot transfer from MNIST to Fashion-MNIST and Animal-MNIST with a learned prior (Fig. 2b).

What it shows
-------------
The same small CNN (:class:`skkprior.datasets.MnistCNN`, a new 10-class head) is trained on
1, 5, 10, 50, 100 and all examples per class of Fashion-MNIST and of Animal-MNIST with
:class:`skkprior.KroneckerPriorClassifier` under three priors:

- ``learned``: the Laplace posterior of the pretrained MNIST CNN on MNIST, one Kronecker
  product per layer, ``mnist_prior(weight_decay=delta, compression="damped")`` (see below;
  the head gets ``N(0, 1/delta I)``);
- ``isotropic, learned mean``: ``N(theta_MNIST, 1/delta I)`` (``mnist_prior(kind="isotropic")``);
- ``isotropic, zero mean``: ``N(0, 1/delta I)`` (``prior=None``; the network starts from a
  random initialization, the other two start at the MNIST weights);
- ``learned, nearest NKP (no floor)`` (at 10 per class; in ``--quick`` on the first seed only):
  the same prior with ``compression="nearest"``, the paper's Frobenius-nearest Kronecker
  product, to document the trade-off between the two compressions.

Test accuracy, NLL and ECE of the posterior predictive (mean +- std over seeds; each seed
draws its own few-shot training set and initialization) are plotted against the number of
examples per class, like the paper's Fig. 2b (whose target was NotMNIST).

Hyperparameters (the same for the three priors, fixed before the reported runs)
-------------------------------------------------------------------------------
``HYPER`` below: ``delta = weight_decay = 1e-2``, Adam with ``lr = 1e-3``, batch size 64 and
a budget of about 200 optimizer steps (``max_epochs = ceil(200 / batches per epoch)``, at
least one epoch, so every training-set size gets a comparable amount of optimization; all
of Fashion-MNIST is one epoch, 938 steps). Why: ``delta = 1e-2`` is a weak L2 term for the
zero-mean prior (``delta / (2 N) = 5e-5`` per weight at N = 100), so the from-scratch
baseline is not over-regularized, and it is far below the learned prior's curvature
eigenvalues (up to about 1e3), so where the source data are informative the learned prior
is the curvature, not ``delta``; 200 steps bring the training objective (cross-entropy plus
prior term) of every prior to about 0.02 or below at 10 examples per class (0.021 learned,
0.006 and 0.007 isotropic) and bound the CPU time.
The posterior's scales come from the estimator's default ``scaling="validation"``: a 10 %
held-out part of the training set scores the grid ``alpha x (1, 10, 100, 1000)``,
``tau x (1, 0.1, 0.01)`` by the predictive NLL; below 19 examples per class nothing can be
held out and the grid is scored on the training data (the estimator warns; it then always
picks the sharpest corner, ``alpha = 1000, tau = 0.01``). The predictive is the Monte-Carlo
model average. Nothing was tuned per prior; only one setting was tried (no search), on a
pilot at 10 examples per class (Animal-MNIST seeds 0 and 1, Fashion-MNIST seed 0).

Why ``compression="damped"`` for the learned prior
-------------------------------------------------
:func:`skkprior.learn_prior` compresses ``F_s + delta I`` to one Kronecker product per layer.
``compression="nearest"`` (the paper's Frobenius-nearest product) keeps the large curvature
eigenvalues and loses the isotropic floor ``delta``: for this CNN (delta = 1e-2) the smallest
eigenvalue of ``classifier.0``'s compressed precision is about 7e-7, although the relative
Frobenius error is only 0.6 % (``nkp_error`` 4e-5, 0.003, 0.006 for the three layers). In most
directions that prior is 10^4 times weaker than the isotropic one, and the Laplace posterior
built on it is so broad there that its Monte-Carlo predictive is near chance (quick run below,
and a pilot at 300 steps: accuracy 0.18 / 0.15 on Animal-MNIST seeds 0 / 1, 0.25 on
Fashion-MNIST, while the MAP network under the same prior got 0.54 / 0.51 / 0.62).
``compression="damped"`` (the factored Tikhonov damping of Martens & Grosse, 2015) is again one
Kronecker product per layer and is at least ``F_s + delta I`` in the positive semidefinite
order, so it keeps the floor, at a larger Frobenius error (``nkp_error`` 0.015, 0.14, 0.13).
Computing each MNIST prior (all 60,000 digits, MC Fisher) takes about 30 s on one CPU thread;
it is cached in ``<cache home>/priors`` (``$SKKPRIOR_CACHE``, by default the data home).

Run
---
``python examples/few_shot_transfer.py --device cuda`` (full: both data sets, all six sizes,
3 seeds, full test sets, 100 posterior samples, the nearest-NKP prior at 10 per class on
every seed; writes ``examples/results/few_shot_transfer.*``). ``--quick`` is the scaled-down
CPU run below (Animal-MNIST, 10 examples per class, 2 seeds, 300 test images, 5 posterior
samples, the nearest-NKP prior on seed 0 only). The test (``tests/test_examples_transfer.py``)
calls ``run(args, **TEST)``: one seed, 100 optimizer steps instead of 200, 200 test images, 4
posterior samples.

Measured at full size (GPU)
---------------------------
The full configuration on an NVIDIA H200, split into parallel jobs by data set, size and seed
(``scripts/full_runs/go.sh``, merged by ``scripts/full_runs/merge.py``; 2 - 61 s per fit, 114
fits; ``examples/results/few_shot_transfer.md`` has every row with its standard deviation).
Test accuracy, mean over 3 seeds (NLL in brackets)::

    per class            1              5              10             50             100            all
    Fashion  learned     0.367 (2.38)   0.564 (1.34)   0.634 (1.08)   0.757 (0.76)   0.787 (0.65)   0.876 (0.34)
             iso, mean   0.398 (2.29)   0.581 (1.26)   0.653 (1.02)   0.762 (0.76)   0.791 (0.63)   0.876 (0.34)
             zero mean   0.459 (1.94)   0.630 (1.28)   0.718 (0.96)   0.796 (0.61)   0.818 (0.53)   0.876 (0.35)
    Animal   learned     0.182 (3.59)   0.390 (2.26)   0.490 (1.78)   0.712 (0.98)   0.780 (0.73)   0.890 (0.38)
             iso, mean   0.192 (3.48)   0.411 (2.17)   0.501 (1.72)   0.726 (0.96)   0.782 (0.70)   0.892 (0.37)
             zero mean   0.209 (5.07)   0.438 (3.01)   0.598 (1.62)   0.805 (0.76)   0.831 (0.57)   0.913 (0.30)

The nearest-NKP (floorless) prior at 10 per class: 0.307 (1.90) on Fashion, 0.205 (2.19) on
Animal.

- **The paper's claim does not hold at any size on either data set.** In none of the 36
  (data set, size, seed) cells is the learned prior the most accurate; the zero-mean isotropic
  prior (training from scratch) is the most accurate in 34; its seed mean is 0.03 - 0.11
  above the learned prior's up to 100 per class, and the three tie on all of Fashion-MNIST.
- The learned prior is consistently a little *worse* than the isotropic prior with the same
  (MNIST) mean: accuracy lower by 0.001 - 0.031 and NLL higher by 0.001 - 0.11 at every size up
  to 100 per class. The Kronecker curvature of the MNIST task adds nothing over its mean here.
- The only place where a prior centred at the MNIST weights helps is the NLL with 1 and 5
  examples per class on Animal-MNIST (3.59 / 2.26 learned against 5.07 / 3.01 zero mean): the
  from-scratch network is overconfident there; its accuracy is still the highest.
- At 10 per class the learned prior's NLL (1.78) is *above* the zero-mean prior's (1.62) with
  100 posterior samples and the full test set, the reverse of the quick and test-size runs
  (5 and 4 samples, 300 and 200 test images); the asserts distinguish the two configurations.

Measured (quick, CPU)
---------------------
Quick mode on a shared 2-core CPU, one torch thread (314 s; about 65 s per fit with a
Kronecker prior, 28 s with an isotropic one, mostly the posterior's eigendecompositions of
the 3137 x 3137 input factor of ``classifier.0``; re-measured with the current code),
``python examples/few_shot_transfer.py --quick --device cpu --threads 1``
(``examples/results/few_shot_transfer_quick.md``; mean +- std over 2 seeds)::

    | dataset      | per_class | prior                           | accuracy        | nll              | ece             | seeds |
    | Animal-MNIST | 10        | learned                         | 0.4833 ± 0.0236 | 1.9242 ± 0.0084  | 0.1269 ± 0.0104 | 2     |
    | Animal-MNIST | 10        | isotropic, learned mean         | 0.5017 ± 0.0024 | 2.1598 ± 0.2102  | 0.1504 ± 0.0162 | 2     |
    | Animal-MNIST | 10        | isotropic, zero mean            | 0.5467 ± 0.0471 | 2.1464 ± 0.0535  | 0.1262 ± 0.0124 | 2     |
    | Animal-MNIST | 10        | learned, nearest NKP (no floor) | 0.1467 ± 0.0000 | 10.1258 ± 0.0000 | 0.2662 ± 0.0000 | 1     |

Per seed (accuracy / NLL): learned 0.500 / 1.930 and 0.467 / 1.918; isotropic, learned mean
0.500 / 2.308 and 0.503 / 2.011; zero mean 0.580 / 2.184 and 0.513 / 2.109. Training loss
at the end: 0.021 / 0.019 learned, 0.006 - 0.007 isotropic; every fit picked ``alpha = 1000,
tau = 0.01``. (An earlier quick run, before the posterior reused the curvature's eigendecomposition,
a numerically different but equivalent route, drew other posterior samples: learned 0.490 /
1.967 and 0.467 / 1.990, isotropic 0.500 / 2.184 and 0.517 / 2.110, zero mean 0.643 / 2.044
and 0.480 / 2.264, nearest 0.113 / 14.2. With 5 posterior samples the run-to-run spread is
that large.)

Test size (``TEST``: 100 steps, 200 test images, 4 posterior samples; 101 s for the three
fits, 47 s learned, 27 s each isotropic), seeds 0 / 1 / 2 (the test runs seed 0;
``run(args, **TEST, first_seed=s)``), accuracy / NLL::

    learned                  0.400 / 2.267   0.545 / 1.957   0.500 / 1.997
    isotropic, learned mean  0.420 / 2.228   0.530 / 1.916   0.470 / 1.801
    isotropic, zero mean     0.545 / 2.528   0.585 / 2.121   0.560 / 2.193

What it says, honestly:

- The paper's claim (the learned prior beats both isotropic priors in accuracy *and* NLL
  with few data) does **not** hold here: in none of the seven measured runs (2 + 2 quick, 3
  test-size seeds) is the learned prior the most accurate.
- What is stable in all seven: the learned prior has a lower NLL than the zero-mean isotropic
  prior (by 0.08 - 0.27), but the network trained from scratch under the zero-mean prior is
  at least as accurate (by 0.013 - 0.15): the MNIST features of this small CNN transfer
  poorly to filled animal silhouettes, and starting from them costs accuracy while the
  posterior built on the learned curvature is better calibrated.
- Learned prior vs the isotropic prior with the same (MNIST) mean: no stable order. With
  200 steps (quick) the learned prior has the lower NLL on every seed (by 0.09 - 0.38) and
  the same or lower accuracy (by 0 - 0.05); with 100 steps (test size) the isotropic one has the
  lower NLL on all three seeds (by 0.04 - 0.20) and the accuracies swap between seeds.
- The zero-mean prior's accuracy varies most between seeds (0.48 - 0.64); in the earlier
  quick run, seed 1, it fell below the isotropic prior with the MNIST mean (0.480 against
  0.517), so that order is not asserted either.
- ``compression="nearest"`` is unusable here (accuracy 0.11 - 0.15, NLL 10 - 14 at seed 0): without
  the floor the posterior is near chance, which is why the learned prior uses
  ``compression="damped"``.

The asserts at the end (:func:`_check`) pin this measured picture.
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
    """Pin the measured picture (module docstring) so that a library change that alters it is noticed.

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
    # the learned prior is better calibrated than the zero-mean prior (NLL lower by 0.08 - 0.27)...
    assert learned["nll_mean"] < zero["nll_mean"], (learned, zero)
    # ...but training from scratch is at least as accurate (by 0.013 - 0.15; a one-seed dip allowed)
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
