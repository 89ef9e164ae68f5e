"""PAC-Bayes certificates on Fashion-MNIST and Animal-MNIST with the MNIST prior (DRAFT).
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

from _shared import mnist_prior, parse_args, save_results  # noqa: E402

from skkprior import PACBayesBoundEstimator, certify  # noqa: E402
from skkprior.datasets import (MnistCNN, load_animal_mnist, load_fashion_mnist,  # noqa: E402
                               subsample_per_class)
from skkprior.metrics import evaluate  # noqa: E402
from skkprior.predictive import gibbs_error_count  # noqa: E402

log = logging.getLogger("certificates")

CONFIG = {
    "full": dict(n_per_class={"fashion_mnist": None, "animal_mnist": None}, max_epochs=5, batch_size=256,
                 lr=1e-3, paper_samples=100, predictive_samples=100, n_test=None),
    "quick": dict(n_per_class={"fashion_mnist": 200, "animal_mnist": 100}, max_epochs=3, batch_size=128,
                  lr=1e-3, paper_samples=20, predictive_samples=20, n_test=2000),
}
WEIGHT_DECAY = 1.0


def _priors(weight_decay: float, device: str) -> dict[str, Any]:
    return {
        "learned (MNIST K-FAC)": mnist_prior(weight_decay=weight_decay, device=device),
        "isotropic, learned mean": mnist_prior(weight_decay=weight_decay, kind="isotropic", device=device),
        "isotropic, zero mean": None,
    }


def _load(name: str):
    return load_fashion_mnist() if name == "fashion_mnist" else load_animal_mnist()


def run(args: argparse.Namespace) -> dict:
    cfg = CONFIG["quick" if args.quick else "full"]
    seed = 0
    priors = _priors(WEIGHT_DECAY, "cpu")
    rows = []
    for data in ("fashion_mnist", "animal_mnist"):
        X, y, X_test, y_test = _load(data)
        if cfg["n_per_class"][data] is not None:
            X, y = subsample_per_class(X, y, cfg["n_per_class"][data], random_state=seed)
        if cfg["n_test"] is not None:
            X_test, y_test = X_test[:cfg["n_test"]], y_test[:cfg["n_test"]]
        for label, prior in priors.items():
            start = time.perf_counter()
            est = PACBayesBoundEstimator(MnistCNN, prior=prior, weight_decay=WEIGHT_DECAY, bound="kl",
                                         objective="catoni", delta=0.025, delta_mc=0.01,
                                         max_epochs=cfg["max_epochs"], batch_size=cfg["batch_size"],
                                         lr=cfg["lr"], n_samples=cfg["predictive_samples"],
                                         device=args.device, random_state=seed)
            est.fit(X, y)
            t_fit = time.perf_counter() - start
            cert = est.certificate_
            gen = torch.Generator(device=est.device_).manual_seed(seed + 5)
            paper = certify(est.module_, est.posterior_, torch.from_numpy(X), torch.from_numpy(y),
                            protocol="paper", n_samples=cfg["paper_samples"], generator=gen,
                            batch_size=512)
            t_paper = time.perf_counter() - start - t_fit
            proba = est.predict_proba(X_test)
            test = evaluate(proba, y_test)
            gen = torch.Generator(device=est.device_).manual_seed(seed + 6)
            n_err, m = gibbs_error_count(est.module_, est.posterior_, torch.from_numpy(X_test),
                                         torch.from_numpy(y_test), generator=gen, batch_size=512)
            row = {"data": data, "prior": label, "n": len(y), "certificate": cert.risk_bound,
                   "gibbs_train": cert.empirical_gibbs_risk, "kl": cert.kl,
                   "paper_diag": paper.risk_bound, "bma_train_err": paper.empirical_gibbs_risk,
                   "test_err": 1 - test["accuracy"], "gibbs_test_err": n_err / m,
                   "test_nll": test["nll"], "test_ece": test["ece"],
                   "tau": float(next(iter(est.posterior_.temperature.values()))),
                   "fit_s": t_fit, "total_s": time.perf_counter() - start}
            print(row, flush=True)
            rows.append(row)
    save_results("certificates", rows, args)
    return {"rows": rows}


if __name__ == "__main__":
    run(parse_args(__doc__.splitlines()[0]))
