"""Benchmark: a K-FAC / K-FOC curvature pass over a data set, relative to one training epoch.

For an MLP and the pretrained MNIST CNN of docs/data.md (Conv(1,32,3,pad 1)-ReLU-MaxPool2-Conv(32,64,3,pad 1)-
ReLU-MaxPool2-Flatten-Linear(3136,128)-ReLU-Linear(128,10)) on 10,000 images, time

- one training epoch: forward, backward and an SGD step per mini-batch (same model, data,
  batch size and device);
- our curvature pass: ``kfac`` with the Monte-Carlo Fisher (the paper's choice) and the exact
  Fisher (one backward per class), and ``kfoc`` with the Monte-Carlo Fisher;
- when ``laplace-torch`` is importable: its ``KronLaplace.fit`` on the same model and data, with
  its default exact GGN (curvlinops, type-2) and its Monte-Carlo Fisher (``stochastic=True``).

The real MNIST digits and the pretrained CNN come from ``skkprior.datasets`` when that module
and the data exist; otherwise random 28x28 inputs and random weights stand in (timings do not
depend on the values). Data sit on the device before timing; each timing is the minimum of
``--repeats`` runs after one warm-up run.

Usage::

    python benchmarks/curvature.py               # device "auto": CUDA when present
    python benchmarks/curvature.py --device cpu --quick

Writes ``benchmarks/results/curvature.json`` and ``.md`` (``--out`` changes the stem).
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import logging
import platform
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, command, sync, timed, write_result  # noqa: E402

from skkprior.curvature import kfac, kfoc  # noqa: E402

logger = logging.getLogger("benchmarks.curvature")


class MnistCNN(nn.Module):
    """The pretrained MNIST CNN (docs/data.md), with the state-dict keys ``features.*`` / ``classifier.*``."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Linear(3136, 128), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(),
                         nn.Linear(256, 10))


def load_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, nn.Module, str]:
    """Images ``(n, 1, 28, 28)``, labels, the CNN, and a description of where they came from."""
    try:
        from skkprior.datasets import load_mnist, pretrained_mnist_cnn  # type: ignore[attr-defined]

        X, y = load_mnist()[:2]
        X = torch.as_tensor(X, dtype=torch.float32).reshape(-1, 1, 28, 28)[:n]
        y = torch.as_tensor(y, dtype=torch.long).reshape(-1)[:n]
        cnn = pretrained_mnist_cnn()
        if X.shape[0] < n:
            raise ValueError(f"only {X.shape[0]} images")
        return X, y, cnn, "MNIST (skkprior.datasets) and the pretrained CNN"
    except Exception as exc:  # noqa: BLE001 - any failure falls back to random data
        logger.info("real data unavailable (%s: %s); using random inputs", type(exc).__name__, exc)
    g = torch.Generator().manual_seed(seed)
    X = torch.rand(n, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    torch.manual_seed(seed)
    return X, y, MnistCNN(), "random 28x28 inputs, random weights"


def epoch(model: nn.Module, X: torch.Tensor, y: torch.Tensor, batch_size: int) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    model.train()
    for start in range(0, X.shape[0], batch_size):
        xb, yb = X[start:start + batch_size], y[start:start + batch_size]
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(xb), yb).backward()
        opt.step()


def laplace_fit(model: nn.Module, X: torch.Tensor, y: torch.Tensor, batch_size: int, stochastic: bool) -> None:
    from laplace import KronLaplace
    from torch.utils.data import DataLoader, TensorDataset

    la = KronLaplace(model, "classification", backend_kwargs={"stochastic": stochastic} if stochastic else None)
    la.fit(DataLoader(TensorDataset(X, y), batch_size=batch_size))


def bench_model(name: str, model: nn.Module, X: torch.Tensor, y: torch.Tensor, *, batch_size: int,
                device: torch.device, repeats: int, with_laplace: bool) -> dict[str, Any]:
    model = model.to(device)
    train_copy = copy.deepcopy(model)
    gen = torch.Generator(device=device).manual_seed(0)
    row: dict[str, Any] = {"model": name, "parameters": sum(p.numel() for p in model.parameters())}
    row["epoch_s"] = timed(lambda: epoch(train_copy, X, y, batch_size), device, repeats, warm_up=True, reduce=min)
    passes = {
        "kfac_mc": lambda: kfac(model, X, y, fisher="mc", batch_size=batch_size, generator=gen, progress=False),
        "kfac_exact": lambda: kfac(model, X, y, fisher="exact", batch_size=batch_size, progress=False),
        "kfoc_mc": lambda: kfoc(model, X, y, fisher="mc", batch_size=batch_size, generator=gen, progress=False),
    }
    for key, fn in passes.items():
        row[f"{key}_s"] = timed(fn, device, repeats, warm_up=True, reduce=min)
        row[f"{key}_per_epoch"] = row[f"{key}_s"] / row["epoch_s"]
        logger.info("%s %s: %.3f s (%.2fx an epoch)", name, key, row[f"{key}_s"], row[f"{key}_per_epoch"])
    if with_laplace:
        for key, stochastic, ours in (("laplace_exact", False, "kfac_exact"), ("laplace_mc", True, "kfac_mc")):
            try:
                row[f"{key}_s"] = timed(lambda: laplace_fit(model, X, y, batch_size, stochastic), device, repeats,
                                            warm_up=True, reduce=min)
                row[f"{ours}_per_{key}"] = row[f"{ours}_s"] / row[f"{key}_s"]
            except Exception as exc:  # noqa: BLE001 - report, do not fail the benchmark
                row[f"{key}_error"] = f"{type(exc).__name__}: {exc}"[:300]
    return row


def write_profile(path: Path, model: nn.Module, X: torch.Tensor, y: torch.Tensor, batch_size: int,
                  device: torch.device) -> None:
    """torch.profiler tables (top operators by self time) of one K-FAC pass and one epoch."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    train_copy = copy.deepcopy(model)
    jobs = {"kfac_mc": lambda: kfac(model, X, y, fisher="mc", batch_size=batch_size, progress=False),
            "epoch": lambda: epoch(train_copy, X, y, batch_size)}
    text = []
    for name, fn in jobs.items():
        fn()
        sync(device)
        with profile(activities=activities) as prof:
            fn()
            sync(device)
        text.append(f"== {name}\n" + prof.key_averages().table(sort_by=sort, row_limit=30))
        text.append(f"== {name} by CPU time\n" + prof.key_averages().table(sort_by="self_cpu_time_total",
                                                                          row_limit=30))
    path.write_text("\n".join(text))


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "## Curvature pass vs one training epoch",
        "",
        f"Reproduce: `{result['command']}`",
        "",
        f"Device: {result['device_name']}; torch {result['torch']}; {result['n']} images, batch size "
        f"{result['batch_size']}; data: {result['data']}; minimum of {result['repeats']} runs after a warm-up.",
        "",
        "| model | epoch (s) | kfac mc (s) | x epoch | kfac exact (s) | x epoch | kfoc mc (s) | x epoch "
        "| laplace-torch exact (s) | ours / theirs | laplace-torch mc (s) | ours / theirs |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def fmt(row: dict[str, Any], key: str, digits: int = 3) -> str:
        value = row.get(key)
        return "n/a" if value is None else f"{value:.{digits}f}"

    for row in result["rows"]:
        lines.append(
            f"| {row['model']} | {fmt(row, 'epoch_s')} | {fmt(row, 'kfac_mc_s')} | {fmt(row, 'kfac_mc_per_epoch', 2)} "
            f"| {fmt(row, 'kfac_exact_s')} | {fmt(row, 'kfac_exact_per_epoch', 2)} | {fmt(row, 'kfoc_mc_s')} "
            f"| {fmt(row, 'kfoc_mc_per_epoch', 2)} | {fmt(row, 'laplace_exact_s')} "
            f"| {fmt(row, 'kfac_exact_per_laplace_exact', 2)} | {fmt(row, 'laplace_mc_s')} "
            f"| {fmt(row, 'kfac_mc_per_laplace_mc', 2)} |")
    lines += ["", "Target: kfac mc at most 1.3x an epoch, and faster than laplace-torch (ours / theirs < 1).", ""]
    for row in result["rows"]:
        for key in ("laplace_exact_error", "laplace_mc_error"):
            if key in row:
                lines.append(f"- {row['model']} {key}: {row[key]}")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python benchmarks/curvature.py", description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda', ...")
    parser.add_argument("--quick", action="store_true", help="1,000 images, one timed run")
    parser.add_argument("--n", type=int, default=10_000, help="number of images")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads on CPU")
    parser.add_argument("--no-laplace", action="store_true", help="skip laplace-torch even if importable")
    parser.add_argument("--out", default=str(RESULTS / "curvature"), help="output path without suffix")
    parser.add_argument("--profile", default=None, help="write torch.profiler tables of the CNN pass and epoch here")
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    n = 1_000 if args.quick else args.n
    repeats = 1 if args.quick else args.repeats
    with_laplace = not args.no_laplace and importlib.util.find_spec("laplace") is not None
    X, y, cnn, source = load_data(n, seed=0)
    X, y = X.to(device), y.to(device)
    torch.manual_seed(0)
    rows = [
        bench_model("MLP 784-512-256-10", mlp(), X, y, batch_size=args.batch_size, device=device,
                    repeats=repeats, with_laplace=with_laplace),
        bench_model("MNIST CNN (docs/data.md)", cnn, X, y, batch_size=args.batch_size, device=device,
                    repeats=repeats, with_laplace=with_laplace),
    ]
    if args.profile:
        write_profile(Path(args.profile), cnn.to(device), X, y, args.batch_size, device)
    result = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
        else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "torch": torch.__version__, "n": n, "batch_size": args.batch_size, "repeats": repeats,
        "data": source, "laplace_torch": with_laplace, "rows": rows, "command": command("curvature.py", argv),
    }
    md = markdown(result)
    write_result(Path(args.out), result, md)
    sys.stdout.write(md)
    return result


if __name__ == "__main__":
    main()
