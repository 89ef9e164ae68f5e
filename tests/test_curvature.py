"""Curvature (K-FAC / K-FOC) against dense truth computed with torch.func, in float64."""

from __future__ import annotations

import math
import socket

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, jacrev
from torch.utils.data import DataLoader, TensorDataset

from skkprior._layers import kronecker_layers, layer_matrix, split_layer_matrix
from skkprior.curvature import Curvature, _conv_patches, _kfoc_batch, kfac, kfoc

f64 = torch.float64


# ------------------------------------------------------------------------------------------
# Models and dense references
# ------------------------------------------------------------------------------------------
def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 6, bias=False), nn.ReLU(inplace=True),
                         nn.Linear(6, 3)).double()


def cnn(seed: int = 0) -> nn.Module:
    """7x7 input; conv '0' has T = 49, conv '2' T = 9 (stride, dilation, no bias), conv '4' T = 1."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), nn.Tanh(),
        nn.Conv2d(3, 4, 3, stride=2, padding=1, dilation=2, bias=False), nn.ReLU(inplace=True),
        nn.Conv2d(4, 5, 3), nn.Flatten(), nn.Tanh(), nn.Linear(5, 3),
    ).double()


def _layer_function(model: nn.Module, name: str, x: torch.Tensor):
    """theta (row-major [W | b] of layer ``name``) -> model output on the batch ``x``."""
    layer = kronecker_layers(model)[name]
    params = {k: v.detach() for k, v in model.named_parameters()}
    bias = params[layer.bias_name] if layer.has_bias else None
    theta0 = layer_matrix(params[layer.weight_name], bias).reshape(-1)

    def f(theta: torch.Tensor) -> torch.Tensor:
        W, b = split_layer_matrix(theta.reshape(layer.n, layer.m), layer)
        p = dict(params)
        p[layer.weight_name] = W
        if b is not None:
            p[layer.bias_name] = b
        return functional_call(model, p, (x,))

    return f, theta0


def dense_jacobian(model: nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
    """d output / d theta_layer for one datum ``x`` (no batch dim): ``(C, n m)``."""
    f, theta0 = _layer_function(model, name, x[None])
    return jacrev(lambda t: f(t)[0])(theta0)


def softmax_hessian(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        p = torch.softmax(model(x[None])[0], dim=0)
    return torch.diag(p) - torch.outer(p, p)


def dense_fisher(model: nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
    J = dense_jacobian(model, name, x)
    return J.T @ softmax_hessian(model, x) @ J


def output_gradients(model: nn.Module, name: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For one datum: the layer input ``x_in`` and ``d logits / d (layer output)`` of shape (C, *out)."""
    module = dict(model.named_modules())[name]
    seen = {}
    h = module.register_forward_hook(lambda m, i, o: seen.update(x=i[0].detach(), shape=o.shape))
    with torch.no_grad():
        model(x[None])
    h.remove()

    def f(delta: torch.Tensor) -> torch.Tensor:
        handle = module.register_forward_hook(lambda m, i, o: o + delta)
        try:
            return model(x[None])[0]
        finally:
            handle.remove()

    J = jacrev(f)(torch.zeros(seen["shape"], dtype=f64))
    return seen["x"], J[:, 0]


def reference_patches(conv: nn.Conv2d, x_in: torch.Tensor) -> torch.Tensor:
    """Patches ``(T, m)`` of a conv layer from its Jacobian: ``out[0, t] = Wb[0] . a_t`` (independent of unfold)."""
    layer = kronecker_layers(conv)[""]
    f, theta0 = _layer_function(conv, "", x_in)
    J = jacrev(f)(theta0)  # (1, n, H, W, n m)
    rows = J[0, 0].reshape(-1, layer.n, layer.m)[:, 0, :]  # output channel 0, row 0 of Wb
    return rows


def dense_kfc(model: nn.Module, name: str, x: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """The KFC product ``(1/T) sum_t a a^T (x) sum_t Jg_t^T H Jg_t`` for one datum, formed densely, as Kron(G, A)."""
    module = dict(model.named_modules())[name]
    x_in, Jg = output_gradients(model, name, x)  # Jg: (C, n, Ho, Wo)
    a = reference_patches(module, x_in)  # (T, m)
    T = a.shape[0]
    Jt = Jg.reshape(Jg.shape[0], Jg.shape[1], -1)  # (C, n, T)
    G = torch.einsum("cnt,cd,dkt->nk", Jt, H, Jt)
    A = a.T @ a / T
    return torch.kron(G.contiguous(), A.contiguous())  # (torch 2.11's kron rejects some strided inputs)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-9) -> None:
    actual, expected = actual.detach(), expected.detach()
    err = float((actual - expected).abs().max())
    scale = float(expected.abs().max())
    assert err <= rtol * max(scale, 1e-12), f"max abs error {err:.3g} (scale {scale:.3g})"


# ------------------------------------------------------------------------------------------
# Exact cases
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["kfac", "kfoc"])
def test_single_datum_exact_fisher_mlp(method):
    model = mlp()
    x = torch.randn(4, dtype=f64)
    curv = kfac(model, x[None], torch.tensor([1]), fisher="exact", method=method, progress=False)
    assert set(curv.factors) == {"0", "2", "4"}
    for name, K in curv.factors.items():
        assert K.dtype == f64
        assert_close(K.to_dense(), dense_fisher(model, name, x))


def test_single_datum_exact_fisher_cnn():
    model = cnn()
    x = torch.randn(2, 7, 7, dtype=f64)
    curv = kfac(model, x[None], fisher="exact", progress=False)
    assert curv.positions == {"0": 49, "2": 9, "4": 1, "7": 1}
    H = softmax_hessian(model, x)
    for name, K in curv.factors.items():
        if curv.positions[name] == 1:  # 1 x 1 output: the exact Fisher block
            assert_close(K.to_dense(), dense_fisher(model, name, x))
        else:  # T > 1: the KFC approximation, formed independently of unfold
            assert_close(K.to_dense(), dense_kfc(model, name, x, H))
    # and T > 1 is indeed an approximation, while the per-datum gradient identity is exact
    for name in ("0", "2"):
        assert not torch.allclose(curv.factors[name].to_dense(), dense_fisher(model, name, x))
        module = dict(model.named_modules())[name]
        x_in, Jg = output_gradients(model, name, x)
        a = reference_patches(module, x_in)
        Xc = torch.einsum("cnt,tm->cnm", Jg.reshape(3, Jg.shape[1], -1), a)  # X_c = sum_t g a^T
        assert_close(Xc.reshape(3, -1), dense_jacobian(model, name, x))


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("kwargs", [
    dict(padding=1), dict(padding=2, dilation=2, stride=2), dict(padding=(0, 1), stride=(2, 1)),
    dict(padding="same"), dict(padding="same", dilation=(1, 2)), dict(padding="valid", bias=False),
    dict(padding=1, padding_mode="reflect"), dict(padding=1, padding_mode="circular"),
    dict(padding=(1, 2), padding_mode="replicate"),
])
def test_conv_patches_match_weight_jacobian(kwargs):
    torch.manual_seed(0)
    k = (2, 3) if kwargs.get("padding") == "same" else 3
    conv = nn.Conv2d(2, 3, k, **kwargs).double()
    x = torch.randn(1, 2, 6, 7, dtype=f64)
    U = _conv_patches(conv, x)[0].T  # (T, m_in)
    ref = reference_patches(conv, x)
    m_in = U.shape[1]
    assert_close(U, ref[:, :m_in])


def test_deep_linear_network_mse_is_exact_ggn():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 5, bias=False), nn.Linear(5, 2)).double()
    X, Y = torch.randn(7, 3, dtype=f64), torch.randn(7, 2, dtype=f64)
    for n in (1, 7):  # one datum and N data: exact in both
        curv = kfac(model, X[:n], Y[:n], fisher="exact", likelihood="regression", progress=False)
        for name, K in curv.factors.items():
            ggn = sum(dense_jacobian(model, name, x).T @ dense_jacobian(model, name, x) for x in X[:n])
            assert_close(K.to_dense(), ggn)
    # the same K-FAC on a non-linear network with N > 1 is not exact
    model2 = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    K = kfac(model2, X, Y, fisher="exact", likelihood="regression", progress=False).factors["0"]
    ggn = sum(dense_jacobian(model2, "0", x).T @ dense_jacobian(model2, "0", x) for x in X)
    assert not torch.allclose(K.to_dense(), ggn)


def test_kfoc_single_datum_equals_kfac_and_exact():
    for model, x in ((mlp(), torch.randn(1, 4, dtype=f64)), (cnn(), torch.randn(1, 2, 7, 7, dtype=f64))):
        y = torch.tensor([2])
        a = kfac(model, x, y, fisher="empirical", progress=False).factors
        b = kfoc(model, x, y, fisher="empirical", progress=False).factors
        for name in a:
            if name in ("0", "2") and isinstance(model[0], nn.Conv2d):
                continue  # T > 1: the per-example gradient is not rank one
            assert_close(b[name].to_dense(), a[name].to_dense())
            assert_close(b[name].A, a[name].A)  # same split: tr(A) as K-FAC
            g = torch.func.grad(lambda t: F.cross_entropy(_layer_function(model, name, x)[0](t), y))(
                _layer_function(model, name, x)[1])
            assert_close(a[name].to_dense(), torch.outer(g, g))


def _batch_fisher(model, name, X, y):
    """Exact per-batch empirical Fisher sum_b vec(X_b) vec(X_b)^T."""
    f, theta0 = _layer_function(model, name, X)
    grads = [torch.func.grad(lambda t, i=i: F.cross_entropy(f(t)[i:i + 1], y[i:i + 1]))(theta0)
             for i in range(len(X))]
    Gm = torch.stack(grads)
    return Gm.T @ Gm


def _nearest_dense(Fm: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Frobenius-nearest Kronecker product by the SVD of the Van Loan-Pitsianis rearrangement."""
    R = Fm.reshape(n, m, n, m).permute(0, 2, 1, 3).reshape(n * n, m * m)
    U, S, Vh = torch.linalg.svd(R)
    return torch.kron((S[0] * U[:, 0]).reshape(n, n), Vh[0].reshape(m, m))


def test_kfoc_is_the_optimal_product_per_batch_and_beats_kfac():
    for model, X in ((mlp(), torch.randn(6, 4, dtype=f64)), (cnn(), torch.randn(5, 2, 7, 7, dtype=f64))):
        y = torch.randint(0, 3, (X.shape[0],))
        a = kfac(model, X, y, fisher="empirical", progress=False)
        b = kfoc(model, X, y, fisher="empirical", progress=False)
        for name, layer in a.layers.items():
            Fm = _batch_fisher(model, name, X, y)
            opt = _nearest_dense(Fm, layer.n, layer.m)
            assert_close(b.factors[name].to_dense(), opt, rtol=1e-7)
            assert torch.linalg.norm(Fm - opt) <= torch.linalg.norm(Fm - a.factors[name].to_dense()) * (1 + 1e-12)
        big = "0"
        assert torch.linalg.norm(_batch_fisher(model, big, X, y) - b.factors[big].to_dense()) < \
            0.99 * torch.linalg.norm(_batch_fisher(model, big, X, y) - a.factors[big].to_dense())


@pytest.mark.parametrize("V, B, n, m, T", [(1, 5, 3, 4, 1), (3, 5, 3, 4, 1), (2, 40, 2, 3, 1), (2, 6, 3, 4, 3)])
def test_kfoc_power_iteration_matches_svd(V, B, n, m, T):
    """Gram-weight iteration (small B), explicit iteration (B > 4 d) and the T > 1 path."""
    a, g = torch.randn(B, m, T, dtype=f64), torch.randn(V, B, n, T, dtype=f64)
    X = torch.einsum("vbnt,bmt->vbnm", g, a).reshape(V * B, n * m)
    K = _kfoc_batch(a, g)
    assert_close(K.to_dense(), _nearest_dense(X.T @ X, n, m), rtol=1e-8)
    assert torch.linalg.eigvalsh(K.G).min() > -1e-10 and torch.linalg.eigvalsh(K.A).min() > -1e-10


def test_kfoc_several_batches_merge_and_budget():
    model = cnn()
    X, y = torch.randn(12, 2, 7, 7, dtype=f64), torch.randint(0, 3, (12,))
    full = kfoc(model, X, y, fisher="exact", batch_size=3, progress=False)
    assert len(full._sums.terms["0"]) == 4
    terms = full._sums.terms
    # the factors are the nearest product of the sum of the per-batch optimal products
    for name, K in full.factors.items():
        dense_sum = sum(t.to_dense() for t in terms[name])
        assert_close(K.to_dense(), _nearest_dense(dense_sum, K.n, K.m), rtol=1e-7)
        assert 0 <= full.merge_error[name] < 1
    # a budget of two terms merges as it goes and records the error
    small = kfoc(model, X, y, fisher="exact", batch_size=3, kfoc_max_terms=2, progress=False)
    assert all(len(t) <= 2 for t in small._sums.terms.values())
    assert max(small.merge_error.values()) > 0
    # merge of two halves equals one pass (same batches)
    halves = kfoc(model, X[:6], y[:6], fisher="exact", batch_size=3, progress=False) + \
        kfoc(model, X[6:], y[6:], fisher="exact", batch_size=3, progress=False)
    for name in full.factors:
        assert_close(halves.factors[name].to_dense(), full.factors[name].to_dense(), rtol=1e-10)


# ------------------------------------------------------------------------------------------
# Monte-Carlo Fisher, nll, accumulation
# ------------------------------------------------------------------------------------------
def test_mc_fisher_converges_to_exact():
    model = mlp()
    X = torch.randn(5, 4, dtype=f64)
    errs = []
    for reps in (4, 400):
        Xr = X.repeat(reps, 1)
        exact = kfac(model, Xr, fisher="exact", batch_size=500, progress=False).factors
        mc = kfac(model, Xr, fisher="mc", batch_size=500, generator=torch.Generator().manual_seed(0),
                  progress=False).factors
        errs.append(max(float(torch.linalg.norm(mc[k].G - exact[k].G) / torch.linalg.norm(exact[k].G))
                        for k in exact))
        for k in exact:  # the input factor does not depend on labels
            assert_close(mc[k].A, exact[k].A, rtol=1e-12)
    assert errs[1] < 0.1 and errs[1] < errs[0] / 3, errs
    # the same generator seed gives the same factors; mc_samples averages
    a = kfac(model, X, fisher="mc", generator=torch.Generator().manual_seed(3), progress=False).factors
    b = kfac(model, X, fisher="mc", generator=torch.Generator().manual_seed(3), progress=False).factors
    assert all(torch.equal(a[k].G, b[k].G) for k in a)
    many = kfac(model, X, fisher="mc", mc_samples=2000, generator=torch.Generator().manual_seed(0),
                progress=False).factors
    exact = kfac(model, X, fisher="exact", progress=False).factors
    assert all(torch.linalg.norm(many[k].G - exact[k].G) < 0.1 * torch.linalg.norm(exact[k].G) for k in exact)


def test_nll_sum_matches_cross_entropy():
    model = cnn()
    X, y = torch.randn(9, 2, 7, 7, dtype=f64), torch.randint(0, 3, (9,))
    curv = kfac(model, X, y, batch_size=4, progress=False)
    with torch.no_grad():
        expected = float(F.cross_entropy(model(X), y, reduction="sum"))
    assert curv.nll_sum == pytest.approx(expected, rel=1e-12)
    assert kfac(model, X, progress=False).nll_sum is None
    reg = nn.Linear(3, 2).double()
    Xr, Yr = torch.randn(5, 3, dtype=f64), torch.randn(5, 2, dtype=f64)
    with torch.no_grad():
        expected = float(0.5 * ((reg(Xr) - Yr) ** 2).sum() + 5 * 2 * 0.5 * math.log(2 * math.pi))
    assert kfac(reg, Xr, Yr, likelihood="regression", progress=False).nll_sum == pytest.approx(expected, rel=1e-12)


def _dense_all(curv: Curvature) -> dict[str, torch.Tensor]:
    return {k: v.to_dense() for k, v in curv.factors.items()}


def test_chunked_repeated_merged_and_loader_accumulation_equal_one_pass():
    model = cnn()
    X, y = torch.randn(11, 2, 7, 7, dtype=f64), torch.randint(0, 3, (11,))
    one = kfac(model, X, y, fisher="exact", batch_size=64, progress=False)
    ref = _dense_all(one)
    variants = {
        "chunked": kfac(model, X, y, fisher="exact", batch_size=3, progress=False),
        "update": kfac(model, X[:4], y[:4], fisher="exact", progress=False).update(model, X[4:], y[4:]),
        "merge": kfac(model, X[:5], y[:5], fisher="exact", progress=False).merge(
            kfac(model, X[5:], y[5:], fisher="exact", progress=False)),
        "loader": kfac(model, DataLoader(TensorDataset(X, y), batch_size=4), fisher="exact", progress=False),
        "dataset": kfac(model, TensorDataset(X, y), fisher="exact", batch_size=2, progress=False),
        "numpy": kfac(model, X.numpy(), y.numpy(), fisher="exact", progress=False),
    }
    for label, curv in variants.items():
        assert curv.n_samples == 11, label
        assert curv.nll_sum == pytest.approx(one.nll_sum, rel=1e-12), label
        for k, dense in _dense_all(curv).items():
            assert_close(dense, ref[k], rtol=1e-12)
    # merge does not modify its operands, and to() keeps the values
    assert one.to("cpu").n_samples == 11 and one.copy().nll_sum == one.nll_sum


def test_float32_model_gives_float64_factors():
    model = mlp().float()
    X, y = torch.randn(20, 4), torch.randint(0, 3, (20,))
    curv = kfac(model, X, y, fisher="exact", progress=False)
    ref = kfac(mlp(), X.double(), y, fisher="exact", progress=False)
    for k, K in curv.factors.items():
        assert K.dtype == f64
        assert torch.equal(K.G, K.G.T) and torch.equal(K.A, K.A.T)  # exactly symmetric
        assert torch.allclose(K.to_dense(), ref.factors[k].to_dense(), rtol=1e-4, atol=1e-6)
    K = kfoc(model, X, y, fisher="exact", progress=False).factors["0"]
    assert torch.equal(K.G, K.G.T) and torch.equal(K.A, K.A.T)


def _gloo_worker(rank: int, world: int, port: int, model: nn.Module, X: torch.Tensor, y: torch.Tensor,
                 out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        shard = slice(rank * len(X) // world, (rank + 1) * len(X) // world)
        a = kfac(model, X[shard], y[shard], fisher="exact", batch_size=5, progress=False)
        b = kfoc(model, X[shard], y[shard], fisher="exact", batch_size=5, progress=False)
        if rank == 0:
            torch.save({"kfac": _dense_all(a), "kfoc": _dense_all(b), "n": a.n_samples, "nll": a.nll_sum}, out)
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_equal_one_process(tmp_path):
    import torch.multiprocessing as mp

    model = cnn()
    X, y = torch.randn(10, 2, 7, 7, dtype=f64), torch.randint(0, 3, (10,))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "rank0.pt")
    mp.spawn(_gloo_worker, args=(2, port, model, X, y, out), nprocs=2, join=True)
    got = torch.load(out, weights_only=True)
    one = kfac(model, X, y, fisher="exact", batch_size=5, progress=False)
    one_kfoc = kfoc(model, X, y, fisher="exact", batch_size=5, progress=False)
    assert got["n"] == 10 and got["nll"] == pytest.approx(one.nll_sum, rel=1e-12)
    for k, dense in _dense_all(one).items():
        assert_close(got["kfac"][k], dense, rtol=1e-12)
    for k, dense in _dense_all(one_kfoc).items():
        assert_close(got["kfoc"][k], dense, rtol=1e-9)


# ------------------------------------------------------------------------------------------
# State restored, bad input
# ------------------------------------------------------------------------------------------
class _Exploding(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Dropout(0.5), nn.Linear(4, 2)).double()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("boom")
        return self.body(x)


def test_hooks_removed_and_state_restored_on_exception():
    model = _Exploding()
    model.train()
    model.body[0].bias.requires_grad_(False)
    model.body[2].eval()  # a module in another mode than its parent
    flags = {k: p.requires_grad for k, p in model.named_parameters()}
    modes = {k: m.training for k, m in model.named_modules()}
    with pytest.raises(RuntimeError, match="boom"):
        kfac(model, torch.randn(10, 3, dtype=f64), batch_size=5, progress=False)
    assert all(not m._forward_hooks for m in model.modules())
    assert {k: p.requires_grad for k, p in model.named_parameters()} == flags
    assert {k: m.training for k, m in model.named_modules()} == modes
    # a successful pass leaves the same state and covers the right parameters
    model.calls = -10
    curv = kfac(model, torch.randn(10, 3, dtype=f64), batch_size=5, progress=False)
    assert all(not m._forward_hooks for m in model.modules())
    assert {k: p.requires_grad for k, p in model.named_parameters()} == flags
    assert {k: m.training for k, m in model.named_modules()} == modes
    assert (curv.factors["body.0"].m, curv.uncovered) == (3, ["body.1.weight", "body.1.bias"])
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("case, match", [
    ("no_layer", "at least one trainable nn.Linear or nn.Conv2d"),
    ("lengths", r"y must be of the same length as X \(6\)"),
    ("nan", r"X must be finite .*1 non-finite"),
    ("label_high", r"class labels in 0 \.\.\. 2 .*labels from 1 to 3"),
    ("label_negative", r"labels from -1 to"),
    ("label_float", "integer class labels"),
    ("fisher", "fisher must be one of 'mc', 'exact', 'empirical'"),
    ("likelihood", "likelihood must be one of"),
    ("empirical_no_y", "the true labels for fisher='empirical'"),
    ("batch_size", "batch_size must be a positive integer"),
    ("grouped", "groups=1"),
    ("empty", "X must be a non-empty batch"),
    ("output", r"logits of shape \(B, C\)"),
    ("regression_shape", r"targets of shape \(6, 3\)"),
    ("loader_nan", r"X must be finite"),
    ("loader_label", r"labels from 0 to 5"),
    ("loader_and_y", "y must be None when X is a DataLoader"),
    ("update_other_model", "the model given to update"),
    ("merge_other_fisher", "fisher of the curvature to merge"),
])
def test_bad_input(case, match):
    model, X, y = mlp(), torch.randn(6, 4, dtype=f64), torch.tensor([0, 1, 2, 0, 1, 2])
    X_nan, y_bad = X.clone(), y.clone()
    X_nan[2, 1] = float("nan")
    y_bad[5] = 5
    calls = {
        "no_layer": lambda: kfac(nn.Sequential(nn.ReLU()), X, y),
        "lengths": lambda: kfac(model, X, y[:5]),
        "nan": lambda: kfac(model, X_nan, y),
        "label_high": lambda: kfac(model, X, y + 1),
        "label_negative": lambda: kfac(model, X, y - 1),
        "label_float": lambda: kfac(model, X, y + 0.5),
        "fisher": lambda: kfac(model, X, y, fisher="ggn"),
        "likelihood": lambda: kfac(model, X, y, likelihood="poisson"),
        "empirical_no_y": lambda: kfac(model, X, fisher="empirical"),
        "batch_size": lambda: kfac(model, X, y, batch_size=0),
        "grouped": lambda: kfac(nn.Sequential(nn.Conv2d(2, 2, 1, groups=2), nn.Flatten()), torch.randn(3, 2, 1, 1)),
        "empty": lambda: kfac(model, X[:0], y[:0]),
        "output": lambda: kfac(nn.Conv2d(1, 2, 1), torch.randn(3, 1, 2, 2)),
        "regression_shape": lambda: kfac(model, X, torch.randn(6, 2), likelihood="regression"),
        "loader_nan": lambda: kfac(model, DataLoader(TensorDataset(X_nan, y), batch_size=2)),
        "loader_label": lambda: kfac(model, DataLoader(TensorDataset(X, y_bad), batch_size=3)),
        "loader_and_y": lambda: kfac(model, TensorDataset(X, y), y),
        "update_other_model": lambda: kfac(model, X, y).update(nn.Linear(4, 3), X, y),
        "merge_other_fisher": lambda: kfac(model, X, y).merge(kfac(model, X, y, fisher="exact")),
    }
    with pytest.raises(ValueError, match=match):
        calls[case]()
    assert all(not m._forward_hooks for m in model.modules())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_pass_equals_cpu():
    model = cnn()
    X, y = torch.randn(40, 2, 7, 7, dtype=f64), torch.randint(0, 3, (40,))
    ref = kfac(model, X, y, fisher="exact", batch_size=16, progress=False)
    moved = kfac(model, X, y, fisher="exact", batch_size=16, device="cuda", progress=False)
    assert next(model.parameters()).device.type == "cpu"  # moved for the pass and back
    assert moved.device.type == "cuda" and moved.nll_sum == pytest.approx(ref.nll_sum, rel=1e-10)
    on_gpu = kfac(model.cuda(), X.cuda(), y.cuda(), fisher="exact", batch_size=16, progress=False)
    for curv in (moved, on_gpu):
        for k, K in curv.factors.items():
            assert K.device.type == "cuda"
            assert_close(K.to_dense().cpu(), ref.factors[k].to_dense(), rtol=1e-10)
    gen = torch.Generator(device="cuda").manual_seed(0)
    mc = kfac(model, X.cuda(), y.cuda(), generator=gen, progress=False)
    mc_cpu_gen = kfac(model, X.cuda(), y.cuda(), generator=torch.Generator().manual_seed(0), progress=False)
    fo = kfoc(model, X.cuda(), y.cuda(), fisher="exact", batch_size=16, progress=False)
    ref_fo = kfoc(model.cpu(), X, y, fisher="exact", batch_size=16, progress=False)
    for k in ref.factors:
        assert torch.isfinite(mc.factors[k].G).all() and torch.isfinite(mc_cpu_gen.factors[k].G).all()
        assert_close(fo.factors[k].to_dense().cpu(), ref_fo.factors[k].to_dense(), rtol=1e-8)
