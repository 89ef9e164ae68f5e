"""Continual learning: the posterior of each task becomes the prior of the next (online Laplace chain).

``KroneckerPriorClassifier.partial_fit`` task after task on permuted Fashion-MNIST and on MNIST ->
Fashion-MNIST -> Animal-MNIST (one 10-way head), started from the learned MNIST prior or the
isotropic prior with the learned mean, against plain fine-tuning: the accuracy matrix, average
accuracy, forgetting and ECE per task.

Run::

    python examples/continual.py --quick --device cpu --threads 1    # subsets, minutes on a CPU
    python examples/continual.py --device cuda                       # full size
    python examples/continual.py --quick --set streams=permuted_fashion --set n_perm_tasks=2

Settings: ``QUICK`` / ``FULL`` below (``--set KEY=VALUE``). Results:
``examples/results/continual*``; measurements and discussion: ``docs/examples/continual.md``.
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _shared  # noqa: E402
from _shared import append_jsonl, mnist_prior, progress_file, save_figure, save_results  # noqa: E402
from skkprior import KroneckerPriorClassifier  # noqa: E402
from skkprior.datasets import (  # noqa: E402
    MnistCNN,
    Task,
    load_animal_mnist,
    load_fashion_mnist,
    load_mnist,
    permuted_tasks,
    pretrained_mnist_cnn,
    subsample_per_class,
)
from skkprior.metrics import average_accuracy, evaluate, forgetting  # noqa: E402

log = logging.getLogger("continual")

WEIGHT_DECAY = 1.0
N_SOURCE = 4000  # the MNIST prior is learned on the first 4,000 MNIST training images; the MNIST task uses the rest

NAME = "continual"
STREAMS = ("permuted_fashion", "mnist_fashion_animal")
FULL = dict(n_perm_tasks=5, perm_per_class=1000, seq_per_class=400, n_test=2000, max_epochs=5,
            batch_size=128, lr=1e-3, n_samples=30, methods=("learned", "isotropic", "finetune"), streams=STREAMS,
            seed=0)
QUICK = dict(n_perm_tasks=3, perm_per_class=100, seq_per_class=100, n_test=500, max_epochs=2,
             batch_size=64, lr=1e-3, n_samples=10, methods=("learned", "isotropic", "finetune"), streams=STREAMS,
             seed=0)


def build_parser():
    return _shared.example_parser(NAME, __doc__, FULL)

METHOD_LABELS = {"learned": "Laplace chain, learned MNIST prior",
                 "isotropic": "Laplace chain, isotropic prior (learned mean)",
                 "finetune": "fine-tuning (no prior term)"}


def _subsample(task: Task, per_class: int | None, n_test: int | None, seed: int) -> Task:
    X, y = task.X_train, task.y_train
    if per_class is not None:
        per_class = min(per_class, int(np.bincount(y).min()))
        X, y = subsample_per_class(X, y, per_class, random_state=seed)
    Xt, yt = task.X_test, task.y_test
    if n_test is not None and n_test < len(yt):
        rng = np.random.default_rng(seed)
        keep = np.sort(rng.permutation(len(yt))[:n_test])
        Xt, yt = Xt[keep], yt[keep]
    return Task(task.name, X, y, Xt, yt, task.classes, task.permutation)


def permuted_fashion(cfg: dict, seed: int) -> list[Task]:
    tasks = permuted_tasks(*load_fashion_mnist(), n_tasks=cfg["n_perm_tasks"], random_state=seed)
    return [_subsample(t, cfg["perm_per_class"], cfg["n_test"], seed + i) for i, t in enumerate(tasks)]


def dataset_stream(cfg: dict, seed: int) -> list[Task]:
    Xm, ym, Xmt, ymt = load_mnist()
    mnist = Task("mnist", Xm[N_SOURCE:], ym[N_SOURCE:], Xmt, ymt, np.arange(10))
    fashion = Task("fashion_mnist", *load_fashion_mnist(), classes=np.arange(10))
    animal = Task("animal_mnist", *load_animal_mnist(), classes=np.arange(10))
    return [_subsample(t, cfg["seq_per_class"], cfg["n_test"], seed + i)
            for i, t in enumerate((mnist, fashion, animal))]


class _FineTuner:
    """Plain fine-tuning: the same network, Adam, learning rate, batches and epochs, no prior term."""

    def __init__(self, cfg: dict, device: str, seed: int) -> None:
        self.cfg, self.device, self.seed = cfg, torch.device(device), seed
        torch.manual_seed(seed)
        net = MnistCNN(10)
        head = copy.deepcopy(net.classifier[2].state_dict())
        net.load_state_dict(pretrained_mnist_cnn().state_dict())
        net.classifier[2].load_state_dict(head)  # a fresh head, like the chains' (their head prior has mean zero)
        self.net = net.to(self.device)
        self.n_tasks = 0

    def partial_fit(self, X: np.ndarray, y: np.ndarray) -> "_FineTuner":
        gen = torch.Generator().manual_seed(self.seed + 7919 * self.n_tasks)
        opt = torch.optim.Adam(self.net.parameters(), lr=self.cfg["lr"])
        Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
        bs = self.cfg["batch_size"]
        self.net.train()
        for _ in range(self.cfg["max_epochs"]):
            order = torch.randperm(len(yt), generator=gen)
            for i in range(0, len(yt), bs):
                idx = order[i:i + bs]
                opt.zero_grad()
                loss = nn.functional.cross_entropy(self.net(Xt[idx].to(self.device)), yt[idx].to(self.device))
                loss.backward()
                opt.step()
        self.net.eval()
        self.n_tasks += 1
        return self

    @torch.no_grad()
    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        out = [torch.softmax(self.net(torch.from_numpy(X[i:i + 512]).to(self.device)), 1).double().cpu()
               for i in range(0, len(X), 512)]
        return torch.cat(out).numpy()


def _learner(method: str, cfg: dict, device: str, seed: int) -> Any:
    if method == "finetune":
        return _FineTuner(cfg, device, seed)
    kind = "kronecker" if method == "learned" else "isotropic"
    prior = mnist_prior(weight_decay=WEIGHT_DECAY, kind=kind, n_source=N_SOURCE, device=device)
    return KroneckerPriorClassifier(MnistCNN, prior=prior, weight_decay=WEIGHT_DECAY, scaling="fixed",
                                    predictive="map", max_epochs=cfg["max_epochs"],
                                    batch_size=cfg["batch_size"], lr=cfg["lr"], n_samples=cfg["n_samples"],
                                    device=device, random_state=seed)


def run_stream(tasks: list[Task], method: str, cfg: dict, device: str, seed: int) -> dict:
    learner = _learner(method, cfg, device, seed)
    T = len(tasks)
    acc = np.full((T, T), np.nan)
    ece = np.full((T, T), np.nan)
    nll = np.full((T, T), np.nan)
    start = time.perf_counter()
    for i, task in enumerate(tasks):
        if method == "finetune":
            learner.partial_fit(task.X_train, task.y_train)
        else:
            learner.partial_fit(task.X_train, task.y_train, classes=np.arange(10) if i == 0 else None)
        for j in range(i + 1):
            res = evaluate(learner.predict_proba(tasks[j].X_test), tasks[j].y_test)
            acc[i, j], ece[i, j], nll[i, j] = res["accuracy"], res["ece"], res["nll"]
        log.info("%s after %s: %s", method, task.name, np.round(acc[i, :i + 1], 3).tolist())
    return {"acc": acc, "ece": ece, "nll": nll, "average_accuracy": average_accuracy(acc),
            "forgetting": forgetting(acc), "seconds": time.perf_counter() - start}


def run(args: argparse.Namespace) -> dict:
    cfg = _shared.config(args, QUICK, FULL)
    seed = int(cfg["seed"])
    builders = {"permuted_fashion": permuted_fashion, "mnist_fashion_animal": dataset_stream}
    streams = {k: build(cfg, seed) for k, build in builders.items() if k in cfg["streams"]}
    rows, results = [], {}
    progress = progress_file(NAME, args)  # each finished stream x method, as it ends
    for stream, tasks in streams.items():
        for method in cfg["methods"]:
            res = run_stream(tasks, method, cfg, args.device, seed)
            results[(stream, method)] = res
            row = {"stream": stream, "method": METHOD_LABELS[method], "avg_acc": res["average_accuracy"],
                   "forgetting": res["forgetting"]}
            row["final acc per task"] = " / ".join(f"{a:.3f}" for a in res["acc"][-1])
            row["final ECE per task"] = " / ".join(f"{e:.3f}" for e in res["ece"][-1])
            row["seconds"] = res["seconds"]
            log.info("%s", row)
            log.info("acc matrix\n%s", np.round(res["acc"], 3))
            rows.append(row)
            append_jsonl(progress, {**row, "acc": res["acc"].tolist(), "ece": res["ece"].tolist()})
    table = save_results(NAME, rows, args, extra={
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
        "matrices": {f"{s}/{m}": {"acc": r["acc"].tolist(), "ece": r["ece"].tolist()}
                     for (s, m), r in results.items()}})
    _plot(results, args)
    _check(results)
    return {"rows": rows, "results": results, "table": table}


def _check(results: dict) -> None:
    """The claims, with thresholds from the measured runs (see docs/examples/continual.md)."""
    for (stream, method), res in results.items():
        assert np.isfinite(res["acc"][np.tril_indices(len(res["acc"]))]).all()
        if method == "learned" and (stream, "finetune") in results:
            ft = results[(stream, "finetune")]
            # the chain forgets less than fine-tuning
            assert res["forgetting"] < ft["forgetting"], (stream, res["forgetting"], ft["forgetting"])


def _plot(results: dict, args: argparse.Namespace) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        return
    streams = sorted({s for s, _ in results})
    fig, axes = plt.subplots(1, len(streams), figsize=(6 * len(streams), 4), squeeze=False)
    for ax, stream in zip(axes[0], streams):
        for (s, method), res in results.items():
            if s != stream:
                continue
            acc = res["acc"]
            T = len(acc)
            line, = ax.plot(range(T), [np.mean(acc[i, :i + 1]) for i in range(T)], marker="o",
                            label=f"{METHOD_LABELS[method]}: mean over seen tasks")
            ax.plot(range(T), acc[:, 0], ls="--", color=line.get_color(), label=f"{method}: task 0")
        ax.set_xticks(range(max(len(res["acc"]) for (s, _), res in results.items() if s == stream)))
        ax.set_xlabel("after task")
        ax.set_ylabel("test accuracy")
        ax.set_title(stream)
        ax.legend(fontsize=6)
    save_figure(fig, NAME, args)


if __name__ == "__main__":
    run(_shared.parse_args(build_parser()))
