"""The precision protocol: every type against its dense matrix, and the diagonal curvature end to end."""

import math

import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap

from skkprior import isotropic_prior, posterior
from skkprior.curvature import diagonal_fisher, kfac
from skkprior.kron import Kron, KronDecomposed
from skkprior.precision import (
    DiagonalCurvature,
    DiagonalPrecision,
    IsotropicPrecision,
    precision_from_state,
)
from skkprior.testing import PrecisionTests, random_psd, random_spd
from skkprior.tuning import SCALE_NAMES, PACBayesObjective, laplace_log_evidence, tune_marglik

DT = torch.float64


def dense_kl(mq, Pq, mp, Pp):
    d = mq.numel()
    Sq = torch.linalg.inv(Pq)
    diff = mq - mp
    return 0.5 * (torch.trace(Pp @ Sq) + diff @ Pp @ diff - d + torch.logdet(Pq) - torch.logdet(Pp))


class TestIsotropic(PrecisionTests):
    def make(self, case):
        return IsotropicPrecision(3.0, case.dim), 3.0 * torch.eye(case.dim, dtype=DT)


class TestDiagonal(PrecisionTests):
    def make(self, case):
        v = torch.rand(case.n, case.m, generator=case.generator(1), dtype=DT)
        v = 1.0 + (case.cond - 1.0) * v  # entries between 1 and cond
        return DiagonalPrecision(v), torch.diag(v.reshape(-1))


class TestKron(PrecisionTests):
    def make(self, case):
        G = random_spd(case.n, cond=case.cond, generator=case.generator(1))
        A = random_spd(case.m, cond=case.cond, generator=case.generator(2))
        return Kron(G, A), torch.kron(G, A)


class TestKronDecomposed(PrecisionTests):
    def make_term_objects(self, case):
        F = Kron(random_psd(case.n, rank=max(1, case.n - 1), generator=case.generator(1)),
                 random_psd(case.m, rank=case.m, generator=case.generator(2)))
        P = Kron(random_spd(case.n, cond=case.cond, generator=case.generator(3)),
                 random_spd(case.m, cond=case.cond, generator=case.generator(4)))
        return F, P

    def make_terms(self, case):
        F, P = self.make_term_objects(case)
        return F.to_dense(), P.to_dense(), 0.7, 1.3

    def make(self, case):
        F, P = self.make_term_objects(case)
        op = KronDecomposed.from_terms(F, P, beta=0.7, alpha=1.3)
        return op, 0.7 * F.to_dense() + 1.3 * P.to_dense()


class TestDiagonalDecomposedDiagonalPrior(PrecisionTests):
    def make_term_objects(self, case):
        f = torch.rand(case.n, case.m, generator=case.generator(1), dtype=DT)
        f[0, 0] = 0.0  # a direction without curvature
        p = 1.0 + (case.cond - 1.0) * torch.rand(case.n, case.m, generator=case.generator(2), dtype=DT)
        return DiagonalCurvature(f), DiagonalPrecision(p)

    def make_terms(self, case):
        F, P = self.make_term_objects(case)
        return F.to_dense(), P.to_dense(), 0.7, 1.3

    def make(self, case):
        F, P = self.make_term_objects(case)
        op, _ = F.posterior_with(P)
        op = op.with_weights(beta=0.7, alpha=1.3)
        return op, 0.7 * F.to_dense() + 1.3 * P.to_dense()


class TestDiagonalDecomposedKronPrior(PrecisionTests):
    """A Kronecker prior keeps only its diagonal in the posterior precision (stated approximation)."""

    def make_term_objects(self, case):
        f = torch.rand(case.n, case.m, generator=case.generator(1), dtype=DT)
        P = Kron(random_spd(case.n, cond=case.cond, generator=case.generator(3)),
                 random_spd(case.m, cond=case.cond, generator=case.generator(4)))
        return DiagonalCurvature(f), P

    def make_terms(self, case):
        F, P = self.make_term_objects(case)
        return F.to_dense(), torch.diag(torch.diagonal(P.to_dense())), 0.7, 1.3

    def make(self, case):
        F, P = self.make_term_objects(case)
        op, _ = F.posterior_with(P)
        op = op.with_weights(beta=0.7, alpha=1.3)
        return op, 0.7 * F.to_dense() + 1.3 * torch.diag(torch.diagonal(P.to_dense()))

    def test_logdet_gap_is_hadamard(self, case):
        op, _ = self.make(case)
        _, P = self.make_term_objects(case)
        expected = float(torch.log(torch.diagonal(P.to_dense())).sum() - torch.logdet(P.to_dense()))
        assert op.logdet_gap >= -1e-10 * case.dim
        assert abs(op.logdet_gap - expected) <= 1e-9 * max(1.0, abs(expected)) * case.cond


def test_unknown_precision_type_in_a_file_is_refused():
    with pytest.raises(ValueError, match="precision type must be one of"):
        precision_from_state({"type": "lowrank", "values": torch.ones(2)})


def test_bad_diagonal_values_are_refused():
    with pytest.raises(ValueError, match="finite and positive"):
        DiagonalPrecision(torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="finite and non-negative"):
        DiagonalCurvature(torch.tensor([[1.0, float("nan")]]))


# --------------------------------------------------------------------------------------------
# the diagonal curvature end to end
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 2, 2), nn.Tanh(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3)).double()
    X, y = torch.randn(20, 1, 5, 5, dtype=DT), torch.randint(0, 3, (20,))
    return net, X, y


def _dense_ggn_diagonal(net, X):
    params = {k: v.detach() for k, v in net.named_parameters()}

    def f(p, x):
        return functional_call(net, p, (x.unsqueeze(0),)).squeeze(0)

    J = vmap(jacrev(f), in_dims=(None, 0))(params, X)
    with torch.no_grad():
        p = net(X).softmax(-1)
    H = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    out = {}
    for name in ("0", "3"):
        Jw, Jb = J[f"{name}.weight"], J[f"{name}.bias"]
        B, C, n = Jb.shape
        Jwb = torch.cat([Jw.reshape(B, C, n, -1), Jb.reshape(B, C, n, 1)], dim=-1).reshape(B, C, -1)
        out[name] = torch.einsum("bci,bcd,bdi->i", Jwb, H, Jwb).reshape(n, -1)
    return out


def test_diagonal_fisher_is_the_exact_ggn_diagonal(tiny):
    net, X, y = tiny
    curv = diagonal_fisher(net, X, y, fisher="exact", batch_size=7, progress=False)
    truth = _dense_ggn_diagonal(net, X)
    for name, f in curv.factors.items():
        torch.testing.assert_close(f.values, truth[name], rtol=1e-10, atol=1e-12)
    # sums combine exactly over updates and merges
    half = diagonal_fisher(net, X[:9], y[:9], fisher="exact", progress=False)
    half = half + diagonal_fisher(net, X[9:], y[9:], fisher="exact", progress=False)
    for name, f in half.factors.items():
        torch.testing.assert_close(f.values, truth[name], rtol=1e-10, atol=1e-12)


def test_diagonal_posterior_against_dense(tiny):
    net, X, y = tiny
    curv = diagonal_fisher(net, X, y, fisher="exact", progress=False)
    # a Kronecker prior (a learned-prior stand-in): the posterior keeps its diagonal, the KL is exact
    kron_prior = isotropic_prior(net, weight_decay=1.0)
    post_k = posterior(kron_prior, kfac(net, X, y, fisher="exact", progress=False), net)
    prior = post_k.with_scales(prior_scale=2.0).as_prior()
    post = posterior(prior, curv, net, prior_scale=1.5, likelihood_scale=0.8, temperature=0.3)
    mq, Pq = post.to_dense()
    mp, Pp = post.prior.to_dense()
    F = torch.block_diag(*[torch.diag(curv.factors[g.name].values.reshape(-1)) for g in post])
    expected_P = (0.8 * F + 1.5 * torch.diag(torch.diagonal(Pp))) / 0.3
    torch.testing.assert_close(Pq, expected_P, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(post.kl_to_prior().total, dense_kl(mq, Pq, mp, Pp), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(post.kl(prior.match(net)).total, dense_kl(mq, Pq, mp, Pp), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(post.trace_term(curv), torch.trace(F @ torch.linalg.inv(Pq)), rtol=1e-10,
                               atol=1e-12)
    # the fast tuning objective (whitened eigenvalues + the log-det gap) equals the general route
    obj = PACBayesObjective(post, nll_sum=curv.nll_sum, n=len(y), bound="mcallester")
    logs = {"prior_scale": torch.tensor(math.log(1.5), dtype=DT),
            "likelihood_scale": torch.tensor(math.log(0.8), dtype=DT),
            "temperature": torch.tensor(math.log(0.3), dtype=DT)}
    torch.testing.assert_close(obj(logs), obj.reference(post), rtol=1e-10, atol=1e-12)
    assert set(logs) == set(SCALE_NAMES)
    # as a prior it is exact (diagonal), and the next task takes it
    nxt = post.as_prior()
    assert all(e == 0.0 for e in nxt.metadata["nkp_error"].values())
    torch.testing.assert_close(nxt.to_dense()[1], Pq, rtol=1e-12, atol=1e-12)
    assert float(posterior(nxt, curv, net).kl_to_prior().total) > 0


def test_diagonal_posterior_evidence_matches_dense(tiny):
    net, X, y = tiny
    curv = diagonal_fisher(net, X, y, fisher="exact", progress=False)
    post = posterior(isotropic_prior(net, weight_decay=2.0), curv, net, prior_scale=0.5)
    mq, Pq = post.to_dense()
    mp, Pp = post.prior.to_dense()
    # ln Z = -NLL - 1/2 (theta - mu)^T alpha P (theta - mu) - 1/2 (logdet Pq - logdet alpha P)
    diff = mq - mp
    expected = -curv.nll_sum - 0.5 * 0.5 * diff @ Pp @ diff - 0.5 * (torch.logdet(Pq) - torch.logdet(0.5 * Pp))
    torch.testing.assert_close(laplace_log_evidence(post, nll_sum=curv.nll_sum), expected, rtol=1e-10, atol=1e-9)


def test_diagonal_posterior_round_trips_through_a_file(tiny, tmp_path):
    from skkprior.laplace import KroneckerPosterior, KroneckerPrior

    net, X, y = tiny
    curv = diagonal_fisher(net, X, y, fisher="exact", progress=False)
    post = posterior(isotropic_prior(net, weight_decay=2.0), curv, net, prior_scale=0.5, temperature=0.2)
    path = tmp_path / "post.pt"
    post.save(path)
    back = KroneckerPosterior.load(path)
    torch.testing.assert_close(back.kl_to_prior().total, post.kl_to_prior().total, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(back.with_scales(prior_scale=3.0).kl_to_prior().total,
                               post.with_scales(prior_scale=3.0).kl_to_prior().total, rtol=1e-12, atol=1e-12)
    prior = post.as_prior()
    prior.save(tmp_path / "prior.pt")
    again = KroneckerPrior.load(tmp_path / "prior.pt")
    torch.testing.assert_close(again.to_dense()[1], prior.to_dense()[1], rtol=1e-14, atol=0.0)
    with pytest.raises(ValueError, match="posterior file"):
        KroneckerPrior.load(path)


def test_diagonal_fisher_all_reduces_a_layer_that_is_never_called(tmp_path):
    import torch.distributed as dist

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.unused = nn.Linear(4, 3), nn.Linear(2, 2)

        def forward(self, x):
            return self.used(x)

    torch.manual_seed(0)
    net, X, y = Net(), torch.randn(8, 4), torch.randint(0, 3, (8,))
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        with pytest.warns(RuntimeWarning, match="never called"):
            got = diagonal_fisher(net, X, y, fisher="exact", progress=False, distributed=True).factors
    finally:
        dist.destroy_process_group()
    # before: KeyError 'unused' in the all-reduce; one process must give the plain pass's sums
    with pytest.warns(RuntimeWarning, match="never called"):
        plain = diagonal_fisher(net, X, y, fisher="exact", progress=False).factors
    torch.testing.assert_close(got["used"].values, plain["used"].values, rtol=1e-12, atol=0.0)
    assert float(got["unused"].values.abs().max()) == 0.0


def test_marglik_with_a_diagonal_posterior_of_a_kronecker_prior_reports_the_evidence(tiny):
    net, X, y = tiny
    kron_prior = posterior(isotropic_prior(net, weight_decay=1.0), kfac(net, X, y, fisher="exact", progress=False),
                           net).as_prior()  # non-diagonal Kronecker factors: logdet_gap > 0
    curv = diagonal_fisher(net, X, y, fisher="exact", progress=False)
    post = posterior(kron_prior, curv, net)
    assert sum(g.precision.logdet_gap for g in post) > 1e-6
    tuned = tune_marglik(post, nll_sum=curv.nll_sum)
    # the objective is the negative evidence; before, tune_marglik's left out the log-det gap
    # that laplace_log_evidence includes
    evidence = float(laplace_log_evidence(tuned.posterior, nll_sum=curv.nll_sum))
    assert abs(tuned.objective_best + evidence) <= 1e-9 * abs(evidence), (tuned.objective_best, evidence)
