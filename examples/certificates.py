"""PAC-Bayes certificates on Fashion-MNIST and Animal-MNIST: the learned MNIST prior vs isotropic priors.

What it shows
-------------
The MNIST CNN of ``pretrained_mnist_cnn`` and its Kronecker (K-FAC) Laplace prior learned on MNIST
(``mnist_prior``) give a PAC-Bayes prior for a *new* task. For each target (Fashion-MNIST, all
60,000 training images in full mode; Animal-MNIST, its 8,005 training images) and each prior

- learned: ``N(theta_MNIST, (F_MNIST + delta I)^-1)`` (Kronecker, the paper's prior),
- isotropic, learned mean: ``N(theta_MNIST, delta^-1 I)``,
- isotropic, zero mean: ``N(0, delta^-1 I)``,

``PACBayesBoundEstimator(MnistCNN, prior=...)`` trains the network with the paper's Catoni criterion,
forms the Laplace posterior, lets the Taylor-tuned posterior and the plain Laplace posterior
(alpha = beta = tau = 1), each with a grid of temperatures, compete by the measured bound, and
certifies the winner with fresh draws. The table puts side by side

- ``certificate``: the estimator's honest certificate ``est.certificate_`` of the Gibbs
  classifier's 0-1 risk (kl bound, a fresh posterior draw per example, Monte-Carlo correction,
  ``delta = 0.025``, ``delta_mc = 0.01``: it holds with probability 0.965), with its KL and the
  chosen posterior (``posterior``: "laplace" or the tuned scales, and the temperature);
- ``paper_diag``: the paper-protocol diagnostic of the same posterior (training error of the
  model average in McAllester's bound at confidence 0.9, no Monte-Carlo correction, no union
  bound; ``est.certify(X, y, protocol="paper", n_samples=paper_samples)``): not a certificate;
- the test error of the posterior predictive and of the Gibbs classifier (the certified quantity:
  the certificate must lie above it).

Choices made here, all without looking at the bound data
--------------------------------------------------------
- ``delta = 1`` (``mnist_prior(weight_decay=1.0)``) and every prior's precision multiplied by
  ``PRIOR_SCALE = 100`` (``prior_scales=[100.0]``, so the union bound costs nothing). The scale was
  chosen on MNIST alone: the smallest power of ten at which the prior, centred at the pretrained
  weights, keeps the Gibbs error on 1,000 held-out MNIST digits under 2 %. Measured (CPU, seed 0):
  learned prior x1: 0.898, x10: 0.768, x100: 0.012, x1000: 0.003; isotropic precision 10: 0.70,
  100: 0.014, 1000: 0.004 (pretrained network: 0.002). The zero-mean prior gets the same precision.
- The learned prior uses ``compression="nearest"`` (the paper's Frobenius-nearest Kronecker
  product) by default, because it is the prior whose claim is checked here; ``"damped"`` (which
  keeps the isotropic floor) is the ``compression`` override, measured at n = 10,000 below.
- Adam with a small learning rate and few epochs: every weight moves, and the move is paid in the KL.

Measured (quick mode: 100 images per class, n = 1,000, 2 epochs; CPU, one thread, seed 0)
--------------------------------------------------------------------------------------------
Fashion-MNIST: learned prior 0.9965 (Laplace posterior, tau = 1, KL 808 nats, Gibbs train error
0.71, Gibbs test error 0.79); isotropic prior with the learned mean 0.9763 (KL 929); zero-mean
isotropic prior 1.0 (vacuous, KL 1691). Animal-MNIST: learned 1.0 (vacuous), isotropic with
learned mean 0.9965, zero mean 1.0. The paper-protocol diagnostic is 1.0 (clipped) for every
row at n = 1,000: McAllester's square-root term alone exceeds 0.5.

Measured at n = 10,000 (Fashion-MNIST)
--------------------------------------
1,000 images per class, 2 epochs, 2,000 test images, temperatures (1, 0.3, 0.1);
``examples/results/certificates_fashion_n10000.md``. One process per prior, CPU, one thread,
seed 0 (250 - 500 s each)::

    import certificates                       # from the examples folder
    args = argparse.Namespace(device="cpu", quick=True, seeds=None, out=OUT, threads=1, overrides=dict(
        datasets=("fashion_mnist",), n_per_class=1000, max_epochs=2, n_test=2000, paper_samples=10,
        predictive_samples=10, temperatures=(1.0, 0.3, 0.1), priors=(PRIOR,), compression=COMPRESSION))
    certificates.run(args)

Results (``certificate`` is the honest one; ``paper diag`` is the paper's protocol)::

    | prior                   | certificate | Gibbs train | KL   | paper diag | Gibbs test err |
    | learned, nearest NKP    | 0.824       | 0.506       | 2389 | 0.657      | 0.526          |
    | learned, damped         | 0.585       | 0.196       | 2943 | 0.547      | 0.226          |
    | isotropic, learned mean | 0.589       | 0.212       | 2734 | 0.524      | 0.223          |
    | isotropic, zero mean    | 0.904       | 0.595       | 3043 | 0.804      | 0.603          |

Every certificate is non-vacuous at n = 10,000 (all with the plain Laplace posterior, tau = 1:
the Taylor-tuned scales never won). The paper's prior (nearest NKP) is far looser than the
isotropic prior with the same mean: it loses the isotropic floor (``skkprior.learn_prior``,
``compression``), so the posterior is broad in most directions and its Gibbs classifier errs on
half the training set. With the floor kept (``compression="damped"``) the learned prior gives
the tightest certificate, but only by 0.004 over the isotropic prior with the MNIST mean, well
inside what one seed can tell. Choosing the compression after seeing these numbers would cost
a union bound over the two learned priors (ln 2 nats on a KL of about 3,000: the bound moves
in the fourth decimal). The paper-protocol diagnostic is lower than the certificate for every
prior (0.52 - 0.80 against 0.58 - 0.90): it is not a certificate.

So, as measured: the Fashion-MNIST certificate is below 1 with every learned prior, tighter than
with the zero-mean isotropic prior; "tighter than the isotropic prior with the learned mean"
holds only for the damped learned prior and only by a hair, and not at all for the paper's
nearest-NKP prior. At n = 1,000 every certificate is nearly vacuous.

At n = 60,000 (all of Fashion-MNIST, the full config, 3 epochs; temperatures (1, 0.3, 0.1),
10 paper samples; ``examples/results/certificates_fashion_n60000.md``; CPU, ~55 min per prior):
learned nearest 0.641, learned damped 0.387, isotropic with the learned mean **0.366** (paper
diagnostic 0.404 / 0.394 / 0.355). The zero-mean prior, run later on a GPU (NVIDIA H200, 120 s)
with the full config as it stands (100 samples, the estimator's default temperatures;
``examples/results/certificates_fashion_n60000_zero.md``): **0.538** (paper diagnostic 0.416,
test Gibbs error 0.279). The paper's claim (tighter with the learned prior) did **not** hold at
full size on this seed: the learned prior is tighter than the zero-mean prior only with
``compression="damped"`` (0.387 against 0.538; the paper's nearest NKP gives 0.641, looser than
zero mean), and never tighter than the isotropic prior with the same mean.

Animal-MNIST, all 8,005 training images (full config, GPU, seed 0, ``scripts/full_runs/go.sh``;
``examples/results/certificates_animal_full.md``): learned nearest 0.711, learned damped 0.682,
isotropic with the learned mean **0.679**, zero mean 0.976 (paper diagnostic 0.599 / 0.612 /
0.578 / 0.826; test Gibbs error 0.246 / 0.222 / 0.226 / 0.697). All non-vacuous; every prior
centred at the MNIST weights is far tighter than the zero-mean prior (whose certified Gibbs
classifier errs on 0.70 of the test images after 3 epochs), and the isotropic prior with the MNIST mean is again the tightest, by
0.003 over the damped learned prior.

Run::

    python examples/certificates.py --device cuda                       # full size (GPU), above
    python examples/certificates.py --quick --device cpu --threads 1    # subsets, ~8 minutes on a CPU

The quick table is ``examples/results/certificates_quick.md``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _shared import (  # noqa: E402
    append_jsonl,
    config,
    example_parser,
    mnist_prior,
    parse_args,
    progress_file,
    save_figure,
    save_results,
)
from skkprior import PACBayesBoundEstimator  # noqa: E402
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
FULL = dict(datasets=("fashion_mnist", "animal_mnist"), n_per_class=None, max_epochs=3, batch_size=128,
            lr=1e-3, paper_samples=100, predictive_samples=100, n_test=None, priors=PRIORS, temperatures=None,
            compression="nearest", seed=0)
QUICK = dict(datasets=("fashion_mnist", "animal_mnist"), n_per_class=100, max_epochs=2, batch_size=64,
             lr=1e-3, paper_samples=10, predictive_samples=10, n_test=500, priors=PRIORS, temperatures=None,
             compression="nearest", seed=0)


def build_parser():
    return example_parser(NAME, __doc__, FULL)


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
    cfg = config(args, QUICK, FULL)
    seed = int(cfg["seed"])
    rows = []
    progress = progress_file(NAME, args)  # each finished certificate, as it ends
    for data in cfg["datasets"]:
        X, y, X_test, y_test = _load(data, cfg["n_per_class"], cfg["n_test"], seed)
        for label in cfg["priors"]:
            start = time.perf_counter()
            prior = _prior(label, args.device, cfg["compression"])
            est = PACBayesBoundEstimator(MnistCNN, prior=prior, weight_decay=WEIGHT_DECAY, bound="kl",
                                         objective="catoni", delta=0.025, delta_mc=0.01, prior_scales=[PRIOR_SCALE],
                                         temperatures=cfg["temperatures"], max_epochs=cfg["max_epochs"],
                                         batch_size=cfg["batch_size"], lr=cfg["lr"],
                                         n_samples=cfg["predictive_samples"], device=args.device, random_state=seed)
            est.fit(X, y)
            q, cert = est.posterior_, est.certificate_
            # the paper-protocol diagnostic of the same posterior on the same data
            paper = est.certify(X, y, protocol="paper", n_samples=cfg["paper_samples"])
            gen = torch.Generator(device=est.device_).manual_seed(seed + 7)
            proba = predict_proba_mc(est.module_, q, torch.from_numpy(X_test), n_samples=cfg["predictive_samples"],
                                     generator=gen, batch_size=512)  # the certified posterior's predictive
            test = evaluate(proba, y_test)
            gen = torch.Generator(device=est.device_).manual_seed(seed + 6)
            n_err, m = gibbs_error_count(est.module_, q, torch.from_numpy(X_test), torch.from_numpy(y_test),
                                         generator=gen, batch_size=512)
            row = {"data": data, "prior": label, "n": len(y), "certificate": cert.risk_bound,
                   "gibbs_train": cert.empirical_gibbs_risk, "kl": cert.kl, "posterior": _describe(q),
                   "paper_diag": paper.risk_bound, "bma_train_err": paper.empirical_gibbs_risk,
                   "test_err": 1.0 - test["accuracy"], "gibbs_test_err": n_err / m, "test_nll": test["nll"],
                   "test_ece": test["ece"], "seconds": time.perf_counter() - start}
            log.info("%s", row)
            rows.append(row)
            append_jsonl(progress, row)
    table = save_results(NAME, rows, args, extra={"config": {k: list(v) if isinstance(v, tuple) else v
                                                                       for k, v in cfg.items()},
                                                            "prior_scale": PRIOR_SCALE, "weight_decay": WEIGHT_DECAY},
                         columns=["data", "prior", "n", "certificate", "gibbs_train", "kl", "posterior",
                                  "paper_diag", "test_err", "gibbs_test_err", "test_nll",
                                  "seconds"])
    _plot(rows, args)
    _check(rows)
    return {"rows": rows, "table": table}


def _check(rows: list[dict]) -> None:
    """The claims, with thresholds from the measured runs (see the module docstring)."""
    for r in rows:
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
        # in every measured run (module docstring), so that is what is asserted.
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
    run(parse_args(build_parser()))
