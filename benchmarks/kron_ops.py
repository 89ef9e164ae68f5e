"""Benchmark the Kronecker algebra: NKP, the exact two-term form, and cheap re-evaluation.

For factor sizes ``n = m`` in ``--sizes`` it times, on one layer-shaped precision
``S = beta F + alpha P`` (``F = G_F (x) A_F`` a rank-deficient curvature, ``P = G_P (x) A_P`` a
positive definite prior):

- ``nearest()``: the Frobenius-nearest Kronecker product of ``S`` (exact, thin QR route);
- ``decompose()``: the exact joint-eigenbasis form, computed once;
- re-evaluation for ``--pairs`` new ``(alpha, beta)`` pairs (log-uniform), per pair
  ``with_weights`` + ``logdet`` + ``trace_product(term=0)`` + ``trace_product(term=1)``
  ("scalars": what a KL / PAC-Bayes objective needs), and the same plus one ``sample_map``;

against

- (b) the paper's procedure, recomputed per pair: NKP of ``beta F + alpha P``, Cholesky of
  both factors, log-determinant, ``tr(F S^-1)`` and ``tr(P S^-1)`` through the inverse factors
  (plus a sample through two triangular solves);
- (a) the dense route where the ``(n m) x (n m)`` matrix fits (``--dense-max-dim``): Cholesky of
  the dense sum, log-determinant, the two traces through the dense inverse (plus a sample).

Slow routes are timed on as many pairs as fit in ``--budget`` seconds (at least 2) and scaled
to ``--pairs``; the tables say so ("extrapolated from k pairs"). The NKP route is also an
approximation: the table reports its log-determinant error on the first pair.

Usage::

    python benchmarks/kron_ops.py                 # default sizes 64 ... 2048 on the CPU
    python benchmarks/kron_ops.py --quick         # smoke run, seconds
    python benchmarks/kron_ops.py --device cuda --sizes 64 128 256 512 1024 2048 4096

Results go to ``benchmarks/results/kron_ops.json`` (one entry per device, merged with what is
there) and ``benchmarks/results/kron_ops.md``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]  # a checkout
from _common import Run, add_run_arguments, fmt_r, fmt_s, parse_run, sync, timed  # noqa: E402

from skkprior.kron import Kron, KronSum  # noqa: E402


# -- set-up ------------------------------------------------------------------------------------
def _factor(n: int, rank: int, shift: float, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """``X X^T / rank + shift I`` with ``X`` of shape ``(n, rank)``: a curvature-like factor."""
    X = torch.randn(n, rank, generator=gen, dtype=torch.float64) / math.sqrt(rank)
    M = X @ X.T
    M = (M + M.T) / 2 + shift * torch.eye(n, dtype=torch.float64)
    return M.to(device)


def _problem(size: int, device: torch.device, seed: int = 0) -> tuple[Kron, Kron]:
    gen = torch.Generator().manual_seed(seed)
    F = Kron(_factor(size, max(size // 2, 1), 0.0, gen, device), _factor(size, max(size // 2, 1), 0.0, gen, device))
    P = Kron(_factor(size, 2 * size, 1e-2, gen, device), _factor(size, 2 * size, 1e-2, gen, device))
    return F, P


def _pairs(count: int, seed: int = 1) -> list[tuple[float, float]]:
    gen = torch.Generator().manual_seed(seed)
    logs = torch.empty(count, 2, dtype=torch.float64).uniform_(-2.0, 2.0, generator=gen)
    return [(10.0 ** float(b), 10.0 ** float(a)) for b, a in logs]  # (beta, alpha)


def _time_pairs(fn: Callable[[float, float], Any], pairs: list[tuple[float, float]],
                device: torch.device, budget: float) -> tuple[float, int]:
    """Mean seconds per pair over as many pairs as fit in ``budget`` (at least 2), after one warm-up.

    A warm-up that takes more than half a second is counted as a timed pair (start-up effects
    are negligible at that scale, and it spares the budget).
    """
    sync(device)
    start = time.perf_counter()
    fn(*pairs[0])
    sync(device)
    first = time.perf_counter() - start
    done, elapsed0 = (1, first) if first > 0.5 else (0, 0.0)
    start = time.perf_counter() - elapsed0
    for beta, alpha in pairs[done:]:
        fn(beta, alpha)
        done += 1
        elapsed = time.perf_counter() - start
        if elapsed > budget and (done >= 2 or elapsed > 2 * budget):
            break
    sync(device)
    return (time.perf_counter() - start) / done, done


# -- the three routes ----------------------------------------------------------------------------
def _reeval(D: Any, Z: torch.Tensor | None) -> Callable[[float, float], Any]:
    def run(beta: float, alpha: float) -> Any:
        S = D.with_weights(beta=beta, alpha=alpha)
        out = [S.logdet(), S.trace_product(term=0), S.trace_product(term=1)]
        if Z is not None:
            out.append(S.sample_map(Z))
        return out
    return run


def _recompute(F: Kron, P: Kron, Z: torch.Tensor | None) -> Callable[[float, float], Any]:
    """The paper's procedure: NKP of beta F + alpha P, Cholesky of its factors, then the pieces."""
    n, m = F.n, F.m

    def run(beta: float, alpha: float) -> Any:
        N = KronSum([F, P], [beta, alpha]).nearest()
        cg, ca = torch.linalg.cholesky(N.G), torch.linalg.cholesky(N.A)
        logdet = 2.0 * (m * torch.log(cg.diagonal()).sum() + n * torch.log(ca.diagonal()).sum())
        g_inv, a_inv = torch.cholesky_inverse(cg), torch.cholesky_inverse(ca)
        tr_f = (F.G * g_inv).sum() * (F.A * a_inv).sum()
        tr_p = (P.G * g_inv).sum() * (P.A * a_inv).sum()
        out = [logdet, tr_f, tr_p]
        if Z is not None:  # C_G^-T Z C_A^-1 has covariance G^-1 (x) A^-1
            X = torch.linalg.solve_triangular(cg.mT, Z, upper=True)
            out.append(torch.linalg.solve_triangular(ca.mT, X.mT, upper=True).mT)
        return out
    return run


def _dense(F_dense: torch.Tensor, P_dense: torch.Tensor) -> Callable[[float, float], Any]:
    def run(beta: float, alpha: float) -> Any:
        C = torch.linalg.cholesky(beta * F_dense + alpha * P_dense)
        logdet = 2.0 * torch.log(C.diagonal()).sum()
        inv = torch.cholesky_inverse(C)
        return [logdet, (F_dense * inv).sum(), (P_dense * inv).sum(), C]
    return run


# -- one size ------------------------------------------------------------------------------------
def bench_size(size: int, device: torch.device, pairs: list[tuple[float, float]], budget: float,
               dense_max_dim: int) -> dict[str, Any]:
    F, P = _problem(size, device)
    beta0, alpha0 = pairs[0]
    total = KronSum([F, P], [beta0, alpha0])
    row: dict[str, Any] = {"n": size, "m": size, "pairs": len(pairs)}
    small = size <= 256
    row["nearest_s"] = timed(lambda: total.nearest(), device, repeats=5 if small else 1)
    row["decompose_s"] = timed(lambda: total.decompose(), device, repeats=3 if small else 1)
    D = total.decompose()
    Z = torch.randn(size, size, generator=torch.Generator().manual_seed(2), dtype=torch.float64).to(device)

    # accuracy of the paper's approximate route on the first pair
    exact = D.with_weights(beta=beta0, alpha=alpha0)
    approx = _recompute(F, P, None)(beta0, alpha0)
    row["nkp_rel_error"] = float(total.nearest_error())
    row["nkp_logdet_rel_diff"] = float(abs(approx[0] - exact.logdet()) / abs(exact.logdet()))
    row["nkp_trace_f_rel_diff"] = float(abs(approx[1] - exact.trace_product(term=0)) / exact.trace_product(term=0))

    for label, with_sample in (("scalars", False), ("sample", True)):
        z = Z if with_sample else None
        per, k = _time_pairs(_reeval(D, z), pairs, device, budget)
        row[f"reeval_{label}_s"], row[f"reeval_{label}_measured"] = per * len(pairs), k
        per, k = _time_pairs(_recompute(F, P, z), pairs, device, budget)
        row[f"recompute_{label}_s"], row[f"recompute_{label}_measured"] = per * len(pairs), k
        row[f"ratio_recompute_{label}"] = row[f"recompute_{label}_s"] / row[f"reeval_{label}_s"]

    d = size * size
    if d <= dense_max_dim:
        # dense +sample = dense scalars + one triangular solve with the same Cholesky factor,
        # timed separately (the factorization dominates; timing both would double the cost)
        F_dense, P_dense = F.to_dense(), P.to_dense()
        run = _dense(F_dense, P_dense)
        per, k = _time_pairs(run, pairs, device, budget)
        C, z = run(*pairs[0])[-1], Z.reshape(-1, 1)
        solve = timed(lambda: torch.linalg.solve_triangular(C.mT, z, upper=True), device, repeats=3)
        row["dense_scalars_s"], row["dense_scalars_measured"] = per * len(pairs), k
        row["dense_sample_s"], row["dense_sample_measured"] = (per + solve) * len(pairs), k
        for label in ("scalars", "sample"):
            row[f"ratio_dense_{label}"] = row[f"dense_{label}_s"] / row[f"reeval_{label}_s"]
        del F_dense, P_dense, C
    row["end_to_end_ratio_scalars"] = row["recompute_scalars_s"] / (row["decompose_s"] + row["reeval_scalars_s"])
    return row


# -- reporting -------------------------------------------------------------------------------------
def _measured(row: dict[str, Any], key: str) -> str:
    k = row.get(f"{key}_measured")
    if k is None or k >= row["pairs"]:
        return fmt_s(row.get(f"{key}_s"))
    return f"{fmt_s(row.get(f'{key}_s'))}*{k}"


def table(rows: list[dict[str, Any]]) -> str:
    head = ("| n = m | nearest | decompose | re-eval (scalars) | recompute (scalars) | ratio | "
            "dense (scalars) | ratio | re-eval (+sample) | recompute (+sample) | ratio | "
            "dense (+sample) | decompose + re-eval vs recompute | NKP error | NKP logdet error |")
    sep = "|" + "|".join(["---"] * (head.count("|") - 1)) + "|"
    lines = [head, sep]
    for r in rows:
        lines.append(
            f"| {r['n']} | {fmt_s(r['nearest_s'])} | {fmt_s(r['decompose_s'])} | "
            f"{_measured(r, 'reeval_scalars')} | {_measured(r, 'recompute_scalars')} | "
            f"{fmt_r(r['ratio_recompute_scalars'])} | {_measured(r, 'dense_scalars')} | "
            f"{fmt_r(r.get('ratio_dense_scalars'))} | {_measured(r, 'reeval_sample')} | "
            f"{_measured(r, 'recompute_sample')} | {fmt_r(r['ratio_recompute_sample'])} | "
            f"{_measured(r, 'dense_sample')} | {fmt_r(r['end_to_end_ratio_scalars'])} | "
            f"{r['nkp_rel_error']:.2g} | {r['nkp_logdet_rel_diff']:.2g} |"
        )
    return "\n".join(lines)


def markdown(runs: dict[str, Any]) -> str:
    out = ["## Kronecker algebra benchmark (`benchmarks/kron_ops.py`)", "",
           "Times for one layer-shaped precision `S = beta F + alpha P` with `n = m` (parameter "
           "dimension `n^2`), float64. Re-evaluation, recompute and dense columns are totals for "
           "the number of `(alpha, beta)` pairs given per run; `*k` marks a total extrapolated "
           "from `k` timed pairs. Ratios are recompute (or dense) time over re-evaluation time; "
           "'decompose + re-eval vs recompute' includes the one-time decomposition. 'NKP error' "
           "is the relative Frobenius error of the nearest Kronecker product of `S`, 'NKP logdet "
           "error' the relative log-determinant error of the paper's route on the first pair.",
           "", "Scalars = `with_weights` + `logdet` + `trace_product(term=0)` + `trace_product(term=1)` "
           "(what the KL and the PAC-Bayes objective need); +sample adds one `sample_map` draw, "
           "which costs `O(n^2 m + n m^2)` in every route.", "",
           "`process_cpu_s_per_wall_s` well below 1 in a one-thread CPU run means the machine was "
           "shared with other jobs (see `load_average_1m_at_start`): its times are then pessimistic "
           "and noisy.", ""]
    for key, run in runs.items():
        info = run["machine"]
        out.append(f"### {key}")
        out.append("")
        out.append(f"Reproduce: `{run['command']}`")
        out.append("")
        desc = ", ".join(f"{k}: {v}" for k, v in info.items())
        out.append(f"Machine: {desc}. Pairs: {run['pairs']}; budget per slow route: {run['budget_s']} s; "
                   f"wall time {run['wall_s']:.0f} s.")
        out.append("")
        out.append(table(run["rows"]))
        out.append("")
    return "\n".join(out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python benchmarks/kron_ops.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256, 512, 1024, 2048])
    parser.add_argument("--quick", action="store_true", help="sizes 32 64, 10 pairs, short budget")
    parser.add_argument("--pairs", type=int, default=100)
    parser.add_argument("--budget", type=float, default=6.0,
                        help="seconds per slow route and size before extrapolating")
    parser.add_argument("--dense-max-dim", type=int, default=None,
                        help="largest n m for the dense route (default 4096 on CPU, 16384 on CUDA)")
    add_run_arguments(parser, "kron_ops")
    return parser


def main(argv: list[str] | None = None) -> int:
    args, device = parse_run(build_parser(), argv)
    sizes, pairs_n, budget = args.sizes, args.pairs, args.budget
    if args.quick:
        sizes, pairs_n, budget = [32, 64], 10, 1.0
    dense_max = args.dense_max_dim or (16384 if device.type == "cuda" else 1024 if args.quick else 4096)
    pairs = _pairs(pairs_n)

    run = Run("kron_ops", device)
    rows = []
    for size in sizes:
        row = bench_size(size, device, pairs, budget, dense_max)
        rows.append(row)
        print(f"n = m = {size}: nearest {fmt_s(row['nearest_s'])}, decompose {fmt_s(row['decompose_s'])}, "
              f"re-eval {fmt_s(row['reeval_scalars_s'])} vs recompute {fmt_s(row['recompute_scalars_s'])} "
              f"({fmt_r(row['ratio_recompute_scalars'])})", flush=True)
    run.finish(args, argv, rows, table(rows), markdown, pairs=pairs_n, budget_s=budget, dense_max_dim=dense_max)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
