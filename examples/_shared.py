"""Helpers shared by the examples: command line, the cached MNIST prior, tables and results.

Not part of the library; each example imports it as ``from _shared import ...`` (the examples
folder is on ``sys.path`` when an example runs as a script).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

import skkprior
from skkprior import KroneckerPrior, learn_prior
from skkprior.datasets import cache_home, data_home, load_mnist, pretrained_mnist_cnn

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(description: str, extra: Sequence[tuple[str, dict[str, Any]]] = ()) -> argparse.Namespace:
    """``--device`` (auto), ``--quick`` (the scaled-down run the tests use), ``--seeds``, ``--out``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--quick", action="store_true", help="scaled-down run (minutes on a 2-core CPU)")
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds (default per example)")
    parser.add_argument("--out", default=str(RESULTS), help="folder for the JSON, markdown table and PNG")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    for name, kwargs in extra:
        parser.add_argument(name, **kwargs)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    return args


def prior_path(*, weight_decay: float, kind: str = "kronecker", n_source: int | None = None,
               fisher: str = "mc", compression: str = "nearest") -> Path:
    """Where :func:`mnist_prior` caches a prior: ``<cache home>/priors/<key>.pt``.

    The cache home is ``$SKKPRIOR_CACHE``, by default the data home
    (:func:`skkprior.datasets.cache_home`); the key names the package version, so a prior
    learned by another version of skkprior is never reused.
    """
    tag = f"mnist_{kind}_wd{weight_decay:g}_n{n_source or 'all'}_{fisher}"
    tag += "" if kind == "isotropic" else f"_{compression}"
    return cache_home() / "priors" / f"{tag}_skkprior-{skkprior.__version__}.pt"


def mnist_prior(*, weight_decay: float, kind: str = "kronecker", n_source: int | None = None,
                device: str = "cpu", fisher: str = "mc", compression: str = "nearest",
                cache: bool = True) -> KroneckerPrior:
    """The prior learned from the pretrained MNIST CNN on the MNIST training split (cached).

    The head ``classifier.2`` gets the zero-mean isotropic prior, so targets with another
    number of classes can use it. ``compression`` is :func:`skkprior.learn_prior`'s
    (``"nearest"`` or ``"damped"``). Cached in :func:`prior_path`.
    """
    path = prior_path(weight_decay=weight_decay, kind=kind, n_source=n_source, fisher=fisher,
                      compression=compression)
    if cache and path.exists():
        return KroneckerPrior.load(path, map_location=device)
    X, y, _, _ = load_mnist()
    if n_source is not None:
        X, y = X[:n_source], y[:n_source]
    net = pretrained_mnist_cnn().to(device)
    start = time.perf_counter()
    prior = learn_prior(net, torch.from_numpy(X), torch.from_numpy(y), kind=kind, fisher=fisher,
                        compression=compression, weight_decay=weight_decay, head="classifier.2", device=device,
                        generator=torch.Generator(device=device).manual_seed(0), progress=False)
    logging.getLogger("examples").info("learned %s prior in %.1f s", kind, time.perf_counter() - start)
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        prior.to("cpu").save(path)
    return prior


def machine() -> dict[str, str]:
    info = {"python": platform.python_version(), "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine(), "threads": str(torch.get_num_threads())}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A markdown table of dict rows (floats with 4 significant digits)."""
    columns = list(columns or rows[0].keys())
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def save_results(name: str, rows: Sequence[dict[str, Any]], args: argparse.Namespace,
                 extra: dict[str, Any] | None = None, columns: Sequence[str] | None = None) -> str:
    """Write ``<out>/<name>.json`` and ``<out>/<name>.md``; return (and print) the table."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = markdown_table(rows, columns)
    payload = {"example": name, "quick": bool(args.quick), "device": args.device, "machine": machine(),
               "rows": list(rows), **(extra or {})}
    suffix = "_quick" if args.quick else ""
    (out / f"{name}{suffix}.json").write_text(json.dumps(payload, indent=2, default=float))
    (out / f"{name}{suffix}.md").write_text(
        f"<!-- written by examples/{name}.py{' --quick' if args.quick else ''} on {machine()} -->\n\n{table}\n")
    print(table)
    return table


def save_figure(fig: Any, name: str, args: argparse.Namespace) -> Path:
    """Save ``fig`` as ``<out>/<name>[_quick].png``, close it and return the path."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out = Path(args.out) / f"{name}{'_quick' if args.quick else ''}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    print(f"plot: {out}")
    return out


def progress_file(name: str, args: argparse.Namespace) -> Path:
    """``<out>/<name>[_quick]_progress.jsonl``, emptied: long runs log each finished unit there.

    A run that is cut off (a time limit, a lost machine) keeps what it finished; the final JSON
    and table are written at the end as usual. Append with :func:`append_jsonl`.
    """
    path = Path(args.out) / f"{name}{'_quick' if args.quick else ''}_progress.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("")
    return path


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append ``record`` to ``path`` as one JSON line."""
    with path.open("a") as f:
        f.write(json.dumps(record, default=float) + "\n")


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    arr = np.asarray(list(values), dtype=float)
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


if __name__ == "__main__":  # pragma: no cover
    print(os.environ.get("SKKPRIOR_DATA", str(data_home())))
