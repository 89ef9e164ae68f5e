"""Helpers shared by the examples: command line and configuration, the cached MNIST prior, results.

Every example has the configurations ``QUICK`` and ``FULL`` (dicts), a ``build_parser()`` made by
:func:`example_parser` and a ``run(args)`` that reads its settings with :func:`config`; from Python,
:func:`make_args` gives the same ``args`` as the command line.

Not part of the library; each example imports it as ``from _shared import ...`` (the examples
folder is on ``sys.path`` when an example runs as a script).
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import os
import platform
import shlex
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

import skkprior
from skkprior import KroneckerPrior, learn_prior
from skkprior.datasets import cache_home, data_home, load_mnist, pretrained_mnist_cnn
from skkprior.gaussian import FORMAT_VERSION

RESULTS = Path(__file__).resolve().parent / "results"


def example_parser(name: str, doc: str | None, full: dict[str, Any]) -> argparse.ArgumentParser:
    """The command line of every example: ``--quick``, ``--set KEY=VALUE`` (a key of ``full``), and
    where it runs and writes (``--device``, ``--threads``, ``--out``, ``--tag``).

    ``--set`` values are Python literals (``--set "sizes=(1, 5)"``, ``--set n_test=None``); a bare word
    is a string, and a single value given for a tuple-valued setting becomes a one-element tuple.
    """
    parser = argparse.ArgumentParser(prog=f"python examples/{name}.py",
                                     description=(doc or name).strip().splitlines()[0])
    parser.set_defaults(example=name)
    parser.add_argument("--quick", action="store_true", help="scaled-down run (minutes on a 2-core CPU)")
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                        type=lambda text: _setting(text, full),
                        help=f"replace one setting of the configuration ({', '.join(full)})")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", default=str(RESULTS), help="folder for the JSON, markdown table and PNG")
    parser.add_argument("--tag", default=None, help="write the results as <name>_<tag>.* (a named variant of the run)")
    return parser


def _setting(text: str, full: dict[str, Any]) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or key not in full:
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE with KEY one of {', '.join(full)}")
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    if isinstance(full[key], tuple) and not isinstance(value, (tuple, list)) and value is not None:
        value = (value,)
    return key, value


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line; ``args.overrides`` holds the ``--set`` settings."""
    args = parser.parse_args(argv)
    args.overrides = dict(args.settings)
    del args.settings
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    return args


def make_args(example: str, *, quick: bool = True, device: str = "cpu", out: str | Path = RESULTS,
              tag: str | None = None, threads: int | None = None, **overrides: Any) -> argparse.Namespace:
    """The arguments of a run from Python (tests, ``scripts/full_runs``): as ``--set`` gives them."""
    return argparse.Namespace(example=example, quick=quick, device=device, out=str(out), tag=tag, threads=threads,
                              overrides=overrides)


def config(args: argparse.Namespace, quick: dict[str, Any], full: dict[str, Any]) -> dict[str, Any]:
    """The run's configuration: ``quick`` or ``full``, with ``args.overrides`` replacing entries."""
    unknown = set(args.overrides) - set(full)
    if unknown:
        raise ValueError(f"unknown settings {sorted(unknown)} for examples/{args.example}.py: {sorted(full)}")
    return {**(quick if args.quick else full), **args.overrides}


def command(args: argparse.Namespace) -> str:
    """The command line that reproduces a run with ``args``."""
    parts = ["python", f"examples/{args.example}.py"] + (["--quick"] if args.quick else [])
    parts += ["--device", args.device] + (["--threads", str(args.threads)] if args.threads else [])
    parts += ["--tag", args.tag] if args.tag else []
    for key, value in args.overrides.items():
        parts += ["--set", f"{key}={value!r}"]
    return shlex.join(parts)


def prior_path(*, weight_decay: float, kind: str = "kronecker", n_source: int | None = None,
               fisher: str = "mc", compression: str = "nearest") -> Path:
    """Where :func:`mnist_prior` caches a prior: ``<cache home>/priors/<key>.pt``.

    The cache home is ``$SKKPRIOR_CACHE``, by default the data home
    (:func:`skkprior.datasets.cache_home`); the key names the package version and the prior
    file format, so a prior learned by another version (or stored without what a newer format
    keeps, e.g. the source factors that :meth:`KroneckerPrior.reweighted` needs) is never reused.
    """
    tag = f"mnist_{kind}_wd{weight_decay:g}_n{n_source or 'all'}_{fisher}"
    tag += "" if kind == "isotropic" else f"_{compression}"
    return cache_home() / "priors" / f"{tag}_skkprior-{skkprior.__version__}_format{FORMAT_VERSION}.pt"


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


def _stem(name: str, args: argparse.Namespace) -> str:
    """``<name>_<tag>`` for a tagged variant, else ``<name>`` or ``<name>_quick``."""
    tag = getattr(args, "tag", None)
    return f"{name}_{tag}" if tag else name + ("_quick" if args.quick else "")


def save_results(name: str, rows: Sequence[dict[str, Any]], args: argparse.Namespace,
                 extra: dict[str, Any] | None = None, columns: Sequence[str] | None = None,
                 reproduce: str | None = None) -> str:
    """Write ``<out>/<stem>.{json,md}`` (``<name>_<tag>``, ``<name>`` or ``<name>_quick``); return the table.

    Both files name the command that reproduces them (``reproduce``, by default :func:`command`):
    the JSON under ``"command"``, the table in its first line ``Reproduce: `...```.
    """
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = markdown_table(rows, columns)
    reproduce = reproduce or command(args)
    payload = {"example": name, "command": reproduce, "quick": bool(args.quick), "device": args.device,
               "machine": machine(), "rows": list(rows), **(extra or {})}
    stem = _stem(name, args)
    (out / f"{stem}.json").write_text(json.dumps(payload, indent=2, default=float))
    (out / f"{stem}.md").write_text(f"Reproduce: `{reproduce}`\n\n<!-- machine: {machine()} -->\n\n{table}\n")
    print(table)
    return table


def save_figure(fig: Any, name: str, args: argparse.Namespace) -> Path:
    """Save ``fig`` as ``<out>/<name>[_quick].png``, close it and return the path."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out = Path(args.out) / f"{_stem(name, args)}.png"
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
    path = Path(args.out) / f"{_stem(name, args)}_progress.jsonl"
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
