"""Scaling out (docs/scaling.md): curvature over ``torchrun`` processes, grid search on a dask cluster."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "distributed_prior.py"


def _run(args: list[str], tmp_path: Path) -> dict:
    factors = tmp_path / f"factors{len(args)}.pt"
    proc = subprocess.run([*args, str(SCRIPT), "--out", str(tmp_path / "prior.pt"), "--factors", str(factors)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return torch.load(factors, weights_only=True)


def test_torchrun_two_processes_give_the_one_process_prior(tmp_path):
    """``torchrun --nproc_per_node=2``: each rank has half the source set; the merged factors are exact."""
    one = _run([sys.executable], tmp_path)
    two = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"], tmp_path)
    assert two["n"] == one["n"] == 1797
    assert two["nll"] == pytest.approx(one["nll"], rel=1e-12)
    assert one["factors"].keys() == two["factors"].keys()
    for name, dense in one["factors"].items():
        torch.testing.assert_close(two["factors"][name], dense, rtol=1e-12, atol=1e-12)
    from skkprior import KroneckerPrior

    assert KroneckerPrior.load(tmp_path / "prior.pt").metadata["kind"] == "kronecker"


def test_grid_search_on_a_local_dask_cluster_of_two_workers():
    """``GridSearchCV`` over the estimator, its fits run by two dask worker processes (joblib backend)."""
    distributed = pytest.importorskip("distributed", reason="dask's distributed is not installed (pip install -e '.[test]')")
    import joblib
    from sklearn.datasets import load_iris
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from skkprior import KroneckerPriorClassifier

    X, y = load_iris(return_X_y=True)
    X = X.astype(np.float32)
    pipe = make_pipeline(StandardScaler(), KroneckerPriorClassifier(
        module__hidden_sizes=(8,), max_epochs=5, n_samples=5, scaling="fixed", device="cpu", random_state=0))
    grid = {"kroneckerpriorclassifier__prior_scale": [0.1, 10.0]}
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  worker_dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        with joblib.parallel_config(backend="dask"):
            search = GridSearchCV(pipe, grid, cv=2, n_jobs=-1).fit(X, y)
        workers = client.run(lambda: True)  # the fits ran on these worker processes
    assert len(workers) == 2
    assert search.best_params_["kroneckerpriorclassifier__prior_scale"] in (0.1, 10.0)
    assert search.cv_results_["mean_test_score"].shape == (2,)
    # the same search in this process gives the same scores (the fits are seeded)
    serial = GridSearchCV(pipe, grid, cv=2).fit(X, y)
    np.testing.assert_allclose(search.cv_results_["mean_test_score"], serial.cv_results_["mean_test_score"])
