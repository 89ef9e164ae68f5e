"""Issue 13, validity: what a certificate's stated confidence pays for.

- A grid of ``prior_scales`` is a choice of prior made on the bound data: the KL side pays
  ``ln K`` and the Monte-Carlo side must hold for the whole procedure. ``fit`` selects the
  scale with selection draws and certifies only the winner, once, with fresh draws at
  ``delta_mc`` (before: one certificate per scale, each at ``delta_mc``, and the smallest kept,
  a Monte-Carlo failure probability of up to ``K delta_mc``).
- Parameters and buffers fitted on the bound data that the KL does not pay for make the
  hypothesis data-dependent: BatchNorm running statistics, batch statistics, trainable
  parameters outside the posterior, any floating-point buffer that training changed. ``fit``
  and ``certify`` refuse them (before: certified silently). LayerNorm's affine parameters are
  under the prior (isotropic groups) and sampled by the Gibbs draws: such a network certifies.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_iris
from sklearn.preprocessing import StandardScaler
from torch import nn

import skkprior.estimators._pac_bayes as pac_bayes
from skkprior import PACBayesBoundEstimator
from skkprior.certify import certify
from skkprior.curvature import kfac
from skkprior.gaussian import LayerwiseGaussian
from skkprior.laplace import isotropic_prior, posterior

FAST = dict(max_epochs=4, n_samples=5, device="cpu", random_state=0, prior_fraction=0.0)


@pytest.fixture(scope="module")
def iris():
    X, y = load_iris(return_X_y=True)
    return StandardScaler().fit_transform(X).astype(np.float32), y


def _norm_net(norm: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), norm, nn.Tanh(), nn.Linear(8, 3))


# -- the prior-scale grid: one certificate, of the winner, with fresh draws ----------------------------
def test_prior_scale_grid_certifies_only_the_winner_with_fresh_draws(iris, monkeypatch):
    X, y = iris
    certified, selection_seeds = [], []
    real_certify, real_count = pac_bayes.certify, pac_bayes.gibbs_error_count

    def certify_spy(*args, **kwargs):
        certified.append({"seed": kwargs["generator"].initial_seed(), "delta": kwargs["delta"],
                          "delta_mc": kwargs["delta_mc"], "union_size": kwargs["union_size"]})
        return real_certify(*args, **kwargs)

    def selection_spy(*args, **kwargs):  # the estimator's own Gibbs counts are the selection draws
        selection_seeds.append(kwargs["generator"].initial_seed())
        return real_count(*args, **kwargs)

    monkeypatch.setattr(pac_bayes, "certify", certify_spy)
    monkeypatch.setattr(pac_bayes, "gibbs_error_count", selection_spy)
    est = PACBayesBoundEstimator(prior_scales=[0.5, 1.0, 2.0], temperatures=[1.0, 0.1], delta=0.03,
                                 delta_mc=0.02, **FAST).fit(X, y)
    cert = est.certificate_
    # before: three certificates (one per scale, each at delta_mc) and the smallest reported
    assert len(certified) == 1
    call = certified[0]
    assert call["union_size"] == cert.union_size == 3
    assert call["delta_mc"] == cert.delta_mc == 0.02 and call["delta"] == cert.delta == 0.03
    assert cert.confidence == pytest.approx(1 - 0.03 - 0.02)
    # 3 scales x 2 candidates (tuned, Laplace) x 2 temperatures scored with selection draws,
    # none of them with the certificate's generator
    assert len(selection_seeds) == 12 and call["seed"] not in selection_seeds
    # the selection is recorded per scale and the certified scale is its winner
    assert [s["prior_scale"] for s in est.selection_] == [0.5, 1.0, 2.0]
    best = min(est.selection_, key=lambda s: (s["selection_bound"], s["selection_gibbs_risk"]))
    assert est.prior_scale_ == best["prior_scale"]
    # the reported certificate is the winner's, from its fresh draws alone
    again = real_certify(est.module_, est.posterior_, torch.from_numpy(X), torch.from_numpy(y), bound="kl",
                         delta=0.03, delta_mc=0.02, union_size=3,
                         generator=torch.Generator().manual_seed(call["seed"]), batch_size=256)
    assert again == cert


def test_one_prior_scale_keeps_its_certificate(iris):
    """K = 1: nothing to select among priors; the certificate is the one of the fresh draws (unchanged)."""
    X, y = iris
    est = PACBayesBoundEstimator(temperatures=[1.0], prior_scales=[1.0], **FAST).fit(X, y)
    assert est.certificate_.union_size == 1 and len(est.selection_) == 1
    assert est.certificate_.delta_mc == est.delta_mc


# -- data-dependent parameters and buffers -----------------------------------------------------------
def test_batchnorm_network_is_refused_by_fit(iris):
    X, y = iris
    # before: fitted, and the certificate silently covered running statistics estimated on the bound data
    with pytest.raises(ValueError, match=r"(?s)running statistics.*'1'.*not under the prior.*LayerNorm"):
        PACBayesBoundEstimator(_norm_net(nn.BatchNorm1d(8)), **FAST).fit(X, y)
    # batch statistics (no running statistics): a prediction would depend on the rest of its batch
    with pytest.raises(ValueError, match=r"(?s)batch statistics.*'1'"):
        PACBayesBoundEstimator(_norm_net(nn.BatchNorm1d(8, track_running_stats=False)), **FAST).fit(X, y)


def test_batchnorm_with_frozen_statistics_is_the_documented_alternative(iris):
    """momentum=0: the running statistics never move on the bound data; they are constants of the hypothesis."""
    X, y = iris
    net = _norm_net(nn.BatchNorm1d(8, momentum=0.0))
    est = PACBayesBoundEstimator(net, **FAST).fit(X, y)
    assert 0 < est.bound_ <= 1
    bn = est.module_[1]
    assert torch.equal(bn.running_mean, torch.zeros(8)) and torch.equal(bn.running_var, torch.ones(8))
    assert {"1.weight", "1.bias"} <= set(est.certificate_.kl_per_group)  # the affine part is paid
    assert 0 < est.certify(X, y).risk_bound <= 1  # recertifying the fitted network is accepted too


class _Drifting(nn.Module):
    """A floating-point buffer that training moves: fitted on the bound data, outside the prior."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Linear(4, 3)
        self.register_buffer("shift", torch.zeros(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        if self.training:
            with torch.no_grad():
                self.shift.add_(0.01 * out.mean(0))
        return out + self.shift


def test_a_buffer_changed_by_training_is_refused_by_fit(iris):
    X, y = iris
    with pytest.raises(ValueError, match=r"(?s)buffers.*'shift'.*changed during training"):
        PACBayesBoundEstimator(_Drifting(), **FAST).fit(X, y)


@pytest.fixture()
def data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(60, 4, generator=g), torch.randint(0, 3, (60,), generator=g)


def _laplace(net: nn.Module, X: torch.Tensor, y: torch.Tensor):
    return posterior(isotropic_prior(net, weight_decay=1.0), kfac(net, X, y, progress=False), net)


def test_certify_refuses_batchnorm_running_statistics(data):
    X, y = data
    net = _norm_net(nn.BatchNorm1d(8))
    net.train()
    net(X)  # running statistics estimated on the bound data
    net.eval()
    post = _laplace(net, X, y)
    gen = dict(generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"(?s)running statistics.*'1'.*frozen_statistics=True"):
        certify(net, post, X, y, **gen)
    with pytest.raises(ValueError, match=r"running statistics"):
        certify(net, post, X, y, protocol="paper", n_samples=2, **gen)
    # the documented opt-in: the statistics were fixed before the bound data were seen
    cert = certify(net, post, X, y, frozen_statistics=True, **gen)
    assert 0 < cert.risk_bound <= 1
    # batch statistics are refused even then: a prediction depends on the rest of the batch
    batch = _norm_net(nn.BatchNorm1d(8, track_running_stats=False))
    with pytest.raises(ValueError, match=r"batch statistics"):
        certify(batch, _laplace(batch, X, y), X, y, frozen_statistics=True, **gen)


def test_certify_refuses_trainable_parameters_outside_the_posterior(data):
    X, y = data
    net = _norm_net(nn.LayerNorm(8))
    for p in net[1].parameters():
        p.requires_grad_(False)
    q = LayerwiseGaussian.isotropic(net, 1e4)  # over the Linear layers only
    p = LayerwiseGaussian.isotropic(net, 1.0, zero_mean=True)
    assert certify(net, q, X, y, prior=p).risk_bound <= 1  # frozen: constants of the hypothesis
    for t in net[1].parameters():
        t.requires_grad_(True)  # trainable, so possibly fitted on the bound data, and the KL does not pay
    with pytest.raises(ValueError, match=r"(?s)trainable parameters.*'1.weight', '1.bias'.*not under the posterior"):
        certify(net, q, X, y, prior=p)


def test_layernorm_network_certifies_with_its_affine_parameters_paid(iris, data):
    """LayerNorm: per-example normalization, affine parameters in isotropic groups of the prior."""
    X, y = data
    net = _norm_net(nn.LayerNorm(8))
    post = _laplace(net, X, y)
    cert = certify(net, post, X, y, generator=torch.Generator().manual_seed(0))
    assert {"1.weight", "1.bias"} <= set(cert.kl_per_group) and 0 < cert.risk_bound <= 1
    Xi, yi = iris
    est = PACBayesBoundEstimator(_norm_net(nn.LayerNorm(8)), temperatures=[1.0], **FAST).fit(Xi, yi)
    assert {"1.weight", "1.bias"} <= set(est.certificate_.kl_per_group) and 0 < est.bound_ <= 1


def test_frozen_statistics_must_be_a_bool():
    net = nn.Sequential(nn.Linear(4, 3))
    X, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    from skkprior import isotropic_prior, kfac, posterior

    post = posterior(isotropic_prior(net, weight_decay=1.0), kfac(net, X, y, progress=False), net)
    with pytest.raises(TypeError, match="frozen_statistics must be True or False"):
        certify(net, post, X, y, frozen_statistics="no")
