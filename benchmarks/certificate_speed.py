"""Time an honest certificate with many Gibbs draws: the library against a plain loop.

The MNIST CNN (docs/data.md) with a Laplace posterior on Fashion-MNIST certifies its Gibbs
classifier on the 60,000 training images with ``passes`` fresh posterior draws per image
(``m = passes * n``, 300,000 by default). Measured: the whole :func:`skkprior.certify.certify`
call (draws, forwards, KL, bound) and its draws per second, against a plain loop that draws one
parameter set and runs one forward per example (timed on ``--loop-examples`` examples and
extrapolated). Target (issue 13): ``m >= 300,000`` within 5 minutes on a 2-core CPU.

Run::

    python benchmarks/certificate_speed.py --threads 2 [--quick]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from torch.func import functional_call

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Run, add_run_arguments, fmt_r, fmt_s, parse_run  # noqa: E402

from skkprior import isotropic_prior, kfac, posterior  # noqa: E402
from skkprior.certify import certify  # noqa: E402
from skkprior.datasets import load_fashion_mnist, pretrained_mnist_cnn  # noqa: E402

NAME = "certificate_speed"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=60000, help="bound examples (Fashion-MNIST training images)")
    parser.add_argument("--passes", type=int, default=5, help="fresh posterior draws per example")
    parser.add_argument("--source-n", type=int, default=10000, help="images of the curvature pass")
    parser.add_argument("--loop-examples", type=int, default=2000, help="examples the plain loop is timed on")
    parser.add_argument("--batch-size", type=int, default=256,
                        help="certify's batch size (256: the fastest measured on a 2-core CPU; 1024 is ~15%% slower)")
    parser.add_argument("--quick", action="store_true", help="n=6000, one pass, 300 loop examples")
    add_run_arguments(parser, NAME)
    return parser


def plain_loop(net: torch.nn.Module, post: Any, X: torch.Tensor, y: torch.Tensor, seed: int) -> int:
    """One posterior draw and one forward per example: the baseline."""
    gen = torch.Generator().manual_seed(seed)
    errors = 0
    with torch.no_grad():
        for i in range(len(y)):
            params = {k: v[0] for k, v in post.sample(1, generator=gen, dtype=torch.float32).items()}
            logits = functional_call(net, params, (X[i:i + 1],))
            errors += int(logits.argmax(1).item() != int(y[i]))
    return errors


def markdown(runs: dict[str, Any]) -> str:
    out = ["## Certificate with many Gibbs draws: library vs plain loop", ""]
    for key, run in runs.items():
        r = run["rows"][0]
        out += [f"### {key}", "", f"Reproduce: `{run['command']}`", "",
                f"{run['machine']['date']}; torch {run['machine']['torch']}; load average at start "
                f"{run['machine'].get('load_average_1m_at_start', '-')}; MNIST CNN, Laplace posterior (K-FAC on "
                f"{run['source_n']} images, zero-mean isotropic prior, tau = {run['temperature']}); "
                f"n = {r['n']} bound images x {r['passes']} passes, batch size {r.get('batch_size', 1024)}. The network is not trained on "
                "Fashion-MNIST (a speed measurement: the bound is as vacuous as its error says).", "",
                "| m (draws) | certify (s) | library draws/s | plain loop draws/s | library / loop "
                "| certificate | Gibbs risk |",
                "|---|---|---|---|---|---|---|",
                f"| {r['m']:,} | {fmt_s(r['certify_s'])} | {r['library_draws_per_s']:.0f} "
                f"| {r['loop_draws_per_s']:.1f} | {fmt_r(r['speedup'])} | {r['risk_bound']:.4f} "
                f"| {r['gibbs_risk']:.4f} |", "",
                f"Target: m >= 300,000 within 300 s: {'met' if r['m'] >= 300000 and r['certify_s'] <= 300 else 'not met'}"
                f" at this size.", ""]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> None:
    args, device = parse_run(build_parser(), argv)
    if args.quick:
        args.n, args.passes, args.loop_examples = 6000, 1, 300
    run = Run(NAME, device)
    X, y, _, _ = load_fashion_mnist()
    X, y = torch.from_numpy(X[:args.n]), torch.from_numpy(y[:args.n])
    net = pretrained_mnist_cnn().to(device).eval()
    temperature = 0.01
    curv = kfac(net, X[:args.source_n], y[:args.source_n], device=device,
                generator=torch.Generator(device=device).manual_seed(0), progress=False)
    post = posterior(isotropic_prior(net, weight_decay=1.0), curv, net, temperature=temperature)
    start = time.perf_counter()
    cert = certify(net, post, X, y, passes=args.passes, generator=torch.Generator(device=device).manual_seed(1),
                   batch_size=args.batch_size)
    certify_s = time.perf_counter() - start
    k = min(args.loop_examples, args.n)
    start = time.perf_counter()
    plain_loop(net.cpu(), post.to("cpu"), X[:k], y[:k], seed=2)
    loop_s = time.perf_counter() - start
    m = int(cert.m)
    row = {"n": args.n, "passes": args.passes, "batch_size": args.batch_size, "m": m, "certify_s": certify_s, "library_draws_per_s": m / certify_s,
           "loop_draws_per_s": k / loop_s, "loop_examples": k, "speedup": (m / certify_s) / (k / loop_s),
           "risk_bound": float(cert.risk_bound), "gibbs_risk": float(cert.empirical_gibbs_risk)}
    table = (f"m = {m:,}: certify {certify_s:.1f} s ({row['library_draws_per_s']:.0f} draws/s); plain loop "
             f"{row['loop_draws_per_s']:.1f} draws/s ({k} examples); library / loop {row['speedup']:.1f}x; "
             f"certificate {row['risk_bound']:.4f}")
    run.finish(args, argv, [row], table, markdown, source_n=args.source_n, temperature=temperature,
               threads=args.threads)


if __name__ == "__main__":
    main()
