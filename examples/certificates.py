"""PAC-Bayes certificates on Fashion-MNIST and Animal-MNIST: the learned MNIST prior vs isotropic priors.

For each target data set and prior (learned, isotropic with the learned mean, isotropic with zero
mean), ``PACBayesBoundEstimator`` trains the MNIST CNN with the Catoni criterion and certifies the
Gibbs classifier (honest certificate), next to the paper-protocol diagnostic of the same posterior
and the test errors. ``priors`` may name ``"learned (nearest)"`` / ``"learned (damped)"`` to run
both compressions of the learned prior in one run.

Run::

    python examples/certificates.py --quick --device cpu --threads 1    # subsets, minutes on a CPU
    python examples/certificates.py --device cuda                       # full size
    python examples/certificates.py --quick --set datasets=fashion_mnist --set n_per_class=1000

Settings: ``QUICK`` / ``FULL`` below (``--set KEY=VALUE``). Results:
``examples/results/certificates*``; measurements and discussion: ``docs/examples/certificates.md``.
Each row of the JSON results holds the full certificate record (``certificate_record``,
``Certificate.to_dict()``: ``n``, ``m``, ``n_errors``, ``delta``, ``delta_mc``, ``union_size``, the
KL per layer) and the paper diagnostic's (``paper_record``) next to the numbers it reports.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _shared  # noqa: E402
from _shared import append_jsonl, mnist_prior, progress_file, save_figure, save_results  # noqa: E402
from skkprior import PACBayesBoundEstimator  # noqa: E402
from skkprior.bounds import Certificate  # noqa: E402
from skkprior.datasets import MnistCNN, load_animal_mnist, load_fashion_mnist, subsample_per_class  # noqa: E402
from skkprior.metrics import evaluate  # noqa: E402
from skkprior.predictive import gibbs_error_count, predict_proba_mc  # noqa: E402

log = logging.getLogger("certificates")

WEIGHT_DECAY = 1.0
PRIOR_SCALE = 100.0
PRIORS = ("learned", "isotropic, learned mean", "isotropic, zero mean")

NAME = "certificates"
# priors: labels of PRIORS, or "learned (nearest)" / "learned (damped)" for a learned prior with that
# compression (``compression`` is the one of "learned"); temperatures None: the estimator's default grid
# n_per_class None: every training image (Fashion-MNIST 60,000; Animal-MNIST 8,005)
# prior_fraction: the share of the training data that learns a data-dependent prior (0: the prior
# sees no data); prior_scales: the grid of prior-precision multipliers, paid by a union bound;
# objective: the estimator's training criterion; mc_passes: passes with fresh draws of the certificate
FULL = dict(datasets=("fashion_mnist", "animal_mnist"), n_per_class=None, max_epochs=3, batch_size=128,
            lr=1e-3, paper_samples=100, predictive_samples=100, n_test=None, priors=PRIORS, temperatures=None,
            compression="nearest", seed=0, prior_fraction=0.0, prior_scales=(PRIOR_SCALE,), objective="catoni", mc_passes=1)
QUICK = dict(datasets=("fashion_mnist", "animal_mnist"), n_per_class=100, max_epochs=2, batch_size=64,
             lr=1e-3, paper_samples=10, predictive_samples=10, n_test=500, priors=PRIORS, temperatures=None,
             compression="nearest", seed=0, prior_fraction=0.0, prior_scales=(PRIOR_SCALE,), objective="catoni",
             mc_passes=1)


def build_parser():
    return _shared.example_parser(NAME, __doc__, FULL)


def _prior(label: str, device: str, compression: str = "nearest") -> Any:
    if label.startswith("learned"):
        compression = label[len("learned ("):-1] if label.startswith("learned (") else compression
        return mnist_prior(weight_decay=WEIGHT_DECAY, compression=compression, device=device)
    if label == "isotropic, learned mean":
        return mnist_prior(weight_decay=WEIGHT_DECAY, kind="isotropic", device=device)
    return None  # the estimator's zero-mean isotropic prior N(0, weight_decay^-1 I)


def _load(name: str, n_per_class: int | None, n_test: int | None, seed: int):
    X, y, X_test, y_test = load_fashion_mnist() if name == "fashion_mnist" else load_animal_mnist()
    if n_per_class is not None:
        X, y = subsample_per_class(X, y, min(n_per_class, int(np.bincount(y).min())), random_state=seed)
    if n_test is not None and n_test < len(y_test):
        keep = np.sort(np.random.default_rng(seed).permutation(len(y_test))[:n_test])
        X_test, y_test = X_test[keep], y_test[keep]
    return X, y, X_test, y_test


def _describe(q) -> str:
    """Which posterior the estimator certified: the tuned or the plain Laplace one, and its temperature."""
    alpha = float(np.mean([float(v) for v in q.prior_scale.values()]))
    beta = float(np.mean([float(v) for v in q.likelihood_scale.values()]))
    tau = float(np.mean([float(v) for v in q.temperature.values()]))
    kind = "laplace" if abs(alpha - 1) < 1e-9 and abs(beta - 1) < 1e-9 else f"tuned a={alpha:.3g} b={beta:.3g}"
    return f"{kind}, tau={tau:.3g}"


def run(args: argparse.Namespace) -> dict:
    cfg = _shared.config(args, QUICK, FULL)
    seed = int(cfg["seed"])
    rows = []
    progress = progress_file(NAME, args)  # each finished certificate, as it ends
    for data in cfg["datasets"]:
        X, y, X_test, y_test = _load(data, cfg["n_per_class"], cfg["n_test"], seed)
        for label in cfg["priors"]:
            start = time.perf_counter()
            prior = _prior(label, args.device, cfg["compression"])
            est = PACBayesBoundEstimator(MnistCNN, prior=prior, weight_decay=WEIGHT_DECAY, bound="kl",
                                         objective=cfg["objective"], delta=0.025, delta_mc=0.01,
                                         prior_fraction=cfg["prior_fraction"], prior_scales=list(cfg["prior_scales"]),
                                         mc_passes=cfg["mc_passes"],
                                         temperatures=cfg["temperatures"], max_epochs=cfg["max_epochs"],
                                         batch_size=cfg["batch_size"], lr=cfg["lr"],
                                         n_samples=cfg["predictive_samples"], device=args.device, random_state=seed)
            est.fit(X, y)
            q, cert = est.posterior_, est.certificate_
            # the paper-protocol diagnostic of the same posterior on the same (bound) data
            bound_rows = est.prior_split_["bound_indices"]
            paper = est.certify(X[bound_rows], y[bound_rows], protocol="paper", n_samples=cfg["paper_samples"])
            gen = torch.Generator(device=est.device_).manual_seed(seed + 7)
            proba = predict_proba_mc(est.module_, q, torch.from_numpy(X_test), n_samples=cfg["predictive_samples"],
                                     generator=gen, batch_size=512)  # the certified posterior's predictive
            test = evaluate(proba, y_test)
            gen = torch.Generator(device=est.device_).manual_seed(seed + 6)
            n_err, m = gibbs_error_count(est.module_, q, torch.from_numpy(X_test), torch.from_numpy(y_test),
                                         generator=gen, batch_size=512)
            row = {"data": data, "prior": label, "n": len(y), "n_prior": est.prior_split_["n_prior"],
                   "n_bound": est.prior_split_["n_bound"], "prior_scale": est.prior_scale_,
                   "certificate": cert.risk_bound,
                   "gibbs_train": cert.empirical_gibbs_risk, "kl": cert.kl, "posterior": _describe(q),
                   "paper_diag": paper.risk_bound, "bma_train_err": paper.empirical_gibbs_risk,
                   "test_err": 1.0 - test["accuracy"], "gibbs_test_err": n_err / m, "test_nll": test["nll"],
                   "test_ece": test["ece"], "seconds": time.perf_counter() - start,
                   # the full records behind "certificate" and "paper_diag": m, errors, both deltas,
                   # union size, per-layer KL (Certificate.from_dict rebuilds and recomputes them)
                   "certificate_record": cert.to_dict(), "paper_record": paper.to_dict(),
                   "selection": est.selection_}
            log.info("%s", row)
            rows.append(row)
            append_jsonl(progress, row)
    table = save_results(NAME, rows, args, extra={"config": {k: list(v) if isinstance(v, tuple) else v
                                                                       for k, v in cfg.items()},
                                                            "weight_decay": WEIGHT_DECAY},
                         columns=["data", "prior", "n", "n_bound", "prior_scale", "certificate", "gibbs_train", "kl",
                                  "posterior",
                                  "paper_diag", "test_err", "gibbs_test_err", "test_nll",
                                  "seconds"])
    _plot(rows, args)
    _check(rows)
    return {"rows": rows, "table": table}


def _check(rows: list[dict]) -> None:
    """The claims, with thresholds from the measured runs (see docs/examples/certificates.md)."""
    for r in rows:
        # the reported numbers are those of the stored records, which recompute
        record = Certificate.from_dict(r["certificate_record"])
        assert record.risk_bound == r["certificate"], r
        assert math.isclose(record.recompute(), record.risk_bound, rel_tol=0.0, abs_tol=1e-12), r
        assert Certificate.from_dict(r["paper_record"]).risk_bound == r["paper_diag"], r
        # a certificate bounds the Gibbs risk; the test Gibbs error is an unbiased estimate of it
        assert r["certificate"] >= r["gibbs_test_err"] - 0.05, r
        assert r["certificate"] <= 1.0 and r["paper_diag"] <= 1.0
    for data in {r["data"] for r in rows}:
        by = {r["prior"]: r for r in rows if r["data"] == data}
        learned = [r for label, r in by.items() if label.startswith("learned")]
        if not learned or data != "fashion_mnist":
            continue
        for r in learned:
            assert r["certificate"] < 1.0, r
        # The paper's claim "tighter with the learned prior than with the isotropic priors" holds
        # against the zero-mean prior only, and only up to n = 10,000 (at n = 60,000 the nearest-NKP
        # prior gave 0.641 against 0.538); the isotropic prior with the learned mean was tighter
        # in every measured run (docs/examples/certificates.md), so that is what is asserted.
        zero = by.get("isotropic, zero mean")
        for r in learned:
            if zero is not None and r["n"] <= 10_000:
                assert r["certificate"] < zero["certificate"], (r, zero)


def _plot(rows: list[dict], args: argparse.Namespace) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        return
    datasets = sorted({r["data"] for r in rows})
    fig, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4), squeeze=False)
    for ax, data in zip(axes[0], datasets):
        sub = [r for r in rows if r["data"] == data]
        x = np.arange(len(sub))
        bars = [("certificate", "certificate (honest)"), ("paper_diag", "paper protocol"),
                ("gibbs_test_err", "Gibbs test error"), ("test_err", "predictive test error")]
        for k, (key, name) in enumerate(bars):
            ax.bar(x + (k - 1.5) * 0.2, [r[key] for r in sub], width=0.2, label=name)
        ax.set_xticks(x, [r["prior"] for r in sub], fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_title(f"{data} (n = {sub[0]['n']})")
        ax.legend(fontsize=7)
    save_figure(fig, NAME, args)


if __name__ == "__main__":
    run(_shared.parse_args(build_parser()))
