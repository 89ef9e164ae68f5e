"""Bayesian Progressive Neural Networks against the posterior chain and independent networks.

Two task-incremental streams (split Fashion-MNIST; MNIST -> Fashion-MNIST -> Animal-MNIST) with
few training examples per class: ``ProgressivePriorClassifier`` with the learned and with the
isotropic prior, the posterior chain (``partial_fit``), and one network per task. Accuracy, ECE
and forgetting per task; the progressive network's predictions are checked to be unchanged.

Run::

    python examples/progressive.py --quick                    # a small CNN pretrained here, CPU
    python examples/progressive.py --device cuda              # the pretrained MNIST CNN, 10 and 100 per class

Settings: ``QUICK`` / ``FULL`` below (``--set KEY=VALUE``). Results:
``examples/results/progressive*``; measurements and discussion: ``docs/examples/progressive.md``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from _shared import config, example_parser, mean_std, mnist_prior, parse_args, save_results
from skkprior import KroneckerPriorClassifier, learn_prior
from skkprior.datasets import (
    MnistCNN,
    Task,
    dataset_sequence,
    load_fashion_mnist,
    load_mnist,
    split_tasks,
    subsample_per_class,
)
from skkprior.metrics import ece, forgetting, nll
from skkprior.progressive import ProgressivePriorClassifier

log = logging.getLogger("examples.progressive")

WEIGHT_DECAY = 1.0
HEAD = "classifier.2"
METHODS = ("progressive, learned prior", "progressive, isotropic prior", "posterior chain",
           "posterior chain, PAC-Bayes scales", "independent networks")
# Optimizer steps per task: a learned prior is a stiff quadratic (its precision carries the source
# data's curvature), and Adam needs more steps to settle under it than under an isotropic prior
# (measured on split Fashion-MNIST, 10 per class: 40 steps left the learned-prior columns at
# 0.84 average accuracy, 150 steps gave 0.97).
STEPS = 150
NAME = "progressive"
# n_per_class: training examples per class (one run each); n_test: test images per task; n_samples:
# posterior draws of the predictive; streams: "split" (Fashion-MNIST) and/or "sequence" (MNIST -> Fashion -> Animal)
FULL = dict(n_per_class=(10, 100), n_test=2000, n_samples=50, streams=("split", "sequence"), seeds=1)
QUICK = dict(n_per_class=(10,), n_test=200, n_samples=10, streams=("split", "sequence"), seeds=1)


def build_parser():
    return example_parser(NAME, __doc__, FULL)


class SmallCNN(nn.Module):
    """The quick mode's network: MnistCNN's layout at a quarter of the width (MNIST-normalized input)."""

    def __init__(self, n_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Linear(16 * 7 * 7, 32), nn.ReLU(), nn.Linear(32, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - MnistCNN.MEAN) / MnistCNN.STD
        return self.classifier(torch.flatten(self.features(x), 1))


def pretrain_small_cnn(device: str, epochs: int = 3) -> SmallCNN:
    """SmallCNN trained on the MNIST training split (a stand-in for the pretrained MnistCNN)."""
    X, y, X_test, y_test = load_mnist()
    torch.manual_seed(0)
    net = SmallCNN().to(device)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    Xt, yt = torch.from_numpy(X).to(device), torch.from_numpy(y).to(device)
    gen = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        for idx in torch.randperm(len(yt), generator=gen).split(128):
            opt.zero_grad()
            nn.functional.cross_entropy(net(Xt[idx]), yt[idx]).backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        acc = (net(torch.from_numpy(X_test).to(device)).argmax(1).cpu().numpy() == y_test).mean()
    log.info("SmallCNN on MNIST: test accuracy %.4f", acc)
    return net


def source(args: Any) -> tuple[type[nn.Module], Any, Any, dict[str, Any]]:
    """The network class, the learned prior and the isotropic prior with learned mean."""
    if args.quick:
        net = pretrain_small_cnn(args.device)
        X, y, _, _ = load_mnist()
        learned = learn_prior(net, torch.from_numpy(X), torch.from_numpy(y), head=HEAD, weight_decay=WEIGHT_DECAY,
                              device=args.device, generator=torch.Generator(device=args.device).manual_seed(0),
                              progress=False)
        iso = learn_prior(net, None, kind="isotropic", head=HEAD, weight_decay=WEIGHT_DECAY)
        return SmallCNN, learned, iso, {"network": "SmallCNN pretrained here on MNIST (8,000 images, 3 epochs)"}
    learned = mnist_prior(weight_decay=WEIGHT_DECAY, device=args.device)
    iso = mnist_prior(weight_decay=WEIGHT_DECAY, kind="isotropic", device=args.device)
    return MnistCNN, learned, iso, {"network": "MnistCNN, pretrained (ccexam) on MNIST"}


def streams(names: Any) -> dict[str, list[Task]]:
    out = {}
    if "split" in names:
        out["split Fashion-MNIST"] = split_tasks(*load_fashion_mnist(), class_groups=5, relabel=True)
    if "sequence" in names:
        out["MNIST -> Fashion -> Animal"] = dataset_sequence()
    return out


def test_subset(task: Task, n_max: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.permutation(len(task.y_test))[:n_max])
    return task.X_test[keep], task.y_test[keep]


def scores(proba: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    return float((proba.argmax(1) == y).mean()), ece(proba, y), nll(proba, y)


def run_method(method: str, tasks: list[Task], train: list[tuple[np.ndarray, np.ndarray]],
               test: list[tuple[np.ndarray, np.ndarray]], net_class: type[nn.Module], priors: dict[str, Any],
               common: dict[str, Any]) -> dict[str, Any]:
    """Learn the stream with one method; the accuracy matrix and final per-task ECE / NLL."""
    T = len(tasks)
    acc = np.full((T, T), np.nan)
    final: list[tuple[float, float, float]] = [None] * T  # type: ignore[list-item]
    start = time.perf_counter()
    if method.startswith("progressive"):
        prior = priors["learned" if "learned" in method else "isotropic"]
        clf = ProgressivePriorClassifier(net_class, prior=prior, **common)
        right_after = []
        for i, (task, (X, y)) in enumerate(zip(tasks, train)):
            clf.partial_fit(X, y, task=task.name)
            proba = clf.predict_proba(test[i][0], task=task.name)
            right_after.append(proba)
            acc[i, i] = scores(proba, test[i][1])[0]
        for j, task in enumerate(tasks):  # after the last task: bitwise the same predictions
            proba = clf.predict_proba(test[j][0], task=task.name)
            assert np.array_equal(proba, right_after[j]), f"{method} changed its predictions of {task.name}"
            acc[j:, j] = acc[j, j]
            final[j] = scores(proba, test[j][1])
        kl = clf.kl_
    elif method.startswith("posterior chain"):
        # one head over the labels of the whole stream (task.classes[y] is a task's original label)
        scaling = "pac-bayes" if "PAC-Bayes" in method else common.get("scaling", "validation")
        clf = KroneckerPriorClassifier(net_class, prior=priors["learned"], **{**common, "scaling": scaling})
        labels = np.unique(np.concatenate([t.classes for t in tasks]))
        for i, (task, (X, y)) in enumerate(zip(tasks, train)):
            clf.partial_fit(X, task.classes[y], classes=labels if i == 0 else None)
            for j in range(i + 1):
                cols = np.searchsorted(clf.classes_, tasks[j].classes)
                proba = clf.predict_proba(test[j][0])[:, cols]
                proba = proba / proba.sum(1, keepdims=True)
                acc[i, j] = scores(proba, test[j][1])[0]
                if i == T - 1:
                    final[j] = scores(proba, test[j][1])
        kl = None
    else:
        for i, (task, (X, y)) in enumerate(zip(tasks, train)):
            clf = KroneckerPriorClassifier(net_class, prior=priors["learned"], **common).fit(X, y)
            proba = clf.predict_proba(test[i][0])
            acc[i:, i] = scores(proba, test[i][1])[0]
            final[i] = scores(proba, test[i][1])
        kl = None
    return {"acc": acc, "final": final, "seconds": time.perf_counter() - start, "kl": kl}


def run(args: Any) -> dict[str, Any]:
    cfg = config(args, QUICK, FULL)
    n_per_class, n_seeds, n_test = cfg["n_per_class"], cfg["seeds"], cfg["n_test"]
    batch_size = 32
    common = dict(lr=1e-3, batch_size=batch_size, n_samples=cfg["n_samples"],
                  weight_decay=WEIGHT_DECAY, device=args.device)
    begin = time.perf_counter()
    net_class, learned, iso, info = source(args)
    priors = {"learned": learned, "isotropic": iso}
    log.info("source ready in %.1f s", time.perf_counter() - begin)
    rows: list[dict[str, Any]] = []
    raw: list[dict[str, Any]] = []
    for stream_name, tasks in streams(cfg["streams"]).items():
        for n in n_per_class:
            per_method: dict[str, list[dict[str, Any]]] = {m: [] for m in METHODS}
            n_train = n * len(tasks[0].classes)
            epochs = max(10, -(-STEPS // -(-n_train // batch_size)))
            for seed in range(n_seeds):
                train = [subsample_per_class(t.X_train, t.y_train, n, random_state=seed) for t in tasks]
                test = [test_subset(t, n_test, seed) for t in tasks]
                for method in METHODS:
                    result = run_method(method, tasks, train, test, net_class, priors,
                                        {**common, "max_epochs": epochs, "random_state": seed})
                    per_method[method].append(result)
                    log.info("%s, n=%d, seed %d, %s: %.1f s", stream_name, n, seed, method, result["seconds"])
                    raw.append({"stream": stream_name, "n_per_class": n, "seed": seed, "method": method,
                                "acc_matrix": result["acc"].tolist(),
                                "final": [list(f) for f in result["final"]], "kl": result["kl"],
                                "seconds": result["seconds"]})
            for method, results in per_method.items():
                final_acc = np.array([[f[0] for f in r["final"]] for r in results])
                final_ece = np.array([[f[1] for f in r["final"]] for r in results])
                avg_acc, avg_acc_sd = mean_std(final_acc.mean(1))
                rows.append({
                    "stream": stream_name, "n/class": n, "method": method,
                    "avg acc": avg_acc, "sd": avg_acc_sd,
                    "later acc": float(final_acc[:, 1:].mean()),
                    "avg ECE": float(final_ece.mean()),
                    "forgetting": float(np.mean([forgetting(r["acc"]) for r in results])),
                    "acc per task": " / ".join(f"{a:.3f}" for a in final_acc.mean(0)),
                    "ECE per task": " / ".join(f"{e:.3f}" for e in final_ece.mean(0)),
                    "s": float(np.mean([r["seconds"] for r in results])),
                })
    total = time.perf_counter() - begin
    save_results(NAME, rows, args, extra={"config": cfg, "runs": raw, "seeds": n_seeds, "n_test": n_test, "steps": STEPS,
                                                    "common": {k: str(v) for k, v in common.items()},
                                                    "total_seconds": total, **info})
    log.info("total %.1f s", total)
    for row in rows:  # the progressive network learns every task and forgets nothing
        if row["method"].startswith("progressive"):
            chance = 0.5 if row["stream"].startswith("split") else 0.1
            assert row["avg acc"] > chance + 0.1, row
            assert row["forgetting"] == 0.0, row
    return {"rows": rows, "runs": raw}


if __name__ == "__main__":
    run(parse_args(build_parser()))
