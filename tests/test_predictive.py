"""Predictives (MAP, Monte-Carlo, linearized, Gibbs) against dense algebra and explicit sampling.

Tiny float64 models: an MLP, a CNN (padding modes, stride, a conv without bias, several
spatial positions) and a model with LayerNorm, BatchNorm (buffers) and Dropout.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap

from skkprior._layers import kronecker_layers
from skkprior.gaussian import LayerwiseGaussian
from skkprior.kron import Kron
from skkprior.laplace import KroneckerPrior, isotropic_prior, posterior
from skkprior.predictive import (
    gibbs_error_count,
    gibbs_predict,
    linearized_logit_moments,
    predict_proba_linearized,
    predict_proba_map,
    predict_proba_mc,
)

DT = torch.float64


def make_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 5), nn.ELU(inplace=True), nn.Linear(5, 3))


def make_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect"),   # 6x6 -> 6x6, 36 positions
        nn.Tanh(),
        nn.Conv2d(2, 3, 2, stride=2, bias=False),                # 6x6 -> 3x3, 9 positions
        nn.Tanh(),
        nn.Conv2d(3, 2, 3, padding="same", dilation=2),          # asymmetric-free 'same'
        nn.Flatten(),
        nn.Linear(18, 3),
    )


class NormNet(nn.Module):
    """Linear, LayerNorm (isotropic group), Dropout, BatchNorm with non-trivial buffers."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 6)
        self.norm = nn.LayerNorm(6)
        self.drop = nn.Dropout(0.5)
        self.fc2 = nn.Linear(6, 5)
        self.bn = nn.BatchNorm1d(5)
        self.head = nn.Linear(5, 3)

    def forward(self, x):
        h = self.drop(torch.tanh(self.norm(self.fc1(x))))
        return self.head(torch.tanh(self.bn(self.fc2(h))))


def build(kind: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed({"mlp": 1, "cnn": 2, "norm": 3}[kind])
    model = {"mlp": make_mlp, "cnn": make_cnn, "norm": NormNet}[kind]().to(DT)
    with torch.no_grad():
        # larger weights, small biases: predicted labels vary across the examples
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                m.weight.mul_(3.0)
                if m.bias is not None:
                    m.bias.mul_(0.1)
        if kind == "norm":
            model.bn.running_mean.normal_(0.0, 0.2)
            model.bn.running_var.uniform_(0.5, 2.0)
            model.norm.weight.uniform_(0.5, 1.5)
            model.norm.bias.normal_(0.0, 0.2)
    gen = torch.Generator().manual_seed(7)
    shape = (12, 1, 6, 6) if kind == "cnn" else (12, 4)
    return model, torch.randn(shape, generator=gen, dtype=DT)


def random_curvature(model: nn.Module, gen: torch.Generator, scale: float = 1.0) -> dict[str, Kron]:
    out = {}
    for name, layer in kronecker_layers(model).items():
        g = torch.randn(layer.n, layer.n + 1, generator=gen, dtype=DT)
        a = torch.randn(layer.m, layer.m + 1, generator=gen, dtype=DT)
        out[name] = Kron(scale * g @ g.T, a @ a.T)
    return out


def make_posterior(model: nn.Module, temperature: float = 1.0, weight_decay: float = 2.0, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    prior = isotropic_prior(model, weight_decay=weight_decay)
    # curvature eigenvalues comparable to the prior's: Lambda spreads over ~[1, 20]
    return posterior(prior, random_curvature(model, gen), model, prior_scale=1.0, likelihood_scale=0.1,
                     temperature=temperature)


def spd(n: int, gen: torch.Generator) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=DT))
    return (q * torch.logspace(0, 1, n, dtype=DT)) @ q.T


def make_kron_gaussian(model: nn.Module, seed: int = 0) -> KroneckerPrior:
    """Mean at the model, one random Kronecker precision per layer (the Cholesky route)."""
    gen = torch.Generator().manual_seed(seed)
    base = isotropic_prior(model, weight_decay=3.0, zero_mean=False)
    groups = []
    for g in base:
        if g.layer is not None:
            g.precision = Kron(spd(g.layer.n, gen), 2.0 * spd(g.layer.m, gen))
        g.temperature = 0.5
        groups.append(g)
    return KroneckerPrior(groups, base.metadata)


def scaled_kron_gaussian(model: nn.Module, temperature: float) -> KroneckerPrior:
    gauss = make_kron_gaussian(model)
    for g in gauss:
        g.temperature = temperature
    return gauss


def snapshot(model: nn.Module):
    return ({k: v.clone() for k, v in model.state_dict().items()}, [m.training for m in model.modules()])


def assert_untouched(model: nn.Module, snap) -> None:
    state, modes = snap
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert [m.training for m in model.modules()] == modes
    assert all(p.grad is None for p in model.parameters())


def dense_logit_cov(model: nn.Module, gauss: LayerwiseGaussian, X: torch.Tensor) -> torch.Tensor:
    """``J Sigma J^T`` with full Jacobians over the Gaussian's parameters (flatten order)."""
    model.eval()
    params = {k: v.detach() for k, v in model.named_parameters()}
    names = gauss.parameter_names

    def f(p):
        return functional_call(model, {**params, **p}, (X,))

    jac = jacrev(f)({k: params[k] for k in names})
    N, C = X.shape[0], jac[names[0]].shape[1]
    J = torch.cat([g.from_params(jac, batch_dims=2).reshape(N, C, -1) for g in gauss], dim=-1)
    _, P = gauss.to_dense()
    Sigma = torch.linalg.inv(P)
    return torch.einsum("ncp,pq,ndq->ncd", J, Sigma, J)


MODELS = ["mlp", "cnn", "norm"]


# -- shapes, MAP, model untouched ---------------------------------------------------------------
@pytest.mark.parametrize("kind", MODELS)
def test_probabilities_shape_dtype_simplex_and_model_untouched(kind):
    model, X = build(kind)
    post = make_posterior(model, temperature=0.5)
    model.train()                       # a training-mode model is evaluated in eval mode, then restored
    snap = snapshot(model)
    gen = torch.Generator().manual_seed(0)
    outs = {
        "map": predict_proba_map(model, X, batch_size=5),
        "mc": predict_proba_mc(model, post, X, n_samples=7, batch_size=5, sample_chunk=3, generator=gen),
        "lin": predict_proba_linearized(model, post, X, batch_size=5),
    }
    assert_untouched(model, snap)
    for name, p in outs.items():
        assert p.shape == (X.shape[0], 3) and p.dtype == DT, name
        torch.testing.assert_close(p.sum(1), torch.ones(X.shape[0], dtype=DT), rtol=0, atol=1e-12)
        assert bool((p >= 0).all())
    labels = gibbs_predict(model, post, X, generator=gen, batch_size=5)
    assert labels.shape == (X.shape[0],) and labels.dtype == torch.int64
    assert bool(((labels >= 0) & (labels < 3)).all())
    n_err, m = gibbs_error_count(model, post, X, torch.zeros(X.shape[0], dtype=torch.long), passes=2, generator=gen)
    assert m == 2 * X.shape[0] and 0 <= n_err <= m
    linearized_logit_moments(model, post, X)
    assert_untouched(model, snap)
    # MAP equals the softmax of the model in eval mode
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(outs["map"], torch.softmax(model(X), dim=1), rtol=0, atol=1e-14)
    model.train()


# -- Monte-Carlo --------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", MODELS)
def test_mc_with_zero_temperature_is_map_and_is_seeded(kind):
    model, X = build(kind)
    post = make_posterior(model, temperature=1e-24)
    p_map = predict_proba_map(model, X)
    p_mc = predict_proba_mc(model, post, X, n_samples=5, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(p_mc, p_map, rtol=0, atol=1e-10)
    wide = post.with_scales(temperature=0.5)
    a = predict_proba_mc(model, wide, X, n_samples=6, sample_chunk=4, generator=torch.Generator().manual_seed(3))
    b = predict_proba_mc(model, wide, X, n_samples=6, sample_chunk=4, generator=torch.Generator().manual_seed(3))
    c = predict_proba_mc(model, wide, X, n_samples=6, sample_chunk=4, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_mc_equals_explicit_loop_over_samples():
    """The vmapped evaluation is the average over explicitly loaded parameter sets."""
    model, X = build("norm")
    post = make_posterior(model, temperature=0.3)
    p = predict_proba_mc(model, post, X, n_samples=4, sample_chunk=4, generator=torch.Generator().manual_seed(1))
    samples = post.sample(4, generator=torch.Generator().manual_seed(1))
    model.eval()
    expected = torch.zeros_like(p)
    with torch.no_grad():
        for s in range(4):
            expected += torch.softmax(functional_call(model, {k: v[s] for k, v in samples.items()}, (X,)), 1)
    torch.testing.assert_close(p, expected / 4, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", MODELS)
def test_mc_approaches_linearized_for_small_covariance(kind):
    """For a small covariance the sampled logits are Gaussian with the linearized moments."""
    model, X = build(kind)
    post = make_posterior(model, temperature=2e-4)
    mu, cov = linearized_logit_moments(model, post, X)
    S = 4000
    samples = post.sample(S, generator=torch.Generator().manual_seed(0))
    model.eval()
    with torch.no_grad():
        logits = vmap(lambda p: functional_call(model, p, (X,)))(samples)      # (S, N, C)
    centred = logits - logits.mean(0)
    emp = torch.einsum("snc,snd->ncd", centred, centred) / (S - 1)
    sd = torch.diagonal(cov, dim1=1, dim2=2).sqrt()
    assert float(sd.min()) > 1e-3
    # covariance error relative to the standard deviations (Monte-Carlo error ~ 1.4/sqrt(S) = 0.02)
    assert float(((emp - cov) / (sd[:, :, None] * sd[:, None, :])).abs().max()) < 0.12
    assert float(((logits.mean(0) - mu) / sd).abs().max()) < 0.1
    p_lin = predict_proba_linearized(model, post, X)
    p_mc = predict_proba_mc(model, post, X, n_samples=S, sample_chunk=500,
                            generator=torch.Generator().manual_seed(0))
    assert float((p_mc - p_lin).abs().max()) < 2e-3


# -- linearized against dense algebra --------------------------------------------------------------
@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("precision", ["decomposed", "kron"])
def test_linearized_covariance_equals_dense(kind, precision):
    model, X = build(kind)
    gauss = make_posterior(model, temperature=0.7) if precision == "decomposed" else make_kron_gaussian(model)
    mean, cov = linearized_logit_moments(model, gauss, X, batch_size=5)
    expected = dense_logit_cov(model, gauss, X)
    assert mean.dtype == DT and cov.dtype == DT and cov.shape == (X.shape[0], 3, 3)
    scale = float(expected.abs().max())
    torch.testing.assert_close(cov, expected, rtol=1e-8, atol=1e-8 * scale)
    with torch.no_grad():
        torch.testing.assert_close(mean, model(X), rtol=0, atol=1e-12)
    # probit predictive from the same moments
    p = predict_proba_linearized(model, gauss, X)
    kappa = 1 / torch.sqrt(1 + math.pi / 8 * torch.diagonal(expected, dim1=1, dim2=2))
    torch.testing.assert_close(p, torch.softmax(mean * kappa, 1), rtol=0, atol=1e-10)


def test_linearized_with_a_layer_used_twice():
    """A shared layer sums its Jacobian over calls (positions of every call)."""

    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = nn.Linear(3, 4)
            self.mid = nn.Linear(4, 4)
            self.out = nn.Linear(4, 2)

        def forward(self, x):
            h = torch.tanh(self.inp(x))
            h = torch.tanh(self.mid(h))
            return self.out(torch.tanh(self.mid(h)))

    torch.manual_seed(0)
    model = Shared().to(DT)
    X = torch.randn(5, 3, dtype=DT)
    post = make_posterior(model, temperature=0.4)
    _, cov = linearized_logit_moments(model, post, X)
    torch.testing.assert_close(cov, dense_logit_cov(model, post, X), rtol=1e-8, atol=1e-12)
    # Gibbs: the shared layer forces the general path (one draw shared by both calls)
    with pytest.raises(ValueError, match="called 2 times"):
        gibbs_predict(model, post, X, method="fast")
    assert gibbs_predict(model, post, X, generator=torch.Generator().manual_seed(0)).shape == (5,)


class Folded(nn.Module):
    """Two tokens per example folded into the batch dimension (example-major), a shared Linear."""

    def __init__(self):
        super().__init__()
        self.token = nn.Linear(3, 4)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        n = x.shape[0]
        h = torch.tanh(self.token(x.reshape(n * 2, 3)))
        return self.head(h.reshape(n, 8))


def test_positions_folded_into_the_batch():
    torch.manual_seed(0)
    model = Folded().to(DT)
    X = torch.randn(5, 6, dtype=DT)
    post = make_posterior(model, temperature=0.4)
    _, cov = linearized_logit_moments(model, post, X, batch_size=2)
    torch.testing.assert_close(cov, dense_logit_cov(model, post, X), rtol=1e-8, atol=1e-12)
    # the fast Gibbs path would give each token its own draw: refused, the general path is used
    with pytest.raises(ValueError, match="positions folded"):
        gibbs_predict(model, post, X, method="fast")
    y = labels_for(model, X)
    auto = error_frequencies(model, post, X, y, 400, "auto", seed=0)
    explicit = explicit_error_frequencies(model, post, X, y, 4000, seed=1)
    assert float((auto - explicit).abs().max()) < 0.1


# -- Gibbs -----------------------------------------------------------------------------------------
def error_frequencies(model, gauss, X, y, passes, method, seed):
    """Per-example Gibbs error frequency: X repeated, every row its own draw."""
    Xr = X.repeat(passes, *([1] * (X.ndim - 1)))
    labels = gibbs_predict(model, gauss, Xr, method=method, generator=torch.Generator().manual_seed(seed),
                           batch_size=512)
    return (labels.reshape(passes, -1) != y).double().mean(0)


def explicit_error_frequencies(model, gauss, X, y, S, seed):
    """Long-run per-example error: S full-weight draws, each evaluated on all examples."""
    samples = gauss.sample(S, generator=torch.Generator().manual_seed(seed))
    model.eval()
    with torch.no_grad():
        logits = vmap(lambda p: functional_call(model, p, (X,)))(samples)   # (S, N, C)
    return (logits.argmax(-1) != y).double().mean(0)


def labels_for(model, X):
    # labels that make the error probability non-trivial: the MAP's runner-up class
    with torch.no_grad():
        model.eval()
        return model(X).topk(2, dim=1).indices[:, 1]


@pytest.mark.parametrize("kind,method,precision", [
    ("mlp", "fast", "decomposed"), ("mlp", "fast", "kron"), ("cnn", "fast", "decomposed"),
    ("cnn", "fast", "kron"), ("cnn", "general", "decomposed"), ("norm", "general", "decomposed"),
])
def test_gibbs_logits_have_the_linearized_moments_at_small_temperature(kind, method, precision):
    """Per-example draws of every path have the right covariance, not only the right labels."""
    from skkprior.predictive import _gibbs_logits

    model, X = build(kind)
    gauss = (make_posterior(model, temperature=2e-4) if precision == "decomposed"
             else scaled_kron_gaussian(model, 2e-4))
    mu, cov = linearized_logit_moments(model, gauss, X[:3])
    S = 3000
    Xr = X[:3].repeat(S, *([1] * (X.ndim - 1)))
    (logits,) = _gibbs_logits(model, gauss, Xr, passes=1, generator=torch.Generator().manual_seed(0),
                              batch_size=1000, method=method, device=None)
    logits = logits.reshape(S, 3, -1)
    centred = logits - logits.mean(0)
    emp = torch.einsum("snc,snd->ncd", centred, centred) / (S - 1)
    sd = torch.diagonal(cov, dim1=1, dim2=2).sqrt()
    assert float(((emp - cov) / (sd[:, :, None] * sd[:, None, :])).abs().max()) < 0.12
    assert float(((logits.mean(0) - mu) / sd).abs().max()) < 0.12


@pytest.mark.parametrize("kind,precision", [("mlp", "decomposed"), ("cnn", "decomposed"), ("mlp", "kron"),
                                            ("cnn", "kron")])
def test_gibbs_fast_path_matches_general_and_explicit_sampling(kind, precision):
    model, X = build(kind)
    gauss = make_posterior(model, temperature=0.3) if precision == "decomposed" else make_kron_gaussian(model)
    y = labels_for(model, X)
    passes = 600
    fast = error_frequencies(model, gauss, X, y, passes, "fast", seed=0)
    general = error_frequencies(model, gauss, X, y, passes, "general", seed=1)
    explicit = explicit_error_frequencies(model, gauss, X, y, 4000, seed=2)
    assert 0.05 < float(explicit.mean()) < 0.95          # a non-degenerate error distribution
    # binomial standard error per example ~ 0.02; seeded, loose tolerance
    for name, freq in (("fast", fast), ("general", general)):
        assert float((freq - explicit).abs().max()) < 0.09, name
        assert abs(float(freq.mean() - explicit.mean())) < 0.025, name
    assert float((fast - general).abs().max()) < 0.1


SINGLE_LAYERS = {
    "linear": (lambda: nn.Linear(5, 4), (5,)),
    "conv": (lambda: nn.Conv2d(2, 3, 3, padding=1), (2, 4, 4)),
    "conv_reflect_no_bias": (lambda: nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect", bias=False), (2, 4, 4)),
    "conv_stride": (lambda: nn.Conv2d(2, 3, 2, stride=2), (2, 4, 4)),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("precision", ["decomposed", "kron"])
@pytest.mark.parametrize("layer", sorted(SINGLE_LAYERS))
def test_gibbs_fast_layer_outputs_have_the_exact_covariance_and_fresh_draws(layer, precision, dtype, monkeypatch):
    """A network of one layer is linear in its parameters: its outputs under ``theta ~ Q`` are
    exactly Gaussian with mean ``f(x; mu)`` and covariance ``J Sigma J^T``, computed here densely
    in float64. The fast path in the network's dtype (float32 included: draws and products in
    float32) must reproduce both, and draws of different examples must be independent: two
    inputs alternate, and the cross-covariance of the pairs must vanish. Conv2d layers draw in
    chunks of 3 examples here (odd, not aligned with the pairs, a remainder per batch), so a
    chunk misplaced in the batch shows up in the means.

    Tolerances from the Monte-Carlo standard errors with ``S`` pairs, in units of the standard
    deviations: mean ``1/sqrt(S)``, covariance ``sqrt((1 + rho^2) / (S - 1)) <= sqrt(2 / (S - 1))``,
    cross-covariance ``1/sqrt(S - 1)``; each check allows 5 standard errors (seeded; a wrong
    factor, a transposed basis or a shared draw is off by many).
    """
    import copy

    from skkprior import predictive

    make, shape = SINGLE_LAYERS[layer]
    torch.manual_seed(3)
    model = nn.Sequential(make(), nn.Flatten()).to(DT)
    gauss = make_posterior(model, temperature=0.5) if precision == "decomposed" else make_kron_gaussian(model)
    (lay,) = kronecker_layers(model).values()
    monkeypatch.setattr(predictive, "_CONV_CHUNK_ELEMENTS", 3 * lay.n * lay.m)
    X = torch.randn(2, *shape, generator=torch.Generator().manual_seed(1), dtype=DT)
    with torch.no_grad():
        mu = model(X)                                               # (2, C), the mean is the model
    cov = dense_logit_cov(model, gauss, X)                          # (2, C, C)
    sd = torch.diagonal(cov, dim1=1, dim2=2).sqrt()
    assert float(sd.min()) > 0
    S = 6000
    net = copy.deepcopy(model).to(dtype)
    (out,) = predictive._gibbs_logits(net, gauss, X.to(dtype).repeat(S, *([1] * len(shape))), passes=1,
                                      generator=torch.Generator().manual_seed(0), batch_size=1000,
                                      method="fast", device=None)
    assert out.dtype == dtype
    out = out.to(DT).reshape(S, 2, -1)
    centred = out - out.mean(0)
    emp = torch.einsum("spc,spd->pcd", centred, centred) / (S - 1)
    cross = torch.einsum("sc,sd->cd", centred[:, 0], centred[:, 1]) / (S - 1)
    assert float(((out.mean(0) - mu) / sd).abs().max()) < 5 / math.sqrt(S)
    assert float(((emp - cov) / (sd[:, :, None] * sd[:, None, :])).abs().max()) < 5 * math.sqrt(2 / (S - 1))
    assert float((cross / (sd[0][:, None] * sd[1][None, :])).abs().max()) < 5 / math.sqrt(S - 1)


def test_float32_gibbs_normals_are_rounded_float64_box_muller_normals():
    """The fast path's float32 normals come from float64 uniforms (full tails), not 24-bit ones.

    Pinned against Box-Muller in float64 from the same generator state (errors of a few float32
    ulps of the radius), and their moments against N(0, 1) with 5 Monte-Carlo standard errors
    (``n`` draws: mean ``1/sqrt(n)``, variance ``sqrt(2/n)``, fourth moment ``sqrt(96/n)``).
    """
    from skkprior.predictive import _standard_normal

    shape = (3, 5, 7)                                               # an odd number of elements
    z = _standard_normal(shape, torch.Generator().manual_seed(4), torch.float32, torch.device("cpu"))
    assert z.shape == shape and z.dtype == torch.float32
    u = torch.rand((2, 53), generator=torch.Generator().manual_seed(4), dtype=DT)
    r = torch.sqrt(-2.0 * torch.log1p(-u[0]))
    ref = torch.cat([r * torch.cos(2 * math.pi * u[1]), r * torch.sin(2 * math.pi * u[1])])[:105]
    assert float((z.reshape(-1).double() - ref).abs().max()) < 1e-5
    n = 2_000_000
    z = _standard_normal((n,), torch.Generator().manual_seed(5), torch.float32, torch.device("cpu")).double()
    assert abs(float(z.mean())) < 5 / math.sqrt(n)
    assert abs(float(z.var()) - 1) < 5 * math.sqrt(2 / n)
    assert abs(float((z ** 4).mean()) - 3) < 5 * math.sqrt(96 / n)


def test_gibbs_general_path_is_unbiased_with_isotropic_groups():
    model, X = build("norm")
    post = make_posterior(model, temperature=0.3)
    y = labels_for(model, X)
    with pytest.raises(ValueError, match="norm.weight"):
        gibbs_predict(model, post, X, method="fast")
    auto = error_frequencies(model, post, X, y, 600, "auto", seed=0)
    explicit = explicit_error_frequencies(model, post, X, y, 4000, seed=2)
    assert 0.05 < float(explicit.mean()) < 0.95
    assert float((auto - explicit).abs().max()) < 0.09
    assert abs(float(auto.mean() - explicit.mean())) < 0.025


@pytest.mark.parametrize("kind", MODELS)
def test_gibbs_with_zero_covariance_is_the_deterministic_classifier(kind):
    model, X = build(kind)
    post = make_posterior(model, temperature=1e-30)
    with torch.no_grad():
        model.eval()
        map_labels = model(X).argmax(1)
    assert len(map_labels.unique()) > 1            # a test that could notice mixed-up examples
    y = labels_for(model, X)
    y[::2] = map_labels[::2]
    for method in (("auto", "general") if kind == "norm" else ("fast", "general")):
        labels = gibbs_predict(model, post, X, method=method, generator=torch.Generator().manual_seed(0))
        assert torch.equal(labels, map_labels), method
        n_err, m = gibbs_error_count(model, post, X, y, passes=3, method=method)
        assert (n_err, m) == (3 * int((map_labels != y).sum()), 3 * X.shape[0])


@pytest.mark.parametrize("kind", MODELS)
def test_gibbs_draws_are_fresh_per_example_and_seeded(kind):
    model, X = build(kind)
    post = make_posterior(model, temperature=50.0)
    same = X[:1].repeat(40, *([1] * (X.ndim - 1)))
    for method in (("auto", "general") if kind == "norm" else ("fast", "general")):
        a = gibbs_predict(model, post, same, method=method, generator=torch.Generator().manual_seed(5))
        b = gibbs_predict(model, post, same, method=method, generator=torch.Generator().manual_seed(5))
        assert torch.equal(a, b), method
        assert len(a.unique()) > 1, method        # identical inputs, different draws


# -- bad input ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_bad_input_is_a_clear_error(kind):
    model, X = build(kind)
    post = make_posterior(model)
    wrong = torch.randn(3, 5, dtype=DT) if kind == "mlp" else torch.randn(3, 2, 6, 6, dtype=DT)
    bad = X.clone()
    bad[0].view(-1)[0] = float("nan")
    calls = [
        lambda Z: predict_proba_map(model, Z),
        lambda Z: predict_proba_mc(model, post, Z, n_samples=2),
        lambda Z: predict_proba_linearized(model, post, Z),
        lambda Z: gibbs_predict(model, post, Z),
        lambda Z: gibbs_error_count(model, post, Z, torch.zeros(Z.shape[0], dtype=torch.long)),
    ]
    expected = "4 features" if kind == "mlp" else "1 channels"
    for call in calls:
        with pytest.raises(ValueError, match=f"^X must be .*{expected}"):
            call(wrong)
        with pytest.raises(ValueError, match="^X must be finite"):
            call(bad)
        with pytest.raises(ValueError, match="^X must be a non-empty"):
            call(X[:0])


def test_bad_arguments():
    model, X = build("mlp")
    post = make_posterior(model)
    other, _ = build("norm")
    with pytest.raises(ValueError, match="gaussian must be defined over the model's parameters"):
        predict_proba_mc(other, post, torch.randn(2, 4, dtype=DT))
    with pytest.raises(TypeError, match="LayerwiseGaussian"):
        gibbs_predict(model, "posterior", X)
    with pytest.raises(ValueError, match="n_samples"):
        predict_proba_mc(model, post, X, n_samples=0)
    with pytest.raises(ValueError, match="link"):
        predict_proba_linearized(model, post, X, link="logit")
    with pytest.raises(ValueError, match="method"):
        gibbs_predict(model, post, X, method="fastest")
    with pytest.raises(ValueError, match="^y must be"):
        gibbs_error_count(model, post, X, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="^y must be labels in 0 .. 2"):
        gibbs_error_count(model, post, X, torch.full((X.shape[0],), 3))
    # numpy input, a float32 model and an explicit device work
    p = predict_proba_map(model, X.numpy(), device="cpu")
    torch.testing.assert_close(p, predict_proba_map(model, X), rtol=0, atol=0)
    model32 = make_mlp()
    p32 = predict_proba_mc(model32, LayerwiseGaussian.isotropic(model32, precision=1e3), X.numpy(), n_samples=3)
    assert p32.dtype == DT and p32.shape == (X.shape[0], 3)
