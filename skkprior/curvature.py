r"""K-FAC and K-FOC curvature of ``nn.Linear`` and ``nn.Conv2d`` layers from a model and data.

One pass over the data (forward hooks on the Kronecker layers, one backward per Fisher vector)
gives, per layer, a Kronecker product ``G_out (x) A_in`` in the row-major ``[W | b]``
convention of :mod:`skkprior._layers` (bias as the last column; a conv weight flattened in
``F.unfold`` patch order), together with the summed true-label negative log-likelihood at the
current weights.

Scale convention
----------------
``G_out (x) A_in`` approximates the curvature of the **summed** negative log-likelihood over the
``N`` data points (not the mean). The scalar is split as

.. math::
    A_{in} = \frac{1}{N T} \sum_{n, t} a_{n,t} a_{n,t}^\top, \qquad
    G_{out} = \sum_{n, t, v} g_{n,t,v} g_{n,t,v}^\top,

with ``a`` the bias-augmented input (``[x; 1]``) or conv patch, ``g`` the gradient of the
per-example NLL (for one Fisher vector ``v``) with respect to the layer's pre-activation output,
and ``T`` the number of output positions per datum (``T = 1`` for a Linear layer on ``(B, m)``
inputs; ``H_out W_out`` for a conv layer). ``A_in`` is thus the mean input second moment and
``G_out`` carries the data sum. For a Conv2d layer this is the KFC approximation of Grosse &
Martens (2016), also called K-FAC-*expand* (Eschenhagen et al. 2023): ``A`` over all patches,
``G`` over all positions, the product scaled by ``1 / T``. A Linear layer applied to inputs
``(B, ..., m)`` treats the middle dimensions as positions in the same way.

What is exact
-------------
- One datum, ``fisher="exact"``: for every Linear layer, and every conv layer whose output is
  ``1 x 1``, ``G_out (x) A_in`` equals the exact Fisher (= GGN) block of that layer.
- A deep *linear* network with ``likelihood="regression"`` and ``fisher="exact"``: the
  Jacobian of the output with respect to a pre-activation does not depend on the input, so
  ``G_out (x) A_in`` equals the exact GGN block for any number of data points.
- Everything else is the K-FAC approximation (independence of ``a`` and ``g``).

Accumulation
------------
Each mini-batch's products are formed in the model's dtype (at least float32; float64 models
stay in float64 throughout), summed in that dtype over at most four mini-batches, and added to
float64 running sums ``S_A``, ``S_G`` together with the counts (data points, positions). Sums
and counts combine exactly across mini-batches, :meth:`Curvature.update` calls,
:meth:`Curvature.merge` and processes: when ``torch.distributed`` is initialized, the sums and
counts of each pass are all-reduced at its end (one ``all_reduce`` of one flat float64 buffer;
for K-FOC each process merges its products to one and they are all-gathered).

References
----------
Martens & Grosse (2015), *Optimizing neural networks with Kronecker-factored approximate
curvature*. Grosse & Martens (2016), *A Kronecker-factored approximate Fisher matrix for
convolution layers*. Schnaus, Lee & Triebel (2021), *Kronecker-factored optimal curvature*.
Eschenhagen et al. (2023), *Kronecker-factored approximate curvature for modern neural network
architectures*.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._layers import KroneckerLayer, kronecker_layers, uncovered_parameters
from ._validation import check_device, describe, error_message
from .kron import Kron, KronSum
from .precision import DiagonalCurvature

__all__ = ["Curvature", "diagonal_fisher", "kfac", "kfoc"]

logger = logging.getLogger(__name__)

FisherType = Literal["mc", "exact", "empirical"]
MethodType = Literal["kfac", "kfoc", "diag"]
LikelihoodType = Literal["classification", "regression"]

_FISHERS = ("mc", "exact", "empirical")
_METHODS = ("kfac", "kfoc", "diag")
_LIKELIHOODS = ("classification", "regression")

# Power iteration of K-FOC: stop when the normalized input factor changes by less than this.
_POWER_TOL = 1e-10
_POWER_MAX_ITER = 100


def _check_choice(value: Any, name: str, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        options = ", ".join(repr(c) for c in choices)
        raise ValueError(error_message(name, f"one of {options}", value,
                                       f"Pass {name}={choices[0]!r}, for example."))
    return value


# ------------------------------------------------------------------------------------------
# The accumulated state
# ------------------------------------------------------------------------------------------
@dataclass
class _Sums:
    """Sums and counts of one pass or of a whole accumulation (float64).

    ``S_A`` and ``S_G`` may lack a layer, which then counts as zero (no allocation for nothing).
    """

    S_A: dict[str, torch.Tensor]
    S_G: dict[str, torch.Tensor]
    positions: dict[str, int]
    terms: dict[str, list[Kron]] = field(default_factory=dict)
    S_D: dict[str, torch.Tensor] = field(default_factory=dict)  # diag: sum of squared per-example gradients
    n_samples: int = 0
    nll: torch.Tensor | None = None
    has_nll: bool = True
    # per layer and factor ("A", "G"): (unit roundoff of the summation dtype, longest chain of
    # terms summed in it before the float64 running sum); see Curvature.rounding
    rounding: dict[str, dict[str, tuple[float, int]]] = field(default_factory=dict)

    @classmethod
    def empty(cls, layers: dict[str, KroneckerLayer], method: str) -> "_Sums":
        return cls(S_A={}, S_G={}, positions={k: 0 for k in layers},
                   terms={k: [] for k in layers} if method == "kfoc" else {})

    def materialize(self, layers: dict[str, KroneckerLayer], device: torch.device, method: str) -> None:
        """Allocate zeros for the missing sums (those of the pass's ``method``)."""
        for k, v in layers.items():
            if method == "diag" and k not in self.S_D:
                self.S_D[k] = torch.zeros(v.n, v.m, dtype=torch.float64, device=device)
            if k not in self.S_A:
                self.S_A[k] = torch.zeros(v.m, v.m, dtype=torch.float64, device=device)
            if k not in self.S_G:
                self.S_G[k] = torch.zeros(v.n, v.n, dtype=torch.float64, device=device)


class _GramAccumulator:
    """Running float64 sums of ``P P^T`` (and optionally ``P 1``) over mini-batches ``P`` of shape
    ``(m, N)`` (one column per sample).

    Products in float32 are accumulated with ``addmm_`` / ``addmv_`` in a float32 buffer for at
    most ``_FLUSH_EVERY`` mini-batches, then added to the float64 total (each product already
    sums ``N`` float32 terms, so this adds no error of a larger order and saves a float64 pass
    per batch). On the CPU with ``m > 2 * _GRAM_BLOCK`` only the upper block triangle is formed
    (torch exposes no symmetric rank-k update) and mirrored at the end.
    """

    def __init__(self, with_sum: bool = False) -> None:
        self.with_sum = with_sum
        self.buf: torch.Tensor | None = None
        self.buf_sum: torch.Tensor | None = None
        self.total: torch.Tensor | None = None
        self.total_sum: torch.Tensor | None = None
        self.ones: torch.Tensor | None = None
        self.pending = 0
        self.upper = False
        self.unit = 0.0      # unit roundoff of the dtype the products are summed in
        self.chain = 0       # terms summed in that dtype since the last float64 flush
        self.max_chain = 0

    def add(self, P: torch.Tensor) -> None:
        m, N = P.shape
        if self.buf is None:
            self.upper = P.device.type == "cpu" and m > 2 * _GRAM_BLOCK
            self.buf = torch.zeros(m, m, dtype=P.dtype, device=P.device)
            if self.with_sum:
                self.buf_sum = torch.zeros(m, dtype=P.dtype, device=P.device)
        if self.upper:
            for i0 in range(0, m, _GRAM_BLOCK):
                i1 = min(i0 + _GRAM_BLOCK, m)
                self.buf[i0:i1, i0:].addmm_(P[i0:i1], P[i0:].T)
        else:
            self.buf.addmm_(P, P.T)
        if self.buf_sum is not None:
            if self.ones is None or self.ones.shape[0] != N:
                self.ones = torch.ones(N, dtype=P.dtype, device=P.device)
            self.buf_sum.addmv_(P, self.ones)
        self.pending += 1
        self.unit = max(self.unit, torch.finfo(P.dtype).eps / 2)
        self.chain += N + 1  # N products per entry, and one addition to the buffer
        self.max_chain = max(self.max_chain, self.chain)
        if self.buf.dtype != torch.float64 and self.pending >= _FLUSH_EVERY:
            self._flush()

    def _flush(self) -> None:
        if self.buf is None or self.pending == 0:
            return
        if self.total is None:
            self.total = self.buf.to(torch.float64, copy=True)
            self.total_sum = None if self.buf_sum is None else self.buf_sum.to(torch.float64, copy=True)
        else:
            self.total += self.buf
            if self.buf_sum is not None:
                self.total_sum += self.buf_sum
        self.buf.zero_()
        if self.buf_sum is not None:
            self.buf_sum.zero_()
        self.pending = 0
        self.chain = 0

    def result(self) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """The float64 sums ``(P P^T, P 1)`` (None when nothing was added)."""
        if self.buf is None:
            return None
        if self.buf.dtype == torch.float64:
            total, total_sum = self.buf, self.buf_sum
        else:
            self._flush()
            total, total_sum = self.total, self.total_sum
        assert total is not None
        if self.upper:
            m = total.shape[0]
            for i0 in range(0, m, _GRAM_BLOCK):
                i1 = min(i0 + _GRAM_BLOCK, m)
                total[i1:, i0:i1] = total[i0:i1, i1:].T
        self.buf = self.buf_sum = self.total = self.total_sum = self.ones = None
        return total, total_sum


_GRAM_BLOCK = 128
_FLUSH_EVERY = 4


def _sym(M: torch.Tensor) -> torch.Tensor:
    """``(M + M^T) / 2``: exactly symmetric (float32 products are symmetric only up to rounding)."""
    return (M + M.T) / 2


class Curvature:
    r"""Kronecker-factored curvature of a model's Linear and Conv2d layers on a data set.

    Built by :func:`kfac` or :func:`kfoc`; grown by :meth:`update` and :meth:`merge`. The state
    is float64 sums and counts, so every way of splitting the data gives the same factors.

    Parameters
    ----------
    layers : dict of str to KroneckerLayer
        The covered layers (``skkprior._layers.kronecker_layers(model)``).
    uncovered : list of str, default=()
        Qualified names of the trainable parameters outside ``layers``.
    fisher : {"mc", "exact", "empirical"}, default="mc"
        The Fisher type the sums were computed with.
    method : {"kfac", "kfoc"}, default="kfac"
        K-FAC (independent factor sums) or K-FOC (per-batch optimal products).
    likelihood : {"classification", "regression"}, default="classification"
        Softmax cross-entropy, or a unit-variance Gaussian.
    device : torch.device or str, optional
        Where the sums live (default: CPU).
    kfoc_max_terms : int, default=32
        K-FOC only: how many per-batch products are stored before they are merged into their
        nearest Kronecker product (bounded memory; the relative error is recorded).

    Attributes
    ----------
    layers : dict of str to KroneckerLayer
    uncovered : list of str
    fisher, method, likelihood : str
    n_samples : int
        Number of data points accumulated.
    nll_sum : float or None
        Summed true-label NLL at the weights of the passes (None when a pass had no labels).
    merge_error : dict of str to float
        K-FOC only: the largest relative Frobenius error of a nearest-Kronecker merge so far,
        per layer (0.0 while no merge happened, and always 0.0 for K-FAC).

    Notes
    -----
    ``factors[name] = Kron(G_out, A_in)`` with ``A_in = S_A / (N T)`` and ``G_out = S_G``; see
    the module docstring for the scale convention. For K-FOC the product is the nearest
    Kronecker product of the sum of per-batch optimal products, with the scalar split so that
    ``tr(A_in)`` equals the K-FAC ``tr(A_in)`` of the same data.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    >>> X, y = torch.randn(20, 4), torch.randint(0, 3, (20,))
    >>> curv = kfac(net, X[:12], y[:12], fisher="exact", progress=False)
    >>> curv = curv.update(net, X[12:], y[12:])
    >>> full = kfac(net, X, y, fisher="exact", progress=False)
    >>> all(torch.allclose(curv.factors[k].to_dense(), full.factors[k].to_dense()) for k in full.factors)
    True
    >>> curv.n_samples, round(curv.nll_sum, 4) == round(full.nll_sum, 4)
    (20, True)
    """

    def __init__(self, layers: dict[str, KroneckerLayer], uncovered: Iterable[str] = (), *,
                 fisher: FisherType = "mc", method: MethodType = "kfac",
                 likelihood: LikelihoodType = "classification",
                 device: torch.device | str | None = None, kfoc_max_terms: int = 32) -> None:
        if not isinstance(layers, dict) or not layers:
            raise ValueError(error_message("layers of Curvature", "a non-empty dict of KroneckerLayer",
                                           layers, "Build it with kfac(model, X, y)."))
        self.layers = dict(layers)
        self.uncovered = list(uncovered)
        self.fisher = _check_choice(fisher, "fisher", _FISHERS)
        self.method = _check_choice(method, "method", _METHODS)
        self.likelihood = _check_choice(likelihood, "likelihood", _LIKELIHOODS)
        if isinstance(kfoc_max_terms, bool) or not isinstance(kfoc_max_terms, int) or kfoc_max_terms < 1:
            raise ValueError(error_message("kfoc_max_terms", "a positive integer", kfoc_max_terms))
        self.kfoc_max_terms = kfoc_max_terms
        self._device = torch.device("cpu") if device is None else check_device(device)
        self._sums = _Sums.empty(self.layers, self.method)
        self._merge_error: dict[str, float] = {k: 0.0 for k in self.layers}
        self._cache: dict[str, Any] | None = None
        self._options: dict[str, Any] = {}

    # -- read-only views ------------------------------------------------------------------
    @property
    def n_samples(self) -> int:
        """Number of data points accumulated."""
        return self._sums.n_samples

    @property
    def nll_sum(self) -> float | None:
        """Summed true-label NLL at the weights of the passes (None when a pass had no labels)."""
        if not self._sums.has_nll or self._sums.nll is None:
            return None
        return float(self._sums.nll)

    @property
    def device(self) -> torch.device:
        """Where the sums and the factors live."""
        return self._device

    @property
    def positions(self) -> dict[str, int]:
        """Number of (datum, output position) pairs per layer: ``N T``."""
        return dict(self._sums.positions)

    @property
    def rounding(self) -> dict[str, dict[str, tuple[float, int]]]:
        """How each factor was accumulated, for a rounding bound on its eigenvalues.

        Per layer name and factor (``"G"``, ``"A"``): ``(u, k)``, the unit roundoff of the dtype
        the per-batch products were summed in (``2^-24`` for float32 models, ``2^-53`` for
        float64 ones) and the longest chain of terms summed in that dtype before they reach the
        float64 running sums (the columns of up to four mini-batches, plus one addition each).
        :func:`~skkprior.laplace.posterior` derives the tolerance of its positive semi-definite
        projection from it.
        """
        return {k: dict(v) for k, v in self._sums.rounding.items()}

    @property
    def merge_error(self) -> dict[str, float]:
        """K-FOC: the largest relative Frobenius error of a nearest-product merge, per layer."""
        if self.method == "kfoc" and self.n_samples > 0:
            self.factors  # noqa: B018  (computes the final merge and its error)
        return dict(self._merge_error)

    @property
    def factors(self) -> dict[str, Any]:
        """``Kron(G_out, A_in)`` per layer name (``method="diag"``: a
        :class:`~skkprior.precision.DiagonalCurvature`), float64, on :attr:`device` (fresh tensors).

        Raises
        ------
        ValueError
            When no data has been accumulated.
        """
        if self.n_samples == 0:
            raise ValueError(error_message("the curvature", "accumulated over at least one data point",
                                           "an empty curvature", "Call update(model, X, y) first."))
        if self._cache is None:
            self._cache = self._compute_factors()
        if self.method == "diag":
            return {k: DiagonalCurvature(v.values.clone()) for k, v in self._cache.items()}
        return {k: Kron(v.G.clone(), v.A.clone()) for k, v in self._cache.items()}

    def _kfac_input_factor(self, name: str) -> torch.Tensor:
        count = self._sums.positions[name]
        if count == 0 or name not in self._sums.S_A:
            m = self.layers[name].m
            return torch.zeros(m, m, dtype=torch.float64, device=self._device)
        return self._sums.S_A[name] / count

    def _output_factor(self, name: str) -> torch.Tensor:
        if name not in self._sums.S_G:
            n = self.layers[name].n
            return torch.zeros(n, n, dtype=torch.float64, device=self._device)
        return self._sums.S_G[name]

    def _compute_factors(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        unused = [k for k, c in self._sums.positions.items() if c == 0]
        if unused:
            warnings.warn(f"Layers {unused} were never called in the forward passes; their "
                          "curvature is zero.", RuntimeWarning, stacklevel=3)
        if self.method == "diag":
            for name in self.layers:
                out[name] = DiagonalCurvature(self._sums.S_D[name])
            return out
        for name in self.layers:
            A_kfac = self._kfac_input_factor(name)
            if self.method == "kfac":
                out[name] = Kron(_sym(self._output_factor(name)), _sym(A_kfac))
                continue
            terms = self._sums.terms[name]
            if not terms:
                out[name] = Kron(torch.zeros_like(self._output_factor(name)), _sym(A_kfac))
                continue
            if len(terms) == 1:
                G, A = terms[0].G.clone(), terms[0].A.clone()
            else:
                total = KronSum(terms)
                self._merge_error[name] = max(self._merge_error[name], float(total.nearest_error()))
                merged = total.nearest()
                G, A = merged.G, merged.A
            tr_a, tr_ref = float(torch.trace(A)), float(torch.trace(A_kfac))
            if tr_a > 0 and tr_ref > 0:
                G, A = G * (tr_a / tr_ref), A * (tr_ref / tr_a)
            out[name] = Kron(_sym(G), _sym(A))
        return out

    def __repr__(self) -> str:
        return (f"Curvature(method={self.method!r}, fisher={self.fisher!r}, likelihood={self.likelihood!r}, "
                f"layers={len(self.layers)}, n_samples={self.n_samples}, device={self._device})")

    # -- combination ------------------------------------------------------------------------
    def _check_compatible(self, other: "Curvature") -> None:
        if not isinstance(other, Curvature):
            raise TypeError(error_message("the curvature to merge", "a Curvature", type(other).__name__))
        for attr in ("fisher", "method", "likelihood"):
            if getattr(self, attr) != getattr(other, attr):
                raise ValueError(error_message(
                    f"{attr} of the curvature to merge", f"{getattr(self, attr)!r} (as this one)",
                    repr(getattr(other, attr)), "Merge only curvatures computed the same way."))
        shapes = {k: (v.n, v.m) for k, v in self.layers.items()}
        other_shapes = {k: (v.n, v.m) for k, v in other.layers.items()}
        if shapes != other_shapes:
            raise ValueError(error_message("the layers of the curvature to merge", f"{shapes} (as this one)",
                                           str(other_shapes), "Merge only curvatures of the same model."))

    def _add_sums(self, sums: _Sums) -> None:
        s = self._sums
        for k in self.layers:
            for mine, theirs in ((s.S_A, sums.S_A), (s.S_G, sums.S_G), (s.S_D, sums.S_D)):
                if k not in theirs:
                    continue
                t = theirs[k].to(self._device)
                if k in mine:
                    mine[k] += t
                else:
                    mine[k] = t.clone() if t is theirs[k] else t
            s.positions[k] += sums.positions[k]
            if self.method == "kfoc":
                s.terms[k].extend(t.to(self._device) for t in sums.terms.get(k, []))
                self._compress(k)
        if s.n_samples == 0 and s.nll is None:
            s.has_nll = sums.has_nll
        else:
            s.has_nll = s.has_nll and sums.has_nll
        if sums.nll is not None:
            s.nll = sums.nll.to(self._device) if s.nll is None else s.nll + sums.nll.to(self._device)
        s.n_samples += sums.n_samples
        for k, sides in sums.rounding.items():
            mine = s.rounding.setdefault(k, {})
            for side, (unit, chain) in sides.items():
                old = mine.get(side, (0.0, 0))
                mine[side] = (max(old[0], unit), max(old[1], chain))
        self._cache = None

    def _adopt(self, sums: _Sums) -> None:
        """Take over the sums of a fresh pass (no copy) when this curvature is still empty."""
        if self.n_samples == 0 and self._sums.nll is None and not self._sums.S_A and all(
                v.device == self._device for v in [*sums.S_A.values(), *sums.S_G.values()]):
            self._sums = sums
            for k in self.layers:
                if self.method == "kfoc":
                    self._compress(k)
            self._cache = None
        else:
            self._add_sums(sums)

    def _compress(self, name: str) -> None:
        terms = self._sums.terms[name]
        if len(terms) <= self.kfoc_max_terms:
            return
        total = KronSum(terms)
        self._merge_error[name] = max(self._merge_error[name], float(total.nearest_error()))
        self._sums.terms[name] = [total.nearest()]

    def copy(self) -> "Curvature":
        """A deep copy (the sums are cloned)."""
        new = Curvature(self.layers, self.uncovered, fisher=self.fisher, method=self.method,
                        likelihood=self.likelihood, device=self._device,
                        kfoc_max_terms=self.kfoc_max_terms)
        new._options = dict(self._options)
        new._add_sums(self._sums)
        new._merge_error = dict(self._merge_error)
        return new

    def merge(self, other: "Curvature") -> "Curvature":
        """The curvature of the union of both data sets: sums and counts added, exactly.

        ``nll_sum`` is kept only when both have one. For K-FOC the stored per-batch products
        are concatenated (merged to their nearest product past ``kfoc_max_terms``).

        Examples
        --------
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Linear(3, 2)
        >>> X, y = torch.randn(10, 3), torch.randint(0, 2, (10,))
        >>> a, b = kfac(net, X[:4], y[:4], progress=False), kfac(net, X[4:], y[4:], progress=False)
        >>> (a + b).n_samples
        10
        """
        self._check_compatible(other)
        new = self.copy()
        new._add_sums(other._sums)
        for k, v in other._merge_error.items():
            new._merge_error[k] = max(new._merge_error[k], v)
        return new

    def __add__(self, other: "Curvature") -> "Curvature":
        if not isinstance(other, Curvature):
            return NotImplemented
        return self.merge(other)

    def to(self, device: torch.device | str) -> "Curvature":
        """A copy with the sums on ``device``."""
        new = Curvature(self.layers, self.uncovered, fisher=self.fisher, method=self.method,
                        likelihood=self.likelihood, device=device, kfoc_max_terms=self.kfoc_max_terms)
        new._options = dict(self._options)
        new._add_sums(self._sums)
        new._merge_error = dict(self._merge_error)
        return new

    # -- more data -------------------------------------------------------------------------
    def update(self, model: nn.Module, X: Any, y: Any = None, *, fisher: FisherType | None = None,
               likelihood: LikelihoodType | None = None, method: MethodType | None = None,
               batch_size: int | None = None, device: torch.device | str | None = None,
               generator: torch.Generator | None = None, progress: bool | None = None,
               mc_samples: int | None = None, distributed: bool | None = None) -> "Curvature":
        """Accumulate the curvature of more data in place and return ``self``.

        Arguments not given are taken from the call that built this curvature. ``fisher``,
        ``likelihood`` and ``method``, when given, must equal this curvature's.

        Examples
        --------
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Linear(3, 2)
        >>> curv = kfac(net, torch.randn(5, 3), progress=False)
        >>> curv.update(net, torch.randn(7, 3)).n_samples
        12
        """
        for attr, value in (("fisher", fisher), ("likelihood", likelihood), ("method", method)):
            if value is not None and value != getattr(self, attr):
                raise ValueError(error_message(f"{attr} of update", f"{getattr(self, attr)!r} (as the curvature)",
                                               repr(value), "Start a new curvature for another setting."))
        opts = dict(self._options)
        for key, value in (("batch_size", batch_size), ("generator", generator), ("progress", progress),
                           ("mc_samples", mc_samples), ("distributed", distributed)):
            if value is not None:
                opts[key] = value
        layers = kronecker_layers(_check_model(model))
        shapes = {k: (v.n, v.m) for k, v in self.layers.items()}
        if {k: (v.n, v.m) for k, v in layers.items()} != shapes:
            raise ValueError(error_message("the model given to update", f"one with the layers {shapes}",
                                           str({k: (v.n, v.m) for k, v in layers.items()}),
                                           "Update with the model the curvature was computed on."))
        sums = _run_pass(model, X, y, layers=self.layers, fisher=self.fisher, likelihood=self.likelihood,
                         method=self.method, device=device, **opts)
        self._add_sums(sums)
        return self


# ------------------------------------------------------------------------------------------
# Input handling
# ------------------------------------------------------------------------------------------
def _check_model(model: Any) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(error_message("model", "a torch.nn.Module", type(model).__name__))
    return model


def _model_layers(model: nn.Module) -> dict[str, KroneckerLayer]:
    layers = kronecker_layers(model)
    if not layers:
        raise ValueError(error_message(
            "model", "a module with at least one trainable nn.Linear or nn.Conv2d layer",
            f"{type(model).__name__} without one",
            "Only Linear and Conv2d layers carry Kronecker curvature; unfreeze one or add one."))
    return layers


def _as_tensor(value: Any, name: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            raise TypeError(error_message(name, "a numeric array", f"an array of dtype {value.dtype}"))
        return torch.from_numpy(np.ascontiguousarray(value))
    if hasattr(value, "toarray") or hasattr(value, "tocsr"):
        raise TypeError(error_message(name, "a dense array or tensor", type(value).__name__,
                                      "Convert it with .toarray()."))
    try:
        return torch.as_tensor(np.asarray(value))
    except (TypeError, ValueError) as exc:
        raise TypeError(error_message(name, "a tensor, a numpy array, a DataLoader or a Dataset",
                                      type(value).__name__)) from exc


def _split_item(item: Any, has_y: bool) -> tuple[Any, Any]:
    if isinstance(item, (tuple, list)):
        if len(item) == 1:
            return item[0], None
        if len(item) >= 2:
            return item[0], item[1]
    if isinstance(item, torch.Tensor):
        return item, None
    raise TypeError(error_message("a batch of the data loader", "an (x, y) pair, an (x,) tuple or a tensor",
                                  type(item).__name__))


def _check_finite_x(xb: torch.Tensor) -> None:
    if (xb.is_floating_point() or xb.is_complex()) and not bool(torch.isfinite(xb).all()):
        n_bad = int((~torch.isfinite(xb)).sum())
        raise ValueError(error_message("X", "finite (no NaN or infinity)",
                                       f"{n_bad} non-finite entries in {describe(xb)}",
                                       "Remove or impute the non-finite values first."))


def _check_y_values(yb: torch.Tensor, likelihood: str) -> tuple[int, int] | None:
    """Value checks that need no model output; the label range ``(lo, hi)`` for classification."""
    if likelihood == "classification":
        if yb.is_floating_point():
            if not bool(torch.isfinite(yb).all()) or not bool((yb == yb.round()).all()):
                raise ValueError(error_message("y", "integer class labels", describe(yb),
                                               "Encode the labels as 0 ... n_classes - 1."))
        elif yb.dtype == torch.bool or yb.is_complex():
            raise ValueError(error_message("y", "integer class labels", describe(yb)))
        if yb.numel() == 0:
            return None
        return int(yb.min()), int(yb.max())
    if yb.is_floating_point() and not bool(torch.isfinite(yb).all()):
        raise ValueError(error_message("y", "finite (no NaN or infinity)", describe(yb)))
    return None


def _check_label_range(y_range: tuple[int, int] | None, n_classes: int) -> None:
    if y_range is None:
        return
    lo, hi = y_range
    if lo < 0 or hi >= n_classes:
        raise ValueError(error_message(
            "y", f"class labels in 0 ... {n_classes - 1} (the model has {n_classes} outputs)",
            f"labels from {lo} to {hi}", "Encode the labels with LabelEncoder, or check the model's head."))


@dataclass
class _Data:
    """Mini-batches ``(x, y_or_None)``, their number (None when unknown), and what was checked."""

    batches: Iterator[tuple[Any, Any]]
    total: int | None
    checked: bool = False
    y_range: tuple[int, int] | None = None


def _batches(X: Any, y: Any, batch_size: int, likelihood: str) -> _Data:
    from torch.utils.data import DataLoader, Dataset

    if isinstance(X, (DataLoader, Dataset)):
        if y is not None:
            raise ValueError(error_message("y", "None when X is a DataLoader or Dataset", describe(y),
                                           "Let the loader yield (x, y) pairs instead."))
        loader = X if isinstance(X, DataLoader) else DataLoader(X, batch_size=batch_size, shuffle=False)
        try:
            total: int | None = len(loader)
        except TypeError:
            total = None
        return _Data((_split_item(item, True) for item in loader), total)
    Xt = _as_tensor(X, "X")
    if Xt.ndim == 0 or Xt.shape[0] == 0:
        raise ValueError(error_message("X", "a non-empty batch of inputs", Xt, "Pass at least one data point."))
    yt = None
    y_range = None
    if y is not None:
        yt = _as_tensor(y, "y")
        if yt.ndim == 0 or yt.shape[0] != Xt.shape[0]:
            raise ValueError(error_message(
                "y", f"of the same length as X ({Xt.shape[0]})",
                f"{'a scalar' if yt.ndim == 0 else yt.shape[0]} labels",
                "Pass one label (or target row) per data point."))
        y_range = _check_y_values(yt, likelihood)
    _check_finite_x(Xt)
    n = Xt.shape[0]

    def gen() -> Iterator[tuple[Any, Any]]:
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            yield Xt[start:stop], None if yt is None else yt[start:stop]

    return _Data(gen(), math.ceil(n / batch_size), checked=True, y_range=y_range)


def _prepare_x(xb: Any, dtype: torch.dtype, device: torch.device, check: bool) -> torch.Tensor:
    xb = _as_tensor(xb, "X")
    if check:
        _check_finite_x(xb)
    if xb.is_floating_point():
        return xb.to(device=device, dtype=dtype, non_blocking=True)
    return xb.to(device=device, non_blocking=True)


def _prepare_y(yb: Any, out: torch.Tensor, likelihood: str, check: bool) -> torch.Tensor:
    yb = _as_tensor(yb, "y")
    if check:
        y_range = _check_y_values(yb, likelihood)
        if likelihood == "classification":
            _check_label_range(y_range, out.shape[1])
    if likelihood == "classification":
        yb = yb.reshape(-1)
        if yb.shape[0] != out.shape[0]:
            raise ValueError(error_message("y", f"one label per data point ({out.shape[0]} in this batch)",
                                           describe(yb)))
        return yb.to(device=out.device, dtype=torch.long, non_blocking=True)
    yb = yb.to(device=out.device, dtype=out.dtype, non_blocking=True).reshape(out.shape[0], -1)
    if yb.shape != out.shape:
        raise ValueError(error_message("y", f"targets of shape {tuple(out.shape)} (as the model's output)",
                                       describe(yb)))
    return yb


# ------------------------------------------------------------------------------------------
# Fisher vectors: rows v with sum_v v v^T = the (sampled) Hessian of the NLL w.r.t. the output
# ------------------------------------------------------------------------------------------
def _output_terms(out: torch.Tensor, y: torch.Tensor | None, *, fisher: str, likelihood: str,
                  mc_samples: int, generator: torch.Generator | None
                  ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """Backward vectors ``v`` (rows of ``(B, C)``) with ``sum_v v v^T`` the Fisher of the NLL in the
    output, and the summed NLL of the true labels (float64; None without labels).

    Classification: ``"exact"`` uses ``v_c = sqrt(p_c) (e_c - p)``, ``"mc"`` ``p - e_y`` with
    ``y`` drawn from ``p`` (inverse CDF, ``mc_samples`` draws weighted ``1 / mc_samples``),
    ``"empirical"`` ``p - e_y`` with the true ``y``. Regression: ``e_c``, ``eps ~ N(0, I)``, ``f - y``.
    """
    f = out.detach()
    B, C = f.shape
    scale = 1.0 / math.sqrt(mc_samples)
    if likelihood == "classification":
        logp = torch.log_softmax(f, dim=1)
        p = logp.exp()
        nll = None if y is None else -logp.gather(1, y[:, None]).sum(dtype=torch.float64)
        if fisher == "exact":
            sp = p.sqrt()
            V = -(sp[:, :, None] * p[:, None, :])  # (B, c, C): -sqrt(p_c) p
            V.diagonal(dim1=1, dim2=2).add_(sp)  # + sqrt(p_c) e_c
            return list(V.unbind(1)), nll
        minus_one = p.new_full((B, 1), -1.0)
        if fisher == "empirical":
            assert y is not None
            return [p.scatter_add(1, y[:, None], minus_one)], nll
        cdf = p.cumsum(dim=1)
        vecs = []
        for _ in range(mc_samples):
            gdev = generator.device if generator is not None else p.device
            u = torch.rand(B, 1, generator=generator, dtype=p.dtype, device=gdev).to(p.device)
            labels = torch.searchsorted(cdf, u, right=True).clamp_max_(C - 1)
            v = p.scatter_add(1, labels, minus_one)
            vecs.append(v * scale if mc_samples > 1 else v)
        return vecs, nll
    nll = None
    if y is not None:
        nll = 0.5 * ((f - y) ** 2).sum(dtype=torch.float64) + 0.5 * f.numel() * math.log(2 * math.pi)
    if fisher == "exact":
        eye = torch.eye(C, dtype=f.dtype, device=f.device)
        return [eye[c].expand(B, C) for c in range(C)], nll
    if fisher == "empirical":
        assert y is not None
        return [f - y], nll
    vecs = []
    for _ in range(mc_samples):
        gdev = generator.device if generator is not None else f.device
        eps = torch.randn(B, C, generator=generator, dtype=f.dtype, device=gdev).to(f.device)
        vecs.append(eps * scale if mc_samples > 1 else eps)
    return vecs, nll


# ------------------------------------------------------------------------------------------
# Hooks
# ------------------------------------------------------------------------------------------
def _conv_windows(module: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """A strided view ``(B, C_in, H_out, W_out, kh, kw)`` of the conv's receptive fields.

    Built with ``Tensor.unfold`` on the padded input (no copy), which is one kernel on the GPU
    where ``F.unfold`` launches one per image.
    """
    if x.ndim != 4:
        raise ValueError(error_message(f"the input of Conv2d layer {module}", "a batch (B, C, H, W)",
                                       describe(x), "Feed batched inputs."))
    kh, kw = module.kernel_size
    dh, dw = module.dilation
    sh, sw = module.stride
    if isinstance(module.padding, str):
        if module.padding == "valid":
            pads = (0, 0, 0, 0)
        else:  # "same": extra padding on the right / bottom, as torch does
            th, tw = dh * (kh - 1), dw * (kw - 1)
            pads = (tw // 2, tw - tw // 2, th // 2, th - th // 2)
    else:
        ph, pw = module.padding
        pads = (pw, pw, ph, ph)
    if any(pads):
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        x = F.pad(x, pads, mode=mode)
    win = x.unfold(2, dh * (kh - 1) + 1, sh).unfold(3, dw * (kw - 1) + 1, sw)
    return win[..., ::dh, ::dw]


def _conv_patches(module: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """Patches ``(B, C_in kh kw, L)`` in the order of ``layer_matrix`` (as ``F.unfold``)."""
    win = _conv_windows(module, x)
    B, C, Ho, Wo, kh, kw = win.shape
    return win.permute(0, 1, 4, 5, 2, 3).reshape(B, C * kh * kw, Ho * Wo)


def _gram(X: torch.Tensor) -> torch.Tensor:
    """``X^T X`` for ``X`` of shape ``(N, m)``.

    On the CPU with ``m > 2 * _GRAM_BLOCK`` the upper block triangle is computed panel by panel
    and mirrored (torch exposes no symmetric rank-k update), which saves about a quarter of the
    time; elsewhere one matrix product.
    """
    m = X.shape[1]
    if X.device.type != "cpu" or m <= 2 * _GRAM_BLOCK:
        return X.T @ X
    out = torch.empty(m, m, dtype=X.dtype, device=X.device)
    for i0 in range(0, m, _GRAM_BLOCK):
        i1 = min(i0 + _GRAM_BLOCK, m)
        block = X[:, i0:i1].T @ X[:, i0:]
        out[i0:i1, i0:] = block
        out[i1:, i0:i1] = block[:, i1 - i0:].T
    return out


class _Recorder:
    """Installs the hooks of one pass and accumulates one mini-batch at a time."""

    def __init__(self, model: nn.Module, layers: dict[str, KroneckerLayer], sums: _Sums, method: str) -> None:
        self.model = model
        self.layers = layers
        self.sums = sums
        self.method = method
        self.per_example = method in ("kfoc", "diag")  # both keep the per-example inputs and gradients
        self.factor_sums = method != "diag"  # the diagonal needs no Kronecker factor sums
        self.modules = dict(model.named_modules())
        self.handles: list[Any] = []
        self.leaves: list[torch.Tensor] = []
        self.vector = 0
        # K-FOC per-batch storage: inputs per (layer, call), grads per (layer, vector, call)
        self.inputs: dict[str, list[torch.Tensor]] = {}
        self.grads: dict[str, dict[tuple[int, int], torch.Tensor]] = {}
        self.calls: dict[str, int] = {}
        # running sums of the pass: sum x x^T (without bias), sum x (float64), sum g g^T
        self.xx: dict[str, _GramAccumulator] = {k: _GramAccumulator(v.has_bias) for k, v in layers.items()}
        self.gg: dict[str, _GramAccumulator] = {k: _GramAccumulator() for k in layers}

    def __enter__(self) -> "_Recorder":
        for name in self.layers:
            module = self.modules[name]
            self.handles.append(module.register_forward_hook(self._make_forward_hook(name)))
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()
        self.begin_batch()

    def begin_batch(self) -> None:
        self.leaves = []
        self.inputs = {}
        self.grads = {}
        self.calls = {}
        self.vector = 0

    # -- forward --------------------------------------------------------------------------
    def _make_forward_hook(self, name: str) -> Callable[..., Any]:
        layer = self.layers[name]

        def hook(module: nn.Module, inputs: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor | None:
            x = inputs[0]
            call = self.calls.get(name, 0)
            self.calls[name] = call + 1
            self._record_input(name, layer, module, x.detach(), output)
            replaced = None
            target = output
            if not output.requires_grad:
                leaf = output.detach().requires_grad_(True)
                self.leaves.append(leaf)
                replaced = target = leaf.clone()
            target.register_hook(self._make_grad_hook(name, layer, module, call))
            return replaced

        return hook

    def _record_input(self, name: str, layer: KroneckerLayer, module: nn.Module, x: torch.Tensor,
                      output: torch.Tensor) -> None:
        cdtype = torch.promote_types(x.dtype, torch.float32)
        if isinstance(module, nn.Conv2d):
            win = _conv_windows(module, x.to(cdtype))  # (B, C, Ho, Wo, kh, kw) view
            B, C, Ho, Wo, kh, kw = win.shape
            count = B * Ho * Wo
            P = win.permute(1, 4, 5, 0, 2, 3).reshape(C * kh * kw, count)  # one copy: (m_in, B L)
            if self.per_example:
                self.inputs.setdefault(name, []).append(
                    P.reshape(C * kh * kw, B, Ho * Wo).transpose(0, 1))  # (B, m_in, L) view
        else:
            P = x.reshape(-1, x.shape[-1]).to(cdtype).T  # a view: (m_in, N T)
            count = P.shape[1]
            if self.per_example:
                B = x.shape[0] if x.ndim > 1 else 1
                self.inputs.setdefault(name, []).append(
                    x.reshape(B, -1, x.shape[-1]).transpose(1, 2).to(cdtype))
        if self.factor_sums:
            self.xx[name].add(P)
        self.sums.positions[name] += count

    def finish(self, device: torch.device) -> None:
        """Write the sums of the pass into ``S_A`` (bias row and column last) and ``S_G``."""
        for name, layer in self.layers.items():
            res = self.xx[name].result()
            if res is not None:
                xx, xs = res
                m_in = xx.shape[0]
                if layer.has_bias:
                    assert xs is not None
                    S_A = torch.empty(layer.m, layer.m, dtype=torch.float64, device=xx.device)
                    S_A[:m_in, :m_in] = xx
                    S_A[:m_in, m_in] = xs
                    S_A[m_in, :m_in] = xs
                    S_A[m_in, m_in] = self.sums.positions[name]
                else:
                    S_A = xx
                self.sums.S_A[name] = S_A
            res = self.gg[name].result()
            if res is not None:
                self.sums.S_G[name] = res[0]
            self.sums.rounding[name] = {side: (acc.unit, acc.max_chain)
                                        for side, acc in (("A", self.xx[name]), ("G", self.gg[name]))}
        self.sums.materialize(self.layers, device, self.method)

    # -- backward -------------------------------------------------------------------------
    def _make_grad_hook(self, name: str, layer: KroneckerLayer, module: nn.Module,
                        call: int) -> Callable[[torch.Tensor], None]:
        is_conv = isinstance(module, nn.Conv2d)

        def hook(grad: torch.Tensor) -> None:
            g = grad.detach().to(torch.promote_types(grad.dtype, torch.float32))
            if not self.factor_sums:
                pass
            elif is_conv:
                self.gg[name].add(g.transpose(0, 1).reshape(g.shape[1], -1))  # one copy: (n, B H W)
            else:
                self.gg[name].add(g.reshape(-1, g.shape[-1]).T)
            if self.per_example:
                B = g.shape[0]
                gm = g.reshape(B, layer.n, -1) if is_conv else g.reshape(B, -1, layer.n).transpose(1, 2)
                self.grads.setdefault(name, {})[(self.vector, call)] = gm

        return hook

    # -- K-FOC ----------------------------------------------------------------------------
    def end_batch(self, n_vectors: int) -> None:
        if not self.per_example:
            return
        for name, layer in self.layers.items():
            calls = self.inputs.get(name, [])
            if not calls:
                continue
            a = torch.cat(calls, dim=2)  # (B, m_in, T)
            if layer.has_bias:
                a = torch.cat([a, a.new_ones(a.shape[0], 1, a.shape[2])], dim=1)
            grads = self.grads.get(name, {})
            g_vecs = []
            for v in range(n_vectors):
                parts = []
                for c, U in enumerate(calls):
                    gm = grads.get((v, c))
                    parts.append(gm if gm is not None else a.new_zeros(a.shape[0], layer.n, U.shape[2]))
                g_vecs.append(torch.cat(parts, dim=2))
            g = torch.stack(g_vecs).to(a.dtype)  # (V, B, n, T)
            if self.method == "diag":
                square = _diagonal_batch(a, g)
                if name in self.sums.S_D:
                    self.sums.S_D[name] += square
                else:
                    self.sums.S_D[name] = square
                continue
            term = _kfoc_batch(a, g)
            if term is not None:
                self.sums.terms[name].append(term)
        self.inputs = {}
        self.grads = {}


class _GramSide:
    """One side of a sum of rank-one products ``M(w) = sum_k w_k z_k z_k^T`` (rows ``z_k`` of ``Z``).

    Gives the quadratic forms ``z_k^T M(w) z_k`` and ``||M(w)||_F`` either from the Gram matrix
    (``(Z Z^T)^2``, elementwise; cost ``K^2`` per call after ``K^2 d`` once) or explicitly
    (``K d^2`` per call), whichever is cheaper for a few iterations.
    """

    def __init__(self, Z: torch.Tensor) -> None:
        self.Z = Z
        K, d = Z.shape
        self.gram = K <= 4 * d
        self.K2 = (Z @ Z.T) ** 2 if self.gram else None

    def quad(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.K2 is not None:
            q = self.K2 @ w
            return q, (w @ q).clamp_min(0).sqrt()
        M = self.matrix(w)
        return ((self.Z @ M) * self.Z).sum(dim=1), torch.linalg.matrix_norm(M)

    def matrix(self, w: torch.Tensor) -> torch.Tensor:
        """``Z^T diag(w) Z`` for ``w >= 0`` (symmetric by construction)."""
        return _gram(w.clamp_min(0).sqrt()[:, None] * self.Z)


def _power_tol(dtype: torch.dtype) -> float:
    return max(_POWER_TOL, 100 * torch.finfo(dtype).eps)


def _diagonal_batch(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``sum_{v,b} X_vb o X_vb`` (float64) with the per-example gradients ``X_vb = sum_t g a^T``.

    ``a``: ``(B, m, T)`` inputs (bias row included), ``g``: ``(V, B, n, T)`` output gradients.
    With one position (``T = 1``, a Linear layer) ``X_vb o X_vb = (g o g)(a o a)^T`` and no
    per-example matrix is formed; otherwise they are formed in chunks of about 2^22 entries.
    """
    V, B, n, T = g.shape
    m = a.shape[1]
    if T == 1:
        return torch.einsum("vbn,bm->nm", g[..., 0] * g[..., 0], a[..., 0] * a[..., 0]).to(torch.float64)
    out = torch.zeros(n, m, dtype=torch.float64, device=a.device)
    step = max(1, (1 << 22) // max(1, V * n * m))
    for start in range(0, B, step):
        X = torch.einsum("vbnt,bmt->vbnm", g[:, start:start + step], a[start:start + step])
        out += (X * X).sum(dim=(0, 1)).to(torch.float64)
    return out


def _kfoc_batch(a: torch.Tensor, g: torch.Tensor) -> Kron | None:
    """Frobenius-nearest ``G (x) A`` to ``sum_{v,b} vec(X_vb) vec(X_vb)^T``, ``X_vb = sum_t g_vbt a_bt^T``.

    ``a``: ``(B, m, T)``, ``g``: ``(V, B, n, T)`` in the compute dtype. Rank-1 power iteration on
    the Van Loan-Pitsianis rearrangement, ``G <- sum X A X^T``, ``A <- sum X^T G X``, normalized,
    started from the batch's K-FAC input factor. For ``T = 1`` every ``X`` is rank one and both
    factors stay in the span of ``z z^T`` of the inputs / gradients, so the iteration runs on
    weight vectors (:class:`_GramSide`); otherwise the per-example matrices are formed once.
    Returns float64 factors (None for an all-zero batch).
    """
    V, B, n, T = g.shape
    tol = _power_tol(a.dtype)
    if float(a.abs().max()) == 0.0 or float(g.abs().max()) == 0.0:
        return None
    if T == 1:
        side_a = _GramSide(a[:, :, 0])  # (B, m)
        side_g = _GramSide(g[:, :, :, 0].reshape(V * B, n))  # rows v * B + b
        w_a = torch.ones(B, dtype=a.dtype, device=a.device)
        _, norm_a = side_a.quad(w_a)
        w_a = w_a / norm_a
        sigma = norm_a
        w_g = torch.zeros(V * B, dtype=a.dtype, device=a.device)
        for _it in range(_POWER_MAX_ITER):
            q_a, _ = side_a.quad(w_a)  # a_b^T A a_b
            w_g = q_a.repeat(V)
            _, norm_g = side_g.quad(w_g)
            w_g = w_g / norm_g.clamp_min(1e-300)
            q_g, _ = side_g.quad(w_g)  # g_vb^T G g_vb
            w_new = q_g.reshape(V, B).sum(dim=0)
            _, sigma = side_a.quad(w_new)
            w_new = w_new / sigma.clamp_min(1e-300)
            delta = float((w_new - w_a).norm() / w_new.norm().clamp_min(1e-300))
            w_a = w_new
            if delta <= tol:
                break
        root = sigma.to(torch.float64).sqrt()
        return Kron(side_g.matrix(w_g).to(torch.float64) * root, side_a.matrix(w_a).to(torch.float64) * root)
    else:
        A = torch.einsum("bmt,bkt->mk", a, a)
        A = A / torch.linalg.matrix_norm(A)
        X = torch.einsum("vbnt,bmt->vbnm", g, a).reshape(V * B, n, -1)
        sigma = torch.zeros((), dtype=a.dtype, device=a.device)
        G = A.new_zeros(n, n)
        for _it in range(_POWER_MAX_ITER):
            G = torch.tensordot(X @ A, X, dims=([0, 2], [0, 2]))  # sum X A X^T
            G = G / torch.linalg.matrix_norm(G).clamp_min(1e-300)
            A_new = torch.tensordot(X, G @ X, dims=([0, 1], [0, 1]))  # sum X^T G X
            sigma = torch.linalg.matrix_norm(A_new)
            A_new = A_new / sigma.clamp_min(1e-300)
            delta = float(torch.linalg.matrix_norm(A_new - A))
            A = A_new
            if delta <= tol:
                break
    G = G.to(torch.float64)
    A = A.to(torch.float64)
    root = sigma.to(torch.float64).sqrt()
    return Kron((G + G.T) / 2 * root, (A + A.T) / 2 * root)


# ------------------------------------------------------------------------------------------
# The pass
# ------------------------------------------------------------------------------------------
def _model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    devices = {p.device for p in model.parameters()} | {b.device for b in model.buffers()}
    dtypes = [p.dtype for p in model.parameters() if p.is_floating_point()]
    dtype = dtypes[0] if dtypes else torch.get_default_dtype()
    if len(devices) > 1:
        return torch.device("meta"), dtype  # several devices: leave placement to the model
    return (devices.pop() if devices else torch.device("cpu")), dtype


def _check_positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(error_message(name, "a positive integer", value))
    return int(value)


def _all_reduce(sums: _Sums, layers: dict[str, KroneckerLayer], method: str) -> None:
    import torch.distributed as dist

    names = list(layers)
    device = next(iter(sums.S_A.values())).device
    scalars = torch.tensor([float(sums.positions[k]) for k in names]
                           + [float(sums.n_samples), 0.0 if sums.nll is None else float(sums.nll),
                              1.0 if sums.has_nll and sums.nll is not None else 0.0],
                           dtype=torch.float64, device=device)
    stores = (sums.S_A, sums.S_G, sums.S_D) if method == "diag" else (sums.S_A, sums.S_G)
    flat = torch.cat([store[k].reshape(-1) for store in stores for k in names] + [scalars])
    dist.all_reduce(flat)
    offset = 0
    for store in stores:
        for k in names:
            size = store[k].numel()
            store[k] = flat[offset:offset + size].reshape(store[k].shape).clone()
            offset += size
    scal = flat[offset:].tolist()
    for i, k in enumerate(names):
        sums.positions[k] = int(round(scal[i]))
    sums.n_samples = int(round(scal[len(names)]))
    world = dist.get_world_size()
    sums.has_nll = int(round(scal[len(names) + 2])) == world
    sums.nll = torch.tensor(scal[len(names) + 1], dtype=torch.float64, device=device) if sums.has_nll else None
    if method == "kfoc":
        for k in names:
            terms = sums.terms[k]
            if not terms:
                local = Kron(torch.zeros(layers[k].n, layers[k].n, dtype=torch.float64, device=device),
                             torch.zeros(layers[k].m, layers[k].m, dtype=torch.float64, device=device))
            elif len(terms) == 1:
                local = terms[0]
            else:
                local = KronSum(terms).nearest()
            gs = [torch.empty_like(local.G) for _ in range(world)]
            as_ = [torch.empty_like(local.A) for _ in range(world)]
            dist.all_gather(gs, local.G.contiguous())
            dist.all_gather(as_, local.A.contiguous())
            sums.terms[k] = [Kron(g, a) for g, a in zip(gs, as_) if float(g.abs().max()) > 0]


def _run_pass(model: nn.Module, X: Any, y: Any, *, layers: dict[str, KroneckerLayer], fisher: str,
              likelihood: str, method: str, device: torch.device | None, batch_size: int = 256,
              generator: torch.Generator | None = None, progress: bool | None = None,
              mc_samples: int = 1, distributed: bool | None = None) -> _Sums:
    batch_size = _check_positive_int(batch_size, "batch_size")
    mc_samples = _check_positive_int(mc_samples, "mc_samples")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(error_message("generator", "a torch.Generator or None", type(generator).__name__))
    if fisher == "empirical" and y is None and not _is_loader(X):
        raise ValueError(error_message("y", "the true labels for fisher='empirical'", "None",
                                       "Pass y, or use fisher='mc' or 'exact'."))
    if device is not None:
        device = check_device(device)
    model_device, dtype = _model_device_dtype(model)
    move = device is not None and model_device.type != "meta" and torch.device(device) != model_device
    run_device = torch.device(device) if device is not None else (
        model_device if model_device.type != "meta" else next(model.parameters()).device)
    data = _batches(X, y, batch_size, likelihood)
    sums = _Sums.empty(layers, method)
    nll = torch.zeros((), dtype=torch.float64, device=run_device)
    has_nll = True

    training = {mod: mod.training for mod in model.modules()}
    flags = {p: p.requires_grad for p in model.parameters()}
    bar = None
    try:
        if move:
            model.to(run_device)
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        with _Recorder(model, layers, sums, method) as rec, torch.inference_mode(False), torch.enable_grad():
            if progress is not False:
                from tqdm.auto import tqdm

                bar = tqdm(total=data.total, desc=f"curvature ({method}, {fisher})",
                           unit="batch", delay=0 if progress else 2, leave=False)
            first = True
            for xb, yb in data.batches:
                if fisher == "empirical" and yb is None:
                    raise ValueError(error_message("y", "the true labels for fisher='empirical'",
                                                   "a batch without labels", "Yield (x, y) pairs."))
                xb = _prepare_x(xb, dtype, run_device, check=not data.checked)
                rec.begin_batch()
                out = model(xb)
                if not isinstance(out, torch.Tensor):
                    raise TypeError(error_message("the model's output", "a tensor of logits (B, C)",
                                                  type(out).__name__))
                if likelihood == "classification" and out.ndim != 2:
                    raise ValueError(error_message("the model's output", "logits of shape (B, C)",
                                                   describe(out), "Flatten or pool the output in the model."))
                if likelihood == "regression":
                    out = out.reshape(out.shape[0], -1)
                if not out.requires_grad or not rec.leaves:
                    raise ValueError(error_message(
                        "the forward pass", "one that calls a trainable Linear or Conv2d layer",
                        "an output that does not depend on any of them",
                        "Check that the model's forward uses its layers."))
                if first and data.checked and likelihood == "classification":
                    _check_label_range(data.y_range, out.shape[1])
                first = False
                yt = None if yb is None else _prepare_y(yb, out, likelihood, check=not data.checked)
                vectors, batch_nll = _output_terms(out, yt, fisher=fisher, likelihood=likelihood,
                                                   mc_samples=mc_samples, generator=generator)
                if batch_nll is None:
                    has_nll = False
                else:
                    nll += batch_nll
                for k, v in enumerate(vectors):
                    rec.vector = k
                    torch.autograd.grad(out, rec.leaves, grad_outputs=v, retain_graph=k < len(vectors) - 1,
                                        allow_unused=True)
                rec.end_batch(len(vectors))
                sums.n_samples += int(xb.shape[0])
                if bar is not None:
                    bar.update(1)
            rec.finish(run_device)
    finally:
        if bar is not None:
            bar.close()
        for mod, mode in training.items():
            mod.training = mode
        for p, flag in flags.items():
            p.requires_grad_(flag)
        if move:
            model.to(model_device)
    if sums.n_samples == 0:
        raise ValueError(error_message("the data", "at least one data point", "an empty data set"))
    sums.nll = nll if has_nll else None
    sums.has_nll = has_nll
    _maybe_all_reduce(sums, layers, method, distributed)
    logger.debug("curvature pass: %d samples, fisher=%s, method=%s", sums.n_samples, fisher, method)
    return sums


def _is_loader(X: Any) -> bool:
    from torch.utils.data import DataLoader, Dataset

    return isinstance(X, (DataLoader, Dataset))


def _maybe_all_reduce(sums: _Sums, layers: dict[str, KroneckerLayer], method: str,
                      distributed: bool | None) -> None:
    import torch.distributed as dist

    initialized = dist.is_available() and dist.is_initialized()
    if distributed and not initialized:
        raise RuntimeError(error_message("torch.distributed", "initialized for distributed=True",
                                         "no process group", "Call torch.distributed.init_process_group first."))
    if initialized and distributed is not False:
        _all_reduce(sums, layers, method)


# ------------------------------------------------------------------------------------------
# Public entry points
# ------------------------------------------------------------------------------------------
def kfac(model: nn.Module, X: Any, y: Any = None, *, fisher: FisherType = "mc",
         likelihood: LikelihoodType = "classification", method: MethodType = "kfac",
         batch_size: int = 256, device: torch.device | str | None = None,
         generator: torch.Generator | None = None, progress: bool | None = None,
         mc_samples: int = 1, distributed: bool | None = None, kfoc_max_terms: int = 32) -> Curvature:
    r"""Kronecker-factored curvature of every trainable Linear / Conv2d layer of ``model``.

    Parameters
    ----------
    model : torch.nn.Module
        The network; its output is a batch of logits ``(B, C)`` (classification) or of
        regression outputs ``(B, ...)``. Run in eval mode during the pass; its training modes
        and ``requires_grad`` flags are restored afterwards, also on an exception.
    X : tensor, numpy array, DataLoader or Dataset
        Inputs, or a loader / dataset yielding ``(x, y)`` pairs (or ``x`` alone).
    y : tensor or numpy array, optional
        Integer class labels (classification) or targets (regression). Needed for
        ``fisher="empirical"`` and for :attr:`Curvature.nll_sum`.
    fisher : {"mc", "exact", "empirical"}, default="mc"
        ``"mc"``: one label per input sampled from the model's predictive (the paper's choice);
        ``"exact"``: all classes weighted by their probability (the GGN), via the symmetric
        square root ``diag(p) - p p^T = sum_c v_c v_c^T``, ``v_c = sqrt(p_c) (e_c - p)``, one
        backward pass per class; ``"empirical"``: the true labels.
    likelihood : {"classification", "regression"}, default="classification"
        Softmax cross-entropy, or a unit-variance Gaussian (``NLL = ||y - f||^2 / 2 + const``).
    method : {"kfac", "kfoc", "diag"}, default="kfac"
        ``"kfoc"`` is :func:`kfoc`, ``"diag"`` is :func:`diagonal_fisher`.
    batch_size : int, default=256
        Mini-batch size when ``X`` is an array or a Dataset.
    device : torch.device or str, optional
        Where the pass runs and the sums live (default: the model's device). A model on another
        device is moved there for the pass and moved back afterwards. A device that is not
        available here (``"cuda"`` without CUDA, a CUDA index beyond the visible devices, an
        unknown name) raises a ``ValueError`` before anything runs.
    generator : torch.Generator, optional
        Seeds the label sampling of ``fisher="mc"``.
    progress : bool, optional
        ``None`` shows a tqdm bar only on passes longer than 2 s, ``True`` always, ``False`` never.
    mc_samples : int, default=1
        Sampled labels per input for ``fisher="mc"`` (each weighted ``1 / mc_samples``).
    distributed : bool, optional
        All-reduce sums and counts over the default process group at the end of the pass:
        ``None`` when ``torch.distributed`` is initialized, ``True`` always (error when it is
        not), ``False`` never. Each process passes its own shard of the data.
    kfoc_max_terms : int, default=32
        K-FOC only: see :class:`Curvature`.

    Returns
    -------
    Curvature
        With ``factors[name] = Kron(G_out, A_in)`` (float64), ``nll_sum``, ``n_samples``,
        ``uncovered``.

    Notes
    -----
    Scale: ``G_out (x) A_in`` approximates the curvature of the *summed* NLL over the ``N`` data
    points, with ``A_in = (1 / (N T)) sum_{n,t} a a^T`` (bias-augmented inputs / patches, ``T``
    output positions per datum) and ``G_out = sum_{n,t} g g^T`` (``g`` the gradient of the
    per-example NLL w.r.t. the layer's pre-activation). For Conv2d this is the KFC / "expand"
    convention of Grosse & Martens (2016). A single datum with the exact Fisher gives the exact
    Fisher block for Linear layers (and conv layers with a ``1 x 1`` output); a deep linear
    network with MSE (``likelihood="regression"``) and the exact Fisher gives the exact GGN
    block for any number of data points.

    Cost: one forward pass and, per Fisher vector, one backward pass to the layers' outputs
    (no weight gradients are formed), plus the factor products ``O(B T (m^2 + n^2))`` per layer.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> _ = torch.manual_seed(0)
    >>> net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 3))
    >>> X, y = torch.randn(32, 1, 6, 6), torch.randint(0, 3, (32,))
    >>> curv = kfac(net, X, y, generator=torch.Generator().manual_seed(0), progress=False)
    >>> {k: (K.n, K.m) for k, K in curv.factors.items()}
    {'0': (4, 10), '3': (3, 145)}
    >>> with torch.no_grad():
    ...     nll = torch.nn.functional.cross_entropy(net(X), y, reduction="sum")
    >>> abs(curv.nll_sum - float(nll)) < 1e-4
    True
    """
    _check_model(model)
    fisher = _check_choice(fisher, "fisher", _FISHERS)
    likelihood = _check_choice(likelihood, "likelihood", _LIKELIHOODS)
    method = _check_choice(method, "method", _METHODS)
    layers = _model_layers(model)
    model_device, _ = _model_device_dtype(model)
    if device is not None:
        device = acc_device = check_device(device)
    elif model_device.type != "meta":
        acc_device = model_device
    else:
        acc_device = next(model.parameters()).device
    curv = Curvature(layers, uncovered_parameters(model, layers), fisher=fisher, method=method,
                     likelihood=likelihood, device=acc_device, kfoc_max_terms=kfoc_max_terms)
    options = {"batch_size": batch_size, "generator": generator, "progress": progress,
               "mc_samples": mc_samples, "distributed": distributed}
    sums = _run_pass(model, X, y, layers=layers, fisher=fisher, likelihood=likelihood,
                     method=method, device=device, **options)
    curv._options = options
    curv._adopt(sums)
    return curv


def kfoc(model: nn.Module, X: Any, y: Any = None, **kwargs: Any) -> Curvature:
    r"""K-FOC curvature: per mini-batch the Frobenius-optimal Kronecker product of the Fisher.

    Same arguments as :func:`kfac` (``method`` is ``"kfoc"``).

    Per mini-batch and layer, the per-example gradient matrices ``X_b = sum_t g_{b,t} a_{b,t}^T``
    (``n x m``, one per Fisher vector) define the exact batch Fisher block
    ``F = sum_b vec(X_b) vec(X_b)^T``. Its Frobenius-nearest Kronecker product is the rank-1
    approximation of the Van Loan-Pitsianis rearrangement of ``F``, found by the power iteration
    ``G <- sum_b X_b A X_b^T``, ``A <- sum_b X_b^T G X_b`` (normalized; started from the batch's
    K-FAC input factor; for ``T = 1`` the per-example matrices are never formed). The per-batch
    products are summed and merged with :meth:`skkprior.kron.KronSum.nearest` (every
    ``kfoc_max_terms`` products, and once at the end; :attr:`Curvature.merge_error` records the
    relative error). With the sampled or true label (``fisher="mc"`` / ``"empirical"``) a single
    datum's Fisher block of a Linear layer is rank one, and K-FOC equals K-FAC there.

    The scalar split follows K-FAC: ``A_in`` is rescaled to the trace of the K-FAC ``A_in``.
    Cost and memory: for ``T = 1`` (Linear layers) the iteration runs on ``B``-vectors of weights
    (Gram matrices of the inputs and gradients, ``O(B^2 (m + n))`` once per batch); for conv
    layers about ``2 (n^2 m + n m^2) V B`` per power iteration, and the per-example matrices take
    ``V B n m`` numbers (``V`` Fisher vectors per example: 1, or ``C`` for ``fisher="exact"``;
    lower ``batch_size`` for large layers). The iteration runs in the model's dtype (at least
    float32) and stops when the normalized input factor changes by less than ``1e-10`` (float64)
    or ``100 eps`` (float32), at most 100 iterations; the products are stored in float64.

    References
    ----------
    Schnaus, Lee & Triebel (2021), *Kronecker-factored optimal curvature*, NeurIPS workshop
    "Bayesian Deep Learning".

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    >>> X, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    >>> curv = kfoc(net, X, y, fisher="empirical", batch_size=8, progress=False)
    >>> curv.method, curv.n_samples, sorted(curv.factors)
    ('kfoc', 16, ['0', '2'])
    >>> all(0 <= e < 1 for e in curv.merge_error.values())
    True
    """
    if "method" in kwargs and kwargs["method"] != "kfoc":
        raise ValueError(error_message("method of kfoc", "'kfoc'", repr(kwargs["method"]),
                                       "Call kfac(...) for K-FAC."))
    kwargs["method"] = "kfoc"
    return kfac(model, X, y, **kwargs)


def diagonal_fisher(model: nn.Module, X: Any, y: Any = None, **kwargs: Any) -> Curvature:
    r"""The exact diagonal of the Fisher (or GGN / empirical Fisher) of every Linear / Conv2d layer.

    Same arguments as :func:`kfac` (``method`` is ``"diag"``). Per layer,
    ``f = sum_{b, v} X_bv o X_bv`` with ``X_bv = sum_t g_{b,t,v} a_{b,t}^T`` the per-example
    gradient of the layer's ``[W | b]`` for Fisher vector ``v`` (one sampled label for
    ``fisher="mc"``, every class for ``"exact"``, the true label for ``"empirical"``), so ``f``
    is the diagonal of the same Fisher estimate K-FAC factorizes, without the Kronecker
    independence assumption but without any correlation between parameters. It is the
    curvature of the *summed* NLL, like K-FAC's. ``factors[name]`` is a
    :class:`~skkprior.precision.DiagonalCurvature` of shape ``(n, m)``; a posterior built on it
    is :class:`~skkprior.precision.DiagonalDecomposed` (``beta f + alpha diag(P)``).

    Cost: the per-example matrices ``X_bv`` (``V B n m`` numbers per mini-batch, formed in chunks).

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    >>> X, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    >>> curv = diagonal_fisher(net, X, y, fisher="exact", progress=False)
    >>> curv.method, tuple(curv.factors["0"].values.shape)
    ('diag', (6, 5))
    """
    if "method" in kwargs and kwargs["method"] != "diag":
        raise ValueError(error_message("method of diagonal_fisher", "'diag'", repr(kwargs["method"]),
                                       "Call kfac(...) for K-FAC."))
    kwargs["method"] = "diag"
    return kfac(model, X, y, **kwargs)
