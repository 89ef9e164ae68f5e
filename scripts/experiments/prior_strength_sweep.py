"""Does *any* strength of the learned prior beat the isotropic priors? An oracle sweep (issue 12).

A diagnostic, not a method: every configuration is scored on the *test* set, so the best row of
a family is an upper bound on what any selection rule (validation, k-fold, evidence) could reach
with that family. The relatedness example's setting (``examples/relatedness.py``): the
pretrained MNIST CNN, its prior learned on 5,000 held-out MNIST digits
(``learn_prior(scaling="pac-bayes", compression="damped")``, ``delta = 1e-2``, cached by the
example), every fit starting from the source weights, Adam lr 1e-3, batch 64, ``--steps``
optimizer steps, 1,000 test images (all 450 for the sklearn digits).

The families, all built from the one learned prior by :meth:`KroneckerPrior.reweighted` (so the
head is ``N(0, delta^-1 I)`` in all of them):

- ``iso_mean p=P``: ``N(theta_s, P^-1 I)`` (``likelihood_scale=0``), P in 0.01, 1, 100;
- ``zero p=0.01``: ``N(0, 100 I)`` (the estimator's ``prior=None`` with ``weight_decay=1e-2``);
- ``learned b=B p=P``: ``B F_s + P I`` (damped Kronecker compression; ``F_s`` the total-sum
  MC Fisher of the 5,000 source digits), B in 0.001 - 1 at the floor P = 0.01 and B in 0.01, 0.1, 1
  at P = 1;
- ``learned calibrated``: the paper's calibration, ``(beta_0 F_s + alpha_0 delta I) / tau_0`` with
  ``alpha_0 = beta_0 = 10.85``, ``tau_0 = 0.092`` (about ``117 (F_s + 0.01 I)``).

Per fit: the MAP network's test accuracy / NLL / ECE and, with ``--temps``, the Laplace
posterior's (K-FAC, ``beta = alpha = 1``) Monte-Carlo and linearized predictives at each
temperature. Run from the repository root::

    python scripts/experiments/prior_strength_sweep.py --pairs "mnist>rot30,mnist>digits" --shots 5 --seeds 0
    python scripts/experiments/prior_strength_sweep.py --pairs "mnist>digits" --temps 1,0.1,0.01 \
        --configs "iso_mean p=1,learned b=0.01 p=1,learned b=1 p=1,learned calibrated"

One JSON line per (fit, predictive) on stdout (and appended to ``--out``); ``--summarize FILE``
prints the tables of a results file (``examples/results/prior_strength_sweep.json``). Measured results and
what they mean: ``docs/examples/relatedness.md``, section "Is any prior strength better?".
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
import relatedness as R  # noqa: E402

from skkprior import KroneckerPrior  # noqa: E402
from skkprior.datasets import subsample_per_class  # noqa: E402
from skkprior.metrics import evaluate  # noqa: E402
from skkprior.predictive import predict_proba_linearized, predict_proba_map, predict_proba_mc  # noqa: E402

DELTA = R.HYPER["weight_decay"]


def family(learned: KroneckerPrior, wanted: set[str] | None = None) -> dict[str, KroneckerPrior | None]:
    """The configurations of the sweep, by name (see the module docstring); only the ``wanted``
    ones are built (None: all), since each re-weighting compresses every Kronecker layer again."""
    specs: dict[str, tuple[float, float] | None] = {}  # name -> (source weight b, floor p); None: zero mean
    for p in (1e-2, 1.0, 1e2):
        specs[f"iso_mean p={p:g}"] = (0.0, p)
    specs["zero p=0.01"] = None
    for b in (1e-3, 1e-2, 1e-1, 1.0):
        specs[f"learned b={b:g} p=0.01"] = (b, DELTA)
    for b in (1e-2, 1e-1, 1.0):
        specs[f"learned b={b:g} p=1"] = (b, 1.0)
    out: dict[str, KroneckerPrior | None] = {}
    for name, spec in specs.items():
        if wanted is None or name in wanted:
            out[name] = None if spec is None else learned.reweighted(likelihood_scale=spec[0],
                                                                     prior_scale=spec[1] / DELTA, temperature=1.0)
    if wanted is None or "learned calibrated" in wanted:
        out["learned calibrated"] = learned
    return out


def load_rows(path: str) -> list[dict]:
    """The rows of a results file: a JSON record (``{"command": ..., "rows": [...]}``) or JSON lines."""
    text = Path(path).read_text()
    if path.endswith(".jsonl"):
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    return json.loads(text)["rows"]


def record(path: str, rows: list[dict], command: str) -> None:
    """Append ``rows`` to the results file ``path`` (JSON lines for ``.jsonl``, else a JSON record
    whose ``command`` joins every invocation that added rows with `` && ``)."""
    if path.endswith(".jsonl"):
        with open(path, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        return
    old = json.loads(Path(path).read_text()) if Path(path).is_file() else {"command": "", "rows": []}
    commands = [c for c in old["command"].split(" && ") if c] + [command]
    Path(path).write_text(json.dumps({"command": " && ".join(dict.fromkeys(commands)), "rows": old["rows"] + rows},
                                     indent=1) + "\n")


def summarize(path: str) -> str:
    """The docs' tables from a results file.

    MAP rows: per (pair, shots) every configuration's test accuracy / NLL, mean and standard
    deviation over the seeds present, and the oracle gain: the best learned configuration (by its
    seed mean) minus the best isotropic one, paired per seed. Posterior rows: as recorded.
    """
    rows = load_rows(path)
    maps: dict[tuple, dict] = {}
    for r in rows:  # the first MAP row of a (pair, shots, seed, config) counts (a MAP does not depend on --temps)
        if r["predictive"] == "map":
            maps.setdefault((r["pair"], r["shots"], r["seed"], r["config"]), r)
    out = []
    for pair, shots in dict.fromkeys(k[:2] for k in maps):
        cell = {k[2:]: r for k, r in maps.items() if k[:2] == (pair, shots)}
        seeds = sorted({seed for seed, _ in cell})
        configs = list(dict.fromkeys(name for _, name in cell))
        full = [c for c in configs if all((sd, c) in cell for sd in seeds)]
        out.append(f"MAP, {pair}, {shots} per class, seeds {seeds}: config | accuracy | NLL (mean +- sd)")
        means = {}
        for c in full:
            acc = np.array([cell[sd, c]["accuracy"] for sd in seeds])
            nll = np.array([cell[sd, c]["nll"] for sd in seeds])
            means[c] = acc.mean()
            out.append(f"  {c:24s} | {acc.mean():.3f} +- {acc.std():.3f} | {nll.mean():.3f} +- {nll.std():.3f}")
        learned = [c for c in full if c.startswith("learned")]
        iso = [c for c in full if not c.startswith("learned")]
        if learned and iso:
            bl, bi = max(learned, key=means.get), max(iso, key=means.get)
            gain = np.array([cell[sd, bl]["accuracy"] - cell[sd, bi]["accuracy"] for sd in seeds])
            out.append(f"  oracle gain ({bl} - {bi}): {gain.mean():+.3f} +- {gain.std():.3f}")
    post = [r for r in rows if r["predictive"] != "map"]
    for key in dict.fromkeys((r["pair"], r["shots"], r["seed"]) for r in post):
        out.append(f"posterior, {key[0]}, {key[1]} per class, seed {key[2]}: config | predictive | temperature | "
                   "accuracy | NLL")
        for r in post:
            if (r["pair"], r["shots"], r["seed"]) == key:
                out.append(f"  {r['config']:24s} | {r['predictive']:10s} | {r['temperature']:g} | "
                           f"{r['accuracy']:.3f} | {r['nll']:.3f}")
    return "\n".join(out)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--summarize", default=None, help="print the tables of a results file and exit")
    ap.add_argument("--pairs", default="mnist>rot30,mnist>digits")
    ap.add_argument("--shots", default="5", help="comma list of examples per class")
    ap.add_argument("--seeds", default="0", help="comma list of seeds (few-shot draw and estimator streams)")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--configs", default="all", help="comma list of configuration names (or 'all')")
    ap.add_argument("--temps", default="", help="comma list of posterior temperatures ('': the MAP only)")
    ap.add_argument("--n-samples", type=int, default=20, help="Monte-Carlo draws per test image")
    ap.add_argument("--n-test", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="also add the rows to this results file (.json record or .jsonl)")
    return ap


def main() -> None:
    a = build_parser().parse_args()
    if a.summarize:
        print(summarize(a.summarize))
        return
    torch.set_num_threads(a.threads)
    cfg = {**R.QUICK, "n_source": 5000, "steps": a.steps}
    temps = [float(t) for t in a.temps.split(",") if t]
    wanted = None if a.configs == "all" else set(a.configs.split(","))
    nets, priors = {}, {}
    for seed in (int(s) for s in a.seeds.split(",")):
        for pair in a.pairs.split(","):
            source, target = pair.split(">")
            if source not in nets:
                nets[source] = R.source_network(source, cfg, "cpu")
                priors[source] = family(R.source_prior(source, nets[source], "kronecker", cfg, "cpu"), wanted)
            net = nets[source]
            X_pool, y_pool, X_test, y_test = R.target_data(target)
            keep = np.sort(np.random.default_rng(0).choice(len(y_test), min(a.n_test, len(y_test)), replace=False))
            X_test, y_test = torch.from_numpy(X_test[keep]), y_test[keep]
            for k in (int(s) for s in a.shots.split(",")):
                X, y = subsample_per_class(X_pool, y_pool, k, random_state=seed)
                for name, prior in priors[source].items():
                    start = time.perf_counter()
                    clf = R.make_classifier(net, prior, len(y), cfg=cfg, device="cpu", seed=seed, scaling="fixed",
                                            predictive="mc", curvature="kfac" if temps else "diag")
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        clf.fit(X, y)
                    rows = [{"predictive": "map", "temperature": None,
                             **evaluate(predict_proba_map(clf.module_, X_test).numpy(), y_test)}]
                    for tau in temps:
                        q = clf.posterior_.with_scales(prior_scale=1.0, temperature=tau)
                        mc = predict_proba_mc(clf.module_, q, X_test, n_samples=a.n_samples,
                                              generator=torch.Generator().manual_seed(seed))
                        rows.append({"predictive": "mc", "temperature": tau, **evaluate(mc.numpy(), y_test)})
                        lin = predict_proba_linearized(clf.module_, q, X_test)
                        rows.append({"predictive": "linearized", "temperature": tau, **evaluate(lin.numpy(), y_test)})
                    rows = [{"pair": pair, "shots": k, "seed": seed, "config": name, "steps": a.steps, **row,
                             "seconds": round(time.perf_counter() - start, 1)} for row in rows]
                    for row in rows:
                        print(json.dumps(row), flush=True)
                    if a.out:
                        record(a.out, rows, "python " + " ".join(shlex.quote(x) for x in sys.argv))


if __name__ == "__main__":
    main()
