"""KroneckerPrior.reweighted: a learned prior at other (alpha_0, beta_0, tau_0), against dense truth.

Tolerances: dense matrices are compared by their relative Frobenius distance, 1e-9 (the
compressions run in float64; the nearest Kronecker product's factors may be raised by at most
``4 size eps max`` per eigenvalue, see positive_definite_nearest).
"""

from __future__ import annotations

import io
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from skkprior import isotropic_prior, kfac, learn_prior, posterior
from skkprior.kron import Kron, psd_projected
from skkprior.laplace import KroneckerPrior

DT = torch.float64
RTOL = 1e-9
WD = 0.05


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(a - b) / torch.linalg.matrix_norm(b))


def _linear_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.LayerNorm(6), nn.Linear(6, 3)).double()


def _conv_net() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3)).double()


def _data(net: nn.Module):
    g = torch.Generator().manual_seed(2)
    shape = (40, 1, 6, 6) if isinstance(net[0], nn.Conv2d) else (40, 4)
    return torch.randn(*shape, generator=g, dtype=DT), torch.randint(0, 3, (40,), generator=g)


def _ill_conditioned(n: int, seed: int, cond_exp: float = 12.0, zero: bool = True) -> torch.Tensor:
    """A symmetric PSD matrix with eigenvalues from 1 down to 10^-cond_exp (and one exact 0)."""
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=DT))
    ev = torch.logspace(0, -cond_exp, n, dtype=DT)
    if zero:
        ev[-1] = 0.0
    M = (Q * ev) @ Q.T
    return (M + M.T) / 2


def _ill_curvature(net: nn.Module, scale: float = 300.0):
    """A stand-in curvature whose factors are ill-conditioned (condition 1e12 and a null direction)."""
    from skkprior._layers import kronecker_layers

    factors = {name: Kron(scale * _ill_conditioned(layer.n, 10 + i), _ill_conditioned(layer.m, 20 + i, 10.0))
               for i, (name, layer) in enumerate(kronecker_layers(net).items())}
    return SimpleNamespace(factors=factors, n_samples=40, nll_sum=10.0, rounding={})


def _dense_nearest(S: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """The Frobenius-nearest G (x) A to the dense S (row-major layout: block (i, j) is G_ij A),
    by the SVD of the Van Loan-Pitsianis rearrangement."""
    R = S.reshape(n, m, n, m).permute(0, 2, 1, 3).reshape(n * n, m * m)
    U, s, Vh = torch.linalg.svd(R)
    G = (U[:, 0] * s[0].sqrt()).reshape(n, n)
    A = (Vh[0] * s[0].sqrt()).reshape(m, m)
    if float(torch.trace(G)) < 0:
        G, A = -G, -A
    return torch.kron(G, A)


def _dense_damped(G: torch.Tensor, A: torch.Tensor, beta: float, c: float) -> torch.Tensor:
    n, m = G.shape[0], A.shape[0]
    tr_g, tr_a = float(torch.trace(G)) / n, float(torch.trace(A)) / m
    pi = math.sqrt(tr_g / tr_a) if tr_g > 0 and tr_a > 0 else 1.0
    return torch.kron(math.sqrt(beta) * G + pi * math.sqrt(c) * torch.eye(n, dtype=DT),
                      math.sqrt(beta) * A + math.sqrt(c) / pi * torch.eye(m, dtype=DT))


def _dense_truth(prior: KroneckerPrior, name: str, alpha: float, beta: float, compression: str):
    F = prior.source_factors[name]
    n, m = F.n, F.m
    S = beta * torch.kron(F.G, F.A) + alpha * WD * torch.eye(n * m, dtype=DT)
    P = _dense_nearest(S, n, m) if compression == "nearest" else _dense_damped(F.G, F.A, beta, alpha * WD)
    return P, S


CASES = [("linear", False), ("conv", False), ("linear", True), ("conv", True)]


@pytest.fixture(scope="module", params=CASES, ids=lambda c: f"{c[0]}-{'ill' if c[1] else 'kfac'}")
def learned(request):
    kind, ill = request.param
    net = _linear_net() if kind == "linear" else _conv_net()
    X, y = _data(net)
    curv = _ill_curvature(net) if ill else kfac(net, X, y, fisher="exact", progress=False)
    return net, X, y, curv


@pytest.mark.parametrize("compression", ["nearest", "damped"])
@pytest.mark.parametrize("target_compression", [None, "nearest", "damped"])
def test_reweighted_matches_a_dense_rebuild(learned, compression, target_compression):
    net, X, y, curv = learned
    prior = learn_prior(net, X, y, curvature=curv, weight_decay=WD, compression=compression)
    for name, F in prior.source_factors.items():  # the stored factors are the projected curvature
        ref, _ = psd_projected(curv.factors[name], curv.rounding.get(name))
        torch.testing.assert_close(F.G, ref.G, rtol=0, atol=0)
        torch.testing.assert_close(F.A, ref.A, rtol=0, atol=0)
    alpha = {"0": 3.0, "2": 0.5, "3": 0.7, "2.weight": 2.0, "2.bias": 2.0}
    rw = prior.reweighted(likelihood_scale=0.02, prior_scale={k: v for k, v in alpha.items() if k in prior.groups},
                          temperature=0.3, compression=target_compression)
    used = compression if target_compression is None else target_compression
    assert rw.metadata["compression"] == used
    assert rw.reweightable
    for name in prior.source_factors:
        a = alpha.get(name, 1.0)
        P_true, S = _dense_truth(prior, name, a, 0.02, used)
        P = rw.groups[name].precision.to_dense()
        assert _rel(P, P_true) < RTOL, (name, _rel(P, P_true))
        # the recorded error is the compression's, measured
        assert rw.metadata["nkp_error"][name] == pytest.approx(_rel(P_true, S), rel=1e-6, abs=1e-12)
        assert rw.metadata["precision_exact"][name] is False
        assert float(rw.groups[name].temperature) == pytest.approx(0.3, rel=1e-15)
        torch.testing.assert_close(rw.groups[name].mean, prior.groups[name].mean, rtol=0, atol=0)
    for g in rw:
        if g.layer is None:  # uncovered parameters: alpha_0 delta I at tau_0, the learned mean
            assert float(g.precision.to_dense()[0, 0]) == pytest.approx(alpha[g.name] * WD, rel=1e-14)
            assert float(g.temperature) == pytest.approx(0.3, rel=1e-15)
    cal = rw.metadata["calibration"]
    assert cal["scaling"] == "reweighted"
    assert cal["likelihood_scale"] == {k: 0.02 for k in prior.groups}
    assert rw.metadata["learned_calibration"] == prior.metadata["calibration"]


@pytest.mark.parametrize("compression", ["nearest", "damped"])
def test_reweight_zero_is_the_isotropic_learned_mean_prior(learned, compression):
    net, X, y, curv = learned
    head = "3"
    prior = learn_prior(net, X, y, curvature=curv, weight_decay=WD, compression=compression, head=head)
    flat = prior.reweighted(likelihood_scale=0.0, prior_scale=4.0, temperature=0.5)
    iso = learn_prior(net, None, kind="isotropic", weight_decay=WD, prior_scale=4.0, temperature=0.5, head=head)
    m1, P1 = flat.to_dense()
    m2, P2 = iso.to_dense()
    torch.testing.assert_close(m1, m2, rtol=0, atol=0)
    torch.testing.assert_close(P1, P2, rtol=1e-14, atol=0)
    for name in prior.source_factors:
        assert flat.metadata["precision_exact"][name] is True and flat.metadata["nkp_error"][name] == 0.0
    g = torch.Generator().manual_seed(3)
    params = {k: v + torch.randn(v.shape, generator=g, dtype=DT) for k, v in net.named_parameters()}
    torch.testing.assert_close(flat.quadratic(params), iso.quadratic(params), rtol=1e-13, atol=0)
    torch.testing.assert_close(flat.logdet(), iso.logdet(), rtol=1e-13, atol=0)
    # sampling: the same draws (same noise maps), hence the same sampling covariance
    s1 = flat.sample(200, torch.Generator().manual_seed(4))
    s2 = iso.sample(200, torch.Generator().manual_seed(4))
    for k in s1:
        torch.testing.assert_close(s1[k], s2[k], rtol=1e-12, atol=1e-12)
    # and that covariance is tau_0 / (alpha_0 delta) (head: 1 / delta), to Monte-Carlo accuracy
    big = flat.sample(4000, torch.Generator().manual_seed(5))
    v = big["0.weight"].var(dim=0).mean()
    assert float(v) == pytest.approx(0.5 / (4.0 * WD), rel=0.05)


def test_reweight_back_reproduces_the_learned_prior(learned):
    net, X, y, curv = learned
    for compression in ("nearest", "damped"):
        prior = learn_prior(net, X, y, curvature=curv, weight_decay=WD, compression=compression,
                            prior_scale=2.0, likelihood_scale=0.3, temperature=0.7)
        there = prior.reweighted(likelihood_scale=0.0).reweighted(likelihood_scale=5.0, prior_scale=0.1,
                                                                   compression="damped")
        back = there.reweighted(likelihood_scale=0.3, prior_scale=2.0, temperature=0.7, compression=compression)
        m1, P1 = prior.to_dense()
        m2, P2 = back.to_dense()
        torch.testing.assert_close(m1, m2, rtol=0, atol=0)
        assert _rel(P2, P1) < 1e-12
        assert back.metadata["nkp_error"] == pytest.approx(prior.metadata["nkp_error"], rel=1e-9)
        assert back.metadata["learned_calibration"]["likelihood_scale"] == \
            prior.metadata["calibration"]["likelihood_scale"]


def test_reweight_keeps_a_calibrated_prior_per_layer():
    net = _linear_net()
    X, y = _data(net)
    curv = kfac(net, X, y, fisher="exact", progress=False)
    prior = learn_prior(net, X, y, curvature=curv, weight_decay=WD, scaling="marglik")
    same = prior.reweighted()
    m1, P1 = prior.to_dense()
    _, P2 = same.to_dense()
    assert _rel(P2, P1) < 1e-12
    assert same.metadata["calibration"]["prior_scale"] == prior.metadata["calibration"]["prior_scale"]


def test_save_load_keeps_reweightability_and_the_old_format_refuses(tmp_path):
    net = _conv_net()
    X, y = _data(net)
    prior = learn_prior(net, X, y, weight_decay=WD, progress=False, compression="damped")
    path = tmp_path / "prior.pt"
    prior.save(path)
    loaded = KroneckerPrior.load(path)
    assert loaded.reweightable and set(loaded.source_factors) == set(prior.source_factors)
    _, P1 = prior.reweighted(likelihood_scale=0.1).to_dense()
    _, P2 = loaded.reweighted(likelihood_scale=0.1).to_dense()
    torch.testing.assert_close(P1, P2, rtol=1e-14, atol=0)
    # a file of format version 2 (no source factors) still loads, and re-weighting says what to do
    state = prior.state()
    del state["source_factors"]
    state["version"] = 2
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    old = KroneckerPrior.load(buf)
    assert not old.reweightable
    _, P3 = old.to_dense()
    _, P0 = prior.to_dense()
    torch.testing.assert_close(P3, P0, rtol=0, atol=0)
    with pytest.raises(ValueError, match="without its source factors.*Re-learn the prior"):
        old.reweighted(likelihood_scale=0.1)


def test_broken_source_factors_fail_at_load():
    net = _linear_net()
    X, y = _data(net)
    state = learn_prior(net, X, y, weight_decay=WD, progress=False).state()
    state["source_factors"]["0"]["A"] = state["source_factors"]["0"]["A"][:-1, :-1]
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    with pytest.raises(ValueError, match="source factors of layer '0'"):
        KroneckerPrior.load(buf)


def test_priors_without_source_factors_refuse_reweighting():
    net = _linear_net()
    X, y = _data(net)
    curv = kfac(net, X, y, fisher="exact", progress=False)
    post = posterior(learn_prior(net, X, y, curvature=curv, weight_decay=WD), curv, net)
    for prior in (post.as_prior(), isotropic_prior(net, weight_decay=WD),
                  learn_prior(net, None, kind="isotropic", weight_decay=WD)):
        assert not prior.reweightable
        with pytest.raises(ValueError, match="has no source curvature"):
            prior.reweighted(likelihood_scale=0.0)


def test_reweight_after_match_keeps_the_new_head_and_checks_values():
    net = _linear_net()
    X, y = _data(net)
    prior = learn_prior(net, X, y, weight_decay=WD, progress=False)  # no head named: the last layer
    target = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.LayerNorm(6), nn.Linear(6, 5)).double()
    matched = prior.match(target)
    assert set(matched.source_factors) == {"0"}
    rw = matched.reweighted(likelihood_scale=0.5)
    assert rw.groups["3"] is matched.groups["3"]  # the zero-mean isotropic head, untouched
    rw.match(target)
    with pytest.raises(ValueError, match="likelihood_scale of group '0'"):
        prior.reweighted(likelihood_scale=-1.0)
    with pytest.raises(ValueError, match="prior_scale of group"):
        prior.reweighted(prior_scale=0.0)
    with pytest.raises(ValueError, match="unknown groups"):
        prior.reweighted(temperature={"nope": 1.0})
    with pytest.raises(ValueError, match="compression"):
        prior.reweighted(compression="exact")
    # .to keeps the factors with the groups
    moved = prior.to(torch.float64)
    assert moved.reweightable
