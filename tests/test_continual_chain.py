"""The continual chain on *different* data: posterior -> prior compression against the exact sum.

Each task has its own data and its own weights. The chain keeps one Kronecker product per layer
(the nearest Kronecker product of the posterior precision, ``as_prior``); the exact precision
after three tasks is the sum of all Kronecker terms. We record the relative error, bound it, and
compare with the naive "sum the factors" merge of general Laplace libraries (given its best
possible scalar, to be fair): ours must be closer.
"""

from __future__ import annotations

import torch
from torch import nn

from skkprior.curvature import kfac
from skkprior.kron import Kron
from skkprior.laplace import isotropic_prior, learn_prior, posterior

DT = torch.float64


def make_task(seed: int, net: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    # different input distributions per task: shifted and anisotropically scaled
    scale = torch.rand(6, generator=gen, dtype=DT) * 2 + 0.2
    shift = torch.randn(6, generator=gen, dtype=DT)
    X = torch.randn(300, 6, generator=gen, dtype=DT) * scale + shift
    with torch.no_grad():
        y = net(X).argmax(1)
    return X, y


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(a - b) / torch.linalg.matrix_norm(b))


def test_three_task_chain_against_exact_sum_and_naive_merge():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4)).double()
    X0, y0 = make_task(100, net)
    prior = learn_prior(net, X0, y0, weight_decay=0.5, fisher="exact", progress=False)
    layers = [g.name for g in prior if g.layer is not None]
    exact = {name: prior.groups[name].precision.to_dense() for name in layers}   # running exact sum
    terms = {name: [prior.groups[name].precision] for name in layers}             # for the naive merge
    recorded = []
    for task in range(1, 4):
        with torch.no_grad():  # each task moves the weights
            for p in net.parameters():
                p.add_(0.2 * torch.randn_like(p))
        X, y = make_task(100 + task, net)
        curv = kfac(net, X, y, fisher="exact", progress=False)
        post = posterior(prior, curv, net)
        prior = post.as_prior()
        recorded.append(prior.metadata["nkp_error"])
        for name in layers:
            F = curv.factors[name]
            exact[name] = exact[name] + F.to_dense()
            terms[name].append(F)
    for name in layers:
        ours = prior.groups[name].precision.to_dense()
        ours_err = rel_err(ours, exact[name])
        naive = Kron(sum(t.G for t in terms[name]), sum(t.A for t in terms[name])).to_dense()
        c = float((naive * exact[name]).sum() / (naive * naive).sum())  # naive merge at its best scale
        naive_err = rel_err(c * naive, exact[name])
        # measured: ours 0.10 / 0.16, naive 0.31 / 0.36 (layers 0 / 2)
        # measured (seeded): ours 0.252 / 0.134, naive at its best scale 0.284 / 0.528 (layers 0 / 2);
        # per-step errors 0.30, 0.16, 0.08 / 0.14, 0.06, 0.08
        assert ours_err < 0.3, (name, ours_err)
        assert ours_err < naive_err, (name, ours_err, naive_err)
        # every compression step recorded its own error
        assert all(name in r and 0 <= r[name] < 0.35 for r in recorded)


def test_chain_with_proportional_terms_is_nearly_exact():
    """When the prior is proportional to the curvature, prior + F is (almost) one Kronecker product."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    X = torch.randn(50, 3, dtype=DT)
    with torch.no_grad():
        y = net(X).argmax(1)
    curv = kfac(net, X, y, fisher="exact", progress=False)
    prior = isotropic_prior(net, weight_decay=1.0, zero_mean=False)
    for g in prior:
        F = curv.factors[g.name]
        g.precision = Kron(2.0 * F.G + 1e-6 * torch.eye(g.layer.n, dtype=DT),
                           F.A + 1e-6 * torch.eye(g.layer.m, dtype=DT))
    nxt = posterior(prior, curv, net).as_prior()
    for name, err in nxt.metadata["nkp_error"].items():
        assert err < 1e-4, (name, err)
