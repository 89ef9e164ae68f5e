"""Time the Laplace posterior of a few-shot curvature: the low-rank route against the dense one.

A network's widest layer dominates the cost of :func:`skkprior.posterior`: its input factor
``A`` (``m x m``, ``m = 3137`` for the MNIST CNN's first dense layer) needs an eigendecomposition.
With ``k`` training examples ``A`` has rank at most ``k``, and the library then takes a checked
low-rank route (``O(m^2 k)``, ``skkprior.kron._low_rank_psd``) instead of ``eigh`` (``O(m^3)``).
This benchmark builds the posterior of the pretrained MNIST CNN (``docs/data.md``) from the
K-FAC curvature of ``k`` MNIST digits, under an isotropic prior and under a learned Kronecker
prior (from 2,000 other digits), once with the low-rank route (the default) and once with it
switched off (``_LOW_RANK_FRACTION = 0``: the dense route), in the same run, and reports both
times, their ratio and the agreement of the two posteriors (``KL`` in both directions: rounding
only).

Run::

    python benchmarks/low_rank_posterior.py            # k = 10, 50, 200, 1000 on one CPU thread
    python benchmarks/low_rank_posterior.py --quick    # k = 50 only
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Run, add_run_arguments, fmt_r, fmt_s, parse_run  # noqa: E402

import skkprior.kron as kron  # noqa: E402
from skkprior import isotropic_prior, kfac, learn_prior, posterior  # noqa: E402
from skkprior.datasets import load_mnist, pretrained_mnist_cnn  # noqa: E402

NAME = "low_rank_posterior"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shots", type=int, nargs="+", default=[10, 50, 200, 1000],
                        help="training examples k of the curvature (the rank bound of the dense layer's A)")
    parser.add_argument("--source-n", type=int, default=2000, help="digits of the learned prior's curvature pass")
    parser.add_argument("--quick", action="store_true", help="k = 50 only")
    add_run_arguments(parser, NAME)
    return parser


def _timed_posterior(prior: Any, curvature: Any, net: torch.nn.Module, fraction: float) -> tuple[Any, float]:
    kron._LOW_RANK_FRACTION = fraction
    start = time.perf_counter()
    post = posterior(prior, curvature, net)
    return post, time.perf_counter() - start


def markdown(runs: dict[str, Any]) -> str:
    out = ["## Few-shot posterior: low-rank route vs dense route", ""]
    for key, run in runs.items():
        m = run["machine"]
        out += [f"### {key}", "", f"Reproduce: `{run['command']}`", "",
                f"{m['date']}; torch {m['torch']}; {m['cpu']}, {m['torch_threads']} thread(s); load average at start "
                f"{m.get('load_average_1m_at_start', '-')}. Pretrained MNIST CNN (first dense layer: A is 3137 x 3137); "
                f"curvature of k MNIST digits (K-FAC, MC Fisher); learned prior from {run['source_n']} other digits. "
                "Times of `posterior(prior, curvature, net)`; KL: both directions between the two routes' posteriors.", "",
                "| k | prior | low-rank route | dense route | dense / low-rank | KL(low, dense) | KL(dense, low) |",
                "|---|---|---|---|---|---|---|"]
        for r in run["rows"]:
            out.append(f"| {r['k']} | {r['prior']} | {fmt_s(r['low_rank_s'])} | {fmt_s(r['dense_s'])} "
                       f"| {fmt_r(r['ratio'])} | {r['kl_low_dense']:.1e} | {r['kl_dense_low']:.1e} |")
        out.append("")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> None:
    args, device = parse_run(build_parser(), argv)
    shots = [50] if args.quick else args.shots
    run = Run(NAME, device)
    X, y, _, _ = load_mnist()
    X, y = torch.from_numpy(X), torch.from_numpy(y)
    net = pretrained_mnist_cnn().to(device).eval()
    source = kfac(net, X[-args.source_n:], y[-args.source_n:], device=device,
                  generator=torch.Generator(device=device).manual_seed(0), progress=False)
    priors = {"isotropic": isotropic_prior(net), "learned": learn_prior(net, None, curvature=source)}
    default = kron._LOW_RANK_FRACTION
    rows = []
    try:
        for k in shots:
            curvature = kfac(net, X[:k], y[:k], device=device, generator=torch.Generator(device=device).manual_seed(1),
                             progress=False)
            for name, prior in priors.items():
                low, low_s = _timed_posterior(prior, curvature, net, default)
                dense, dense_s = _timed_posterior(prior, curvature, net, 0.0)
                kron._LOW_RANK_FRACTION = default
                rows.append({"k": k, "prior": name, "low_rank_s": low_s, "dense_s": dense_s, "ratio": dense_s / low_s,
                             "kl_low_dense": float(low.kl(dense).total), "kl_dense_low": float(dense.kl(low).total)})
                print(f"k={k} {name}: low-rank {low_s:.2f} s, dense {dense_s:.2f} s", flush=True)
    finally:
        kron._LOW_RANK_FRACTION = default
    table = "\n".join(f"k={r['k']:5d} {r['prior']:9s} low-rank {fmt_s(r['low_rank_s'])} dense {fmt_s(r['dense_s'])} "
                      f"ratio {fmt_r(r['ratio'])} KL {r['kl_low_dense']:.1e} / {r['kl_dense_low']:.1e}" for r in rows)
    run.finish(args, argv, rows, table, markdown, source_n=args.source_n, threads=args.threads)


if __name__ == "__main__":
    main()
