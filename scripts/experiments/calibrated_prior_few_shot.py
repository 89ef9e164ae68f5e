"""Calibrated vs fixed learned prior on 10-shot Animal-MNIST (issue 12's first measurement).

The MNIST CNN's prior learned with ``learn_prior(scaling="pac-bayes")`` (the paper's
calibration on the source data) against the fixed-scale prior of the few-shot example, the
isotropic prior with the MNIST mean and the zero-mean prior, with the few-shot example's
estimator settings. Run: ``python scripts/experiments/calibrated_prior_few_shot.py [n_source]
[seeds] [n_test] [n_samples]`` (defaults 10000 2 500 10; prints one JSON line per fit).
"""

import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
from few_shot_transfer import HYPER, make_classifier  # noqa: E402

from _shared import mnist_prior  # noqa: E402
from skkprior import learn_prior  # noqa: E402
from skkprior.datasets import load_animal_mnist, load_mnist, pretrained_mnist_cnn, subsample_per_class  # noqa: E402
from skkprior.metrics import evaluate  # noqa: E402


def main() -> None:
    n_source, seeds, n_test, n_samples = (int(a) for a in (sys.argv[1:] + ["10000", "2", "500", "10"][len(sys.argv) - 1:]))
    torch.set_num_threads(1)
    wd = HYPER["weight_decay"]
    X_s, y_s, _, _ = load_mnist()
    X_s, y_s = torch.from_numpy(X_s[:n_source]), torch.from_numpy(y_s[:n_source])
    net = pretrained_mnist_cnn()
    t0 = time.perf_counter()
    priors = {}
    for compression in ("damped", "nearest"):
        p = learn_prior(net, X_s, y_s, weight_decay=wd, head="classifier.2", compression=compression,
                        scaling="pac-bayes", generator=torch.Generator().manual_seed(0), progress=False)
        priors[f"learned, calibrated ({compression})"] = p
    cal = priors["learned, calibrated (damped)"].metadata["calibration"]
    print(json.dumps({"calibration": {k: cal[k] for k in ("prior_scale", "likelihood_scale", "temperature")},
                      "C": cal["catoni_C"], "seconds": round(time.perf_counter() - t0, 1)}), flush=True)
    priors["learned, fixed (damped)"] = mnist_prior(weight_decay=wd, compression="damped")
    priors["isotropic, learned mean"] = mnist_prior(weight_decay=wd, kind="isotropic")
    priors["isotropic, zero mean"] = None
    X_tr, y_tr, X_te, y_te = load_animal_mnist()
    keep = np.sort(np.random.default_rng(0).choice(len(y_te), n_test, replace=False))
    X_te, y_te = X_te[keep], y_te[keep]
    for seed in range(seeds):
        X, y = subsample_per_class(X_tr, y_tr, 10, random_state=seed)
        for name, prior in priors.items():
            t = time.perf_counter()
            clf = make_classifier(prior, len(y), n_samples=n_samples, device="cpu", seed=seed)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                clf.fit(X, y)
            m = evaluate(clf.predict_proba(X_te), y_te)
            print(json.dumps({"seed": seed, "prior": name, "accuracy": round(m["accuracy"], 4),
                              "nll": round(m["nll"], 4), "ece": round(m["ece"], 4),
                              "seconds": round(time.perf_counter() - t, 1)}), flush=True)


if __name__ == "__main__":
    main()
