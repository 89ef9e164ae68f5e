"""Layer-wise Gaussians, priors and posteriors against dense algebra on tiny networks (float64)."""

from __future__ import annotations

import io
import math
import os
import pickle

import pytest
import torch
from torch import nn

from skkprior.gaussian import IsotropicPrecision, LayerwiseGaussian
from skkprior.kron import Kron
from skkprior.laplace import KroneckerPrior, isotropic_prior, posterior

DT = torch.float64


def spd(n: int, gen: torch.Generator, cond: float = 10.0) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=DT))
    ev = torch.logspace(0, math.log10(cond), n, dtype=DT) if n > 1 else torch.ones(1, dtype=DT)
    return (q * ev) @ q.T


class TinyNet(nn.Module):
    """Linear + LayerNorm (uncovered) + Conv2d + Linear head, with and without bias."""

    def __init__(self, n_classes: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 2, bias=True)          # n=2, m=5
        self.fc = nn.Linear(8, 3, bias=False)               # n=3, m=8
        self.norm = nn.LayerNorm(3)                         # uncovered: 3 + 3
        self.head = nn.Linear(3, n_classes)                 # n=C, m=4

    def forward(self, x):
        h = torch.tanh(self.conv(x)).flatten(1)
        return self.head(torch.tanh(self.norm(self.fc(h))))


@pytest.fixture()
def net():
    torch.manual_seed(1)
    return TinyNet().double()


def random_prior(net: nn.Module, gen: torch.Generator, temperature: float = 0.7) -> KroneckerPrior:
    base = isotropic_prior(net, weight_decay=0.5, zero_mean=False)
    groups = []
    for g in base:
        g = g.to(DT)
        if g.layer is not None:
            g.precision = Kron(spd(g.layer.n, gen), spd(g.layer.m, gen))
            g.mean = g.mean + 0.3 * torch.randn(g.mean.shape, generator=gen, dtype=DT)
        g.temperature = temperature
        groups.append(g)
    return KroneckerPrior(groups, {**base.metadata, "kind": "test"})


def random_curvature(net: nn.Module, gen: torch.Generator) -> dict[str, Kron]:
    from skkprior._layers import kronecker_layers

    out = {}
    for name, layer in kronecker_layers(net).items():
        # rank-deficient PSD factors, as curvature often is
        g = torch.randn(layer.n, max(1, layer.n - 1), generator=gen, dtype=DT)
        a = torch.randn(layer.m, max(1, layer.m - 2), generator=gen, dtype=DT)
        out[name] = Kron(g @ g.T, a @ a.T)
    return out


def dense_kl(mq, Pq, mp, Pp):
    Sq = torch.linalg.inv(Pq)
    d = mq.numel()
    diff = mq - mp
    return 0.5 * (torch.trace(Pp @ Sq) + diff @ Pp @ diff - d + torch.logdet(Pq) - torch.logdet(Pp))


@pytest.fixture()
def setup(net):
    gen = torch.Generator().manual_seed(3)
    prior = random_prior(net, gen)
    curv = random_curvature(net, gen)
    post = posterior(prior, curv, net, prior_scale=0.8, likelihood_scale=1.7, temperature=0.3)
    return net, prior, curv, post


def test_posterior_precision_is_exact_two_term_sum(setup):
    net, prior, curv, post = setup
    mean, P = post.to_dense()
    blocks = []
    matched = prior.match(net)
    for g in matched:
        if g.layer is not None:
            Pp = g.precision.to_dense() / g.temperature
            blocks.append((1.7 * curv[g.name].to_dense() + 0.8 * Pp) / 0.3)
        else:
            blocks.append(0.8 * g.precision.to_dense() / g.temperature / 0.3)
    expected = torch.block_diag(*blocks)
    torch.testing.assert_close(P, expected, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(mean, post.flatten(net).to(DT))


def test_kl_logdet_trace_quadratic_against_dense(setup):
    net, prior, curv, post = setup
    mq, Pq = post.to_dense()
    mp, Pp = post.prior.to_dense()
    kl = post.kl_to_prior()
    torch.testing.assert_close(kl.total, dense_kl(mq, Pq, mp, Pp), rtol=1e-8, atol=1e-8)
    # the same through the general (non-fast) path: prior re-matched, so no shared objects
    kl_general = post.kl(prior.match(net))
    torch.testing.assert_close(kl_general.total, kl.total, rtol=1e-8, atol=1e-8)
    # named parts
    Sq = torch.linalg.inv(Pq)
    total_trace = sum(kl.trace.values())
    torch.testing.assert_close(total_trace, torch.trace(Pp @ Sq), rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(sum(kl.mahalanobis.values()), (mq - mp) @ Pp @ (mq - mp), rtol=1e-8, atol=1e-8)
    # logdet of the covariance
    torch.testing.assert_close(post.logdet(), -torch.logdet(Pq), rtol=1e-9, atol=1e-8)
    torch.testing.assert_close(prior.logdet(), -torch.logdet(prior.to_dense()[1]), rtol=1e-9, atol=1e-8)
    # trace term sum_l tr(F_l Sigma_l) over the Kronecker groups
    F_blocks = []
    for g in post:
        F_blocks.append(curv[g.name].to_dense() if g.layer is not None else torch.zeros(g.dim, g.dim, dtype=DT))
    F = torch.block_diag(*F_blocks)
    torch.testing.assert_close(post.trace_term(curv), torch.trace(F @ Sq), rtol=1e-9, atol=1e-9)
    # quadratic form at a random parameter point
    theta = {k: v + 0.1 * torch.randn_like(v) for k, v in net.named_parameters()}
    x = post.prior.flatten(theta)
    torch.testing.assert_close(post.prior.quadratic(theta), (x - mp) @ Pp @ (x - mp), rtol=1e-9, atol=1e-9)


def test_kl_of_self_is_zero_and_kl_is_positive(setup):
    net, prior, curv, post = setup
    assert abs(float(prior.kl(prior).total)) < 1e-9
    for tau in (0.01, 1.0, 5.0):
        assert float(post.with_scales(temperature=tau).kl_to_prior().total) > 0


def test_kl_between_any_two_precision_types_against_dense(setup):
    """The precision protocol makes every pair work, posterior against posterior included."""
    _, _, _, post = setup
    other = post.with_scales(prior_scale=3.0, temperature=0.2)
    mq, Pq = post.to_dense()
    mp, Pp = other.to_dense()
    torch.testing.assert_close(post.kl(other).total, dense_kl(mq, Pq, mp, Pp), rtol=1e-8, atol=1e-8)
    assert abs(float(post.kl(post).total)) < 1e-8 * post.dim
    # a posterior against a prior whose layers are compressed to one Kronecker product
    compressed = other.as_prior()
    mc, Pc = compressed.to_dense()
    torch.testing.assert_close(post.kl(compressed).total, dense_kl(mq, Pq, mc, Pc), rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(compressed.kl(post).total, dense_kl(mc, Pc, mq, Pq), rtol=1e-8, atol=1e-8)


def test_negative_kl_raises(setup, monkeypatch):
    import skkprior.gaussian as gmod

    _, prior, _, post = setup

    def broken(q, p):
        z = torch.zeros((), dtype=DT)
        return z, z, z - 5.0

    monkeypatch.setattr(gmod, "_group_kl", broken)
    with pytest.raises(ArithmeticError, match="non-negative"):
        post.kl_to_prior()


def test_sampling_covariance_is_exact(setup):
    net, prior, curv, post = setup
    _, Pq = post.to_dense()
    cov = torch.linalg.inv(Pq)
    offset = 0
    for g in post:
        basis = torch.eye(g.dim, dtype=DT).reshape(g.dim, *g.mean.shape)
        root = g.noise_map(basis).reshape(g.dim, -1)  # rows: images of basis vectors
        block = cov[offset:offset + g.dim, offset:offset + g.dim]
        torch.testing.assert_close(root.T @ root, block, rtol=1e-8, atol=1e-10)
        offset += g.dim
    # and for a Kron (prior) precision
    offset = 0
    _, Pp = prior.match(net).to_dense()
    cov_p = torch.linalg.inv(Pp)
    for g in prior.match(net):
        basis = torch.eye(g.dim, dtype=DT).reshape(g.dim, *g.mean.shape)
        root = g.noise_map(basis).reshape(g.dim, -1)
        torch.testing.assert_close(root.T @ root, cov_p[offset:offset + g.dim, offset:offset + g.dim],
                                   rtol=1e-8, atol=1e-10)
        offset += g.dim


def test_sample_monte_carlo_moments(setup):
    net, prior, curv, post = setup
    gen = torch.Generator().manual_seed(0)
    S = 20000
    samples = post.sample(S, generator=gen)
    assert set(samples) == set(dict(net.named_parameters()))
    for name, p in net.named_parameters():
        assert samples[name].shape == (S, *p.shape)
    flat = torch.stack([post.flatten({k: v[i] for k, v in samples.items()}) for i in range(0, 2000)])
    mq, Pq = post.to_dense()
    torch.testing.assert_close(flat.mean(0), mq, atol=0.1 * float(torch.linalg.inv(Pq).diag().sqrt().max()), rtol=0)
    full = torch.cat([g.from_params(samples, batch_dims=1).reshape(S, -1) for g in post], dim=1)
    emp = torch.cov(full.T)
    cov = torch.linalg.inv(Pq)
    scale = cov.diag().sqrt()
    corr_err = ((emp - cov) / torch.outer(scale, scale)).abs().max()
    assert corr_err < 0.05


def test_sample_is_seeded(setup):
    _, _, _, post = setup
    a = post.sample(3, generator=torch.Generator().manual_seed(5))
    b = post.sample(3, generator=torch.Generator().manual_seed(5))
    for k in a:
        assert torch.equal(a[k], b[k])


def test_quadratic_is_differentiable(setup):
    net, prior, _, _ = setup
    matched = prior.match(net)
    net.zero_grad()
    matched.quadratic(net).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    # gradient against dense: d/dx (x-m)^T P (x-m) = 2 P (x-m)
    mp, Pp = matched.to_dense()
    x = matched.flatten(net).detach()
    grads = matched.flatten({k: v.grad for k, v in net.named_parameters()})
    torch.testing.assert_close(grads, 2 * Pp @ (x - mp), rtol=1e-8, atol=1e-9)


def test_with_scales_equals_fresh_posterior(setup):
    net, prior, curv, post = setup
    fresh = posterior(prior, curv, net, prior_scale=2.0, likelihood_scale=0.5, temperature=1.3)
    cheap = post.with_scales(2.0, 0.5, 1.3)
    torch.testing.assert_close(cheap.to_dense()[1], fresh.to_dense()[1], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(cheap.kl_to_prior().total, fresh.kl_to_prior().total, rtol=1e-9, atol=1e-9)


def test_scales_are_differentiable(setup):
    net, prior, curv, post = setup
    log_a = torch.zeros((), dtype=DT, requires_grad=True)
    log_t = torch.zeros((), dtype=DT, requires_grad=True)

    def objective(la, lt):
        q = post.with_scales(prior_scale=la.exp(), temperature=lt.exp())
        return q.kl_to_prior().total + q.trace_term(curv)

    assert torch.autograd.gradcheck(objective, (log_a, log_t))


def test_per_layer_scales(setup):
    net, prior, curv, post = setup
    names = list(post.groups)
    alphas = {k: 0.5 + i for i, k in enumerate(names)}
    q = post.with_scales(prior_scale=alphas)
    for k in names:
        assert q.prior_scale[k] == alphas[k]
    with pytest.raises(ValueError, match="a value for every group"):
        post.with_scales(prior_scale={names[0]: 1.0})


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_non_positive_scales_raise(setup, bad):
    net, prior, curv, post = setup
    for kw in ("prior_scale", "likelihood_scale", "temperature"):
        with pytest.raises(ValueError, match=kw):
            posterior(prior, curv, net, **{kw: bad})


def test_head_shape_change_gets_isotropic_prior(net):
    gen = torch.Generator().manual_seed(0)
    prior = random_prior(net, gen)
    target = TinyNet(n_classes=5).double()
    matched = prior.match(target)
    head = matched.groups["head"]
    assert head.parameter_shapes == ((5, 3), (5,))
    assert torch.equal(head.mean, torch.zeros(5, 4, dtype=DT))
    assert torch.allclose(head.precision.to_dense(), prior.weight_decay * torch.eye(20, dtype=DT))
    # any other mismatch is an error naming the layer
    other = TinyNet().double()
    other.fc = nn.Linear(8, 3, bias=True)
    with pytest.raises(ValueError, match="layer 'fc'"):
        prior.match(other)
    other2 = TinyNet().double()
    other2.norm = nn.LayerNorm(3, elementwise_affine=False)
    with pytest.raises(ValueError, match="without a module parameter"):
        prior.match(other2)


def test_save_load_round_trip_is_bit_identical(setup, tmp_path):
    net, prior, curv, post = setup
    for obj, cls in ((prior, KroneckerPrior), (post, LayerwiseGaussian)):
        path = tmp_path / "g.pt"
        obj.save(path)
        back = cls.load(path)
        assert back.metadata == obj.metadata
        assert list(back.groups) == list(obj.groups)
        for a, b in zip(obj, back):
            assert torch.equal(a.mean, b.mean)
            assert float(a.temperature) == float(b.temperature)
            sa, sb = a.precision, b.precision
            for attr in ("G", "A", "T_G", "T_A", "D_G", "D_A", "value"):
                if hasattr(sa, attr):
                    va, vb = getattr(sa, attr), getattr(sb, attr)
                    assert (torch.equal(va, vb) if isinstance(va, torch.Tensor) else float(va) == float(vb))
        torch.testing.assert_close(back.to_dense()[1], obj.to_dense()[1], rtol=0, atol=0)
    prior.save(tmp_path / "p.pt")
    prior_back = KroneckerPrior.load(tmp_path / "p.pt")
    assert abs(float(prior_back.kl(prior).total)) < 1e-9


def test_load_with_map_location(setup, tmp_path):
    _, prior, _, _ = setup
    prior.save(tmp_path / "p.pt")
    back = KroneckerPrior.load(tmp_path / "p.pt", map_location="cpu")
    assert back.device.type == "cpu"
    assert prior.to("cpu").device.type == "cpu"


def test_truncated_foreign_and_malicious_files_are_refused(setup, tmp_path):
    _, prior, _, _ = setup
    good = tmp_path / "p.pt"
    prior.save(good)
    data = good.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated, corrupted"):
        KroneckerPrior.load(tmp_path / "trunc.pt")
    torch.save({"weights": torch.ones(2)}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="skkprior Gaussian"):
        KroneckerPrior.load(tmp_path / "foreign.pt")
    state = prior.state()
    state["version"] = 99
    torch.save(state, tmp_path / "future.pt")
    with pytest.raises(ValueError, match="format version"):
        KroneckerPrior.load(tmp_path / "future.pt")
    del state["groups"][0]["mean"]
    state["version"] = 1
    torch.save(state, tmp_path / "broken.pt")
    with pytest.raises(ValueError, match="complete skkprior Gaussian"):
        KroneckerPrior.load(tmp_path / "broken.pt")

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"format": "skkprior-gaussian", "payload": Evil()}, f)
    with pytest.raises(ValueError, match="weights_only"):
        KroneckerPrior.load(tmp_path / "evil.pt")
    buf = io.BytesIO()
    torch.save({"format": "skkprior-gaussian", "evil": Evil()}, buf)
    buf.seek(0)
    with pytest.raises(ValueError, match="weights_only"):
        KroneckerPrior.load(buf)
    assert not (tmp_path / "pwned").exists()


def test_isotropic_precision_and_errors():
    p = IsotropicPrecision(2.0, 4)
    torch.testing.assert_close(p.to_dense(), 2 * torch.eye(4, dtype=DT))
    with pytest.raises(ValueError, match="positive"):
        IsotropicPrecision(0.0, 3)
    with pytest.raises(ValueError, match="n_samples"):
        LayerwiseGaussian.isotropic(nn.Linear(2, 2), 1.0).sample(0)


def test_isotropic_prior_kinds(net):
    zero = isotropic_prior(net, weight_decay=0.1)
    assert all(torch.count_nonzero(g.mean) == 0 for g in zero)
    learned = isotropic_prior(net, weight_decay=0.1, zero_mean=False)
    torch.testing.assert_close(learned.flatten(net).to(DT), learned.to_dense()[0])
    _, P = zero.to_dense()
    torch.testing.assert_close(P, 0.1 * torch.eye(P.shape[0], dtype=DT))
    with pytest.raises(ValueError, match="weight_decay"):
        isotropic_prior(net, weight_decay=0.0)


# -- compression of the learned prior's two-term precision -----------------------------------------
@pytest.mark.parametrize("scale,damping", [(1.0, 0.5), (3.0, 1e-3), (0.0, 2.0)])
def test_damped_kron_keeps_the_floor_against_dense(scale, damping):
    from skkprior.laplace import damped_kron

    gen = torch.Generator().manual_seed(5)
    low = torch.randn(4, 2, generator=gen, dtype=DT)
    F = Kron(low @ low.T, spd(3, gen, cond=1e6))  # G rank 2 of 4: directions without curvature
    P = damped_kron(F, scale, damping)
    exact = scale * F.to_dense() + damping * torch.eye(12, dtype=DT)
    # P - (s F + d I) is the sum of two PSD cross terms
    assert float(torch.linalg.eigvalsh(P.to_dense() - exact).min()) >= -1e-10 * float(exact.norm())
    assert float(torch.linalg.eigvalsh(P.to_dense()).min()) >= damping * (1 - 1e-10)
    # the expansion, written out
    n, m = 4, 3
    tr_g, tr_a = float(torch.trace(F.G)) / n, float(torch.trace(F.A)) / m
    pi = math.sqrt(tr_g / tr_a)
    cross = math.sqrt(scale * damping) * (torch.kron(F.G / pi, torch.eye(m, dtype=DT))
                                          + torch.kron(torch.eye(n, dtype=DT), pi * F.A))
    torch.testing.assert_close(P.to_dense(), exact + cross, rtol=1e-12, atol=1e-12 * float(exact.norm()))
    with pytest.raises(ValueError, match="damping"):
        damped_kron(F, scale, 0.0)
    with pytest.raises(ValueError, match="scale"):
        damped_kron(F, float("nan"), damping)
    with pytest.raises(TypeError, match="Kron"):
        damped_kron(F.to_dense(), scale, damping)


def test_learn_prior_compressions_against_dense(net):
    from types import SimpleNamespace

    from skkprior._layers import kronecker_layers
    from skkprior.laplace import learn_prior

    gen = torch.Generator().manual_seed(9)
    factors = {}
    for name, layer in kronecker_layers(net).items():
        low = torch.randn(layer.n, 1, generator=gen, dtype=DT)  # rank-1 G: a floor matters
        factors[name] = Kron(low @ low.T, spd(layer.m, gen, cond=1e3))
    curv = SimpleNamespace(factors=factors, n_samples=50, nll_sum=10.0)
    wd = 0.3
    for compression in ("nearest", "damped"):
        prior = learn_prior(net, None, curvature=curv, weight_decay=wd, compression=compression)
        assert prior.metadata["compression"] == compression
        groups = {g.name: g for g in prior}
        for name, F in factors.items():
            P = groups[name].precision.to_dense()
            exact = F.to_dense() + wd * torch.eye(P.shape[0], dtype=DT)
            err = float(torch.linalg.norm(P - exact) / torch.linalg.norm(exact))
            assert prior.metadata["nkp_error"][name] == pytest.approx(err, rel=1e-6, abs=1e-9)
            if compression == "damped":
                assert float(torch.linalg.eigvalsh(P - exact).min()) >= -1e-10 * float(exact.norm())
    with pytest.raises(ValueError, match="compression"):
        learn_prior(net, None, curvature=curv, compression="exact")
