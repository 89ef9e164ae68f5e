"""The Laplace evidence (scaling="marglik") against the validation grid on 10-shot Animal-MNIST.

    python scripts/experiments/marglik_few_shot.py     # about 8 minutes on a 2-core CPU

The few-shot example's setting (MnistCNN, Adam lr 1e-3, batch 64, 200 steps, delta = 1e-2,
the three priors), 300 test images, 20 posterior samples, seeds 0 and 1; prints accuracy,
NLL, ECE and the chosen alpha of each fit. The measured result is quoted in docs/concepts.md
("The evidence").
"""
import math
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "examples"), str(ROOT)]
import numpy as np  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)
from _shared import mnist_prior
from skkprior import KroneckerPriorClassifier
from skkprior.datasets import MnistCNN, load_animal_mnist, subsample_per_class
from skkprior.metrics import evaluate

Xtr, ytr, Xte, yte = load_animal_mnist()
keep = np.sort(np.random.default_rng(0).choice(len(yte), 300, replace=False)); Xte, yte = Xte[keep], yte[keep]
priors = {"learned": mnist_prior(weight_decay=1e-2, compression="damped"),
          "iso-mean": mnist_prior(weight_decay=1e-2, kind="isotropic"), "zero": None}
for seed in (0, 1):
    X, y = subsample_per_class(Xtr, ytr, 10, random_state=seed)
    for name, prior in priors.items():
        for scaling, pred in (("validation", "mc"), ("marglik", "linearized"), ("marglik", "mc")):
            t0 = time.perf_counter()
            clf = KroneckerPriorClassifier(MnistCNN, prior=prior, weight_decay=1e-2, lr=1e-3, batch_size=64,
                                           max_epochs=math.ceil(200 / 2), scaling=scaling, predictive=pred,
                                           n_samples=20, device="cpu", random_state=seed)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore"); clf.fit(X, y)
            r = evaluate(clf.predict_proba(Xte), yte)
            a = next(iter(clf.posterior_.prior_scale.values()))
            print(seed, name, scaling, pred, "acc %.3f nll %.3f ece %.3f alpha %.3g (%.0f s)" % (r["accuracy"], r["nll"], r["ece"], float(a), time.perf_counter() - t0), flush=True)
