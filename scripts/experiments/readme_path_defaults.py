"""The README's path with its defaults on a related few-shot target (issue 12): which defaults work.

``learn_prior(net, X, y, head="classifier.2", **variant)`` of the pretrained MNIST CNN on 5,000
MNIST training digits, then ``KroneckerPriorClassifier(net, prior=prior)`` with *every* estimator
default (30 epochs of Adam at lr 1e-2, ``weight_decay=1.0``, ``scaling="validation"``, the
Monte-Carlo predictive with 100 draws), fitted on 10 examples per class of scikit-learn's digits
upsampled to 28x28 and scored on its 450 test digits. The variants: the old default
``weight_decay=1e-4``, the new default ``1.0`` (``compression="nearest"``, ``scaling="fixed"``),
the damped compression, the isotropic prior with the learned mean; and ``prior=None``. Run from
the repository root::

    python scripts/experiments/readme_path_defaults.py --threads 2 --seeds 0,1,2 --out examples/results/readme_path_defaults.json

(``--variants``: a ``|``-separated list of the names below, default all). One JSON line per fit
on stdout (test accuracy / NLL / ECE of the predictive and the MAP's accuracy), added to the
``--out`` record. Measured results:
``docs/examples/relatedness.md``, section "The defaults".
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
import warnings
from pathlib import Path

import torch

from skkprior import KroneckerPriorClassifier, learn_prior
from skkprior.datasets import load_digits_images, load_mnist, pretrained_mnist_cnn, subsample_per_class
from skkprior.metrics import evaluate

VARIANTS = {
    "old default (weight_decay=1e-4)": {"weight_decay": 1e-4},
    "default (weight_decay=1.0, nearest, fixed)": {},
    "damped": {"compression": "damped"},
    "isotropic, learned mean": {"kind": "isotropic"},
}
ZERO = "zero mean (prior=None)"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--variants", default="all")
    ap.add_argument("--out", default=None, help="a JSON record to add the rows to")
    return ap


def main() -> None:
    a = build_parser().parse_args()
    torch.set_num_threads(a.threads)
    seeds = [int(s) for s in a.seeds.split(",")]
    names = list(VARIANTS) + [ZERO] if a.variants == "all" else a.variants.split("|")
    X_s, y_s, _, _ = load_mnist()
    X_s, y_s = torch.from_numpy(X_s[:5000]), torch.from_numpy(y_s[:5000])
    net = pretrained_mnist_cnn()
    X_pool, y_pool, X_test, y_test = load_digits_images(size=28)
    priors = {}
    for name in names:
        if name == ZERO:
            priors[name] = None
            continue
        start = time.perf_counter()
        priors[name] = learn_prior(net, X_s, y_s, head="classifier.2", progress=False,
                                   generator=torch.Generator().manual_seed(0), **VARIANTS[name])
        print(json.dumps({"prior": name, "learn_seconds": round(time.perf_counter() - start, 1)}), flush=True)
    for seed in seeds:
        X, y = subsample_per_class(X_pool, y_pool, 10, random_state=seed)
        for name, prior in priors.items():
            start = time.perf_counter()
            clf = KroneckerPriorClassifier(net, prior=prior, random_state=seed, device="cpu")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                clf.fit(X, y)
            m = evaluate(clf.predict_proba(X_test), y_test)
            with torch.no_grad():
                map_acc = float((clf.module_(torch.from_numpy(X_test)).argmax(1).numpy() == y_test).mean())
            row = {"seed": seed, "prior": name, **{k: round(v, 4) for k, v in m.items()},
                   "map_accuracy": round(map_acc, 4), "seconds": round(time.perf_counter() - start, 1)}
            print(json.dumps(row), flush=True)
            if a.out:
                out = Path(a.out)
                old = json.loads(out.read_text()) if out.is_file() else {"command": "", "rows": []}
                commands = [c for c in old["command"].split(" && ") if c]
                commands.append("python " + " ".join(shlex.quote(x) for x in sys.argv))
                out.write_text(json.dumps({"command": " && ".join(dict.fromkeys(commands)),
                                           "rows": old["rows"] + [row]}, indent=1) + "\n")


if __name__ == "__main__":
    main()
