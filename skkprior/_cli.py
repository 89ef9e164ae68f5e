"""The command line, ``python -m skkprior``: the only part of the package that prints."""

from __future__ import annotations

import argparse
import logging
import sys
import time

from . import __version__

DESCRIPTION = """\
skkprior: learned Kronecker-factored priors, Laplace posteriors and PAC-Bayes certificates
for PyTorch classifiers, behind the scikit-learn API. Documentation: docs/ (mkdocs build)."""

DEMO_HELP = "run the method's jobs on scikit-learn's bundled digits (about 10 s on 2 CPU cores)"
DEMO_DESCRIPTION = """\
Learn a prior on digits 0-4, transfer it to digits 5-9 with ten images per class (against two
isotropic priors), certify a classifier of digits 5-9 with a PAC-Bayes bound, and learn two
tasks in a row (posterior -> prior). Prints one progress line per phase, the table with its
legend, and a summary of what the numbers show. Needs no download."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m skkprior", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"skkprior {__version__}",
                        help="print the version of skkprior and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                title="commands", description="run `python -m skkprior COMMAND --help` for details")
    demo = sub.add_parser("demo", help=DEMO_HELP, description=DEMO_DESCRIPTION,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    demo.add_argument("--quick", action="store_true",
                      help="fewer epochs and Monte-Carlo samples: a smoke test, not the reported numbers")
    demo.add_argument("--seed", type=int, default=0, metavar="N",
                      help="seed of the splits, initializations and posterior draws (default: 0)")
    demo.add_argument("--device", default="cpu", metavar="DEVICE",
                      help="torch device: cpu (default), cuda, cuda:1, mps, or auto (a GPU when there is one)")
    demo.add_argument("--threads", type=int, default=1, metavar="N",
                      help="torch CPU threads (default: 1, the fastest for the demo's small networks, "
                           "above all on a busy machine)")
    return parser


def _resolve_device(parser: argparse.ArgumentParser, device: str) -> str:
    """``auto`` -> the GPU when there is one; an unavailable device -> a one-line usage error."""
    import torch

    from ._validation import check_device

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        check_device(device, "--device")
    except (TypeError, ValueError) as exc:
        message = " ".join(str(exc).split()).replace("use device='cpu'", "use --device cpu")
        parser.exit(2, f"{parser.prog} demo: error: {message}\n")  # one line, no traceback
    return device


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m skkprior``; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    device = _resolve_device(parser, args.device)
    if args.threads < 1:
        parser.exit(2, f"{parser.prog} demo: error: --threads must be at least 1, got {args.threads}\n")
    if not 0 <= args.seed < 2**32:
        parser.exit(2, f"{parser.prog} demo: error: --seed must be in 0 .. 2**32 - 1, got {args.seed}\n")
    import torch

    from ._demo import format_table, run_demo, summarize

    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    demo_logger = logging.getLogger("skkprior._demo")
    level = demo_logger.level
    demo_logger.addHandler(handler)
    demo_logger.setLevel(logging.INFO)
    start = time.perf_counter()
    print(f"skkprior {__version__} demo: digits, device {device}, seed {args.seed}, {args.threads} thread(s)"
          f"{', quick' if args.quick else ''}", flush=True)
    try:
        rows = run_demo(quick=args.quick, seed=args.seed, device=device)
    finally:  # a caller (a test, a notebook) gets its threads and logging back
        demo_logger.removeHandler(handler)
        demo_logger.setLevel(level)
        torch.set_num_threads(threads)
    print()
    print(format_table(rows))
    print("\nWhat this shows:")
    print(summarize(rows))
    print(f"\nfinished in {time.perf_counter() - start:.0f} s")
    return 0
