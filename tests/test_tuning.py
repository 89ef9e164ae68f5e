"""The paper's PAC-Bayes tuning objective: exactness of the fast route, optimum, gradients."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from skkprior.curvature import kfac
from skkprior.laplace import isotropic_prior, learn_prior, posterior
from skkprior.tuning import SCALE_NAMES, PACBayesObjective, training_objective, tune_pac_bayes

DT = torch.float64


@pytest.fixture(scope="module")
def problem():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.LayerNorm(8), nn.Linear(8, 3)).double()
    Xs, ys = torch.randn(300, 5, dtype=DT), torch.randint(0, 3, (300,))
    prior = learn_prior(net, Xs, ys, weight_decay=0.5, progress=False,
                        generator=torch.Generator().manual_seed(0))
    # a "target" network near the source one, on different data
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    X, y = torch.randn(200, 5, dtype=DT), torch.randint(0, 3, (200,))
    curv = kfac(net, X, y, progress=False, generator=torch.Generator().manual_seed(1))
    post = posterior(prior, curv, net)
    return net, prior, curv, post


def logs(a=0.0, b=0.0, t=0.0):
    return {"prior_scale": torch.tensor(a, dtype=DT), "likelihood_scale": torch.tensor(b, dtype=DT),
            "temperature": torch.tensor(t, dtype=DT)}


@pytest.mark.parametrize("bound", ["mcallester", "catoni"])
def test_fast_objective_equals_general_route(problem, bound):
    net, prior, curv, post = problem
    obj = PACBayesObjective(post, nll_sum=curv.nll_sum, n=curv.n_samples, bound=bound)
    for a, b, t in [(0.0, 0.0, 0.0), (1.2, -0.4, -2.0), (-1.0, 0.7, 0.5)]:
        fast = obj(logs(a, b, t))
        ref = obj.reference(post.with_scales(math.exp(a), math.exp(b), math.exp(t)))
        torch.testing.assert_close(fast, ref, rtol=1e-10, atol=1e-12)
        parts = obj.parts(logs(a, b, t))
        q = post.with_scales(math.exp(a), math.exp(b), math.exp(t))
        torch.testing.assert_close(parts["kl"], q.kl_to_prior().total, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(parts["trace_term"], q.trace_term(curv), rtol=1e-10, atol=1e-12)


def test_shared_scales_equal_the_same_values_per_group(problem):
    """Shared scales broadcast over the flat eigenvalue grid; the same values given per group
    are gathered onto it: value and gradient agree."""
    net, prior, curv, post = problem
    obj = PACBayesObjective(post, nll_sum=curv.nll_sum, n=curv.n_samples, bound="catoni")
    assert obj._dd.numel() == sum(c["dd"].numel() for c in obj.layers.values())
    for a, b, t in [(0.0, 0.0, 0.0), (0.8, -1.3, -3.0)]:
        shared = {k: v.clone().requires_grad_(True) for k, v in logs(a, b, t).items()}
        per = {k: {name: v for name in post.groups} for k, v in
               {k: v.clone().requires_grad_(True) for k, v in logs(a, b, t).items()}.items()}
        fused, loop = obj(shared, torch.tensor(0.3, dtype=DT)), obj(per, torch.tensor(0.3, dtype=DT))
        torch.testing.assert_close(fused, loop, rtol=1e-12, atol=1e-14)
        fused.backward(), loop.backward()
        leaves = {k: next(iter(d.values())) for k, d in per.items()}
        for k in SCALE_NAMES:
            torch.testing.assert_close(shared[k].grad, leaves[k].grad, rtol=1e-10, atol=1e-12)


def test_per_layer_scales_in_objective(problem):
    net, prior, curv, post = problem
    obj = PACBayesObjective(post, nll_sum=curv.nll_sum, n=curv.n_samples, bound="mcallester")
    per = {k: {name: torch.tensor(0.1 * i + 0.05 * j, dtype=DT) for i, name in enumerate(post.groups)}
           for j, k in enumerate(SCALE_NAMES)}
    scales = {k: {name: math.exp(float(v)) for name, v in d.items()} for k, d in per.items()}
    q = post.with_scales(scales["prior_scale"], scales["likelihood_scale"], scales["temperature"])
    torch.testing.assert_close(obj(per), obj.reference(q), rtol=1e-10, atol=1e-12)


def test_objective_gradients(problem):
    net, prior, curv, post = problem
    obj = PACBayesObjective(post, nll_sum=curv.nll_sum, n=curv.n_samples, bound="catoni")

    def f(a, b, t, c):
        return obj({"prior_scale": a, "likelihood_scale": b, "temperature": t}, c)

    args = tuple(torch.tensor(v, dtype=DT, requires_grad=True) for v in (0.3, -0.2, -1.0, 0.1))
    assert torch.autograd.gradcheck(f, args)


def test_tuning_reaches_brute_force_optimum(problem):
    net, prior, curv, post = problem
    obj = PACBayesObjective(post, nll_sum=curv.nll_sum, n=curv.n_samples, bound="mcallester")
    grid = torch.linspace(-8, 4, 121, dtype=DT)
    best = float("inf")
    for la, lt in itertools.product(grid[::4], grid):
        best = min(best, float(obj(logs(float(la), 0.0, float(lt)))))
    res = tune_pac_bayes(post, nll_sum=curv.nll_sum, n=curv.n_samples, objective="mcallester",
                         tune=("prior_scale", "temperature"), max_steps=500)
    assert res.objective_best <= best + 1e-4
    # the returned posterior realizes the reported objective
    val = obj.reference(res.posterior)
    assert abs(float(val) - res.objective_best) < 1e-9
    assert res.likelihood_scale == post.likelihood_scale


@pytest.mark.parametrize("start", [0.01, 1.0, 100.0])
def test_tuning_never_worse_than_start(problem, start):
    net, prior, curv, post = problem
    q = post.with_scales(prior_scale=start, temperature=1.0 / start)
    for objective in ("catoni", "mcallester"):
        res = tune_pac_bayes(q, nll_sum=curv.nll_sum, n=curv.n_samples, objective=objective,
                             max_steps=3, lr=5.0)  # a wild learning rate still cannot make it worse
        assert res.objective_best <= res.objective_start
        assert res.history[0] == res.objective_start


def test_per_layer_tuning_is_at_least_as_good_as_shared(problem):
    net, prior, curv, post = problem
    shared = tune_pac_bayes(post, nll_sum=curv.nll_sum, n=curv.n_samples, objective="catoni", max_steps=300)
    start = post.with_scales(shared.prior_scale, shared.likelihood_scale, shared.temperature)
    per = tune_pac_bayes(start, nll_sum=curv.nll_sum, n=curv.n_samples, objective="catoni",
                         per_layer=True, max_steps=300)
    assert per.objective_best <= shared.objective_best + 1e-12
    assert len(set(per.temperature.values())) >= 1 and set(per.temperature) == set(post.groups)


def test_tuning_bad_input(problem):
    net, prior, curv, post = problem
    with pytest.raises(ValueError, match="tune"):
        tune_pac_bayes(post, nll_sum=1.0, n=10, tune=("alpha",))
    with pytest.raises(ValueError, match="delta"):
        tune_pac_bayes(post, nll_sum=1.0, n=10, delta=1.5)
    with pytest.raises(ValueError, match="nll_sum"):
        tune_pac_bayes(post, nll_sum=float("nan"), n=10)
    with pytest.raises(ValueError, match="objective"):
        PACBayesObjective(post, nll_sum=1.0, n=10, bound="kl")


def test_zero_mean_isotropic_prior_objective(problem):
    net, _, curv, _ = problem
    post = posterior(isotropic_prior(net, weight_decay=1.0), curv, net, temperature=0.5)
    obj = PACBayesObjective(post, nll_sum=curv.nll_sum, n=curv.n_samples, bound="catoni")
    torch.testing.assert_close(obj(logs(t=math.log(0.5))), obj.reference(post), rtol=1e-10, atol=1e-12)


def test_training_objectives():
    ce, q = torch.tensor(0.7, dtype=DT), torch.tensor(250.0, dtype=DT)
    n, d, delta = 1000, 50, 0.025
    torch.testing.assert_close(training_objective("map", ce, q, n=n, n_params=d, prior_weight=2.0),
                               ce + 2.0 * q / (2 * n))
    mc = (ce + d / (2 * n)) / math.log(2) + torch.sqrt((q / 2 + math.log(2 * math.sqrt(n) / delta)) / (2 * n))
    torch.testing.assert_close(training_objective("mcallester", ce, q, n=n, n_params=d, delta=delta), mc)
    cat = 3.0 * (ce + d / (2 * n)) / math.log(2) + (q / 2 + math.log(1 / delta)) / n
    torch.testing.assert_close(training_objective("catoni", ce, q, n=n, n_params=d, delta=delta, C=3.0), cat)
    with pytest.raises(ValueError, match="objective"):
        training_objective("bogus", ce, q, n=n, n_params=d)


# -- Laplace evidence (tune_marglik) ---------------------------------------------------------------
def _dense_log_evidence(post, nll_sum: float, alpha: dict, beta: float) -> float:
    """The Laplace evidence from dense matrices (layer groups only), as in laplace_log_evidence."""
    total = -beta * nll_sum
    for name, g in post.groups.items():
        if g.terms is None:
            continue
        F, P = (t.to_dense() for t in g.terms)
        d = (g.mean - post.prior.groups[name].mean).reshape(-1).to(DT)
        a = alpha[name]
        total += float(-0.5 * a * d @ P @ d + 0.5 * torch.logdet(a * P) - 0.5 * torch.logdet(beta * F + a * P))
    return total


@pytest.mark.parametrize("alpha,beta,tau", [(1.0, 1.0, 1.0), (0.3, 2.0, 1.0), (7.0, 0.5, 0.01)])
def test_laplace_log_evidence_matches_dense(problem, alpha, beta, tau):
    from skkprior.tuning import laplace_log_evidence

    _, _, curv, post = problem
    q = post.with_scales(prior_scale=alpha, likelihood_scale=beta, temperature=tau)
    ours = float(laplace_log_evidence(q, nll_sum=curv.nll_sum))
    dense = _dense_log_evidence(post, curv.nll_sum, {k: alpha for k in post.groups}, beta)
    assert ours == pytest.approx(dense, rel=1e-10, abs=1e-9)


def test_laplace_log_evidence_ill_conditioned_prior():
    """A Kronecker prior precision with condition number 1e8 (factors 1e6 and 1e2), against dense."""
    from skkprior.kron import Kron
    from skkprior.tuning import laplace_log_evidence

    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    prior = isotropic_prior(net, weight_decay=1.0, zero_mean=False)

    def spd(values):
        Q, _ = torch.linalg.qr(torch.randn(len(values), len(values), dtype=DT))
        return Q @ torch.diag(values) @ Q.T

    prior.groups["0"].precision = Kron(spd(torch.logspace(-3, 3, 6, dtype=DT)), spd(torch.logspace(-1, 1, 5, dtype=DT)))
    eig = torch.linalg.eigvalsh(prior.groups["0"].precision.to_dense())
    assert float(eig.max() / eig.min()) > 1e7
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    curv = kfac(net, torch.randn(50, 4, dtype=DT), torch.randint(0, 3, (50,)), progress=False,
                generator=torch.Generator().manual_seed(1))
    post = posterior(prior, curv, net, prior_scale=0.5)
    ours = float(laplace_log_evidence(post, nll_sum=curv.nll_sum))
    dense = _dense_log_evidence(post, curv.nll_sum, {k: 0.5 for k in post.groups}, 1.0)
    assert ours == pytest.approx(dense, rel=1e-7)


@pytest.mark.parametrize("per_layer", [False, True])
def test_tune_marglik_finds_the_evidence_maximum(problem, per_layer):
    from skkprior.tuning import tune_marglik

    _, _, curv, post = problem
    res = tune_marglik(post, nll_sum=curv.nll_sum, per_layer=per_layer)
    assert res.objective_best < res.objective_start
    layers = [k for k, g in post.groups.items() if g.terms is not None]
    best = _dense_log_evidence(post, curv.nll_sum, res.prior_scale, 1.0)
    assert -res.objective_best == pytest.approx(best, rel=1e-10)
    for name in (layers if per_layer else [None]):
        for factor in (1.001, 1 / 1.001):  # any move of a (shared or per-layer) scale lowers the evidence
            moved = {k: v * factor if name is None or k == name else v for k, v in res.prior_scale.items()}
            assert _dense_log_evidence(post, curv.nll_sum, moved, 1.0) < best
    if not per_layer:  # a shared scale for every group, the curvature-free LayerNorm included
        assert len(set(res.prior_scale.values())) == 1
        assert res.posterior.prior_scale == res.prior_scale
    else:
        shared = tune_marglik(post, nll_sum=curv.nll_sum)
        assert res.objective_best <= shared.objective_best


def test_tune_marglik_edges(problem, caplog):
    from skkprior.tuning import laplace_log_evidence, tune_marglik

    net, _, curv, post = problem
    # a prior centred at the MAP: the data pull nothing away, the evidence grows with alpha
    at_map = posterior(learn_prior(net, None, kind="isotropic", weight_decay=0.5), curv, net)
    with caplog.at_level("WARNING", logger="skkprior.tuning"):
        res = tune_marglik(at_map, nll_sum=curv.nll_sum, search=(1e-2, 1e2))
    assert "upper end" in caplog.text
    assert all(v == pytest.approx(100.0) for v in res.prior_scale.values())
    with pytest.raises(ValueError, match="likelihood_scale"):
        laplace_log_evidence(post.with_scales(likelihood_scale={k: float(i + 1) for i, k in enumerate(post.groups)}),
                             nll_sum=curv.nll_sum)
    with pytest.raises(ValueError, match="search"):
        tune_marglik(post, nll_sum=curv.nll_sum, search=(10.0, 1.0))
    with pytest.raises(ValueError, match="search"):
        tune_marglik(post, nll_sum=curv.nll_sum, search=1e8)
    with pytest.raises(TypeError, match="KroneckerPosterior"):
        laplace_log_evidence(post.prior, nll_sum=curv.nll_sum)
    with pytest.raises(ValueError, match="nll_sum"):
        laplace_log_evidence(post, nll_sum=float("nan"))


def test_tune_marglik_flat_evidence_keeps_the_scale(problem):
    """theta = mu and zero curvature: every alpha has the same evidence; the start is kept, no warning."""
    from skkprior.kron import Kron
    from skkprior.tuning import tune_marglik

    net, _, curv, _ = problem
    zero = {k: Kron(torch.zeros_like(F.G), F.A.clone()) for k, F in curv.factors.items()}
    flat = posterior(learn_prior(net, None, kind="isotropic", weight_decay=0.5), zero, net, prior_scale=3.0)
    res = tune_marglik(flat, nll_sum=1.0)
    assert all(v == pytest.approx(3.0) for v in res.prior_scale.values())
    assert res.objective_best == pytest.approx(res.objective_start)
