r"""Bayesian Progressive Neural Networks: one column per task, learned priors, no forgetting.

The paper's continual-learning architecture (METHOD.md section 5). Task ``k`` (1-based) adds a
*column*, a fresh copy of the network with its own head, and trains it while the columns of
earlier tasks stay frozen. At chosen *lateral* layers the new column also reads the earlier
columns: with ``h^(j)`` the input of layer ``l`` in column ``j``,

.. math::
    z^{(k)}_l = \frac{1}{k}\Big(W^{(k)}_l h^{(k)} + \sum_{j<k} U^{(k \leftarrow j)}_l h^{(j)}\Big),

where ``W`` and each ``U`` hold their own bias (``[W | b]`` as everywhere in skkprior), so the
layer averages ``k`` affine maps of the same shape. The priors of task ``k``:

- intra-column layers: the source prior (e.g. :func:`~skkprior.learn_prior` on a pretrained
  network); the column starts at its mean;
- each lateral ``U^(k<-j)_l``: the Laplace posterior of layer ``l`` of column ``j``,
  ``N(theta_j, tau (beta F_j + alpha P_j)^-1)`` at the scales given to the estimator
  (``prior_scale``, ``likelihood_scale``, ``temperature``), compressed to one Kronecker product
  (:meth:`~skkprior.laplace.KroneckerPosterior.as_prior`, the Frobenius-nearest Kronecker
  product, as in the single-network continual chain; its relative error is in the prior's
  ``metadata["nkp_error"]``); the lateral starts at that posterior's mean, i.e. at column
  ``j``'s trained layer;
- the head: ``N(0, weight_decay^-1 I)``.

The scales chosen for column ``j``'s *predictive* (``scaling="validation"`` or ``"pac-bayes"``)
are not folded into the lateral priors: a validation grid typically picks a cold posterior
(``tau = 0.01``, ``alpha = 1000``), which as a prior has a precision of order ``1e5`` and pins the
lateral; under such a stiff prior term the Adam-trained MAP oscillates instead of fitting
(measured on split digits, 5 examples per class, zero-mean isotropic source prior: training loss
of the second column 1.37 with the tuned scales folded in, 0.43 without).

After training the MAP, the K-FAC curvature of the new column (its layers and laterals; the
frozen columns carry no curvature) gives the exact Laplace posterior of the new column, whose
scales are tuned by the paper's PAC-Bayes objective or kept fixed.

Why the KL of a task counts only its new column
------------------------------------------------
For task ``k`` the hypothesis is the joint draw of all columns ``1..k``. Take as posterior
``Q = Q_k x Q_{<k}`` and as prior ``P = P_k x Q_{<k}``: the earlier columns enter both with the
*same* distribution, their posteriors, which were fixed before task ``k``'s data were seen and
are never changed by them. ``P`` is therefore independent of task ``k``'s data (``P_k`` is built
from the source prior and from the earlier columns' MAPs and curvatures only), as a PAC-Bayes
prior must be, and ``KL(Q || P) = KL(Q_k || P_k) + KL(Q_{<k} || Q_{<k}) = KL(Q_k || P_k)``. The frozen columns
act as a data-independent random feature map for task ``k``. (With ``sample_earlier="never"``
the feature map is deterministic, the earlier MAPs, and the same argument holds.) The scale
tuning uses the Taylor-approximated risk of the new column at the earlier columns' means; the
sampling of the earlier columns is not in that approximation.

Zero forgetting
---------------
Column ``j`` and its laterals never change after task ``j`` (their parameters are frozen and
kept in evaluation mode), and the prediction of task ``j`` runs columns ``1..j`` only, with draws
seeded by the estimator's seed and the task's index. Predictions of earlier tasks are therefore
bitwise identical after any number of later tasks.

Which networks can be wrapped
-----------------------------
The network is traced once per column with :mod:`torch.fx` (``nn.Linear`` and ``nn.Conv2d``
are kept as leaves) and each column runs its traced graph, so that the input of every lateral
layer can be read and its output replaced. The requirements:

1. ``forward`` takes one tensor and returns the logits as one tensor;
2. it is traceable by ``torch.fx.symbolic_trace``: no Python control flow that depends on the
   input's values (control flow on shapes, constants or module attributes is evaluated once,
   at trace time, in training mode);
3. every trainable ``nn.Linear`` / ``nn.Conv2d`` (``groups=1``) is called exactly once per
   forward pass, as a module (not through ``F.linear(x, self.fc.weight)``, not shared);
4. the *head* is the last of them in call order; a lateral layer is any other one, and its
   input and output shapes are the same in every column (only the head's size may change
   with a task's classes).

Everything else is free: activations, pooling, flatten, reshapes, normalization layers
(their parameters get the source prior's isotropic precision, as everywhere in skkprior).
:class:`skkprior.networks.MLP` and :class:`skkprior.datasets.MnistCNN` qualify. A network that
breaks a rule gets a ``ValueError`` naming the rule and the layer; the traced graph of each
column is also checked against the column's own ``forward`` on one example.

Parameter names
---------------
The network of the estimator (``network_``) holds ``columns.<k>.<name>`` (column ``k``'s copy of
the user's parameter ``<name>``) and ``laterals.<k>.<j>.<i>.weight`` / ``.bias`` (the lateral into
column ``k`` from column ``j`` at the ``i``-th layer of ``lateral_layers_``), 0-based.
"""

from __future__ import annotations

import copy
import logging
import os
from dataclasses import dataclass, replace
from itertools import chain
from typing import Any, Callable, Hashable, Sequence

import numpy as np
import torch
from sklearn.metrics import accuracy_score
from sklearn.preprocessing import LabelEncoder
from sklearn.utils.validation import check_is_fitted
from torch import fx, nn
from torch.func import functional_call

from ._layers import kronecker_layers
from ._validation import describe, error_message
from .estimators import (
    _VALIDATION_PRIOR_GRID,
    _VALIDATION_TEMPERATURE_GRID,
    _Anything,
    _BaseKronecker,
    _OpenUnit,
    _Options,
    _Positive,
    _resolve_device,
    _seed_from,
)
from .gaussian import GaussianGroup, LayerwiseGaussian
from .laplace import KroneckerPrior, _zero_isotropic_layer_group, posterior
from .tuning import tune_marglik, tune_pac_bayes, tune_validation

__all__ = ["ProgressivePriorClassifier"]

logger = logging.getLogger(__name__)

_TASK_SEED_STRIDE = 7919


# --------------------------------------------------------------------------------------------
# tracing a column
# --------------------------------------------------------------------------------------------
class _Tracer(fx.Tracer):
    """``torch.fx`` tracer that keeps every Linear / Conv2d (also subclasses) as a leaf module."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, (nn.Linear, nn.Conv2d)) or super().is_leaf_module(m, module_qualified_name)


@dataclass(frozen=True)
class _Structure:
    """The Kronecker layers of a traced column, in call order, and its first layer and head."""

    layers: tuple[str, ...]
    first: str
    head: str


_WRAP_FIX = ("See the 'Which networks can be wrapped' section of skkprior.progressive: one tensor in, "
             "logits out, torch.fx-traceable, every Linear/Conv2d called once as a module.")


def _trace_column(module: nn.Module) -> tuple[fx.Graph, _Structure]:
    """Trace ``module`` and check the requirements of the module docstring."""
    name = type(module).__name__
    try:
        graph = _Tracer().trace(module)
    except Exception as exc:  # fx raises TraceError, TypeError, RuntimeError, ... on untraceable code
        raise ValueError(error_message(
            f"the network {name}", "traceable by torch.fx.symbolic_trace",
            f"a forward that failed to trace ({type(exc).__name__}: {str(exc)[:160]})",
            "Remove Python control flow that depends on input values. " + _WRAP_FIX)) from exc
    layers = kronecker_layers(module)
    if not layers:
        raise ValueError(error_message(f"the network {name}", "a module with at least one trainable "
                                       "nn.Linear or nn.Conv2d layer", f"{name} without one", _WRAP_FIX))
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise ValueError(error_message(f"the forward of {name}", "a function of exactly one input tensor",
                                       f"{len(placeholders)} inputs ({[n.target for n in placeholders]})",
                                       _WRAP_FIX))
    output = next(n for n in graph.nodes if n.op == "output")
    if not isinstance(output.args[0], fx.Node):
        raise ValueError(error_message(f"the output of {name}", "one tensor of logits",
                                       "a tuple or another container", _WRAP_FIX))
    calls = [n for n in graph.nodes if n.op == "call_module" and n.target in layers]
    order = [str(n.target) for n in calls]
    problems = []
    for layer in layers:
        count = order.count(layer)
        if count != 1:
            label = f"'{layer}'" if layer else "the network itself (a bare layer)"
            problems.append(f"layer {label} is called {count} times as a module")
    for n in calls:
        if len(n.args) != 1 or n.kwargs:
            problems.append(f"layer '{n.target}' is called with {len(n.args)} positional and "
                            f"{len(n.kwargs)} keyword arguments")
    if problems:
        raise ValueError(error_message(f"the network {name}", "one whose every trainable Linear/Conv2d "
                                       "is called exactly once per forward, as a module, on one tensor",
                                       "; ".join(problems[:4]), _WRAP_FIX))
    return graph, _Structure(tuple(order), order[0], order[-1])


class _StopColumn(Exception):
    """Raised inside a column's graph once everything later columns need has been recorded."""


class _ColumnRunner(fx.Interpreter):
    """Runs a column's traced graph; ``on_layer(target, args, output)`` may replace a layer's output."""

    def __init__(self, module: nn.Module, graph: fx.Graph,
                 on_layer: Callable[[str, tuple, torch.Tensor], torch.Tensor]) -> None:
        super().__init__(module, garbage_collect_values=True, graph=graph)
        self.extra_traceback = False
        self._on_layer = on_layer

    def call_module(self, target: Any, args: Any, kwargs: Any) -> Any:
        out = super().call_module(target, args, kwargs)
        return self._on_layer(str(target), args, out)


# --------------------------------------------------------------------------------------------
# the progressive network
# --------------------------------------------------------------------------------------------
class _ProgressiveNet(nn.Module):
    """Columns, laterals and the averaging of METHOD.md section 5; ``forward`` gives task ``active``'s logits.

    ``laterals[k][j][i]`` is the lateral into column ``k`` from column ``j`` at
    ``lateral_layers[i]``. Frozen columns (``j < n_frozen``) stay in evaluation mode.
    """

    def __init__(self, lateral_layers: Sequence[str]) -> None:
        super().__init__()
        self.columns = nn.ModuleList()
        self.laterals = nn.ModuleList()
        self.lateral_layers = tuple(lateral_layers)
        self.active = 0
        self.n_frozen = 0
        self._graphs: dict[int, fx.Graph] = {}

    # -- pickling / copying: traced graphs are rebuilt on demand --------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_graphs"] = {}
        return state

    def graph(self, j: int) -> fx.Graph:
        graph = self._graphs.get(j)
        if graph is None:
            graph = self._graphs[j] = _Tracer().trace(self.columns[j])  # checked when the column was added
        return graph

    # -- structure ------------------------------------------------------------------------------------
    def add_column(self, module: nn.Module, graph: fx.Graph) -> int:
        k = len(self.columns)
        self.columns.append(module)
        self._graphs[k] = graph
        lateral = nn.ModuleList()
        for j in range(k):
            copies = nn.ModuleList([copy.deepcopy(self.columns[j].get_submodule(name))
                                    for name in self.lateral_layers])
            for p in copies.parameters():
                p.requires_grad_(True)
            lateral.append(copies)
        self.laterals.append(lateral)
        return k

    def pop_column(self) -> None:
        k = len(self.columns) - 1
        del self.columns[k]
        del self.laterals[k]
        self._graphs.pop(k, None)
        self.n_frozen = min(self.n_frozen, k)

    def freeze(self, k: int) -> None:
        for p in chain(self.columns[k].parameters(), self.laterals[k].parameters()):
            p.requires_grad_(False)
        self.columns[k].eval()
        self.laterals[k].eval()
        self.n_frozen = max(self.n_frozen, k + 1)

    def train(self, mode: bool = True) -> "_ProgressiveNet":
        super().train(mode)
        for j in range(min(self.n_frozen, len(self.columns))):
            self.columns[j].train(False)
            self.laterals[j].train(False)
        return self

    # -- forward ---------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x, self.active)

    def run(self, x: torch.Tensor, task: int) -> torch.Tensor:
        """Logits of column ``task`` (0-based); runs columns ``0..task`` and nothing later."""
        lateral = {name: i for i, name in enumerate(self.lateral_layers)}
        last = self.lateral_layers[-1] if self.lateral_layers else None
        inputs: dict[int, dict[str, torch.Tensor]] = {}
        out = None
        for j in range(0 if lateral else task, task + 1):
            recorded: dict[str, torch.Tensor] = {}
            inputs[j] = recorded

            def on_layer(target: str, args: tuple, output: torch.Tensor, j: int = j,
                         recorded: dict[str, torch.Tensor] = recorded) -> torch.Tensor:
                i = lateral.get(target)
                if i is None:
                    return output
                recorded[target] = args[0]
                if j > 0:
                    total = output
                    for src in range(j):
                        total = total + self.laterals[j][src][i](inputs[src][target])
                    output = total / (j + 1)
                if j < task and target == last:
                    raise _StopColumn
                return output

            try:
                out = _ColumnRunner(self.columns[j], self.graph(j), on_layer).run(x)
            except _StopColumn:
                pass
        return out


class _SampledEarlier(nn.Module):
    """Training wrapper: one fresh draw of the frozen columns (and their laterals) per forward pass."""

    def __init__(self, net: _ProgressiveNet, gaussian: LayerwiseGaussian, generator: torch.Generator) -> None:
        super().__init__()
        self.net = net
        self.gaussian = gaussian
        self.generator = generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self.net(x)
        own = dict(self.net.named_parameters())
        draw = self.gaussian.sample(1, generator=self.generator)
        params = {k: v[0].to(dtype=own[k].dtype) for k, v in draw.items()}
        return functional_call(self.net, params, (x,), strict=False)


def _renamed(g: GaussianGroup, old: str, new: str) -> GaussianGroup:
    """``g`` with every name that starts with the prefix ``old`` starting with ``new`` instead."""

    def f(name: str | None) -> str | None:
        if name is None:
            return None
        if name == old:
            return new
        if not old:
            return f"{new}.{name}"
        if name.startswith(old + "."):
            return new + name[len(old):]
        return name

    layer = None if g.layer is None else replace(g.layer, name=f(g.layer.name), weight_name=f(g.layer.weight_name),
                                                 bias_name=f(g.layer.bias_name))
    return GaussianGroup(f(g.name), tuple(f(p) for p in g.parameter_names), g.parameter_shapes, layer,
                         g.mean, g.precision, g.temperature)


def _is_lateral_spec(v: Any) -> bool:
    return v is None or (isinstance(v, (list, tuple)) and all(isinstance(s, str) for s in v))


# --------------------------------------------------------------------------------------------
# the estimator
# --------------------------------------------------------------------------------------------
class ProgressivePriorClassifier(_BaseKronecker):
    r"""A Bayesian Progressive Neural Network: one column per task, learned priors, no forgetting.

    ``partial_fit(X, y, task=...)`` adds a column for a new task, with its own head and classes,
    and trains it while every earlier column stays frozen; ``predict_proba(X, task=...)`` is the
    posterior predictive of that task. The architecture, the priors, and why the KL of a task
    counts only its new column are described in :mod:`skkprior.progressive`.

    Parameters
    ----------
    module : nn.Module class, nn.Module instance or None, default=None
        The network of one column. A class is instantiated per task with the ``module__*``
        keywords, ``n_features`` and ``n_classes`` (the task's) filled in when its constructor
        accepts them; an instance is deep-copied per task (its output size must then equal
        every task's number of classes); None gives :class:`~skkprior.networks.MLP`. It must
        meet the requirements of :mod:`skkprior.progressive` ("Which networks can be wrapped").
    prior : KroneckerPrior, path or None, default=None
        The source prior of every column (e.g. :func:`~skkprior.learn_prior`); a path is
        loaded safely; None is ``N(0, weight_decay^-1 I)``. The head always gets
        ``N(0, weight_decay^-1 I)``.
    lateral_layers : list of str or None, default=None
        Names (in the column module) of the Linear/Conv2d layers with lateral connections.
        None: every one but the first and the head. ``[]``: independent columns.
    weight_decay : float, default=1.0
        ``delta``: precision of the isotropic prior (``prior=None``) and of every head.
    prior_scale, likelihood_scale, temperature : float, default=1.0
        ``alpha``, ``beta``, ``tau`` of each new column's posterior (starting values for
        ``scaling="pac-bayes"``); ``alpha / beta`` also weighs the prior term of the MAP loss.
    scaling : {"validation", "marglik", "pac-bayes", "fixed"}, default="validation"
        How each new column's ``(alpha, beta, tau)`` are chosen, as in
        :class:`~skkprior.KroneckerPriorClassifier`: on a grid (``alpha`` times 1, 10, 100,
        1000, ``tau`` times 1, 0.1, 0.01) by the predictive NLL of a held-out
        ``validation_fraction`` of the task's data (the column is trained on the rest; the
        earlier columns at their means; too few data fall back to the training data); ``alpha``
        by the Laplace marginal likelihood of the task's training data
        (:func:`~skkprior.tuning.tune_marglik`); by the paper's PAC-Bayes objective (Catoni, on
        the task's training data); or kept as given.
    validation_fraction : float, default=0.1
        Held-out fraction for ``scaling="validation"``.
    sample_earlier : {"predict", "train+predict", "never"}, default="predict"
        Whether the frozen columns are drawn from their posteriors at prediction (together
        with the task's column, in one batched pass), also during training (one draw per
        mini-batch), or kept at their means.
    fisher : {"mc", "exact", "empirical"}, default="mc"
        Fisher type of the curvature.
    predictive : {"mc", "map"}, default="mc"
        Monte-Carlo model average over ``n_samples`` draws, or the MAP network.
    n_samples : int, default=100
    max_epochs : int, default=30
    lr : float, default=1e-2
    batch_size : int, default=64
    optimizer : torch.optim.Optimizer class, default=torch.optim.Adam
    callbacks : list of skorch callbacks, optional
    device : str, default="auto"
    random_state : int, RandomState or None, default=None
        Drives each column's initialization, shuffling, Fisher labels and every draw (local
        generators; a task's draws depend only on this seed and the task's index).
    verbose : int, default=0
    **module_kwargs
        ``module__<name>`` keywords for the module's constructor.

    Attributes
    ----------
    network_ : nn.Module
        All columns and laterals (see "Parameter names" in :mod:`skkprior.progressive`).
    tasks_ : list
        Task identifiers in the order learned.
    task_classes_ : dict
        Task identifier to that task's classes.
    classes_ : ndarray
        The classes of the default task, the last one learned (what ``predict`` returns
        without ``task``).
    priors_, posteriors_ : list of KroneckerPrior, list of KroneckerPosterior
        Per task, the prior and the Laplace posterior of its new column (and laterals).
    kl_ : list of float
        Per task, ``KL(posterior || prior)`` of its new column.
    lateral_layers_ : tuple of str
        The lateral layers, in call order.
    head_ : str
        Name of the head layer in the column module.
    history_ : list of dict
        skorch's training history of the last task (``histories_``: of every task).
    n_features_in_ : int
    n_tasks_ : int
    device_ : torch.device

    Notes
    -----
    ``partial_fit`` is one *task* per call: every call adds a column. ``fit`` learns one task
    from scratch (``fit(X, y)`` equals ``partial_fit(X, y)`` on a fresh estimator). Unlike
    scikit-learn's incremental classifiers, ``classes`` names the labels of *this* task only
    (default: those present in ``y``): every task has its own head.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.datasets import load_digits
    >>> X, y = load_digits(return_X_y=True)
    >>> X = X / 16.0
    >>> clf = ProgressivePriorClassifier(module__hidden_sizes=(16, 16), scaling="fixed", temperature=0.01,
    ...                                  max_epochs=10, n_samples=10, device="cpu", random_state=0)
    >>> first = np.isin(y, [0, 1])
    >>> clf.partial_fit(X[first], y[first], task="0 vs 1").lateral_layers_
    ('net.2',)
    >>> before = clf.predict_proba(X[first], task="0 vs 1")
    >>> second = np.isin(y, [2, 3])
    >>> clf.partial_fit(X[second], y[second], task="2 vs 3").score(X[second], y[second]) > 0.9
    True
    >>> bool((clf.predict_proba(X[first], task="0 vs 1") == before).all())   # no forgetting
    True
    >>> clf.tasks_, clf.classes_.tolist()
    (['0 vs 1', '2 vs 3'], [2, 3])
    """

    _parameter_constraints = {
        **_BaseKronecker._parameter_constraints,
        "lateral_layers": _Anything("None or a list of layer names (str)", _is_lateral_spec),
        "prior_scale": _Positive(),
        "likelihood_scale": _Positive(),
        "temperature": _Positive(),
        "scaling": _Options("validation", "marglik", "pac-bayes", "fixed"),
        "validation_fraction": _OpenUnit(),
        "sample_earlier": _Options("predict", "train+predict", "never"),
        "predictive": _Options("mc", "map"),
    }

    def __init__(self, module: Any = None, *, prior: Any = None, lateral_layers: Any = None,
                 weight_decay: float = 1.0, prior_scale: float = 1.0, likelihood_scale: float = 1.0,
                 temperature: float = 1.0, scaling: str = "validation", validation_fraction: float = 0.1,
                 sample_earlier: str = "predict",
                 fisher: str = "mc", predictive: str = "mc", n_samples: int = 100, max_epochs: int = 30,
                 lr: float = 1e-2, batch_size: int = 64, optimizer: Any = torch.optim.Adam,
                 callbacks: Any = None, device: str = "auto", random_state: Any = None, verbose: int = 0,
                 **module_kwargs: Any) -> None:
        self.module = module
        self.prior = prior
        self.lateral_layers = lateral_layers
        self.weight_decay = weight_decay
        self.prior_scale = prior_scale
        self.likelihood_scale = likelihood_scale
        self.temperature = temperature
        self.scaling = scaling
        self.validation_fraction = validation_fraction
        self.sample_earlier = sample_earlier
        self.fisher = fisher
        self.predictive = predictive
        self.n_samples = n_samples
        self.max_epochs = max_epochs
        self.lr = lr
        self.batch_size = batch_size
        self.optimizer = optimizer
        self.callbacks = callbacks
        self.device = device
        self.random_state = random_state
        self.verbose = verbose
        for key, value in module_kwargs.items():
            setattr(self, key, value)

    # -- fitting ---------------------------------------------------------------------------------------
    def fit(self, X: Any, y: Any) -> "ProgressivePriorClassifier":
        """Learn one task from scratch: one column, task identifier 0.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or (n_samples, *input_shape)
        y : array-like of shape (n_samples,)

        Returns
        -------
        self
        """
        self._reset()
        return self.partial_fit(X, y)

    def partial_fit(self, X: Any, y: Any, classes: Any = None, task: Hashable = None) -> "ProgressivePriorClassifier":
        """Learn one more *task* (not one epoch): add a column and train it.

        Parameters
        ----------
        X : array-like
            The task's inputs (same shape of inputs for every task).
        y : array-like of shape (n_samples,)
        classes : array-like, optional
            The labels of this task's head (default: those in ``y``); at least two.
        task : hashable, optional
            An identifier for the task (default: its index, 0, 1, ...); must be new.

        Returns
        -------
        self
        """
        first = not hasattr(self, "tasks_")
        if first:
            self._validate_hyperparameters()
            X, y = self._check_X_y(X, y, reset=True)
        else:
            check_is_fitted(self)
            X, y = self._check_X_y(X, y, reset=False)
        task_id = self._check_task_id(task, [] if first else self.tasks_)
        task_classes = self._check_task_classes(y, classes)
        if first:
            self.random_seed_ = _seed_from(self.random_state)
            self.device_ = _resolve_device(self.device)
            self.source_prior_ = (KroneckerPrior.load(self.prior) if isinstance(self.prior, (str, os.PathLike))
                                  else self.prior)
        try:
            self._add_task(task_id, task_classes, X, y, first)
        except BaseException:
            if first:
                self._reset()
            raise
        return self

    def _reset(self) -> None:
        for key in [k for k in vars(self) if k.endswith("_") and not k.startswith("__")]:
            delattr(self, key)

    def _check_task_id(self, task: Any, known: list) -> Hashable:
        if task is None:
            task = len(known)
            while task in known:
                task += 1
            return task
        try:
            hash(task)
        except TypeError:
            raise TypeError(error_message("task", "a hashable identifier (an int or a str)",
                                          type(task).__name__, "Pass task=2 or task='fashion'.")) from None
        if task in known:
            raise ValueError(error_message("task", f"a new identifier (not one of {known})", repr(task),
                                           "Each partial_fit call adds a column for a new task; a learned "
                                           "task's column is frozen and cannot be retrained."))
        return task

    def _check_task_classes(self, y: np.ndarray, classes: Any) -> np.ndarray:
        task_classes = np.unique(y) if classes is None else np.unique(np.asarray(classes))
        self._check_two_classes(task_classes)
        unseen = np.setdiff1d(np.unique(y), task_classes)
        if unseen.size:
            raise ValueError(error_message("labels of y", f"among the task's classes {task_classes.tolist()}",
                                           f"unseen labels {unseen.tolist()}",
                                           "Pass every label of this task in `classes`, or omit it."))
        return task_classes

    def _resolve_lateral_layers(self, structure: _Structure) -> tuple[str, ...]:
        if self.lateral_layers is None:
            chosen = [name for name in structure.layers if name not in (structure.first, structure.head)]
            if not chosen:
                logger.warning("ProgressivePriorClassifier: the network has no Linear/Conv2d layer between "
                               "the first and the head, so the columns get no lateral connections")
            return tuple(chosen)
        unknown = [name for name in self.lateral_layers if name not in structure.layers]
        if unknown:
            raise ValueError(error_message("lateral_layers", f"names among the Linear/Conv2d layers "
                                           f"{list(structure.layers)}", list(self.lateral_layers),
                                           f"Unknown: {unknown}."))
        if structure.head in self.lateral_layers:
            raise ValueError(error_message("lateral_layers", "layers other than the head", list(self.lateral_layers),
                                           f"'{structure.head}' is the head: its size follows each task's "
                                           "classes, so no earlier column's posterior can be its prior."))
        if len(set(self.lateral_layers)) != len(self.lateral_layers):
            raise ValueError(error_message("lateral_layers", "distinct names", list(self.lateral_layers)))
        return tuple(name for name in structure.layers if name in self.lateral_layers)

    def _check_same_layers(self, module: nn.Module, structure: _Structure) -> None:
        if structure.layers != self._structure_.layers:
            raise ValueError(error_message("the network of the new task", f"the layers {list(self._structure_.layers)} "
                                           "of the first task's network", list(structure.layers),
                                           "Every column is the same architecture; only the head may change size."))
        first = self.network_.columns[0]
        for name in self.lateral_layers_:
            new, old = module.get_submodule(name), first.get_submodule(name)
            if new.weight.shape != old.weight.shape or (new.bias is None) != (old.bias is None):
                raise ValueError(error_message(f"lateral layer '{name}' of the new task's network",
                                               f"the shape of the first task's, {tuple(old.weight.shape)}",
                                               tuple(new.weight.shape),
                                               "Lateral layers must have the same shape in every column."))

    def _source_for(self, module: nn.Module, head: str) -> KroneckerPrior:
        """The source prior matched to one column, its head ``N(0, weight_decay^-1 I)``."""
        prior = self.source_prior_
        if prior is None:
            from .laplace import isotropic_prior

            prior = isotropic_prior(module, weight_decay=self.weight_decay)
        matched = prior.match(module, head=head)
        groups = []
        for g in matched:
            if g.name == head:
                g = _zero_isotropic_layer_group(g.layer, g.parameter_shapes, float(self.weight_decay), g.mean.device)
            groups.append(g)
        return matched._new(groups, head=head)

    def _task_prior(self, k: int, source: KroneckerPrior) -> KroneckerPrior:
        """Prior of column ``k``: the source prior on its layers, earlier posteriors on its laterals."""
        net = self.network_
        groups = [_renamed(g, "", f"columns.{k}") for g in source]
        origin: dict[str, str] = {}
        nkp: dict[str, float] = {}
        for j in range(k):
            for i, name in enumerate(self.lateral_layers_):
                src_name = f"columns.{j}.{name}" if name else f"columns.{j}"
                g = self.lateral_sources_[j].groups[src_name]
                target = f"laterals.{k}.{j}.{i}"
                groups.append(_renamed(g, src_name, target))
                origin[target] = src_name
                nkp[target] = float(self.lateral_sources_[j].metadata.get("nkp_error", {}).get(src_name, 0.0))
        meta = {**source.metadata, "head": f"columns.{k}.{self.head_}", "task_index": k,
                "lateral_origin": origin, "nkp_error": {**{f"columns.{k}.{n}": v for n, v in
                                                           source.metadata.get("nkp_error", {}).items()}, **nkp}}
        return KroneckerPrior(groups, meta).match(net)

    def _add_task(self, task_id: Hashable, classes: np.ndarray, X: np.ndarray, y: np.ndarray, first: bool) -> None:
        k = 0 if first else len(self.tasks_)
        seed = self.random_seed_ + _TASK_SEED_STRIDE * k
        y_enc = LabelEncoder().fit(classes).transform(y).astype(np.int64)
        X_fit, y_fit, X_val, y_val = self._validation_split(X, y_enc, seed)
        module = self._build_module(self.n_features_in_, len(classes), seed).to(self.device_)
        # the data in the dtype of the column's parameters (float32 or float64; others: a clear error)
        X, X_fit, X_val = (self._module_input(a, module) for a in (X, X_fit, X_val))
        graph, structure = _trace_column(module)
        if first:
            self._structure_ = structure
            self.lateral_layers_ = self._resolve_lateral_layers(structure)
            self.head_ = structure.head
            self.network_ = _ProgressiveNet(self.lateral_layers_).to(self.device_)
            self.tasks_, self.task_classes_ = [], {}
            self.priors_, self.posteriors_, self.kl_, self.histories_ = [], [], [], []
            self.lateral_sources_ = []
        else:
            self._check_same_layers(module, structure)
        source = self._source_for(module, structure.head).to(self.device_)
        self._init_at_prior_mean(module, source)
        net = self.network_
        net.add_column(module, graph)
        try:
            net.active = k
            self._probe(module, graph, X, len(classes))
            prior = self._task_prior(k, source)
            weight = self.prior_scale / self.likelihood_scale
            n = len(y_fit)

            def loss(ce: torch.Tensor, _module: nn.Module) -> torch.Tensor:
                return ce + weight * prior.quadratic(net).to(ce.dtype) / (2.0 * n)

            trained: nn.Module = net
            if self.sample_earlier == "train+predict" and k > 0:
                trained = _SampledEarlier(net, self._joint_gaussian(k - 1),
                                          torch.Generator(device=self.device_).manual_seed(seed + 5))
            history = self._train(trained, X_fit, y_fit, loss, seed, self.device_)
            net.eval()
            curvature = self._curvature(net, X_fit, y_fit, seed, self.device_)
            post = given = posterior(prior, curvature, net, prior_scale=self.prior_scale,
                                     likelihood_scale=self.likelihood_scale, temperature=self.temperature)
            if self.scaling == "pac-bayes":
                post = tune_pac_bayes(post, nll_sum=curvature.nll_sum, n=n, objective="catoni").posterior
            elif self.scaling == "marglik":
                post = tune_marglik(post, nll_sum=curvature.nll_sum).posterior
            elif self.scaling == "validation":
                gen = torch.Generator(device=self.device_).manual_seed(seed + 3)
                post = tune_validation(post, net, torch.from_numpy(X_val), torch.from_numpy(y_val),
                                       prior_scales=[self.prior_scale * g for g in _VALIDATION_PRIOR_GRID],
                                       temperatures=[self.temperature * g for g in _VALIDATION_TEMPERATURE_GRID],
                                       n_samples=min(self.n_samples, 30), generator=gen).posterior
            kl = float(post.kl_to_prior().total)
            lateral_source = None
            if self.lateral_layers_:
                keep = [f"columns.{k}.{name}" for name in self.lateral_layers_]
                compressed = given.as_prior()
                lateral_source = compressed._new([compressed.groups[name] for name in keep])
        except BaseException:
            net.pop_column()
            raise
        net.freeze(k)
        self.tasks_.append(task_id)
        self.task_classes_[task_id] = classes
        self.classes_ = classes
        self.priors_.append(prior)
        self.posteriors_.append(post)
        self.kl_.append(kl)
        self.histories_.append(history)
        self.history_ = history
        self.lateral_sources_.append(lateral_source)
        self.n_tasks_ = len(self.tasks_)
        logger.info("progressive: task %r (column %d) learned, KL of the new column %.4g", task_id, k, kl)

    def _validation_split(self, X: np.ndarray, y: np.ndarray,
                          seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(X_fit, y_fit, X_val, y_val)``: a stratified hold-out for ``scaling="validation"``."""
        if self.scaling != "validation":
            return X, y, X, y
        from sklearn.model_selection import train_test_split

        n_val = int(np.ceil(self.validation_fraction * len(y)))
        counts = np.bincount(y)
        if n_val >= 2 * len(counts) and len(y) - n_val >= 2 * len(counts) and counts.min() >= 2:
            X_fit, X_val, y_fit, y_val = train_test_split(X, y, test_size=n_val, random_state=seed, stratify=y)
            return X_fit, y_fit, X_val, y_val
        logger.warning("scaling='validation': %d samples are too few to hold out a validation set; "
                       "the scales are chosen on the training data", len(y))
        return X, y, X, y

    def _probe(self, module: nn.Module, graph: fx.Graph, X: np.ndarray, n_classes: int) -> None:
        """Check the traced graph against the column's own forward and the logits' shape."""
        x = torch.from_numpy(X[:1]).to(self.device_)  # X is already in the column's dtype
        modes = [(m, m.training) for m in self.network_.modules()]
        self.network_.eval()
        try:
            with torch.no_grad():
                try:
                    direct = module(x)
                    traced = _ColumnRunner(module, graph, lambda t, a, o: o).run(x)
                    out = self.network_(x)
                except (RuntimeError, ValueError, IndexError, TypeError) as exc:
                    fix = (f"The network {type(module).__name__} raised {type(exc).__name__}: {str(exc)[:200]}. "
                           "Make its first layer match one example of X (n_features_in_="
                           f"{self.n_features_in_}), or reshape X.")
                    raise ValueError(error_message("X", "inputs of the shape the network accepts", describe(X),
                                                   fix)) from exc
        finally:
            for m, mode in modes:
                m.training = mode
        if not isinstance(direct, torch.Tensor) or not torch.allclose(direct, traced, rtol=1e-4, atol=1e-5):
            raise ValueError(error_message(f"the traced forward of {type(module).__name__}",
                                           "equal to its forward()", "a different result on the first example",
                                           "The forward depends on something torch.fx cannot record (input-"
                                           "dependent control flow, global state). " + _WRAP_FIX))
        if out.ndim != 2 or out.shape[1] != n_classes:
            raise ValueError(error_message(f"the output of {type(module).__name__} for this task",
                                           f"logits of shape (n, {n_classes}) ({n_classes} classes)",
                                           describe(out), "Pass a module class that accepts n_classes, "
                                           "or an instance whose head matches every task's classes."))

    # -- prediction ---------------------------------------------------------------------------------------
    def _task_index(self, task: Hashable) -> int:
        check_is_fitted(self)
        if task is None:
            return len(self.tasks_) - 1
        try:
            return self.tasks_.index(task)
        except ValueError:
            raise ValueError(error_message("task", f"one of the learned tasks {self.tasks_}", repr(task),
                                           "Learn it first with partial_fit(X, y, task=...).")) from None

    def _joint_gaussian(self, t: int) -> LayerwiseGaussian:
        """The posteriors of columns ``0..t`` as one Gaussian (drawn in one batched pass)."""
        return LayerwiseGaussian([g for post in self.posteriors_[:t + 1] for g in post])

    def predictive_gaussian(self, task: Hashable = None) -> LayerwiseGaussian:
        """The Gaussian that ``predict_proba(X, task)`` draws from (``predictive="mc"``).

        The posteriors of the task's column and, unless ``sample_earlier="never"``, of every
        earlier column (with their laterals).

        Parameters
        ----------
        task : hashable, optional
            A learned task (default: the last one).

        Returns
        -------
        LayerwiseGaussian
        """
        t = self._task_index(task)
        if self.sample_earlier == "never":
            return self.posteriors_[t]
        return self._joint_gaussian(t)

    def predict_proba(self, X: Any, task: Hashable = None) -> np.ndarray:
        """Class probabilities of a task, float64 of shape ``(n_samples, n_task_classes)``.

        Parameters
        ----------
        X : array-like
        task : hashable, optional
            A learned task (default: the last one); the columns are those of ``task_classes_[task]``.

        Returns
        -------
        ndarray
            ``predictive="mc"``: the model average over ``n_samples`` joint draws of the task's
            column and the earlier ones (one batched pass; seeded by ``random_state`` and the
            task's index, so the result never changes when later tasks are learned);
            ``"map"``: every column at its MAP.
        """
        from .predictive import predict_proba_map, predict_proba_mc

        t = self._task_index(task)
        Xc = self._module_input(self._check_X(X, reset=False), self.network_)
        Xt = torch.from_numpy(Xc)
        net = self.network_
        previous = net.active
        net.active = t
        try:
            if self.predictive == "map":
                proba = predict_proba_map(net, Xt, batch_size=max(self.batch_size, 256), device=self.device_)
            else:
                gen = torch.Generator(device=self.device_).manual_seed(self.random_seed_ + 2 + _TASK_SEED_STRIDE * t)
                proba = predict_proba_mc(net, self.predictive_gaussian(self.tasks_[t]), Xt, n_samples=self.n_samples,
                                         generator=gen, batch_size=max(self.batch_size, 256))
        finally:
            net.active = previous
        return proba.detach().to("cpu", torch.float64).numpy()

    def predict(self, X: Any, task: Hashable = None) -> np.ndarray:
        """Labels of a task's classes with the highest predictive probability.

        Parameters
        ----------
        X : array-like
        task : hashable, optional
            A learned task (default: the last one).

        Returns
        -------
        ndarray of shape (n_samples,)
        """
        t = self._task_index(task)
        classes = self.task_classes_[self.tasks_[t]]
        return classes[np.argmax(self.predict_proba(X, task=self.tasks_[t]), axis=1)]

    def score(self, X: Any, y: Any, sample_weight: Any = None, task: Hashable = None) -> float:
        """Accuracy on a task.

        Parameters
        ----------
        X : array-like
        y : array-like of shape (n_samples,)
        sample_weight : array-like, optional
        task : hashable, optional
            A learned task (default: the last one).

        Returns
        -------
        float
        """
        return float(accuracy_score(y, self.predict(X, task=task), sample_weight=sample_weight))

    # -- pickling: a fitted estimator pickled on a GPU loads on a CPU-only machine ----------------------
    _DEVICE_LISTS = ("priors_", "posteriors_", "lateral_sources_")

    def __getstate__(self) -> dict[str, Any]:
        state = super(_BaseKronecker, self).__getstate__()
        device = getattr(self, "device_", None)
        if device is not None and torch.device(device).type != "cpu":
            state["network_"] = copy.deepcopy(state["network_"]).to("cpu")
            for key in self._DEVICE_LISTS:
                state[key] = [None if v is None else v.to("cpu") for v in state[key]]
            if state.get("source_prior_") is not None:
                state["source_prior_"] = state["source_prior_"].to("cpu")
            state["_pickled_device"] = str(device)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        pickled_device = state.pop("_pickled_device", None)
        super(_BaseKronecker, self).__setstate__(state)
        if pickled_device is None:
            return
        target = torch.device(pickled_device)
        if target.type == "cuda" and torch.cuda.is_available():
            self.network_ = self.network_.to(target)
            for key in self._DEVICE_LISTS:
                setattr(self, key, [None if v is None else v.to(target) for v in getattr(self, key)])
            if getattr(self, "source_prior_", None) is not None:
                self.source_prior_ = self.source_prior_.to(target)
            self.device_ = target
        else:
            logger.warning("estimator pickled on %s loaded on the CPU", pickled_device)
            self.device_ = torch.device("cpu")

