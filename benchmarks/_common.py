"""Helpers shared by the benchmarks: timing, the machine a run is on, and writing its results.

Not part of the library; each benchmark imports it as ``from _common import ...`` (the
benchmarks folder is put on ``sys.path`` by the benchmark itself).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from skkprior._validation import check_device

RESULTS = Path(__file__).resolve().parent / "results"


def sync(device: torch.device) -> None:
    """Wait for the queued work of a CUDA device (no-op elsewhere), so a timer sees all of it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device, repeats: int = 1, *, warm_up: bool = False,
          reduce: Callable[[list[float]], float] = statistics.median) -> float:
    """Seconds of ``fn()``: ``reduce`` (median by default) over ``repeats`` synchronized runs."""
    if warm_up:
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return reduce(times)


def machine_info(device: torch.device) -> dict[str, Any]:
    """Date, versions, CPU (model name), threads, load average and GPU of the run."""
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), cpu)
    except OSError:
        pass
    info = {"date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": str(device)}
    if hasattr(os, "getloadavg"):
        info["load_average_1m_at_start"] = round(os.getloadavg()[0], 2)
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def run_key(device: torch.device, info: dict[str, Any], threads: int, quick: bool) -> str:
    """The heading of one run in a table of runs: the device, and the CPU or GPU it ran on."""
    key = device.type + (f" ({info['gpu']})" if "gpu" in info else f" ({info['cpu']}, {threads} thread(s))")
    return key + (" [quick]" if quick else "")


def command(script: str, argv: Sequence[str] | None) -> str:
    """``python benchmarks/<script> ARGS``: the command that reproduces a run (``argv`` None: this process's)."""
    return shlex.join(["python", f"benchmarks/{script}", *(sys.argv[1:] if argv is None else argv)])


def fmt_s(value: float | None) -> str:
    """Seconds for a table: ``-``, ``123 s``, ``1.23 s``, ``12.3 ms`` or ``45 us``."""
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:.0f} s"
    if value >= 1:
        return f"{value:.2f} s"
    if value >= 1e-3:
        return f"{value * 1e3:.1f} ms"
    return f"{value * 1e6:.0f} us"


def fmt_r(value: float | None) -> str:
    """A ratio for a table: ``12x``, ``3.4x`` or ``-``."""
    return "-" if value is None else f"{value:.0f}x" if value >= 10 else f"{value:.1f}x"


def add_run_arguments(parser: Any, name: str) -> None:
    """The options of a benchmark that keeps a table of runs: ``--device``, ``--threads``, where to write."""
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:k")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--out-json", type=Path, default=RESULTS / f"{name}.json")
    parser.add_argument("--out-md", type=Path, default=RESULTS / f"{name}.md")
    parser.add_argument("--no-write", action="store_true", help="print only")


def parse_run(parser: Any, argv: Sequence[str] | None) -> tuple[Any, torch.device]:
    """Parse ``argv``; the device of ``--device`` (a usage error when it is not available); set the threads."""
    args = parser.parse_args(argv)
    try:
        device = check_device(args.device, "--device")
    except (TypeError, ValueError) as exc:
        parser.error(str(exc))
    torch.set_num_threads(args.threads)
    return args, device


class Run:
    """One run of a benchmark with a table of runs: the machine (taken at the start, when the load
    average says how busy it is), the wall and process time, and the record written at the end."""

    def __init__(self, benchmark: str, device: torch.device) -> None:
        self.benchmark, self.device = benchmark, device
        self.info = machine_info(device)
        self._start = (time.perf_counter(), time.process_time())

    def finish(self, args: Any, argv: Sequence[str] | None, rows: list[dict[str, Any]], table: str,
               markdown: Callable[[dict[str, Any]], str], **fields: Any) -> None:
        """Print ``table``; unless ``--no-write``, add the run (``fields``, its command) to the results."""
        wall = time.perf_counter() - self._start[0]
        self.info["process_cpu_s_per_wall_s"] = round((time.process_time() - self._start[1]) / wall, 2)
        print()
        print(table)
        run = {"machine": self.info, **fields, "command": command(f"{self.benchmark}.py", argv), "wall_s": wall,
               "rows": rows}
        if not args.no_write:
            key = run_key(self.device, self.info, args.threads, args.quick)
            write_runs(self.benchmark, key, run, args.out_json, args.out_md, markdown)


def write_runs(benchmark: str, key: str, run: dict[str, Any], out_json: Path, out_md: Path,
               markdown: Callable[[dict[str, Any]], str]) -> None:
    """Add ``run`` (with its ``"command"``) under ``key`` to the runs of ``out_json``; rewrite both files.

    Runs on other machines stay: a table of runs compares machines side by side.
    """
    out_json.parent.mkdir(parents=True, exist_ok=True)
    runs: dict[str, Any] = {}
    if out_json.exists():
        try:
            runs = json.loads(out_json.read_text()).get("runs", {})
        except (json.JSONDecodeError, AttributeError):
            runs = {}
    runs[key] = run
    out_json.write_text(json.dumps({"benchmark": benchmark, "runs": runs}, indent=2) + "\n")
    out_md.write_text(markdown(runs) + "\n")
    print(f"\nwrote {out_json} and {out_md}")


def write_result(stem: Path, result: dict[str, Any], markdown: str | None = None) -> None:
    """``<stem>.json`` (``result``, which names its ``"command"``) and, when given, ``<stem>.md``."""
    assert "command" in result, "a result names the command that reproduces it"
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    if markdown is not None:
        stem.with_suffix(".md").write_text(markdown)
