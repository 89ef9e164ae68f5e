"""Fit both estimators on ``device="cuda"`` and compare with the same fit on the CPU.

Run on a machine with a GPU::

    python benchmarks/gpu_check.py [--out benchmarks/results]

Checks: everything (training, curvature, decompositions, sampling, certificate) runs on the
GPU; the fitted state lives there; predictions and certificates agree with the CPU fit within
what float32 training on two devices allows; a model pickled on the GPU loads for the CPU.
Writes ``gpu_check.json`` with timings.
"""

from __future__ import annotations

import argparse
import pickle
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, command, write_result  # noqa: E402

from skkprior import KroneckerPriorClassifier, PACBayesBoundEstimator  # noqa: E402


def fit_both(device: str, X: np.ndarray, y: np.ndarray) -> dict:
    out = {}
    t = time.perf_counter()
    clf = KroneckerPriorClassifier(module__hidden_sizes=(128,), max_epochs=20, random_state=0,
                                   device=device).fit(X, y)
    out["clf_fit_s"] = time.perf_counter() - t
    out["clf_device"] = str(next(clf.module_.parameters()).device)
    out["posterior_device"] = str(clf.posterior_.device)
    out["clf_proba"] = clf.predict_proba(X[:200])
    out["clf_score"] = clf.score(X, y)
    out["clf_pickle"] = pickle.dumps(clf)
    t = time.perf_counter()
    est = PACBayesBoundEstimator(module__hidden_sizes=(128,), max_epochs=20, random_state=0,
                                 device=device).fit(X, y)
    out["est_fit_s"] = time.perf_counter() - t
    out["bound"] = est.bound_
    out["gibbs_risk"] = est.certificate_.empirical_gibbs_risk
    out["est_score"] = est.score(X, y)
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python benchmarks/gpu_check.py", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(RESULTS))
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this check needs a GPU")
    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    gpu = fit_both("cuda", X, y)
    cpu = fit_both("cpu", X, y)
    restored = pickle.loads(gpu["clf_pickle"])
    report = {
        "command": command("gpu_check.py", argv),
        "gpu": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "gpu_clf_device": gpu["clf_device"], "gpu_posterior_device": gpu["posterior_device"],
        "clf_fit_s": {"cuda": gpu["clf_fit_s"], "cpu": cpu["clf_fit_s"]},
        "est_fit_s": {"cuda": gpu["est_fit_s"], "cpu": cpu["est_fit_s"]},
        "clf_score": {"cuda": gpu["clf_score"], "cpu": cpu["clf_score"]},
        "est_score": {"cuda": gpu["est_score"], "cpu": cpu["est_score"]},
        "bound": {"cuda": gpu["bound"], "cpu": cpu["bound"]},
        "gibbs_risk": {"cuda": gpu["gibbs_risk"], "cpu": cpu["gibbs_risk"]},
        "max_abs_proba_diff_cuda_vs_cpu": float(np.abs(gpu["clf_proba"] - cpu["clf_proba"]).max()),
        "pickle_round_trip_proba_equal": bool(np.allclose(restored.predict_proba(X[:200]), gpu["clf_proba"])),
    }
    print(report)
    assert report["gpu_clf_device"].startswith("cuda") and report["gpu_posterior_device"].startswith("cuda")
    assert abs(report["clf_score"]["cuda"] - report["clf_score"]["cpu"]) < 0.03
    assert abs(report["bound"]["cuda"] - report["bound"]["cpu"]) < 0.05
    write_result(Path(args.out) / "gpu_check", report)


if __name__ == "__main__":
    main()
