r"""Posterior predictives of a classifier: MAP, Monte-Carlo model average, linearized, Gibbs.

The network's own parameters are the MAP estimate; a :class:`~skkprior.gaussian.LayerwiseGaussian`
(typically a :class:`~skkprior.laplace.KroneckerPosterior`) holds the posterior over some or all
of them. Nothing here modifies the network: parameters are substituted with
:func:`torch.func.functional_call`, the network runs in evaluation mode and every module's
mode is restored afterwards. Parameters the Gaussian does not cover (frozen ones) and buffers
(e.g. BatchNorm statistics) come from the network.

- :func:`predict_proba_map`: ``softmax(f(x; theta_MAP))``.
- :func:`predict_proba_mc`: the model average ``1/S sum_s softmax(f(x; theta_s))``,
  ``theta_s ~ Q``; the ``S`` parameter sets are drawn in batched calls and evaluated with
  ``torch.vmap`` over the sample dimension (docs/concepts.md, section 7; the paper uses ``S = 100``).
- :func:`predict_proba_linearized` and :func:`linearized_logit_moments`: the sampling-free
  linearized (GLM) predictive with the multiclass probit approximation.
- :func:`gibbs_predict` and :func:`gibbs_error_count`: the Gibbs classifier that PAC-Bayes
  bounds certify, with one fresh posterior draw *per example* (docs/concepts.md, section 6).

Which mean is used
------------------
The Monte-Carlo, linearized and Gibbs predictives use the Gaussian's mean for the parameters it
covers (for a posterior built by :func:`~skkprior.laplace.posterior` that is a float64 copy of
the network's parameters); :func:`predict_proba_map` uses the network's own parameters.

Linearized predictive
---------------------
With the logits linearized at the mean ``mu``, ``f(x; theta) ~ f(x; mu) + J (theta - mu)``,
the logits are Gaussian with covariance ``J Sigma J^T``. ``Sigma`` is block diagonal
(independent groups) and, for a Linear/Conv2d layer with parameter matrix ``[W | b]``
(``n x m``), ``Sigma = tau (L (x) R) diag(1 / Lambda) (L (x) R)^T`` with ``(L, R, Lambda) =
(T_G, T_A, beta D_G D_A^T + alpha)`` for the exact two-term form, ``(L_G, L_A, 1)`` (Cholesky
factors of the inverse factors) for one Kronecker product, and ``(I, I, v)`` for ``v I``. The
Jacobian of logit ``c`` with respect to ``[W | b]`` is ``J_c = sum_t g_{c,t} a_t^T`` (``t``
over spatial positions and calls of the layer, ``a_t`` the bias-augmented input or unfolded
patch, ``g_{c,t}`` the gradient of logit ``c`` with respect to the layer's output), obtained
with one batched backward pass to the layer outputs. Projected once, ``M_c = L^T J_c R``,

.. math:: \mathrm{Cov}[c, c'] = \tau \sum_{ij} M_c[i, j] M_{c'}[i, j] / \Lambda_{ij}.

For a layer applied once to a 2-D input (a plain ``nn.Linear``), ``J_c = g_c a^T`` has rank
one and the sum reduces to ``tau sum_i u_{c,i} u_{c',i} s_i`` with ``u_c = L^T g_c`` and
``s_i = sum_j (R^T a)_j^2 / Lambda_ij``: ``O(m^2 + n m + C n^2)`` per example, no ``n x m``
matrix per class. No Jacobian row as long as the parameter vector is ever formed; parameters
with an isotropic precision ``v I`` add ``tau / v J_p J_p^T`` with per-example Jacobians with
respect to those parameters only. The predictive is the probit approximation
``softmax_c(mu_c / sqrt(1 + pi / 8 Sigma_cc))``.

Gibbs classifier, fast path
---------------------------
For a Linear layer applied once per example to a 2-D input ``h`` (``h~`` bias-augmented),
``W h~`` with ``W ~ N(M, Sigma)`` has the exact per-example distribution
``M h~ + sqrt(tau) L (s * z)``, ``s_i^2 = sum_j (R^T h~)_j^2 / Lambda_ij``, ``z ~ N(0, I_n)``,
at ``O(m^2 + n m)`` per example instead of drawing an ``n x m`` weight. A Conv2d layer draws a
full weight per example, ``M + sqrt(tau) L (Z * Lambda^-1/2) R^T`` (``O(n m^2 + n^2 m)``, the
``R^T`` product one matrix product for all examples), and applies the per-example weights as
grouped convolutions (``groups`` = examples) over chunks of a few dozen examples; the module's
own convolution at the mean is skipped (it receives an empty batch). Per example the
convolution costs what the ordinary one does; im2col (``F.unfold``) with the mean convolution
plus a batched product for the noise costs the same products and was measured slower on CPU
(the unfolded patches of a 32-channel layer are 9 times its input). When a group is neither
(isotropic parameters such as LayerNorm's), a layer is called more than once per forward pass
(its draw would have to be shared between calls), or a Linear input is not 2-D, the general
path draws one full parameter set per example and evaluates ``vmap(functional_call)`` over
(parameters, input) jointly. Both give the same distribution of predictions.

Precision of the draws
----------------------
The fast path forms the normals and the per-example products in the network's dtype (float32
for a float32 network); the posterior factors ``L``, ``R``, ``Lambda`` come from float64
decompositions and are rounded to that dtype once per call. The draws stay exact samples of
``Q`` up to rounding in the network's dtype: the normals are float64 Box-Muller normals rounded
(from float64 uniforms; float32 ``torch.randn`` would cut the tails at 5.8 standard
deviations), and the products' rounding errors are of the order of those of the forward pass
``W h`` with a float32 weight, which every path (the general path's vmapped forward too) makes
anyway. The variances ``s_i^2`` are computed as ``c_i sum_j v_j^2 r_ij`` with
``c_i = max_j tau / Lambda_ij`` and ``r_ij <= 1``, so no intermediate overflows before the
variance itself does. The Gibbs error count is a Monte-Carlo estimate over independent draws;
rounding of this order changes a prediction only where two logits tie to within the network's
own rounding.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Literal, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, jacrev, vmap

from ._layers import KroneckerLayer, split_layer_matrix
from ._validation import check_finite_tensor, check_label_range, class_labels, error_message
from .gaussian import GaussianGroup, LayerwiseGaussian

__all__ = [
    "NonFiniteLogits",
    "gibbs_error_count",
    "gibbs_predict",
    "linearized_logit_moments",
    "predict_proba_linearized",
    "predict_proba_map",
    "predict_proba_mc",
]

logger = logging.getLogger(__name__)

_F64 = torch.float64
# Bound on the elements of the per-example intermediates (Jacobians, sampled parameter sets).
_CHUNK_ELEMENTS = 1 << 22
# Elements of the per-example weights drawn at once for a Conv2d layer in the Gibbs fast path
# (4 MiB in float32): the draws stay in cache, and the grouped convolution of a chunk (64 groups
# for a 64 x 289 layer) runs about as fast as the ordinary convolution of the same examples, where
# a thousand groups run at half that speed (measured on CPU).
_CONV_CHUNK_ELEMENTS = 1 << 20


class NonFiniteLogits(ValueError):
    """Logits that overflowed the network's dtype (or float64) although the inputs are finite.

    A ``ValueError`` for the user; :func:`~skkprior.tuning.tune_validation` and the estimators'
    grids catch this class to skip a grid point whose posterior is too broad to evaluate.
    """




def _scales_text(gaussian: Any) -> str:
    """The posterior's ``temperature``, ``prior_scale`` and prior ``weight_decay``, as far as recorded."""
    parts = []
    for attr in ("temperature", "prior_scale"):
        values = getattr(gaussian, attr, None)
        if attr == "temperature" and not isinstance(values, Mapping):  # a plain Gaussian: its groups'
            values = {g.name: g.temperature for g in gaussian} if isinstance(gaussian, LayerwiseGaussian) else None
        if isinstance(values, Mapping) and values:
            fl = sorted({float(v.detach()) if isinstance(v, torch.Tensor) else float(v) for v in values.values()})
            parts.append(f"{attr} {fl[0]:.3g}" if len(fl) == 1 else f"{attr} {fl[0]:.3g} .. {fl[-1]:.3g}")
    metadata = getattr(gaussian, "metadata", None) or {}
    for key, label in (("weight_decay", "weight_decay"), ("prior_scale_factor", "prior scaled by")):
        if isinstance(metadata.get(key), (int, float)) and not isinstance(metadata.get(key), bool):
            parts.append(f"{label} {float(metadata[key]):.3g}")
    return ", ".join(parts) if parts else "scales not recorded"


_TOO_BROAD_FIX = ("The posterior is too broad for the network: its draws overflow. Lower temperature, or "
                  "raise prior_scale or weight_decay (the prior precision), e.g. by factors of 10 until "
                  "predictions are finite; predictive='linearized' has a finite limit (uniform) instead.")


def _check_draw_logits(logits: torch.Tensor, where: str, gaussian: Any, dtype: torch.dtype) -> torch.Tensor:
    """Raise :class:`NonFiniteLogits` naming the scales when logits of posterior draws are not finite.

    The inputs and the logits at the mean were checked before, so a non-finite logit here
    comes from a draw that overflowed the network's dtype (softmax and argmax over it would
    give NaN and the first class). No finite answer exists in that dtype, so this is an error,
    not a value.
    """
    finite = torch.isfinite(logits)
    if not bool(finite.all()):
        n_bad = int((~finite).sum())
        raise NonFiniteLogits(error_message(
            f"the logits of the posterior draws in {where}", f"finite in the network's dtype ({dtype})",
            f"{n_bad} non-finite logits of {logits.numel()} ({_scales_text(gaussian)})", _TOO_BROAD_FIX))
    return logits


def _check_mean_logits(logits: torch.Tensor, where: str) -> torch.Tensor:
    """Raise naming the model when the network's logits at its (mean) parameters are not finite."""
    finite = torch.isfinite(logits)
    if not bool(finite.all()):
        raise ValueError(error_message(
            f"the model's logits in {where}", "finite",
            f"{int((~finite).sum())} non-finite logits of {logits.numel()} for finite inputs",
            "The network's parameters hold non-finite or overflowing values (e.g. diverged training); "
            "retrain with a smaller lr or a larger weight_decay."))
    return logits


# -- argument checks ------------------------------------------------------------------------------
def _check_int(value: Any, name: str, fix: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(error_message(name, "a positive integer", value, fix or f"Pass {name} >= 1."))
    return int(value)


def _check_generator(generator: Any) -> torch.Generator | None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(error_message("generator", "a torch.Generator or None", type(generator).__name__,
                                      "Pass torch.Generator().manual_seed(seed)."))
    return generator


def _check_gaussian(model: nn.Module, gaussian: Any, what: str) -> LayerwiseGaussian:
    """The Gaussian must be defined over parameters of ``model`` (names and shapes)."""
    if not isinstance(gaussian, LayerwiseGaussian):
        raise TypeError(error_message(what, "a LayerwiseGaussian (e.g. a KroneckerPosterior)",
                                      type(gaussian).__name__,
                                      "Build one with skkprior.laplace.posterior(prior, curvature, model)."))
    params = dict(model.named_parameters())
    problems: list[str] = []
    for g in gaussian:
        for pname, shape in zip(g.parameter_names, g.parameter_shapes):
            if pname not in params:
                problems.append(f"parameter '{pname}' is not in the model")
            elif tuple(params[pname].shape) != tuple(shape):
                problems.append(f"parameter '{pname}' has shape {tuple(shape)} in the Gaussian, "
                                f"{tuple(params[pname].shape)} in the model")
        if g.layer is not None and not problems:
            try:
                module = model.get_submodule(g.layer.name)
            except AttributeError:
                module = None
            if not isinstance(module, (nn.Linear, nn.Conv2d)):
                problems.append(f"group '{g.name}' is a Kronecker layer but the model's module "
                                f"'{g.layer.name}' is {type(module).__name__}")
    if problems:
        raise ValueError(error_message(what, "defined over the model's parameters (names and shapes)",
                                       "; ".join(problems[:5]),
                                       "Use the posterior built for this model, e.g. "
                                       "posterior(prior, curvature, model)."))
    return gaussian


def _as_input(X: Any) -> torch.Tensor:
    """``X`` as a tensor (not yet moved), with the bad-input checks that need no model."""
    if hasattr(X, "tocsr") or (isinstance(X, torch.Tensor) and X.layout != torch.strided):
        raise TypeError(error_message("X", "a dense array or tensor", "a sparse matrix",
                                      "Convert it with X.toarray() or X.to_dense()."))
    if not isinstance(X, torch.Tensor):
        try:
            X = torch.as_tensor(X)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise TypeError(error_message("X", "a numeric array or tensor", type(X).__name__,
                                          "Pass a numpy array or a torch tensor.")) from exc
    if X.ndim == 0 or X.shape[0] == 0:
        raise ValueError(error_message("X", "a non-empty batch of shape (n_examples, ...)", X,
                                       "Pass at least one example."))
    if X.is_complex():
        raise TypeError(error_message("X", "real-valued", X, "Pass real features."))
    if X.is_floating_point():
        check_finite_tensor(X, "X", fix="Remove or impute the NaN/inf entries before predicting.")
    return X


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Evaluation mode for the duration; every module's own mode is restored afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


@contextlib.contextmanager
def _hooks(registrations: list[Callable[[], Any]]) -> Iterator[None]:
    handles = []
    try:
        for register in registrations:
            handles.append(register())
        yield
    finally:
        for h in handles:
            h.remove()


class _Runner:
    """Calls the model functionally on a device, never touching the model's own tensors."""

    def __init__(self, model: nn.Module, device: Any) -> None:
        params = list(model.parameters())
        if not params:
            raise ValueError(error_message("model", "a module with parameters", type(model).__name__))
        own = params[0].device
        floating = [p.dtype for p in params if p.is_floating_point()]
        self.model = model
        self.dtype = floating[0] if floating else torch.get_default_dtype()
        self.device = own if device is None else torch.empty(0, device=device).device
        if self.device != own:
            # copies on the requested device; the model itself stays where it is
            self.base = {k: v.detach().to(self.device)
                         for k, v in [*model.named_parameters(), *model.named_buffers()]}
        else:
            self.base = {}

    def batch(self, X: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        x = X[start:stop]
        if x.is_floating_point():
            return x.to(device=self.device, dtype=self.dtype)
        return x.to(device=self.device)

    def __call__(self, params: Mapping[str, torch.Tensor] | None, x: torch.Tensor) -> torch.Tensor:
        if not params and not self.base:
            return self.model(x)
        return functional_call(self.model, {**self.base, **(params or {})}, (x,))

    def gaussian_mean(self, gaussian: LayerwiseGaussian, *, requires_grad: bool = False) -> dict[str, torch.Tensor]:
        """The Gaussian's mean as parameters in the model's dtypes, on the device."""
        own = dict(self.model.named_parameters())
        out = {}
        for name, value in gaussian.mean_params().items():
            t = value.detach().to(device=self.device, dtype=own[name].dtype)
            out[name] = t.requires_grad_(True) if requires_grad else t
        return out

    def cast_samples(self, samples: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        own = dict(self.model.named_parameters())
        return {k: v.to(device=self.device, dtype=own[k].dtype) for k, v in samples.items()}


def _probe(runner: _Runner, X: torch.Tensor, params: Mapping[str, torch.Tensor] | None = None) -> int:
    """Run one example through the model; return the number of classes or raise naming X."""
    first: list[tuple[str, nn.Module, tuple[int, ...]]] = []

    def pre_hook(name: str) -> Callable:
        def hook(module: nn.Module, inputs: tuple) -> None:
            if not first and inputs and isinstance(inputs[0], torch.Tensor):
                first.append((name, module, tuple(inputs[0].shape)))
        return hook

    regs = [(lambda m=m, n=n: m.register_forward_pre_hook(pre_hook(n)))
            for n, m in runner.model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    x = runner.batch(X, 0, 1)
    try:
        with torch.no_grad(), _hooks(regs):
            out = runner(params, x)
    except (RuntimeError, ValueError, IndexError, TypeError) as exc:
        expected = "inputs of the shape the model accepts"
        if first:
            name, module, shape = first[0]
            if isinstance(module, nn.Linear) and shape[-1] != module.in_features:
                expected = (f"inputs with {module.in_features} features (the first layer '{name}' is "
                            f"Linear(in_features={module.in_features}))")
            elif isinstance(module, nn.Conv2d) and (len(shape) < 3 or shape[-3] != module.in_channels):
                expected = (f"images with {module.in_channels} channels (the first layer '{name}' is "
                            f"Conv2d(in_channels={module.in_channels}))")
        raise ValueError(error_message("X", expected, X,
                                       f"The model raised {type(exc).__name__}: {str(exc)[:200]}")) from exc
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != 1:
        raise ValueError(error_message("the model's output", "logits of shape (n_examples, n_classes)",
                                       out if isinstance(out, torch.Tensor) else type(out).__name__,
                                       "Return raw logits from forward()."))
    _check_mean_logits(out, "a forward pass at the mean parameters")
    return int(out.shape[1])


def _batches(n: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, size):
        yield start, min(n, start + size)


# -- per-layer covariance factors ------------------------------------------------------------------
@dataclass
class _LayerFactors:
    """``Cov(vec_row [W | b]) = tau (left (x) right) diag(inv_lam) (left (x) right)^T``."""

    group: GaussianGroup
    module: nn.Module
    tau: float
    left: torch.Tensor | None      # (n, n) float64, None = identity
    right: torch.Tensor | None     # (m, m) float64, None = identity
    inv_lam: torch.Tensor          # (n, m) or 0-d float64
    mean: torch.Tensor             # (n, m) float64

    @property
    def layer(self) -> KroneckerLayer:
        assert self.group.layer is not None
        return self.group.layer

    def project_rows(self, g: torch.Tensor) -> torch.Tensor:
        """``left^T g`` for vectors ``g`` stored along the last dimension (``(..., n)``)."""
        return g if self.left is None else g @ self.left

    def project_rows_T(self, y: torch.Tensor) -> torch.Tensor:
        """``left y`` for vectors ``y`` stored along the last dimension (``(..., n)``)."""
        return y if self.left is None else y @ self.left.T

    def output_variances(self, h: torch.Tensor) -> torch.Tensor:
        """``s_i^2 = sum_j (right^T h)_j^2 inv_lam_ij`` for inputs ``h`` of shape ``(B, m)``: ``(B, n)``."""
        v = h if self.right is None else h @ self.right
        v2 = v * v
        if self.inv_lam.ndim == 0:
            return (v2.sum(dim=-1, keepdim=True) * self.inv_lam).expand(h.shape[0], self.layer.n)
        return v2 @ self.inv_lam.T


def _temperature(g: GaussianGroup) -> float:
    tau = float(g.temperature.detach()) if isinstance(g.temperature, torch.Tensor) else float(g.temperature)
    if not (tau > 0 and math.isfinite(tau)):
        raise ValueError(error_message(f"temperature of group '{g.name}'", "a finite positive number", tau))
    return tau


def _layer_factors(model: nn.Module, g: GaussianGroup, device: torch.device) -> _LayerFactors:
    """The posterior covariance of a layer group in scaled-basis form (:mod:`skkprior.precision`)."""
    left, right, inv_lam = g.precision.inverse_factors()

    def mv(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.detach().to(device=device, dtype=_F64)

    assert g.layer is not None
    return _LayerFactors(g, model.get_submodule(g.layer.name), _temperature(g), mv(left), mv(right),
                         mv(inv_lam), g.mean.detach().to(device=device, dtype=_F64))


def _isotropic_variance(g: GaussianGroup) -> float:
    """``tau / v`` for a flat group whose precision is a multiple of the identity."""
    scale = g.precision.inverse_factors().scale
    if scale.ndim != 0:
        raise NotImplementedError(
            error_message(f"precision of the non-layer group '{g.name}'", "a multiple of the identity (v I)",
                          type(g.precision).__name__,
                          "The linearized predictive needs isotropic precisions outside Linear/Conv2d; "
                          "use predictive='mc'."))
    return _temperature(g) * float(scale.detach())


# -- convolution helpers ---------------------------------------------------------------------------
def _conv_padding(module: nn.Conv2d) -> tuple[int, int, int, int]:
    """``F.pad`` amounts ``(left, right, top, bottom)`` equivalent to the layer's padding."""
    pads = []
    for k, d, p in zip(module.kernel_size, module.dilation,
                       module.padding if not isinstance(module.padding, str) else (module.padding,) * 2):
        if p == "valid":
            pads.append((0, 0))
        elif p == "same":
            total = d * (k - 1)
            pads.append((total // 2, total - total // 2))
        else:
            pads.append((int(p), int(p)))
    (top, bottom), (left, right) = pads
    return left, right, top, bottom


def _padded(module: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    pad = _conv_padding(module)
    if any(pad):
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        x = F.pad(x, pad, mode=mode)
    return x


def _patches(module: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """Unfolded patches ``(B, C_in kh kw, L)`` in the weight's flattening order."""
    return F.unfold(_padded(module, x), module.kernel_size, dilation=module.dilation, stride=module.stride)


def _per_example_conv(module: nn.Conv2d, x: torch.Tensor, weight: torch.Tensor,
                      bias: torch.Tensor | None) -> torch.Tensor:
    """Convolve example ``b`` with ``weight[b]`` (``(B, C_out, C_in, kh, kw)``) as one grouped conv.

    Zero padding is left to the convolution (no padded copy of the input); other padding modes
    pad first.
    """
    B, c_in = x.shape[0], x.shape[1]
    if module.padding_mode == "zeros":
        padding: Any = module.padding
    else:
        x, padding = _padded(module, x), 0
    out = F.conv2d(x.reshape(1, B * c_in, *x.shape[-2:]), weight.reshape(-1, *weight.shape[2:]),
                   None if bias is None else bias.reshape(-1), stride=module.stride, padding=padding,
                   dilation=module.dilation, groups=B)
    return out.reshape(B, -1, *out.shape[-2:])


def _check_example_major(module: nn.Module, name: str, inp: torch.Tensor, n_batch: int) -> None:
    """A layer's input must have the examples first (possibly folded with positions, example-major)."""
    want = 4 if isinstance(module, nn.Conv2d) else 2
    if inp.ndim < want or inp.shape[0] % n_batch != 0:
        raise ValueError(error_message(
            f"the input of layer '{name}' ({type(module).__name__})",
            f"a batch whose first dimension holds the {n_batch} examples (at least {want}-D)", inp,
            "Per-example Jacobians need the batch dimension first; positions may be folded into it "
            "example-major, as x.reshape(n * T, features) does."))


def _with_ones(a: torch.Tensor) -> torch.Tensor:
    return torch.cat([a, torch.ones_like(a[..., :1])], dim=-1)


# -- MAP and Monte-Carlo ----------------------------------------------------------------------------
def predict_proba_map(model: nn.Module, X: Any, *, batch_size: int = 1024,
                      device: torch.device | str | None = None) -> torch.Tensor:
    r"""Class probabilities of the network at its own parameters, ``softmax(f(x; theta_MAP))``.

    Parameters
    ----------
    model : nn.Module
        A classifier returning logits of shape ``(n, C)``; not modified (it runs in evaluation
        mode, and every module's mode is restored afterwards).
    X : array-like or torch.Tensor of shape (n_examples, ...)
        Inputs; floating-point inputs are cast to the model's dtype.
    batch_size : int, default=1024
        Examples per forward pass.
    device : torch.device or str, optional
        Where to compute (default: the device of the model's parameters). Another device works
        on copies of the parameters and buffers.

    Returns
    -------
    torch.Tensor of shape (n_examples, C), float64
        Rows on the simplex, on the compute device.

    Raises
    ------
    ValueError
        When ``X`` is empty, holds NaN or infinity, or does not fit the model (e.g. a wrong
        number of features), naming ``X``.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    >>> p = predict_proba_map(net, torch.randn(5, 4))
    >>> p.shape, p.dtype, bool(torch.allclose(p.sum(1), torch.ones(5, dtype=torch.float64)))
    (torch.Size([5, 3]), torch.float64, True)
    """
    batch_size = _check_int(batch_size, "batch_size")
    X = _as_input(X)
    runner = _Runner(model, device)
    out = []
    with _eval_mode(model):
        _probe(runner, X)
        with torch.no_grad():
            for start, stop in _batches(X.shape[0], batch_size):
                logits = _check_mean_logits(runner(None, runner.batch(X, start, stop)), "predict_proba_map")
                out.append(torch.softmax(logits.to(_F64), dim=-1))
    return torch.cat(out)


def predict_proba_mc(model: nn.Module, gaussian: LayerwiseGaussian, X: Any, *, n_samples: int = 100,
                     batch_size: int = 256, sample_chunk: int = 16, generator: torch.Generator | None = None,
                     device: torch.device | str | None = None) -> torch.Tensor:
    r"""The Monte-Carlo model average ``1/S sum_s softmax(f(x; theta_s))``, ``theta_s ~ Q``.

    The parameter sets are drawn ``sample_chunk`` at a time with one call of
    :meth:`~skkprior.gaussian.LayerwiseGaussian.sample` and evaluated with
    :func:`torch.func.functional_call` under :func:`torch.vmap` over the sample dimension: no
    ``state_dict`` reload per sample. Every draw is applied to every example.

    Parameters
    ----------
    model : nn.Module
        The network (not modified; evaluated in evaluation mode). Parameters the Gaussian does
        not cover and all buffers come from it.
    gaussian : LayerwiseGaussian
        The posterior ``Q`` (e.g. a :class:`~skkprior.laplace.KroneckerPosterior`).
    X : array-like or torch.Tensor of shape (n_examples, ...)
        Inputs.
    n_samples : int, default=100
        ``S``, the number of parameter draws (the paper uses 100).
    batch_size : int, default=256
        Examples per forward pass.
    sample_chunk : int, default=16
        Draws evaluated together; memory grows with ``sample_chunk * batch_size``. The draws
        depend on the generator's state and on ``sample_chunk`` (draws are made per chunk).
    generator : torch.Generator, optional
        Seeds the draws (on the Gaussian's device); the same seed gives the same result.
    device : torch.device or str, optional
        Where to evaluate (default: the model's device).

    Returns
    -------
    torch.Tensor of shape (n_examples, C), float64

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from skkprior.gaussian import LayerwiseGaussian
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    >>> q = LayerwiseGaussian.isotropic(net, precision=100.0)
    >>> X = torch.randn(6, 4, dtype=torch.float64)
    >>> p = predict_proba_mc(net, q, X, n_samples=20, generator=torch.Generator().manual_seed(0))
    >>> p.shape, bool(torch.allclose(p.sum(1), torch.ones(6, dtype=torch.float64)))
    (torch.Size([6, 3]), True)
    >>> q0 = LayerwiseGaussian.isotropic(net, precision=1e20)   # (almost) no covariance
    >>> bool(torch.allclose(predict_proba_mc(net, q0, X, n_samples=3), predict_proba_map(net, X)))
    True
    """
    n_samples = _check_int(n_samples, "n_samples")
    batch_size = _check_int(batch_size, "batch_size")
    sample_chunk = _check_int(sample_chunk, "sample_chunk")
    generator = _check_generator(generator)
    X = _as_input(X)
    gaussian = _check_gaussian(model, gaussian, "gaussian")
    runner = _Runner(model, device)

    def logits_of(params: Mapping[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return runner(params, x)

    with _eval_mode(model):
        n_classes = _probe(runner, X, runner.gaussian_mean(gaussian))
        total = torch.zeros(X.shape[0], n_classes, dtype=_F64, device=runner.device)
        with torch.no_grad():
            done = 0
            while done < n_samples:
                k = min(sample_chunk, n_samples - done)
                params = runner.cast_samples(gaussian.sample(k, generator=generator, dtype=runner.dtype))
                batched = vmap(logits_of, in_dims=(0, None))
                for start, stop in _batches(X.shape[0], batch_size):
                    logits = batched(params, runner.batch(X, start, stop))  # (k, B, C)
                    _check_draw_logits(logits, "predict_proba_mc", gaussian, runner.dtype)
                    # float64 softmax subtracts the row maximum: exact for any finite logits
                    total[start:stop] += torch.softmax(logits.to(_F64), dim=-1).sum(dim=0)
                done += k
    return total / n_samples


# -- linearized predictive --------------------------------------------------------------------------
def _grads_to_outputs(logits: torch.Tensor, outputs: list[torch.Tensor]) -> list[torch.Tensor | None]:
    """``d logit_c / d output`` for every class ``c``: a list of ``(C, *output.shape)`` (or None)."""
    if not outputs:
        return []
    C = logits.shape[1]
    eye = torch.eye(C, dtype=logits.dtype, device=logits.device)
    try:
        grad_outputs = eye.unsqueeze(1).expand(C, *logits.shape).contiguous()
        grads = torch.autograd.grad(logits, outputs, grad_outputs=grad_outputs, is_grads_batched=True,
                                    allow_unused=True, retain_graph=True)
        return list(grads)
    except RuntimeError as exc:  # an op without a batching rule: one backward pass per class
        logger.debug("batched backward failed (%s); falling back to %d passes", exc, C)
    per_class = []
    for c in range(C):
        per_class.append(torch.autograd.grad(logits[:, c].sum(), outputs, allow_unused=True, retain_graph=True))
    return [None if per_class[0][i] is None else torch.stack([pc[i] for pc in per_class])
            for i in range(len(outputs))]


def _layer_logit_cov(f: _LayerFactors, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``tau J Sigma J^T`` of one layer from inputs ``a`` (``(B, L, m)``) and output gradients ``g``
    (``(C, B, L, n)``), float64; ``(B, C, C)``."""
    C, B, L, n = g.shape
    m = a.shape[-1]
    if L == 1:  # rank one: J_c = g_c a^T
        u = f.project_rows(g[:, :, 0, :])                   # (C, B, n)
        s2 = f.output_variances(a[:, 0, :])                 # (B, n)
        return f.tau * torch.einsum("cbi,bi,dbi->bcd", u, s2, u)
    out = torch.empty(B, C, C, dtype=_F64, device=a.device)
    step = max(1, _CHUNK_ELEMENTS // max(1, C * n * m))
    sqrt_inv_lam = f.inv_lam.sqrt()
    for s, e in _batches(B, step):
        J = torch.einsum("cbln,blm->cbnm", g[:, s:e], a[s:e])   # (C, b, n, m)
        if f.left is not None:
            J = f.left.T @ J
        if f.right is not None:
            J = J @ f.right
        M = (J * sqrt_inv_lam).reshape(C, e - s, n * m)
        out[s:e] = f.tau * torch.einsum("cbk,dbk->bcd", M, M)
    return out


def linearized_logit_moments(model: nn.Module, posterior: LayerwiseGaussian, X: Any, *,
                             batch_size: int = 64,
                             device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Mean and covariance of the linearized logits, ``f(x; mu)`` and ``J Sigma J^T``.

    See the module notes: per Linear/Conv2d layer the Jacobian ``sum_t g_{c,t} a_t^T`` is
    projected once into the posterior's eigenbasis, so no Jacobian row as long as the
    parameter vector is formed; isotropic groups use per-example Jacobians with respect to
    their own parameters only.

    Parameters
    ----------
    model : nn.Module
        The network, linearized at the posterior mean (not modified).
    posterior : LayerwiseGaussian
        Layer groups with :class:`~skkprior.kron.KronDecomposed`, :class:`~skkprior.kron.Kron`
        or isotropic precisions; other groups with isotropic precisions.
    X : array-like or torch.Tensor of shape (n_examples, ...)
        Inputs.
    batch_size : int, default=64
        Examples per forward/backward pass.
    device : torch.device or str, optional
        Where to compute (default: the model's device).

    Returns
    -------
    mean : torch.Tensor of shape (n_examples, C), float64
        Logits at the posterior mean.
    cov : torch.Tensor of shape (n_examples, C, C), float64
        Their covariance under the linearized model.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from skkprior.gaussian import LayerwiseGaussian
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    >>> q = LayerwiseGaussian.isotropic(net, precision=10.0)
    >>> mu, cov = linearized_logit_moments(net, q, torch.randn(5, 4, dtype=torch.float64))
    >>> mu.shape, cov.shape, bool(torch.allclose(cov, cov.mT))
    (torch.Size([5, 3]), torch.Size([5, 3, 3]), True)
    """
    mean, cov = _linearized_moments(model, posterior, X, batch_size=batch_size, device=device)
    _check_variances(cov, "linearized_logit_moments", posterior)
    return mean, cov


def _linearized_moments(model: nn.Module, posterior: LayerwiseGaussian, X: Any, *, batch_size: int,
                        device: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`linearized_logit_moments` without the NaN check on the covariance's off-diagonal."""
    batch_size = _check_int(batch_size, "batch_size")
    X = _as_input(X)
    posterior = _check_gaussian(model, posterior, "posterior")
    runner = _Runner(model, device)
    layers = [_layer_factors(model, g, runner.device) for g in posterior if g.layer is not None]
    iso = [(g, _isotropic_variance(g)) for g in posterior if g.layer is None]
    means, covs = [], []
    with _eval_mode(model):
        _probe(runner, X, runner.gaussian_mean(posterior))
        for start, stop in _batches(X.shape[0], batch_size):
            mu, cov = _linearized_batch(runner, posterior, layers, iso, runner.batch(X, start, stop))
            means.append(mu)
            covs.append(cov)
    return torch.cat(means), torch.cat(covs)


def _linearized_batch(runner: _Runner, posterior: LayerwiseGaussian, layers: list[_LayerFactors],
                      iso: list[tuple[GaussianGroup, float]], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    records: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {i: [] for i in range(len(layers))}

    n_batch = x.shape[0]

    def make_hook(i: int, f: _LayerFactors) -> Callable:
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
            inp = inputs[0].detach()
            _check_example_major(module, f.layer.name, inp, n_batch)
            if isinstance(module, nn.Conv2d):
                a = _patches(module, inp).transpose(1, 2)                   # (B', L, m_w)
            else:
                a = inp.reshape(-1, inp.shape[-1])
            a = a.reshape(n_batch, -1, a.shape[-1]).clone()                # (B, L, m_w)
            if f.layer.has_bias:
                a = _with_ones(a)
            records[i].append((a, output))
            # downstream in-place ops (e.g. ReLU(inplace=True)) must not alter the recorded output
            return output.clone()
        return hook

    regs = [(lambda f=f, i=i: f.module.register_forward_hook(make_hook(i, f))) for i, f in enumerate(layers)]
    params = runner.gaussian_mean(posterior, requires_grad=True)
    with torch.enable_grad(), _hooks(regs):
        logits = runner(params, x)
    if logits.ndim != 2:
        raise ValueError(error_message("the model's output", "logits of shape (n_examples, n_classes)", logits))
    B, C = logits.shape
    outputs = [out for i in records for (_, out) in records[i]]
    grads = iter(_grads_to_outputs(logits, outputs))
    cov = torch.zeros(B, C, C, dtype=_F64, device=runner.device)
    for i, f in enumerate(layers):
        a_parts, g_parts = [], []
        for a, out in records[i]:
            g = next(grads)
            if g is None:
                continue
            if isinstance(f.module, nn.Conv2d):                          # (C, B', n, H', W')
                g = g.reshape(C, g.shape[1], f.layer.n, -1).transpose(2, 3)
            g = g.reshape(C, B, -1, f.layer.n)                               # (C, B, L, n)
            a_parts.append(a.to(_F64))
            g_parts.append(g.to(_F64))
        if a_parts:
            cov += _layer_logit_cov(f, torch.cat(a_parts, dim=1), torch.cat(g_parts, dim=2))
    records.clear()  # free the recorded activations before the isotropic Jacobians
    outputs.clear()
    mean = _check_mean_logits(logits.detach(), "the linearized predictive").to(_F64)
    if iso:
        names = [g.parameter_names[0] for g, _ in iso]
        fixed = {k: v.detach() for k, v in params.items() if k not in names}
        free = {k: params[k].detach() for k in names}

        def single(p: Mapping[str, torch.Tensor], xi: torch.Tensor) -> torch.Tensor:
            return runner({**fixed, **p}, xi.unsqueeze(0)).squeeze(0)

        with torch.enable_grad():
            jac = vmap(jacrev(single), in_dims=(None, 0))(free, x)             # name -> (B, C, *shape)
        for (g, var), name in zip(iso, names):
            J = jac[name].reshape(B, C, -1).to(_F64)
            cov += var * J @ J.mT
    return mean, cov


def predict_proba_linearized(model: nn.Module, posterior: LayerwiseGaussian, X: Any, *,
                             batch_size: int = 64, link: Literal["probit"] = "probit",
                             device: torch.device | str | None = None) -> torch.Tensor:
    r"""The linearized (GLM) predictive with the multiclass probit approximation, sampling-free.

    ``p(y = c | x) ~ softmax_c(mu_c / sqrt(1 + pi / 8 Sigma_cc))`` with the logit moments of
    :func:`linearized_logit_moments`.

    Parameters
    ----------
    model : nn.Module
        The network (not modified).
    posterior : LayerwiseGaussian
        The posterior.
    X : array-like or torch.Tensor of shape (n_examples, ...)
        Inputs.
    batch_size : int, default=64
        Examples per forward/backward pass.
    link : {"probit"}, default="probit"
        The approximation of the softmax-Gaussian integral.
    device : torch.device or str, optional
        Where to compute (default: the model's device).

    Returns
    -------
    torch.Tensor of shape (n_examples, C), float64

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from skkprior.gaussian import LayerwiseGaussian
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    >>> X = torch.randn(5, 4, dtype=torch.float64)
    >>> p = predict_proba_linearized(net, LayerwiseGaussian.isotropic(net, precision=10.0), X)
    >>> bool(torch.allclose(p.sum(1), torch.ones(5, dtype=torch.float64)))
    True
    >>> sharp = predict_proba_linearized(net, LayerwiseGaussian.isotropic(net, precision=1e12), X)
    >>> bool(torch.allclose(sharp, predict_proba_map(net, X), atol=1e-9))
    True
    """
    if link != "probit":
        raise ValueError(error_message("link", "'probit'", repr(link)))
    mean, cov = _linearized_moments(model, posterior, X, batch_size=batch_size, device=device)
    var = torch.diagonal(cov, dim1=-2, dim2=-1)
    _check_variances(var, "predict_proba_linearized", posterior)
    # var is a sum of non-negative terms: +inf only when it overflows float64, and then
    # kappa = 0 is the limit (mean * kappa -> 0: the uniform predictive, exact to rounding)
    kappa = torch.rsqrt(1.0 + math.pi / 8.0 * var)
    return torch.softmax(mean * kappa, dim=-1)


def _check_variances(values: torch.Tensor, where: str, posterior: Any) -> None:
    """NaN in the linearized logit moments: terms overflowed float64 (inf - inf or 0 * inf)."""
    if bool(torch.isnan(values).any()):
        raise NonFiniteLogits(error_message(
            f"the linearized logit covariance in {where}", "free of NaN (it overflowed float64)",
            f"{int(torch.isnan(values).sum())} NaN entries ({_scales_text(posterior)})", _TOO_BROAD_FIX))


# -- Gibbs classifier -----------------------------------------------------------------------------
def _fast_path_problem(runner: _Runner, gaussian: LayerwiseGaussian, X: torch.Tensor,
                       params: Mapping[str, torch.Tensor]) -> str | None:
    """Why the hook-based fast path does not apply (None when it does)."""
    for g in gaussian:
        if g.layer is None:
            return (f"parameter group '{g.name}' is not a Linear/Conv2d layer (isotropic parameters "
                    "need one full parameter draw per example)")
    calls: dict[str, list[tuple[int, ...]]] = {g.layer.name: [] for g in gaussian}

    def counter(name: str) -> Callable:
        def hook(module: nn.Module, inputs: tuple) -> None:
            calls[name].append(tuple(inputs[0].shape))
        return hook

    regs = [(lambda n=n: runner.model.get_submodule(n).register_forward_pre_hook(counter(n))) for n in calls]
    n_probe = min(2, X.shape[0])
    with torch.no_grad(), _hooks(regs):
        runner(params, runner.batch(X, 0, n_probe))
    for name, shapes in calls.items():
        module = runner.model.get_submodule(name)
        if len(shapes) > 1:
            return f"layer '{name}' is called {len(shapes)} times per forward pass (shared weights)"
        want = 2 if isinstance(module, nn.Linear) else 4
        if shapes and len(shapes[0]) != want:
            return f"layer '{name}' ({type(module).__name__}) receives {len(shapes[0])}-D input, not {want}-D"
        if shapes and shapes[0][0] != n_probe:
            return (f"layer '{name}' receives a batch of {shapes[0][0]} rows for {n_probe} examples "
                    "(positions folded into the batch dimension)")
    return None


def _standard_normal(shape: tuple[int, ...], generator: torch.Generator | None, dtype: torch.dtype,
                     device: torch.device) -> torch.Tensor:
    """Standard normals in ``dtype`` that are float64 normals rounded (module notes, "Precision of the draws").

    float64: ``torch.randn``. Otherwise Box-Muller from float64 uniforms: the radius
    ``sqrt(-2 log(1 - u))`` in float64 (53-bit uniforms reach ``8.6`` standard deviations), rounded
    to ``dtype`` with the angle ``2 pi v``; cosine and sine in ``dtype`` (errors of a few units
    in the last place). ``torch.randn`` in float32 draws 24-bit uniforms: its radius stops at
    ``5.8`` (a mass of ``2^-24`` per pair is missing, ``5e-4`` over an example's 18,000 normals
    in the MNIST CNN), which is not a rounding error.
    """
    if dtype == _F64:
        return torch.randn(shape, generator=generator, dtype=_F64, device=device)
    numel = math.prod(shape)
    half = (numel + 1) // 2
    u = torch.rand((2, half), generator=generator, dtype=_F64, device=device)
    radius = u[0].neg_().log1p_().mul_(-2.0).sqrt_().to(dtype)
    angle = u[1].mul_(2.0 * math.pi).to(dtype)
    out = torch.empty(2 * half, dtype=dtype, device=device)
    torch.mul(radius, torch.cos(angle), out=out[:half])
    torch.mul(radius, angle.sin_(), out=out[half:])
    return out[:numel].view(shape)


@dataclass
class _DrawFactors:
    r"""A layer's posterior factors for the Gibbs draws, in the network's dtype (``dtype``).

    ``Cov(vec_row [W | b]) = (left (x) right) diag(sd^2) (left (x) right)^T`` with
    ``sd = sqrt(tau inv_lam)``; for the Linear output variances ``sd^2 = c_i r_ij`` with
    ``c_i = max_j sd_ij^2`` and ``r_ij`` in ``[0, 1]``, so no intermediate overflows the dtype
    before the variance itself does.
    """

    left: torch.Tensor | None       # (n, n)
    right: torch.Tensor | None      # (m, m)
    sd: torch.Tensor                # (n, m) or 0-d
    row_scale: torch.Tensor         # (n,) or 0-d: sqrt(c_i)
    ratio: torch.Tensor             # (n, m) or 0-d: r_ij
    mean: torch.Tensor              # (n, m)

    @classmethod
    def of(cls, f: _LayerFactors, dtype: torch.dtype) -> "_DrawFactors":
        """Cast once per call; the decompositions behind ``f`` stay float64."""
        var = f.tau * f.inv_lam                                   # float64
        if var.ndim == 0:
            c, ratio = var, torch.ones((), dtype=_F64, device=var.device)
        else:
            c = var.amax(dim=1)
            ratio = var / torch.where(c > 0, c, 1.0)[:, None]

        def cast(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(dtype).contiguous()

        return cls(cast(f.left), cast(f.right), var.sqrt().to(dtype), c.sqrt().to(dtype), ratio.to(dtype),
                   f.mean.to(dtype))

    def output_noise(self, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``left (s * z)``, ``s_i = sqrt(sum_j (right^T h)_j^2 sd_ij^2)``, for ``h`` ``(B, m)``, ``z`` ``(B, n)``."""
        v = h if self.right is None else h @ self.right
        if self.ratio.ndim == 0:
            s = torch.linalg.vector_norm(v, dim=-1, keepdim=True) * self.row_scale
        else:
            s = (v * v) @ self.ratio.T
            s = s.sqrt_().mul_(self.row_scale)
        z = z.mul_(s)
        return z if self.left is None else z @ self.left.T

    def weights(self, z: torch.Tensor) -> torch.Tensor:
        """``mean + left (z * sd) right^T`` for standard normal ``z`` of shape ``(B, n, m)`` (overwritten)."""
        x = z.mul_(self.sd)
        if self.right is not None:
            x = x @ self.right.T                  # one (B n, m) x (m, m) product
        if self.left is None:
            return x.add_(self.mean)
        return torch.baddbmm(self.mean.expand(x.shape), self.left.expand(x.shape[0], -1, -1), x)


def _gibbs_fast(runner: _Runner, gaussian: LayerwiseGaussian, X: torch.Tensor, batch_size: int,
                generator: torch.Generator | None, params: Mapping[str, torch.Tensor], passes: int,
                reduce: Callable[[torch.Tensor], Any]) -> list[Any]:
    """``reduce(logits)`` per pass, a fresh draw per example, by hooks on the Linear/Conv2d layers.

    Draws and per-example products are in the network's dtype (module notes, "Precision").
    A Conv2d module is handed an empty batch by a pre-hook (its mean convolution would be
    discarded), and the forward hook convolves the stashed input with the per-example weights.
    """
    dtype = runner.dtype
    layers = [_layer_factors(runner.model, g, runner.device) for g in gaussian]
    draws = {id(f.module): _DrawFactors.of(f, dtype) for f in layers}
    draw_device = gaussian.device

    def normal(*shape: int) -> torch.Tensor:
        return _standard_normal(shape, generator, dtype, draw_device).to(runner.device)

    def hooks(f: _LayerFactors) -> list[Callable[[], Any]]:
        d = draws[id(f.module)]
        stash: list[torch.Tensor] = []

        def linear_hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
            h = inputs[0].to(dtype)
            if f.layer.has_bias:
                h = _with_ones(h)
            return output + d.output_noise(h, normal(h.shape[0], f.layer.n)).to(output.dtype)

        def conv_pre_hook(module: nn.Conv2d, inputs: tuple) -> tuple:
            stash.append(inputs[0])
            return (inputs[0][:0], *inputs[1:])

        def conv_hook(module: nn.Conv2d, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
            x = stash.pop()
            B = x.shape[0]
            out = None
            # chunks of examples: the draws of a chunk stay in cache, and a grouped convolution
            # of a few dozen groups runs at the speed of an ordinary one (hundreds do not)
            for start, stop in _batches(B, max(1, _CONV_CHUNK_ELEMENTS // (f.layer.n * f.layer.m))):
                Wb = d.weights(normal(stop - start, f.layer.n, f.layer.m)).to(output.dtype)
                w, b = split_layer_matrix(Wb, f.layer)
                if b is None and module.bias is not None:   # a frozen bias (not in the posterior)
                    b = module.bias.detach().to(output.dtype).expand(stop - start, -1)
                y = _per_example_conv(module, x[start:stop], w, b)
                if out is None:
                    if stop == B:
                        return y
                    out = y.new_empty((B, *y.shape[1:]))
                out[start:stop] = y
            return out

        if isinstance(f.module, nn.Conv2d):
            return [lambda: f.module.register_forward_pre_hook(conv_pre_hook),
                    lambda: f.module.register_forward_hook(conv_hook)]
        return [lambda: f.module.register_forward_hook(linear_hook)]

    regs = [reg for f in layers for reg in hooks(f)]
    results = []
    with torch.no_grad(), _hooks(regs):
        for _ in range(passes):
            out = [runner(params, runner.batch(X, start, stop)) for start, stop in _batches(X.shape[0], batch_size)]
            results.append(reduce(torch.cat(out)))
    return results


def _gibbs_general(runner: _Runner, gaussian: LayerwiseGaussian, X: torch.Tensor, batch_size: int,
                   generator: torch.Generator | None) -> torch.Tensor:
    chunk = max(1, min(batch_size, _CHUNK_ELEMENTS // max(1, gaussian.dim)))

    def single(p: Mapping[str, torch.Tensor], xi: torch.Tensor) -> torch.Tensor:
        return runner(p, xi.unsqueeze(0)).squeeze(0)

    batched = vmap(single, in_dims=(0, 0))
    out = []
    with torch.no_grad():
        for start, stop in _batches(X.shape[0], chunk):
            params = runner.cast_samples(gaussian.sample(stop - start, generator=generator, dtype=runner.dtype))
            out.append(batched(params, runner.batch(X, start, stop)))
    return torch.cat(out)


def gibbs_predict(model: nn.Module, gaussian: LayerwiseGaussian, X: Any, *,
                  generator: torch.Generator | None = None, batch_size: int = 256,
                  method: Literal["auto", "fast", "general"] = "auto",
                  device: torch.device | str | None = None) -> torch.Tensor:
    r"""Labels of the Gibbs classifier, with one fresh posterior draw *per example*.

    Example ``i`` is classified by ``argmax f(x_i; theta_i)`` with ``theta_i ~ Q`` drawn
    independently for every example (also when two examples are the same input), so the
    per-example 0-1 losses are independent draws, as a PAC-Bayes certificate requires
    (docs/concepts.md, section 6).

    Parameters
    ----------
    model : nn.Module
        The network (not modified; evaluated in evaluation mode).
    gaussian : LayerwiseGaussian
        The posterior ``Q``.
    X : array-like or torch.Tensor of shape (n_examples, ...)
        Inputs.
    generator : torch.Generator, optional
        Seeds the draws (on the Gaussian's device).
    batch_size : int, default=256
        Examples per forward pass (the general path uses smaller chunks for large networks).
    method : {"auto", "fast", "general"}, default="auto"
        ``"fast"``: exact per-example output noise for Linear layers and per-example weights
        with grouped convolutions for Conv2d layers, drawn in the network's dtype (module
        notes); applies when every group is a Linear/Conv2d layer called once per forward
        pass (2-D Linear inputs).
        ``"general"``: one full parameter set per example, ``vmap(functional_call)``.
        ``"auto"``: the fast path when it applies.
    device : torch.device or str, optional
        Where to compute (default: the model's device).

    Returns
    -------
    torch.Tensor of shape (n_examples,), int64

    Raises
    ------
    ValueError
        For bad ``X``, or ``method="fast"`` where the fast path does not apply (with the reason).

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from skkprior.gaussian import LayerwiseGaussian
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    >>> q = LayerwiseGaussian.isotropic(net, precision=0.01)       # a very wide posterior
    >>> x = torch.randn(1, 4, dtype=torch.float64).repeat(50, 1)   # one input, fifty times
    >>> labels = gibbs_predict(net, q, x, generator=torch.Generator().manual_seed(0))
    >>> labels.shape, labels.dtype, len(labels.unique()) > 1       # a fresh draw per row
    (torch.Size([50]), torch.int64, True)
    """
    X = _as_input(X)
    (labels,) = _gibbs_logits(model, gaussian, X, passes=1, generator=generator, batch_size=batch_size,
                              method=method, device=device, reduce=lambda t: t.argmax(dim=-1))
    return labels


def _gibbs_logits(model: nn.Module, gaussian: LayerwiseGaussian, X: torch.Tensor, *, passes: int,
                  generator: torch.Generator | None, batch_size: int, method: str, device: Any,
                  reduce: Callable[[torch.Tensor], Any] = lambda t: t,
                  check_classes: Callable[[int], None] | None = None) -> list[Any]:
    """``reduce(logits)`` per pass over ``X``, the logits ``f(x_i; theta_i)`` with a fresh draw per
    example; ``check_classes(C)`` runs once the number of classes is known, before any draw."""
    batch_size = _check_int(batch_size, "batch_size")
    generator = _check_generator(generator)
    if method not in ("auto", "fast", "general"):
        raise ValueError(error_message("method", "'auto', 'fast' or 'general'", repr(method)))
    gaussian = _check_gaussian(model, gaussian, "gaussian")
    runner = _Runner(model, device)
    reduce_raw = reduce

    def reduce(logits: torch.Tensor) -> Any:  # argmax over NaN would silently pick class 0
        return reduce_raw(_check_draw_logits(logits, "the Gibbs classifier", gaussian, runner.dtype))

    with _eval_mode(model):
        params = runner.gaussian_mean(gaussian)
        n_classes = _probe(runner, X, params)
        if check_classes is not None:
            check_classes(n_classes)
        problem = None
        if method != "general":
            problem = _fast_path_problem(runner, gaussian, X, params)
            if problem is not None and method == "fast":
                raise ValueError(error_message("method='fast' of gibbs_predict", "applicable to the model",
                                               problem, "Use method='auto' or 'general'."))
            if problem is not None:
                logger.info("gibbs_predict: fast path not applicable (%s); drawing a full parameter "
                            "set per example", problem)
        if method == "general" or problem is not None:
            return [reduce(_gibbs_general(runner, gaussian, X, batch_size, generator)) for _ in range(passes)]
        return _gibbs_fast(runner, gaussian, X, batch_size, generator, params, passes, reduce)


def gibbs_error_count(model: nn.Module, gaussian: LayerwiseGaussian, X: Any, y: Any, *, passes: int = 1,
                      generator: torch.Generator | None = None, batch_size: int = 256,
                      method: Literal["auto", "fast", "general"] = "auto",
                      device: torch.device | str | None = None) -> tuple[int, int]:
    r"""Errors of the Gibbs classifier over ``passes`` passes, a fresh draw per example and pass.

    Parameters
    ----------
    model, gaussian, X, generator, batch_size, method, device
        As in :func:`gibbs_predict`.
    y : array-like or torch.Tensor of shape (n_examples,)
        Integer labels in ``0 .. C-1``.
    passes : int, default=1
        Passes over the data; every pass draws new parameters for every example.

    Returns
    -------
    n_errors : int
        Misclassified (example, pass) pairs.
    m : int
        ``passes * n_examples``, the number of independent Monte-Carlo draws (the ``m`` of
        the sample-convergence correction ``kl^-1(n_errors / m, ln(2 / delta_mc) / m)``).

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from skkprior.gaussian import LayerwiseGaussian
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    >>> X, y = torch.randn(10, 4, dtype=torch.float64), torch.randint(0, 3, (10,))
    >>> q = LayerwiseGaussian.isotropic(net, precision=1e30)    # no covariance: the MAP's errors
    >>> gibbs_error_count(net, q, X, y, passes=3) == (3 * int((net(X).argmax(1) != y).sum()), 30)
    True
    """
    passes = _check_int(passes, "passes")
    X = _as_input(X)
    y = class_labels(y, int(X.shape[0]))

    errors = _gibbs_logits(model, gaussian, X, passes=passes, generator=generator, batch_size=batch_size,
                           method=method, device=device, check_classes=lambda c: check_label_range(y, c),
                           reduce=lambda t: int((t.argmax(dim=-1).cpu() != y).sum()))
    return sum(errors), passes * int(X.shape[0])
