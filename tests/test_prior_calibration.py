"""learn_prior's calibration of (alpha_0, beta_0, tau_0) on the source data (the paper's prior calibration)."""

import itertools
import math

import pytest
import torch
from torch import nn

from skkprior import isotropic_prior, kfac, learn_prior, posterior
from skkprior.tuning import PACBayesObjective, laplace_log_evidence, tune_marglik

DT = torch.float64


@pytest.fixture(scope="module")
def source():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.LayerNorm(8), nn.Linear(8, 3))
    X = torch.randn(300, 4)
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).long() + (X[:, 2] > 1).long()
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(net(X), y).backward()
        opt.step()
    curv = kfac(net, X, y, fisher="exact", progress=False)
    return net, X, y, curv


def _objective(net, curv, wd, bound="catoni"):
    hyper = isotropic_prior(net, weight_decay=wd, zero_mean=True)
    q = posterior(hyper, curv, net)
    return PACBayesObjective(q, nll_sum=curv.nll_sum, n=curv.n_samples, bound=bound, delta=0.025)


def _log_C(cal):
    C = cal["catoni_C"]
    return None if C is None else torch.tensor(math.log(C), dtype=DT)


@pytest.mark.parametrize("bound", ["mcallester", "catoni"])
def test_pac_bayes_calibration_beats_a_brute_force_grid_of_the_same_objective(source, bound):
    net, X, y, curv = source
    prior = learn_prior(net, X, y, curvature=curv, weight_decay=0.5, scaling="pac-bayes", per_layer=False,
                        objective=bound)
    cal = prior.metadata["calibration"]
    a, b, t = (cal[k]["0"] for k in ("prior_scale", "likelihood_scale", "temperature"))
    assert all(cal[k][g] == cal[k]["0"] for k in ("prior_scale", "likelihood_scale", "temperature")
               for g in cal[k])  # shared
    obj = _objective(net, curv, 0.5, bound)

    def at(la, lb, lt, lc=None):
        logs = {"prior_scale": torch.tensor(la, dtype=DT), "likelihood_scale": torch.tensor(lb, dtype=DT),
                "temperature": torch.tensor(lt, dtype=DT)}
        return float(obj(logs, None if lc is None else torch.tensor(lc, dtype=DT)))

    # the same objective (Catoni's constant C is tuned with the scales, so the grid covers it too)
    Cs = [None] if bound == "mcallester" else [math.log(v) for v in (0.3, 1, 2, 3, 10)]
    best_grid = min(at(la, lb, lt, lc) for la, lb, lt, lc in itertools.product(
        [math.log(v) for v in (0.1, 0.3, 1, 3, 10, 30)], [math.log(v) for v in (0.3, 1, 3)],
        [math.log(v) for v in (1e-3, 1e-2, 0.03, 0.1, 0.3, 1)], Cs))
    lc = _log_C(cal)
    calibrated = at(math.log(a), math.log(b), math.log(t), None if lc is None else float(lc))
    assert calibrated <= best_grid + 1e-9, (calibrated, best_grid)
    assert calibrated < at(0.0, 0.0, 0.0, None if bound == "mcallester" else 0.0)  # alpha = beta = tau = 1


def test_calibrated_prior_is_the_fixed_prior_at_the_calibrated_scales(source):
    net, X, y, curv = source
    cal_prior = learn_prior(net, X, y, curvature=curv, weight_decay=0.5, scaling="pac-bayes", per_layer=False)
    cal = cal_prior.metadata["calibration"]
    fixed = learn_prior(net, X, y, curvature=curv, weight_decay=0.5, prior_scale=cal["prior_scale"]["0"],
                        likelihood_scale=cal["likelihood_scale"]["0"], temperature=cal["temperature"]["0"])
    m1, P1 = cal_prior.to_dense()
    m2, P2 = fixed.to_dense()
    torch.testing.assert_close(P1, P2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(m1, m2, rtol=0, atol=0)


def test_per_layer_calibration_is_at_least_as_good_as_shared(source):
    net, X, y, curv = source
    obj = _objective(net, curv, 0.5)
    values = {}
    for per_layer in (False, True):
        cal = learn_prior(net, X, y, curvature=curv, weight_decay=0.5, scaling="pac-bayes",
                          per_layer=per_layer).metadata["calibration"]
        logs = {k: {g: torch.tensor(math.log(cal[k][g]), dtype=DT) for g in cal[k]}
                for k in ("prior_scale", "likelihood_scale", "temperature")}
        values[per_layer] = float(obj(logs, _log_C(cal)))
    assert values[True] <= values[False] + 1e-6 * abs(values[False])


def test_marglik_calibration_is_tune_marglik_on_the_source_posterior(source):
    net, X, y, curv = source
    cal = learn_prior(net, X, y, curvature=curv, weight_decay=0.5, scaling="marglik",
                      per_layer=False).metadata["calibration"]
    q = posterior(isotropic_prior(net, weight_decay=0.5, zero_mean=True), curv, net)
    tuned = tune_marglik(q, nll_sum=curv.nll_sum, per_layer=False)
    for g, alpha in cal["prior_scale"].items():
        assert alpha == pytest.approx(tuned.prior_scale[g], rel=1e-12)
    # and it is the maximum of the evidence
    alpha = cal["prior_scale"]["0"]
    best = float(laplace_log_evidence(q.with_scales(prior_scale=alpha), nll_sum=curv.nll_sum))
    for f in (1.01, 1 / 1.01):
        assert float(laplace_log_evidence(q.with_scales(prior_scale=alpha * f), nll_sum=curv.nll_sum)) <= best


def test_calibration_needs_labels_and_a_kronecker_prior(source):
    net, X, y, curv = source
    with pytest.raises(ValueError, match="needs the source NLL"):
        learn_prior(net, X, None, scaling="pac-bayes", progress=False)
    with pytest.raises(ValueError, match="scaling must be 'fixed' for kind='isotropic'"):
        learn_prior(net, X, y, kind="isotropic", scaling="marglik")
    with pytest.raises(ValueError, match="scaling must be"):
        learn_prior(net, X, y, curvature=curv, scaling="evidence")
