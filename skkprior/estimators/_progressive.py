"""``ProgressivePriorClassifier``: the task pipeline on a growing network of columns (see :mod:`skkprior.progressive`)."""

from __future__ import annotations

import logging
import os
from typing import Any, Hashable, Sequence

import numpy as np
import torch
from sklearn.metrics import accuracy_score
from sklearn.preprocessing import LabelEncoder
from sklearn.utils.validation import check_is_fitted
from torch import fx, nn

from .._columns import WRAP_FIX, ColumnRunner, ProgressiveNet, SampledEarlier, Structure, renamed, trace_column
from .._validation import describe, error_message
from ..gaussian import LayerwiseGaussian
from ..laplace import KroneckerPrior, isotropic_prior, zero_isotropic_layer_group
from ..predictive import predict_proba_map, predict_proba_mc
from ._base import Anything, BaseKroneckerEstimator, OpenUnit, Options, Positive

logger = logging.getLogger("skkprior.progressive")


def _is_lateral_spec(v: Any) -> bool:
    return v is None or (isinstance(v, (list, tuple)) and all(isinstance(s, str) for s in v))


# --------------------------------------------------------------------------------------------
# the estimator
# --------------------------------------------------------------------------------------------
class ProgressivePriorClassifier(BaseKroneckerEstimator):
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
        :class:`~skkprior.KroneckerPriorClassifier`, on the task's data (the validation grid
        with the earlier columns at their means).
    validation_fraction : float, default=0.1
        Held-out fraction for ``scaling="validation"``.
    sample_earlier : {"predict", "train+predict", "never"}, default="predict"
        Whether the frozen columns are drawn from their posteriors at prediction (together
        with the task's column, in one batched pass), also during training (one draw per
        mini-batch), or kept at their means.
    fisher : {"mc", "exact", "empirical"}, default="mc"
        Fisher type of the curvature.
    curvature : {"kfac", "kfoc", "diag"}, default="kfac"
        Structure of the new column's curvature, as in :class:`~skkprior.KroneckerPriorClassifier`.
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
        Entropy of the named seed streams; a task's draws depend only on it and the task's index.
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
        **BaseKroneckerEstimator._parameter_constraints,
        "lateral_layers": Anything("None or a list of layer names (str)", _is_lateral_spec),
        "prior_scale": Positive(),
        "likelihood_scale": Positive(),
        "temperature": Positive(),
        "scaling": Options("validation", "marglik", "pac-bayes", "fixed"),
        "validation_fraction": OpenUnit(),
        "sample_earlier": Options("predict", "train+predict", "never"),
        "predictive": Options("mc", "map"),
    }

    def __init__(self, module: type[nn.Module] | nn.Module | None = None, *,
                 prior: KroneckerPrior | str | os.PathLike | None = None,
                 lateral_layers: Sequence[str] | None = None,
                 weight_decay: float = 1.0, prior_scale: float = 1.0, likelihood_scale: float = 1.0,
                 temperature: float = 1.0, scaling: str = "validation", validation_fraction: float = 0.1,
                 sample_earlier: str = "predict",
                 fisher: str = "mc", curvature: str = "kfac", predictive: str = "mc", n_samples: int = 100, max_epochs: int = 30,
                 lr: float = 1e-2, batch_size: int = 64, optimizer: type[torch.optim.Optimizer] = torch.optim.Adam,
                 callbacks: list | None = None, device: str = "auto",
                 random_state: int | np.random.RandomState | None = None, verbose: int = 0,
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
        self.curvature = curvature
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
        """Learn one task from scratch: one column, task identifier 0; equal to ``partial_fit(X, y)`` on a fresh estimator.

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
        try:
            if first:
                X, y = self._start(X, y)
            else:
                check_is_fitted(self)
                X, y = self._check_X_y(X, y, reset=False)
            task_id = self._check_task_id(task, [] if first else self.tasks_)
            task_classes = self._check_task_classes(y, classes)
            if first:
                self.source_prior_ = (KroneckerPrior.load(self.prior) if isinstance(self.prior, (str, os.PathLike))
                                      else self.prior)
            self._add_task(task_id, task_classes, X, y, first)
        except BaseException:
            if first:
                self._reset()
            raise
        return self

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

    def _resolve_lateral_layers(self, structure: Structure) -> tuple[str, ...]:
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

    def _check_same_layers(self, module: nn.Module, structure: Structure) -> None:
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
            prior = isotropic_prior(module, weight_decay=self.weight_decay)
        matched = prior.match(module, head=head)
        groups = []
        for g in matched:
            if g.name == head:
                g = zero_isotropic_layer_group(g.layer, g.parameter_shapes, float(self.weight_decay), g.mean.device)
            groups.append(g)
        return matched._new(groups, head=head)

    def _task_prior(self, k: int, source: KroneckerPrior) -> KroneckerPrior:
        """Prior of column ``k``: the source prior on its layers, earlier posteriors on its laterals."""
        net = self.network_
        groups = [renamed(g, "", f"columns.{k}") for g in source]
        origin: dict[str, str] = {}
        nkp: dict[str, float] = {}
        for j in range(k):
            for i, name in enumerate(self.lateral_layers_):
                src_name = f"columns.{j}.{name}" if name else f"columns.{j}"
                g = self.lateral_sources_[j].groups[src_name]
                target = f"laterals.{k}.{j}.{i}"
                groups.append(renamed(g, src_name, target))
                origin[target] = src_name
                nkp[target] = float(self.lateral_sources_[j].metadata.get("nkp_error", {}).get(src_name, 0.0))
        meta = {**source.metadata, "head": f"columns.{k}.{self.head_}", "task_index": k,
                "lateral_origin": origin, "nkp_error": {**{f"columns.{k}.{n}": v for n, v in
                                                           source.metadata.get("nkp_error", {}).items()}, **nkp}}
        return KroneckerPrior(groups, meta).match(net)

    def _add_task(self, task_id: Hashable, classes: np.ndarray, X: np.ndarray, y: np.ndarray, first: bool) -> None:
        k = 0 if first else len(self.tasks_)
        y_enc = LabelEncoder().fit(classes).transform(y).astype(np.int64)
        module = self._build_module(self.n_features_in_, len(classes), self._seeds.seed("init", k)).to(self.device_)
        X = self._module_input(X, module)  # the column's dtype (float32 or float64; others: a clear error)
        graph, structure = trace_column(module)
        if first:
            self._structure_ = structure
            self.lateral_layers_ = self._resolve_lateral_layers(structure)
            self.head_ = structure.head
            self.network_ = ProgressiveNet(self.lateral_layers_).to(self.device_)
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
            trained: nn.Module = net
            if self.sample_earlier == "train+predict" and k > 0:
                trained = SampledEarlier(net, self._joint_gaussian(k - 1),
                                         self._seeds.generator("earlier", k, device=self.device_))
            # the prior term is the quadratic of the whole network (columns and laterals), also when
            # skorch trains the sampling wrapper
            alpha, beta, _ = self._given_scales()
            fit = self._learn_task(net, prior, X, y_enc, k, trained=trained,
                                   loss=lambda n: self._map_loss(prior, n, alpha / beta, model=net))
            kl = float(fit.posterior.kl_to_prior().total)
            lateral_source = None
            if self.lateral_layers_:
                keep = [f"columns.{k}.{name}" for name in self.lateral_layers_]
                compressed = self._handover(fit.laplace)
                lateral_source = compressed._new([compressed.groups[name] for name in keep])
        except BaseException:
            net.pop_column()
            raise
        net.freeze(k)
        self.tasks_.append(task_id)
        self.task_classes_[task_id] = classes
        self.classes_ = classes
        self.priors_.append(prior)
        self.posteriors_.append(fit.posterior)
        self.kl_.append(kl)
        self.histories_.append(fit.history)
        self.history_ = fit.history
        self.lateral_sources_.append(lateral_source)
        self.n_tasks_ = len(self.tasks_)
        logger.info("progressive: task %r (column %d) learned, KL of the new column %.4g", task_id, k, kl)

    def _probe(self, module: nn.Module, graph: fx.Graph, X: np.ndarray, n_classes: int) -> None:
        """Check the traced graph against the column's own forward and the logits' shape."""
        x = torch.from_numpy(X[:1]).to(self.device_)  # X is already in the column's dtype
        modes = [(m, m.training) for m in self.network_.modules()]
        self.network_.eval()
        try:
            with torch.no_grad():
                try:
                    direct = module(x)
                    traced = ColumnRunner(module, graph, lambda t, a, o: o).run(x)
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
                                           "dependent control flow, global state). " + WRAP_FIX))
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
                gen = self._seeds.generator("predict", t, device=self.device_)
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

    # -- pickling: the base class moves these to the CPU and back ---------------------------------------
    _device_attributes = ("network_", "source_prior_")
    _device_lists = ("priors_", "posteriors_", "lateral_sources_")
