"""scaling="cv" against scaling="validation" on 10-shot Animal-MNIST (issue 12).

The MNIST CNN's learned prior (the few-shot example's: damped, delta = 1e-2, head
``classifier.2``, all 60,000 MNIST images; learned afresh, so it holds its source factors and
``scaling="cv"`` also scores its source weight) with the few-shot example's estimator
settings, once with the validation grid and once with 5-fold cross-validation. Run:
``python scripts/experiments/cv_scaling_few_shot.py [seed] [n_test] [n_samples] [priors]``
(defaults 0 1000 30 learned; ``priors`` a comma list of learned, iso-mean, zero; one JSON line
per fit).
"""

import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
from few_shot_transfer import HYPER, make_classifier  # noqa: E402

from _shared import mnist_prior  # noqa: E402
from skkprior.datasets import load_animal_mnist, subsample_per_class  # noqa: E402
from skkprior.metrics import evaluate  # noqa: E402


def main() -> None:
    args = sys.argv[1:] + ["0", "1000", "30", "learned"][len(sys.argv) - 1:]
    seed, n_test, n_samples = int(args[0]), int(args[1]), int(args[2])
    wd = HYPER["weight_decay"]
    t0 = time.perf_counter()
    priors = {}
    for name in args[3].split(","):
        if name == "learned":
            priors[name] = mnist_prior(weight_decay=wd, compression="damped", cache=False)
        elif name == "iso-mean":
            priors[name] = mnist_prior(weight_decay=wd, kind="isotropic", cache=False)
        else:
            priors[name] = None
    print(json.dumps({"prior_seconds": round(time.perf_counter() - t0, 1)}), flush=True)
    X_train, y_train, X_test, y_test = load_animal_mnist()
    keep = np.sort(np.random.default_rng(0).choice(len(y_test), n_test, replace=False))
    X_test, y_test = X_test[keep], y_test[keep]
    X, y = subsample_per_class(X_train, y_train, 10, random_state=seed)
    for name, prior in priors.items():
        for scaling in ("validation", "cv"):
            t1 = time.perf_counter()
            clf = make_classifier(prior, len(y), n_samples=n_samples, device="cpu", seed=seed)
            clf.set_params(scaling=scaling)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                clf.fit(X, y)
            scores = evaluate(clf.predict_proba(X_test), y_test)
            row = {"prior": name, "scaling": scaling, "seed": seed, "n_test": n_test, "n_samples": n_samples,
                   "accuracy": round(float(scores["accuracy"]), 4), "nll": round(float(scores["nll"]), 4),
                   "ece": round(float(scores["ece"]), 4), "seconds": round(time.perf_counter() - t1, 1)}
            if scaling == "cv":
                row["chosen"] = clf.scales_
            else:
                row["chosen"] = {"prior_scale": float(clf.posterior_.prior_scale[next(iter(clf.posterior_.groups))]),
                                 "temperature": float(clf.posterior_.temperature[next(iter(clf.posterior_.groups))])}
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
