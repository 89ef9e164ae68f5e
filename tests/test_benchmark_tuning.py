"""The paper-procedure reimplementation of ``benchmarks/tuning.py``: correct, and a smoke run."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from skkprior.kron import Kron, KronSum
from skkprior.laplace import learn_prior, posterior
from skkprior.tuning import PACBayesObjective

DT = torch.float64
ROOT = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("benchmark_tuning", ROOT / "benchmarks" / "tuning.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["benchmark_tuning"] = module
    spec.loader.exec_module(module)
    return module


bt = _load()


def _spd(n, gen, shift=0.0, rank=None):
    X = torch.randn(n, rank or n, generator=gen, dtype=DT) / math.sqrt(rank or n)
    return X @ X.T + shift * torch.eye(n, dtype=DT)


def _problem(a_proportional: bool = False):
    """Two Linear layers and a LayerNorm (a flat group); target ``F.A = 2 P.A`` makes the NKP exact."""
    gen = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.Linear(6, 3)).double()
    layers = {"0": (6, 5), "2": (3, 7)}
    source = {k: Kron(_spd(n, gen, rank=max(n - 1, 1)), _spd(m, gen)) for k, (n, m) in layers.items()}
    prior = learn_prior(net, None, curvature=SimpleNamespace(factors=source, n_samples=100, nll_sum=30.0),
                        weight_decay=0.3)
    target = {}
    for k, (n, m) in layers.items():
        A = 2.0 * prior.groups[k].precision.A if a_proportional else _spd(m, gen, rank=m - 1)
        target[k] = Kron(50.0 * _spd(n, gen, rank=max(n - 1, 1)), A)
    params = {k: v.detach() + 0.05 * torch.randn(v.shape, generator=gen, dtype=DT) for k, v in net.named_parameters()}
    return posterior(prior, target, params)


SCALES = [(0.0, 0.0, 0.0, 0.0), (1.1, -0.7, -2.0, 0.4), (-1.5, 1.3, 0.8, -0.3)]


def _logs(a, b, t, c):
    logs = {"prior_scale": torch.tensor(a, dtype=DT), "likelihood_scale": torch.tensor(b, dtype=DT),
            "temperature": torch.tensor(t, dtype=DT)}
    return logs, torch.tensor(c, dtype=DT)


def test_nkp_factors_equal_library_nearest():
    post = _problem()
    paper = bt.PaperObjective(post, nll_sum=40.0, n=100)
    for L in paper.layers:
        for beta, alpha in [(1.0, 1.0), (3.0, 0.01), (1e-3, 20.0)]:
            G, A = paper.nkp_factors(L, torch.tensor(beta, dtype=DT), torch.tensor(alpha, dtype=DT))
            ref = KronSum([Kron(L["GF"], L["AF"]), Kron(L["GP"], L["AP"])], [beta, alpha]).nearest()
            torch.testing.assert_close(G, ref.G, rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(A, ref.A, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("bound", ["catoni", "mcallester"])
def test_paper_objective_is_ours_when_the_nkp_is_exact(bound):
    post = _problem(a_proportional=True)
    paper = bt.PaperObjective(post, nll_sum=40.0, n=100, bound=bound)
    ours = PACBayesObjective(post, nll_sum=40.0, n=100, bound=bound)
    assert max(paper.nkp_errors(_logs(*SCALES[1])[0])) < 1e-10
    for s in SCALES:
        logs, log_C = _logs(*s)
        torch.testing.assert_close(paper(logs, log_C), ours(logs, log_C), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("bound", ["catoni", "mcallester"])
def test_replay_equals_faithful_route_and_differs_from_ours_by_nkp(bound):
    post = _problem()
    paper = bt.PaperObjective(post, nll_sum=40.0, n=100, bound=bound)
    ours = PACBayesObjective(post, nll_sum=40.0, n=100, bound=bound)
    for s in SCALES:
        logs, log_C = _logs(*s)
        faithful = paper(logs, log_C)
        torch.testing.assert_close(paper.replay(logs, log_C), faithful, rtol=1e-10, atol=1e-12)
        assert int(paper.last_status) == 0
        # a genuinely different (NKP) posterior: the objectives differ
        assert math.isfinite(float(faithful))
        assert abs(float(faithful) - float(ours(logs, log_C))) > 1e-8 * abs(float(ours(logs, log_C)))


def test_paper_objective_gradients():
    post = _problem()
    paper = bt.PaperObjective(post, nll_sum=40.0, n=100, bound="catoni")

    def f(a, b, t, c):
        return paper({"prior_scale": a, "likelihood_scale": b, "temperature": t}, c)

    args = tuple(torch.tensor(v, dtype=DT, requires_grad=True) for v in (0.3, -0.2, -1.0, 0.1))
    assert torch.autograd.gradcheck(f, args)


def test_smoke_synthetic_workload():
    torch.set_num_threads(1)
    work = bt.synthetic_workload(torch.device("cpu"), scale=64, seed=0, weight_decay=1e-4)
    row = bt.bench_workload("resnet50_synthetic", work, torch.device("cpu"), objectives=["catoni", "mcallester"],
                            steps=30, lr=0.5, budget=0.2)
    assert row["layers"] == 54
    assert row["paper_measured_steps"] >= 2
    for bound, o in row["objectives"].items():
        if row["paper_extrapolated"] and bound == "catoni":
            assert o["replay_check"] < 1e-8
        assert o["ours_objective"] <= o["objective_start_exact"]
        assert o["ours_equal_or_lower"]
    run = {"machine": {}, "command": "x", "wall_s": 1.0, "budget_s": 0.2, "rows": [row]}
    assert "resnet50_synthetic (1/64) | mcallester" in bt.markdown({"cpu": run})
