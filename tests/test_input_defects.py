"""Issue 14, "every bad input a clear error": one test (or a few) per defect class.

Each test failed on the code before the fix (a crash inside torch, an AttributeError, or a
silent wrong result) and pins the clear error or the correct result that replaced it.
"""

from __future__ import annotations

import copy
import io
import math

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits, load_iris
from sklearn.preprocessing import StandardScaler
from torch import nn

from skkprior.certify import certify
from skkprior.curvature import kfac
from skkprior.estimators import KroneckerPriorClassifier, PACBayesBoundEstimator
from skkprior.gaussian import LayerwiseGaussian
from skkprior.laplace import (
    KroneckerPosterior,
    KroneckerPrior,
    isotropic_prior,
    learn_prior,
    posterior,
)
from skkprior.progressive import ProgressivePriorClassifier

# tiny, fast settings (these tests check errors and round trips, not accuracy)
FAST = dict(max_epochs=2, n_samples=5, device="cpu", random_state=0, scaling="fixed")
PAC_FAST = dict(max_epochs=2, device="cpu", random_state=0, temperatures=[1.0], prior_fraction=0.0,
                prior_scales=[1.0])


@pytest.fixture(scope="module")
def iris():
    X, y = load_iris(return_X_y=True)
    return StandardScaler().fit_transform(X).astype(np.float32), y


def _net(n_in: int = 4, n_out: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(n_in, 8), nn.Tanh(), nn.Linear(8, n_out))


class _FixedFive(nn.Module):
    """A module class that ignores the data's classes: always 5 outputs."""

    def __init__(self, n_features: int) -> None:
        super().__init__()
        self.fc = nn.Linear(n_features, 5)

    def forward(self, x):
        return self.fc(x)


# ----------------------------------------------------------------------------------------------
# class 2: the module's output is checked against the classes
# ----------------------------------------------------------------------------------------------
OUTPUT_MATCH = r"output of the module .* must be logits of shape \(n_samples, 3\)"


@pytest.mark.parametrize("module", [_net(4, 5), _net(4, 2), _FixedFive], ids=["wider", "narrower", "class-spec"])
def test_module_output_width_must_equal_the_number_of_classes(iris, module):
    X, y = iris
    # before: a wider head gave predict_proba of width 5, a narrower one an IndexError inside torch
    with pytest.raises(ValueError, match=OUTPUT_MATCH):
        KroneckerPriorClassifier(module, **FAST).fit(X, y)
    with pytest.raises(ValueError, match=OUTPUT_MATCH):
        KroneckerPriorClassifier(module, **FAST).partial_fit(X, y, classes=[0, 1, 2])
    with pytest.raises(ValueError, match=OUTPUT_MATCH):
        PACBayesBoundEstimator(module, **PAC_FAST).fit(X, y)


def test_progressive_columns_check_their_output_width(iris):
    X, y = iris
    with pytest.raises(ValueError, match=r"logits of shape \(n, 3\)"):
        ProgressivePriorClassifier(_net(4, 5), **FAST).fit(X, y)
    clf = ProgressivePriorClassifier(_net(4, 3), **FAST).fit(X, y)
    # a later task with two classes: the instance's 3-output head does not fit it
    with pytest.raises(ValueError, match=r"logits of shape \(n, 2\)"):
        clf.partial_fit(X[y < 2], y[y < 2])
    assert clf.n_tasks_ == 1  # the failed task left no column behind


def test_matching_module_instance_still_fits(iris):
    X, y = iris
    clf = KroneckerPriorClassifier(_net(4, 3), **FAST).fit(X, y)
    assert clf.predict_proba(X[:4]).shape == (4, 3)
    clf.partial_fit(X, y)  # the check on a later task passes for the same data
    assert clf.n_tasks_ == 2


# ----------------------------------------------------------------------------------------------
# class 4: a posterior saved and reloaded is the same posterior; loaded files are validated
# ----------------------------------------------------------------------------------------------
class _NormNet(nn.Module):
    """Linear layers plus a LayerNorm: the posterior has decomposed and isotropic groups."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 6)
        self.norm = nn.LayerNorm(6)
        self.fc2 = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc2(torch.tanh(self.norm(self.fc1(x))))


@pytest.fixture(scope="module")
def fitted():
    torch.manual_seed(1)
    net = _NormNet()
    X, y = torch.randn(48, 4), torch.randint(0, 3, (48,))
    source = learn_prior(net, X, y, weight_decay=0.5, temperature=0.7, progress=False,
                         generator=torch.Generator().manual_seed(0))
    curv = kfac(net, X, y, progress=False, generator=torch.Generator().manual_seed(1))
    post = posterior(source, curv, net, prior_scale=2.0, likelihood_scale=0.8, temperature=0.3)
    return net, X, y, source, post


def _reload(obj, cls):
    buf = io.BytesIO()
    obj.save(buf)
    buf.seek(0)
    return cls.load(buf)


def _close(a: float, b: float) -> bool:
    # the reloaded posterior runs the same float64 operations on the same stored values; allow a
    # few ulps of the magnitude for a different summation order
    return math.isclose(a, b, rel_tol=1e-10, abs_tol=1e-12)


def test_posterior_round_trips_through_save_and_load(fitted):
    net, X, y, _, post = fitted
    back = _reload(post, KroneckerPosterior)
    # before: AttributeError ('prior', 'prior_scale', 'likelihood_scale') on every one of these
    kl, kl_back = post.kl_to_prior(), back.kl_to_prior()
    assert _close(float(kl_back.total), float(kl.total))
    for name, value in kl.as_dict().items():
        assert _close(kl_back.as_dict()[name], value)
    for scales in ({"temperature": 0.05}, {"prior_scale": 7.0, "likelihood_scale": 3.0}):
        assert _close(float(back.with_scales(**scales).kl_to_prior().total),
                      float(post.with_scales(**scales).kl_to_prior().total))
    assert back.prior_scale == pytest.approx(post.prior_scale, rel=1e-15)
    assert back.temperature == pytest.approx(post.temperature, rel=1e-15)
    p_mean, p_prec = post.as_prior().to_dense()
    b_mean, b_prec = back.as_prior().to_dense()
    torch.testing.assert_close(b_mean, p_mean, rtol=0, atol=0)
    torch.testing.assert_close(b_prec, p_prec, rtol=1e-10, atol=1e-12 * float(p_prec.abs().max()))
    cert = certify(net, post, X, y, generator=torch.Generator().manual_seed(3))
    cert_back = certify(net, back, X, y, generator=torch.Generator().manual_seed(3))
    assert cert_back.n_errors == cert.n_errors and _close(cert_back.risk_bound, cert.risk_bound)
    # the next prior of a continual chain, from the reloaded posterior, loads as a prior
    assert isinstance(_reload(back.as_prior(), KroneckerPrior), KroneckerPrior)


def _corrupt(obj, edit):
    state = copy.deepcopy(obj.state())
    edit(state)
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return buf


def _nan_mean(s):
    s["groups"][0]["mean"][0, 0] = float("nan")


def _negative_temperature(s):
    s["groups"][0]["temperature"] = -1.0


def _wrong_mean_shape(s):
    s["groups"][0]["mean"] = s["groups"][0]["mean"][:, :-1].clone()


def _wrong_factor_size(s):
    s["groups"][0]["precision"]["A"] = torch.eye(2, dtype=torch.float64)


def _indefinite_factor(s):
    s["groups"][0]["precision"]["G"] = -s["groups"][0]["precision"]["G"]


def _nan_isotropic(s):
    iso = next(g for g in s["groups"] if g["precision"]["type"] == "isotropic")
    iso["precision"]["value"] = float("inf")


def _layer_shape_mismatch(s):
    s["groups"][0]["parameter_shapes"][0] = [7, 4]


@pytest.mark.parametrize("edit,match", [
    (_nan_mean, "mean of group 'fc1' in the file must be finite"),
    (_negative_temperature, "temperature of group 'fc1' in the file must be a positive finite number"),
    (_wrong_mean_shape, r"mean of group 'fc1' in the file must be of shape \(6, 5\)"),
    (_wrong_factor_size, "precision of group 'fc1' in the file must be Kronecker factors of sizes"),
    (_indefinite_factor, "factor G of the precision of group 'fc1' in the file must be positive definite"),
    (_nan_isotropic, "precision of group 'norm.weight' in the file must be a valid precision"),
    (_layer_shape_mismatch, "layer of group 'fc1' in the file must be consistent with its parameters"),
])
def test_broken_prior_files_are_refused_at_load(fitted, tmp_path, edit, match):
    _, _, _, source, _ = fitted
    # before: every one of these loaded, and the error (if any) came after training
    with pytest.raises(ValueError, match=match):
        KroneckerPrior.load(_corrupt(source, edit))
    # through an estimator: the error comes from the load, before any training
    path = tmp_path / "broken.pt"
    path.write_bytes(_corrupt(source, edit).getvalue())
    with pytest.raises(ValueError, match=match):
        KroneckerPriorClassifier(_NormNet, prior=str(path), **FAST).fit(np.zeros((6, 4), np.float32),
                                                                         [0, 1, 2, 0, 1, 2])


def test_broken_posterior_files_are_refused_at_load(fitted):
    post = fitted[4]

    def nan_eigenvalue(s):
        s["groups"][0]["precision"]["D_G"][0] = float("nan")

    def indefinite_curvature(s):
        s["groups"][0]["terms"][0]["G"] = -torch.eye(6, dtype=torch.float64)

    def other_prior_scale(s):
        s["scales"]["prior_scale"]["fc1"] = 5.0

    def missing_scale(s):
        del s["scales"]["temperature"]["fc2"]

    for edit, match in ((nan_eigenvalue, "D_G of the precision of group 'fc1'"),
                        (indefinite_curvature, "curvature term of group 'fc1' in the file must be positive semi"),
                        (other_prior_scale, "group 'fc1' of the posterior file must be the posterior of its prior"),
                        (missing_scale, "temperature in the posterior file must be a value per group")):
        with pytest.raises(ValueError, match=match):
            KroneckerPosterior.load(_corrupt(post, edit))


def test_posterior_and_prior_files_are_not_interchangeable(fitted):
    _, _, _, source, post = fitted
    buf = io.BytesIO()
    post.save(buf)
    buf.seek(0)
    # decided: refused, with the one-line fix (a posterior's two-term precisions are no prior)
    with pytest.raises(ValueError, match=r"posterior file .* KroneckerPosterior.load\(path\).as_prior\(\)"):
        KroneckerPrior.load(buf)
    buf.seek(0)
    assert isinstance(LayerwiseGaussian.load(buf), LayerwiseGaussian)  # the plain Gaussian still reads it
    with pytest.raises(ValueError, match="must be a posterior .* Got a file of class 'KroneckerPrior'"):
        _reload(source, KroneckerPosterior)
    # a version 1 posterior file lacks its prior: refused with the way out, not an AttributeError
    old = _corrupt(post, lambda s: (s.update(version=1), s.pop("prior"), s.pop("scales")))
    with pytest.raises(ValueError, match="format version 2.*Got format version 1 without them"):
        KroneckerPosterior.load(old)
    old.seek(0)
    assert isinstance(LayerwiseGaussian.load(old), LayerwiseGaussian)


# ----------------------------------------------------------------------------------------------
# class 6: the module must accept the data; N-D inputs; a float64 network; diverged training
# ----------------------------------------------------------------------------------------------
def test_wrong_in_features_is_a_clear_error_before_training(iris):
    X, y = iris
    # before: RuntimeError "mat1 and mat2 shapes cannot be multiplied" from inside skorch's loop
    match = r"X \(one example of shape \(4,\), n_features_in_=4\) must be an input the module Sequential accepts"
    for est in (KroneckerPriorClassifier(_net(5, 3), **FAST), PACBayesBoundEstimator(_net(5, 3), **PAC_FAST)):
        with pytest.raises(ValueError, match=match):
            est.fit(X, y)
    with pytest.raises(ValueError, match="n_features_in_=4"):
        ProgressivePriorClassifier(_net(5, 3), **FAST).fit(X, y)


def test_nd_inputs_to_the_default_mlp_are_flattened():
    X, y = load_digits(return_X_y=True)
    X = (X[:200] / 16.0).astype(np.float32)
    y = y[:200]
    kw = dict(FAST, module__hidden_sizes=(16,), predictive="map")
    flat = KroneckerPriorClassifier(**kw).fit(X, y)
    # before: RuntimeError (64x8 and 8x16): the MLP was built with n_features = X.shape[1] = 8
    images = KroneckerPriorClassifier(**kw).fit(X.reshape(-1, 8, 8), y)
    assert images.module_.net[0].in_features == 64
    # the same network on the same numbers: the same predictions (float32 rounding only)
    np.testing.assert_allclose(images.predict_proba(X[:20].reshape(-1, 8, 8)), flat.predict_proba(X[:20]),
                               rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match=r"shape of one example of X .* must be \(8, 8\) \(as in fit\)"):
        images.predict(X[:5].reshape(-1, 8, 4, 2))


def test_float64_network_trains_in_float64(iris):
    X, y = iris
    kw = dict(FAST, max_epochs=3, predictive="map")
    single = KroneckerPriorClassifier(_net(), **kw).fit(X, y)
    # before: RuntimeError "mat1 and mat2 must have the same dtype" in the first batch
    double = KroneckerPriorClassifier(_net().double(), **kw).fit(X, y)
    assert next(double.module_.parameters()).dtype == torch.float64
    # same initialization and batches; only the rounding of the arithmetic differs
    np.testing.assert_allclose(double.predict_proba(X), single.predict_proba(X), rtol=0, atol=1e-4)
    assert ProgressivePriorClassifier(_net().double(), **FAST).fit(X, y).score(X, y) > 0
    assert 0 < PACBayesBoundEstimator(_net().double(), **PAC_FAST).fit(X, y).bound_ <= 1
    with pytest.raises(TypeError, match="must be all float32 or all float64"):
        KroneckerPriorClassifier(_net().half(), **FAST).fit(X, y)


def test_diverged_training_names_lr_and_max_epochs(iris):
    X, y = iris
    kw = dict(FAST, max_epochs=5, lr=1e6, optimizer=torch.optim.SGD)
    # before: "G (output factor of Kron) must be finite" from the curvature, after training
    match = r"training loss must be finite \(training diverged\).*lr \(now 1e\+06\).*max_epochs.*StandardScaler"
    with pytest.raises(FloatingPointError, match=match):
        KroneckerPriorClassifier(**kw).fit(X * 100, y)
    with pytest.raises(FloatingPointError, match=match):
        ProgressivePriorClassifier(**kw).fit(X * 100, y)


# ----------------------------------------------------------------------------------------------
# class 7: devices, certify's delta and labels
# ----------------------------------------------------------------------------------------------
def _missing_device() -> str:
    return f"cuda:{torch.cuda.device_count() + 3}" if torch.cuda.is_available() else "cuda"


def test_unavailable_or_unknown_device_is_a_clear_error():
    net, X, y = _net(), torch.randn(8, 4), torch.randint(0, 3, (8,))
    match = "device must be (an available device|a visible CUDA device)"
    # before: AssertionError "Torch not compiled with CUDA enabled" (or a RuntimeError)
    with pytest.raises(ValueError, match=match):
        kfac(net, X, y, device=_missing_device(), progress=False)
    with pytest.raises(ValueError, match="device must be a torch device such as 'cpu'"):
        kfac(net, X, y, device="gpu0", progress=False)
    curv = kfac(net, X, y, progress=False)
    with pytest.raises(ValueError, match=match):
        curv.to(_missing_device())
    with pytest.raises(ValueError, match=match):
        curv.update(net, X, y, device=_missing_device())
    with pytest.raises(ValueError, match=match):
        learn_prior(net, X, y, device=_missing_device(), progress=False)
    with pytest.raises(ValueError, match=match):
        KroneckerPriorClassifier(**{**FAST, "device": _missing_device()}).fit(X.numpy(), y.numpy())


@pytest.fixture(scope="module")
def small_posterior():
    torch.manual_seed(2)
    net = _net()
    X, y = torch.randn(40, 4), torch.randint(0, 3, (40,))
    post = posterior(isotropic_prior(net, weight_decay=1.0), kfac(net, X, y, progress=False), net)
    return net, post, X, y


def test_certify_paper_protocol_respects_an_explicit_delta_and_bound(small_posterior):
    net, post, X, y = small_posterior
    paper = dict(protocol="paper", n_samples=3)
    default = certify(net, post, X, y, **paper)
    assert default.delta == pytest.approx(0.1) and default.bound == "mcallester"
    # before: an explicit delta=0.025 became 0.1 and bound="kl" became McAllester, silently
    explicit = certify(net, post, X, y, delta=0.025, bound="kl", **paper)
    assert explicit.delta == pytest.approx(0.025) and explicit.bound == "kl"
    assert explicit.confidence == pytest.approx(0.975)
    assert certify(net, post, X, y).delta == pytest.approx(0.025)  # the certificate's default
    with pytest.raises(ValueError, match="delta must be a number in the open interval"):
        certify(net, post, X, y, delta=1.5, **paper)


def test_pac_bayes_estimator_certify_delta(iris):
    X, y = iris
    est = PACBayesBoundEstimator(delta=0.05, **PAC_FAST).fit(X, y)
    assert est.certify(X, y, protocol="paper", n_samples=3).delta == pytest.approx(0.1)
    assert est.certify(X, y, protocol="paper", n_samples=3, delta=0.05).delta == pytest.approx(0.05)
    assert est.certify(X, y).delta == pytest.approx(0.05)


def test_certify_validates_labels(small_posterior):
    net, post, X, y = small_posterior
    # before: 0.7 was truncated to class 0 and the certificate computed on the wrong labels
    with pytest.raises(ValueError, match=r"y must be integer class labels .* non-integral values such as \[0.7"):
        certify(net, post, X, torch.full((40,), 0.7))
    as_float = certify(net, post, X, y.double(), generator=torch.Generator().manual_seed(0))  # integral floats are labels
    assert as_float.n_errors == certify(net, post, X, y, generator=torch.Generator().manual_seed(0)).n_errors
    with pytest.raises(ValueError, match=r"y must be a 1-D array of 40 labels"):
        certify(net, post, X, y[:10])
    with pytest.raises(ValueError, match=r"y must be a 1-D array of 40 labels"):
        certify(net, post, X, y.reshape(-1, 1))
    with pytest.raises(ValueError, match="minimum of -1"):
        certify(net, post, X, y - 1)
    # before: out-of-range labels counted as errors of the paper protocol, silently
    for protocol in ("paper", "certificate"):  # one check, one message for both protocols
        with pytest.raises(ValueError, match=r"^y must be labels in 0 .. 2 \(the model has 3 outputs\)"):
            certify(net, post, X, y + 3, protocol=protocol, n_samples=3)


def test_a_failed_fit_leaves_no_half_fitted_estimator(iris):
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    X, y = iris
    diverge = dict(max_epochs=5, lr=1e6, optimizer=torch.optim.SGD)
    for est in (KroneckerPriorClassifier(**{**FAST, **diverge}), PACBayesBoundEstimator(**{**PAC_FAST, **diverge})):
        with pytest.raises(FloatingPointError):
            est.fit(X * 100, y)
        # before: classes_ stayed, check_is_fitted passed and predict raised AttributeError('module_')
        with pytest.raises(NotFittedError):
            check_is_fitted(est)
        with pytest.raises(NotFittedError):
            est.predict(X)
    # a later task that fails leaves the fitted state of the earlier ones as it was
    clf = KroneckerPriorClassifier(**FAST).partial_fit(X, y, classes=np.unique(y))
    before = clf.predict_proba(X)
    weights = {k: v.clone() for k, v in clf.module_.state_dict().items()}
    clf.set_params(lr=1e6, optimizer=torch.optim.SGD, max_epochs=5)
    with pytest.raises(FloatingPointError):
        clf.partial_fit(X * 100, y)
    assert clf.n_tasks_ == 1
    assert all(torch.equal(v, clf.module_.state_dict()[k]) for k, v in weights.items())
    np.testing.assert_allclose(clf.predict_proba(X), before, rtol=0, atol=1e-12)  # same computation, same process
