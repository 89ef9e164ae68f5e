"""The task pipeline shared by every estimator of :mod:`skkprior.estimators`.

One task is: validate, split off validation data, train the MAP under the prior (skorch), the
curvature at the MAP, the Laplace posterior, its scales (:func:`scale_posterior`, the one
dispatch of ``scaling``), and the hand-over of the posterior as the next task's prior.
"""

from __future__ import annotations

import copy
import inspect
import logging
import math
import os
from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import Any, Callable

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.model_selection import StratifiedKFold, train_test_split
from sklearn.preprocessing import LabelEncoder
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data
from skorch import NeuralNet
from skorch.callbacks import ProgressBar
from torch import nn

from .._validation import check_device, describe, error_message
from ..curvature import Curvature, kfac
from ..laplace import KroneckerPosterior, KroneckerPrior, isotropic_prior, posterior
from ..networks import MLP
from ..predictive import predict_proba_linearized, predict_proba_map, predict_proba_mc
from ..tuning import tune_marglik, tune_pac_bayes, tune_validation

logger = logging.getLogger("skkprior.estimators")


# --------------------------------------------------------------------------------------------
# declarative parameter validation
# --------------------------------------------------------------------------------------------
class Positive:
    def __init__(self, kind: type = Real, allow_zero: bool = False) -> None:
        self.kind, self.allow_zero = kind, allow_zero

    def check(self, v: Any) -> bool:
        if isinstance(v, bool) or not isinstance(v, self.kind):
            return False
        return math.isfinite(float(v)) and (float(v) >= 0 if self.allow_zero else float(v) > 0)

    def __str__(self) -> str:
        what = "an integer" if self.kind is Integral else "a finite number"
        return f"{what} {'>= 0' if self.allow_zero else '> 0'}"


class OpenUnit:
    def check(self, v: Any) -> bool:
        return isinstance(v, Real) and not isinstance(v, bool) and 0.0 < float(v) < 1.0

    def __str__(self) -> str:
        return "a number in the open interval (0, 1)"


class Options:
    def __init__(self, *options: Any) -> None:
        self.options = options

    def check(self, v: Any) -> bool:
        return any(v == o for o in self.options if o is not None) or (v is None and None in self.options)

    def __str__(self) -> str:
        return "one of " + ", ".join(repr(o) for o in self.options)


class Anything:
    def __init__(self, description: str, predicate: Any) -> None:
        self.description, self.predicate = description, predicate

    def check(self, v: Any) -> bool:
        return bool(self.predicate(v))

    def __str__(self) -> str:
        return self.description


def positive_sequence() -> Anything:
    """Constraint: None or a non-empty sequence of finite positive numbers."""
    return Anything("None or a non-empty sequence of positive numbers",
                     lambda v: v is None or (hasattr(v, "__len__") and len(v) > 0 and all(
                         isinstance(a, Real) and math.isfinite(a) and a > 0 for a in v)))


def _is_module_spec(v: Any) -> bool:
    return v is None or isinstance(v, nn.Module) or (inspect.isclass(v) and issubclass(v, nn.Module))


def _is_prior_spec(v: Any) -> bool:
    return v is None or isinstance(v, (KroneckerPrior, str, os.PathLike))


def _is_optimizer(v: Any) -> bool:
    return inspect.isclass(v) and issubclass(v, torch.optim.Optimizer)


def _is_device(v: Any) -> bool:
    if v == "auto":
        return True
    try:
        torch.device(v)
    except (TypeError, RuntimeError, ValueError):
        return False
    return True


def _is_callbacks(v: Any) -> bool:
    return v is None or (isinstance(v, (list, tuple)) and all(
        isinstance(c, tuple) or hasattr(c, "on_epoch_end") for c in v))


def _is_random_state(v: Any) -> bool:
    return v is None or (isinstance(v, Integral) and not isinstance(v, bool)) or isinstance(v, np.random.RandomState)



# --------------------------------------------------------------------------------------------
# the skorch engine
# --------------------------------------------------------------------------------------------
class PriorEngine(NeuralNet):
    """skorch's training loop; the loss is ``loss_term(mean CE, module)``."""

    loss_term: Callable[[torch.Tensor, nn.Module], torch.Tensor] | None = None

    def get_loss(self, y_pred, y_true, X=None, training=False):
        ce = super().get_loss(y_pred, y_true, X=X, training=training)
        loss = ce if self.loss_term is None else self.loss_term(ce, self.module_)
        if training and not bool(torch.isfinite(loss.detach()).all()):
            epoch = len(self.history)
            raise FloatingPointError(divergence_message(
                "the training loss", f"{float(loss.detach()):g} in epoch {epoch} of {self.max_epochs}",
                float(self.lr), int(self.max_epochs)))
        return loss


class TensorBatches:
    """skorch ``iterator_train``: shuffled mini-batches sliced from whole tensors.

    skorch's default ``DataLoader`` indexes and collates one example at a time, which costs
    more than the forward and backward pass of a small network; slicing whole tensors gives
    the same batches (same sampler semantics: a seeded permutation per epoch) much faster.
    """

    def __init__(self, dataset: Any, batch_size: int = 64, shuffle: bool = False,
                 generator: torch.Generator | None = None, **_: Any) -> None:
        self.X = torch.as_tensor(dataset.X)
        self.y = None if dataset.y is None else torch.as_tensor(dataset.y)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.generator = generator

    def __len__(self) -> int:
        return (len(self.X) + self.batch_size - 1) // self.batch_size

    def __iter__(self):
        n = len(self.X)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        for start in range(0, n, self.batch_size):
            idx = order[start:start + self.batch_size]
            yield self.X[idx], (None if self.y is None else self.y[idx])


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return check_device(device)


# parameter dtypes the estimators train in; the data are cast to the module's dtype
MODULE_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}


def module_dtype(module: nn.Module) -> torch.dtype:
    """The floating-point dtype of ``module``'s parameters (float32 or float64), or a clear error."""
    dtypes = {p.dtype for p in module.parameters() if p.is_floating_point()}
    if len(dtypes) > 1 or (dtypes and next(iter(dtypes)) not in MODULE_DTYPES):
        raise TypeError(error_message(f"the parameters of the module {type(module).__name__}",
                                      "all float32 or all float64", f"dtypes {sorted(str(d) for d in dtypes)}",
                                      "Convert the module with module.float() or module.double()."))
    return dtypes.pop() if dtypes else torch.float32


def divergence_message(what: str, got: str, lr: float, max_epochs: int) -> str:
    return error_message(what, "finite (training diverged)", got,
                         f"Lower the learning rate lr (now {lr:g}), train for fewer epochs (max_epochs, now "
                         f"{max_epochs}), or standardize X (e.g. sklearn's StandardScaler); a larger "
                         "weight_decay also keeps the weights bounded.")



# --------------------------------------------------------------------------------------------
# seeds: named streams of one SeedSequence
# --------------------------------------------------------------------------------------------
class SeedStreams:
    """Named, independent seed streams: children of one :class:`numpy.random.SeedSequence`.

    Stream ``name`` with indices ``i, j, ...`` is the child with ``spawn_key=(NAMES.index(name),
    i, j, ...)`` of ``SeedSequence(entropy)``, so it depends only on the entropy, its name and
    its indices (e.g. the task's index): never on how many other streams were used before.
    """

    NAMES = ("init", "shuffle", "train", "split", "curvature", "validation", "predict", "earlier",
             "select", "certify", "recertify", "folds", "prior_split", "select_subset")

    def __init__(self, entropy: int) -> None:
        self.entropy = int(entropy)

    def sequence(self, name: str, *index: int) -> np.random.SeedSequence:
        """The :class:`~numpy.random.SeedSequence` of stream ``name`` at ``index``."""
        if name not in self.NAMES:
            raise KeyError(error_message("the seed stream", f"one of {self.NAMES}", repr(name)))
        return np.random.SeedSequence(self.entropy, spawn_key=(self.NAMES.index(name), *map(int, index)))

    def seed(self, name: str, *index: int) -> int:
        """A 63-bit integer seed (for ``torch.manual_seed`` and torch generators)."""
        return int(self.sequence(name, *index).generate_state(1, np.uint64)[0] >> np.uint64(1))

    def seed32(self, name: str, *index: int) -> int:
        """A 32-bit integer seed (for scikit-learn's ``random_state``)."""
        return int(self.sequence(name, *index).generate_state(1, np.uint32)[0])

    def generator(self, name: str, *index: int, device: torch.device | str = "cpu") -> torch.Generator:
        """A torch generator on ``device`` seeded by stream ``name`` at ``index``."""
        return torch.Generator(device=device).manual_seed(self.seed(name, *index))


def seed_streams(random_state: Any) -> SeedStreams:
    """The seed streams of one fit: an int is the entropy itself, None fresh entropy, a RandomState draws it."""
    if random_state is None:
        return SeedStreams(np.random.SeedSequence().entropy)
    if isinstance(random_state, Integral) and not isinstance(random_state, bool):
        return SeedStreams(int(random_state))
    return SeedStreams(int(check_random_state(random_state).randint(0, 2**31 - 1)))


# --------------------------------------------------------------------------------------------
# the pieces of a task
# --------------------------------------------------------------------------------------------
# Relative grids of scaling="validation" (multiples of the given prior_scale and temperature).
VALIDATION_PRIOR_GRID = (1.0, 10.0, 100.0, 1000.0)
VALIDATION_TEMPERATURE_GRID = (1.0, 0.1, 0.01)


def validation_split(X: np.ndarray, y: np.ndarray, fraction: float,
                     seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(X_fit, y_fit, X_val, y_val)``: a stratified hold-out of ``fraction`` of the data.

    Too few data for two examples per class on both sides: a warning, and the training data
    serve as validation data.
    """
    n_val = int(math.ceil(fraction * len(y)))
    counts = np.bincount(y)
    if n_val >= 2 * len(counts) and len(y) - n_val >= 2 * len(counts) and counts.min() >= 2:
        X_fit, X_val, y_fit, y_val = train_test_split(X, y, test_size=n_val, random_state=seed, stratify=y)
        return X_fit, y_fit, X_val, y_val
    logger.warning("scaling='validation': %d samples are too few to hold out a validation "
                   "set; the scales are chosen on the training data", len(y))
    return X, y, X, y


# Multipliers of a learned prior's beta_0 (the weight of the source curvature) that scaling="cv"
# scores; 0 is the isotropic prior with the learned mean at the plain floor, N(theta_s, delta^-1 I)
# (alpha_0 = tau_0 = 1: a calibrated alpha_0 / tau_0 makes the floor ~100 times sharper, and then
# the family would not contain the isotropic prior it is compared with).
CV_SOURCE_WEIGHTS = (0.0, 0.01, 0.1, 1.0)


def cv_folds(y: np.ndarray, cv: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The ``(train, held-out)`` index pairs of ``scaling="cv"``: stratified, shuffled by ``seed``.

    ``min(cv, smallest class count)`` stratified folds when every class has at least two
    examples (so 2-shot data give 2 folds, each holding out one example per class). When a
    class has a single example (1-shot), no split keeps every class on both sides: then
    ``min(cv, n)`` folds spread the classes evenly over the held-out folds (the stratified
    assignment, each class in one fold), and a warning is logged: each held-out example's
    class is absent from its fold's training data, so the score rewards hedged predictions.
    """
    counts = np.bincount(y)
    counts = counts[counts > 0]
    if counts.min() >= 2:
        splitter = StratifiedKFold(n_splits=min(int(cv), int(counts.min())), shuffle=True, random_state=seed)
        return [(train, test) for train, test in splitter.split(np.zeros(len(y)), y)]
    n_splits = min(int(cv), len(y))
    logger.warning("scaling='cv': a class has a single example, so every held-out example's class is "
                   "missing from its fold's training data (%d folds over %d examples); the cross-validated "
                   "score then favours hedged predictions", n_splits, len(y))
    # class-balanced: the examples class by class (classes and examples shuffled), dealt round-robin
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(np.flatnonzero(y == c)) for c in rng.permutation(np.unique(y))])
    fold_of = np.empty(len(y), dtype=np.int64)
    fold_of[order] = np.arange(len(y)) % n_splits
    return [(np.flatnonzero(fold_of != f), np.flatnonzero(fold_of == f)) for f in range(n_splits)]


CV_SCORINGS = ("accuracy", "nll", "nll-1se")


def cv_choice(results: list[dict[str, Any]], scoring: str, *, n_held_out: int) -> int:
    """The index of the grid point ``scaling="cv"`` chooses from ``results`` (``cv_results_`` rows).

    ``scoring="accuracy"``: the most held-out examples classified correctly (counted, so equal
    accuracies tie exactly), ties broken by the lower mean held-out NLL; ``"nll"``: the lowest
    mean held-out NLL; ``"nll-1se"``: the lowest mean held-out NLL among the points whose
    held-out accuracy is within one standard error of the best, ``sqrt(a (1 - a) / n)`` for the
    best accuracy ``a`` over the ``n = n_held_out`` examples (the one-standard-error rule: the
    accuracy only excludes what is clearly worse, e.g. a near-uniform predictive, and the NLL,
    a smoother score, decides among the rest). Points whose predictive overflowed on a fold
    (infinite NLL) come last; remaining ties go to the first point in grid order.
    """
    if scoring not in CV_SCORINGS:
        raise ValueError(error_message("cv_scoring", f"one of {', '.join(map(repr, CV_SCORINGS))}", scoring))
    finite = [math.isfinite(r["mean_nll"]) for r in results]

    def correct(i: int) -> int:
        return round(results[i]["mean_accuracy"] * n_held_out) if finite[i] else -1

    if scoring == "nll-1se" and any(finite):
        best = max(correct(i) for i in range(len(results))) / n_held_out
        floor = best - math.sqrt(best * (1.0 - best) / n_held_out)
        # counted like the accuracy itself: at least ceil(floor * n) examples right (float-safe)
        needed = math.ceil(floor * n_held_out - 1e-9)
        return min((i for i in range(len(results)) if finite[i] and correct(i) >= needed),
                   key=lambda i: (results[i]["mean_nll"], i))

    def key(i: int) -> tuple[Any, ...]:
        if scoring == "nll":
            return (not finite[i], results[i]["mean_nll"], i)
        return (not finite[i], -correct(i), results[i]["mean_nll"], i)

    return min(range(len(results)), key=key)


def scale_posterior(post: KroneckerPosterior, scaling: str, *, model: nn.Module, curvature: Curvature, n: int,
                    X_val: np.ndarray, y_val: np.ndarray, prior_scale: float = 1.0, temperature: float = 1.0,
                    predictive: str = "mc", n_samples: int = 30, generator: torch.Generator | None = None,
                    objective: str = "catoni", delta: float = 0.025) -> KroneckerPosterior:
    """The posterior at the scales chosen by ``scaling``: the one dispatch every estimator uses.

    Parameters
    ----------
    post : KroneckerPosterior
        The Laplace posterior at the given scales.
    scaling : {"validation", "marglik", "pac-bayes", "fixed"}
        A grid of ``prior_scale`` times 1, 10, 100, 1000 and ``temperature`` times 1, 0.1, 0.01
        scored by the predictive NLL on ``(X_val, y_val)``; the Laplace marginal likelihood;
        the PAC-Bayes ``objective`` on ``n`` training examples; or ``post`` as given.
    model : nn.Module
        The MAP network.
    curvature : Curvature
        The curvature at the MAP (its ``nll_sum``).
    n : int
        Number of training examples.
    X_val, y_val : ndarray
        Validation data (``scaling="validation"``).
    prior_scale, temperature : float
        Centres of the validation grid.
    predictive : {"mc", "linearized", "map"}
        The estimator's predictive; the validation grid scores ``"linearized"`` as itself,
        everything else by the Monte-Carlo predictive with ``min(n_samples, 30)`` draws.
    n_samples : int
    generator : torch.Generator, optional
        Draws of the validation grid.
    objective : {"catoni", "mcallester"}
        PAC-Bayes objective.
    delta : float
        Failure probability of the PAC-Bayes objective.

    Returns
    -------
    KroneckerPosterior
    """
    if scaling == "pac-bayes":
        return tune_pac_bayes(post, nll_sum=curvature.nll_sum, n=n, delta=delta, objective=objective).posterior
    if scaling == "marglik":
        return tune_marglik(post, nll_sum=curvature.nll_sum).posterior
    if scaling == "validation":
        return tune_validation(post, model, torch.from_numpy(X_val), torch.from_numpy(y_val),
                               prior_scales=[prior_scale * g for g in VALIDATION_PRIOR_GRID],
                               temperatures=[temperature * g for g in VALIDATION_TEMPERATURE_GRID],
                               n_samples=min(n_samples, 30), generator=generator,
                               predictive="linearized" if predictive == "linearized" else "mc").posterior
    if scaling == "fixed":
        return post
    raise ValueError(error_message("scaling", "one of 'validation', 'marglik', 'pac-bayes', 'fixed'", scaling))


@dataclass
class TaskFit:
    """What the pipeline learned on one task."""

    history: list[dict[str, Any]]
    curvature: Curvature
    laplace: KroneckerPosterior  # at the given scales: the hand-over to the next task
    posterior: KroneckerPosterior  # at the scales chosen by ``scaling``: the predictive's
    prior: KroneckerPrior | None = None  # the prior trained under (scaling="cv": the chosen re-weighting)
    cv_results: list[dict[str, Any]] = field(default_factory=list)  # scaling="cv": every grid point
    scales: dict[str, Any] | None = None  # scaling="cv": the chosen grid point


# --------------------------------------------------------------------------------------------
# the base estimator
# --------------------------------------------------------------------------------------------
class BaseKroneckerEstimator(ClassifierMixin, BaseEstimator):
    """The task pipeline of every estimator; subclasses say only what differs.

    Subclasses set ``_parameter_constraints`` and ``__init__``; hooks: :meth:`_given_scales`,
    :meth:`_scaling`, :meth:`_pac_bayes_options`.
    """

    _parameter_constraints: dict[str, Any] = {
        "module": Anything("an nn.Module class, an nn.Module instance or None", _is_module_spec),
        "prior": Anything("a KroneckerPrior, a path to a prior file, or None", _is_prior_spec),
        "weight_decay": Positive(),
        "fisher": Options("mc", "exact", "empirical"),
        "curvature": Options("kfac", "kfoc", "diag"),
        "predictive": Options("mc", "map", "linearized"),
        "n_samples": Positive(Integral),
        "max_epochs": Positive(Integral, allow_zero=True),
        "lr": Positive(),
        "batch_size": Positive(Integral),
        "optimizer": Anything("a torch.optim.Optimizer subclass", _is_optimizer),
        "callbacks": Anything("None or a list of skorch callbacks", _is_callbacks),
        "device": Anything("'auto', 'cpu', 'cuda' or another torch device", _is_device),
        "random_state": Anything("None, an int or a numpy RandomState", _is_random_state),
        "verbose": Positive(Integral, allow_zero=True),
    }
    # fitted attributes that live on the device (moved to the CPU for pickling)
    _device_attributes: tuple[str, ...] = ("module_", "prior_", "posterior_", "curvature_")
    _device_lists: tuple[str, ...] = ()

    # -- hooks ----------------------------------------------------------------------------------------
    def _given_scales(self) -> tuple[float, float, float]:
        """``(alpha, beta, tau)`` of the Laplace posterior and of the hand-over."""
        return float(self.prior_scale), float(self.likelihood_scale), float(self.temperature)

    def _scaling(self) -> str:
        return self.scaling

    def _pac_bayes_options(self) -> dict[str, Any]:
        return {"objective": "catoni"}

    # -- seeds ----------------------------------------------------------------------------------------
    @property
    def _seeds(self) -> SeedStreams:
        return SeedStreams(self.random_seed_)

    # -- module__* parameters (skorch style) -----------------------------------------------------
    def _module_kwargs(self) -> dict[str, Any]:
        return {k[len("module__"):]: v for k, v in vars(self).items() if k.startswith("module__")}

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        params = super().get_params(deep=deep)
        params.update({k: v for k, v in vars(self).items() if k.startswith("module__")})
        return params

    def set_params(self, **params: Any) -> "BaseKroneckerEstimator":
        if "module_kwargs" in params:  # the **module_kwargs of __init__, given by name
            extra = params.pop("module_kwargs")
            if isinstance(extra, dict):
                params.update(extra)
            else:
                self.module_kwargs = extra  # rejected with a clear error at fit
        module_params = {k: v for k, v in params.items() if k.startswith("module__")}
        for k, v in module_params.items():
            setattr(self, k, v)
        rest = {k: v for k, v in params.items() if k not in module_params}
        if rest:
            super().set_params(**rest)
        return self

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        tags.classifier_tags.poor_score = False
        return tags

    # -- validation ---------------------------------------------------------------------------------
    def _validate_hyperparameters(self) -> None:
        known = set(inspect.signature(type(self).__init__).parameters) - {"self", "module_kwargs"}
        unknown = [k for k in vars(self) if not k.endswith("_") and not k.startswith("module__")
                   and not k.startswith("_") and k not in known]
        if unknown:
            raise TypeError(error_message(f"keyword arguments of {type(self).__name__}",
                                          "named parameters or module__<name> keywords", sorted(unknown),
                                          "Check the spelling; module keywords start with 'module__'."))
        for name, constraint in type(self)._parameter_constraints.items():
            value = getattr(self, name)
            if not constraint.check(value):
                raise ValueError(error_message(f"The '{name}' parameter of {type(self).__name__}",
                                               str(constraint), value))
        if self.module is not None and self._module_kwargs() and isinstance(self.module, nn.Module):
            raise ValueError(error_message(f"module__* parameters of {type(self).__name__}",
                                           "used with a module class, not an instance",
                                           sorted(self._module_kwargs()),
                                           "Pass the class (e.g. module=MyNet) or drop the module__* keywords."))

    def _check_X(self, X: Any, reset: bool) -> np.ndarray:
        X = validate_data(self, X, reset=reset, dtype=np.float32, allow_nd=True)
        self._check_input_shape(X, reset)
        return np.array(X, dtype=np.float32, copy=True)

    def _check_X_y(self, X: Any, y: Any, reset: bool) -> tuple[np.ndarray, np.ndarray]:
        X, y = validate_data(self, X, y, reset=reset, dtype=np.float32, allow_nd=True)
        check_classification_targets(y)
        self._check_input_shape(X, reset)
        return np.array(X, dtype=np.float32, copy=True), y

    def _check_input_shape(self, X: np.ndarray, reset: bool) -> None:
        """Record (``reset``) or check the shape of one example; scikit-learn checks only ``X.shape[1]``."""
        shape = tuple(int(d) for d in X.shape[1:])
        if reset:
            self._input_shape = shape
            return
        expected = getattr(self, "_input_shape", None)
        if expected is not None and shape != expected:
            raise ValueError(error_message(f"the shape of one example of X passed to {type(self).__name__}",
                                           f"{expected} (as in fit)", f"{shape} (X of shape {tuple(X.shape)})",
                                           "Pass inputs of the shape the estimator was fitted on."))

    def _module_input(self, X: np.ndarray, module: nn.Module) -> np.ndarray:
        """``X`` in the dtype of the module's parameters (float32 data for a float64 network: cast)."""
        return X.astype(MODULE_DTYPES[module_dtype(module)], copy=False)

    def _check_module(self, module: nn.Module, X: np.ndarray, n_classes: int) -> None:
        """One forward pass on two examples, before training: the module must accept ``X`` and
        return ``(n, n_classes)`` logits. Run in eval mode without gradients (no state changes)."""
        name = type(module).__name__
        dtype = module_dtype(module)
        device = next((p.device for p in module.parameters()), torch.device("cpu"))
        x = torch.from_numpy(np.ascontiguousarray(X[:2])).to(device=device, dtype=dtype)
        modes = [(m, m.training) for m in module.modules()]
        module.eval()
        try:
            with torch.no_grad():
                out = module(x)
        except (RuntimeError, ValueError, IndexError, TypeError) as exc:
            raise ValueError(error_message(
                f"X (one example of shape {tuple(X.shape[1:])}, n_features_in_={self.n_features_in_})",
                f"an input the module {name} accepts", f"a forward pass that failed with {type(exc).__name__}: "
                f"{str(exc)[:200]}",
                "Make the module's first layer match the data (e.g. nn.Linear(in_features="
                f"{int(np.prod(X.shape[1:]))}, ...) for flattened inputs), or reshape X; a module class whose "
                "constructor takes n_features gets it filled in.")) from exc
        finally:
            for m, mode in modes:
                m.training = mode
        if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[1] != n_classes:
            classes = np.asarray(getattr(self, "classes_", []))
            shown = classes[:10].tolist()
            raise ValueError(error_message(
                f"the output of the module {name}",
                f"logits of shape (n_samples, {n_classes}): one column per class of classes_ "
                f"{shown}{' ...' if len(classes) > 10 else ''}",
                describe(out) if isinstance(out, torch.Tensor) else type(out).__name__,
                f"Give the last layer {n_classes} outputs (e.g. nn.Linear(..., {n_classes})), or pass a module "
                "class whose constructor takes n_classes so it is filled in."))

    # -- building blocks --------------------------------------------------------------------------------
    def _build_module(self, n_features: int, n_classes: int, seed: int) -> nn.Module:
        spec = self.module
        if isinstance(spec, nn.Module):
            return copy.deepcopy(spec)
        cls = MLP if spec is None else spec
        kwargs = self._module_kwargs()
        signature = inspect.signature(cls.__init__).parameters
        if "n_features" in signature and "n_features" not in kwargs:
            shape = getattr(self, "_input_shape", None)
            if cls is MLP and shape is not None:
                # the built-in MLP flattens each example: n_features is the flattened size
                n_features = int(np.prod(shape))
            kwargs["n_features"] = n_features
        if "n_classes" in signature and "n_classes" not in kwargs:
            kwargs["n_classes"] = n_classes
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            try:
                return cls(**kwargs)
            except TypeError as exc:
                raise TypeError(error_message(f"module {getattr(cls, '__name__', cls)}",
                                              "constructible from the module__* keywords",
                                              f"keywords {sorted(kwargs)} ({exc})",
                                              "Check the module__* parameter names.")) from exc

    def _resolve_prior(self, module: nn.Module) -> KroneckerPrior:
        prior = self.prior
        if prior is None:
            return self._zero_mean_prior(module)
        if isinstance(prior, (str, os.PathLike)):
            prior = KroneckerPrior.load(prior)
        return prior.match(module)

    def _zero_mean_prior(self, module: nn.Module) -> KroneckerPrior:
        """``N(0, weight_decay^-1 I)`` matched to ``module``: the prior of ``prior=None``."""
        return isotropic_prior(module, weight_decay=self.weight_decay).match(module)

    def _init_at_prior_mean(self, module: nn.Module, prior: KroneckerPrior) -> None:
        """Initialize ``module`` at the prior mean, except groups whose prior mean is zero (new heads)."""
        if prior.metadata.get("kind") == "zero-mean isotropic":
            return
        params = dict(module.named_parameters())
        with torch.no_grad():
            for g in prior:
                if torch.count_nonzero(g.mean) == 0:
                    continue
                for name, value in g.to_params(g.mean).items():
                    params[name].copy_(value.to(params[name]))

    def _train(self, module: nn.Module, X: np.ndarray, y: np.ndarray, loss_term: Any,
               task: int) -> list[dict[str, Any]]:
        """MAP training on skorch, shuffled by stream ``shuffle`` and with torch's RNG at stream ``train``."""
        if self.max_epochs == 0:
            return []
        callbacks = copy.deepcopy(list(self.callbacks)) if self.callbacks else []
        if self.verbose >= 2:
            callbacks.append(ProgressBar())
        device = self.device_
        engine = PriorEngine(module, criterion=nn.CrossEntropyLoss, optimizer=self.optimizer, lr=self.lr,
                             max_epochs=self.max_epochs, batch_size=min(self.batch_size, len(y)),
                             train_split=None, callbacks=callbacks or None, device=device,
                             verbose=int(self.verbose >= 1), iterator_train=TensorBatches,
                             iterator_train__shuffle=True,
                             iterator_train__generator=self._seeds.generator("shuffle", task))
        engine.loss_term = loss_term
        engine.initialize()
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(self._seeds.seed("train", task))
            engine.partial_fit(X, y)
        bad = [name for name, p in module.named_parameters() if not bool(torch.isfinite(p.detach()).all())]
        if bad:
            raise FloatingPointError(divergence_message(
                f"the parameters of the module {type(module).__name__} after training",
                f"non-finite values in {bad[:4]}", float(self.lr), int(self.max_epochs)))
        return [dict(row) for row in engine.history]

    def _map_loss(self, prior: KroneckerPrior, n: int, weight: float,
                  model: nn.Module | None = None) -> Callable[[torch.Tensor, nn.Module], torch.Tensor]:
        """``CE + weight * quadratic / (2 n)``; the quadratic of ``model`` (default: the trained module)."""
        def loss(ce: torch.Tensor, module: nn.Module) -> torch.Tensor:
            return ce + weight * prior.quadratic(module if model is None else model).to(ce.dtype) / (2.0 * n)
        return loss

    def _curvature(self, module: nn.Module, X: np.ndarray, y: np.ndarray, task: int) -> Curvature:
        """The curvature (``curvature=`` structure, ``fisher=`` type) of ``module`` on ``(X, y)``."""
        return kfac(module, torch.from_numpy(X), torch.from_numpy(y), fisher=self.fisher, method=self.curvature,
                    batch_size=self.batch_size, device=self.device_,
                    generator=self._seeds.generator("curvature", task, device=self.device_),
                    progress=self.verbose >= 2)

    # -- the task pipeline ----------------------------------------------------------------------------
    def _reset(self) -> None:
        """Forget every fitted attribute."""
        for key in [k for k in vars(self) if k.endswith("_") and not k.startswith("__")]:
            delattr(self, key)

    def _start(self, X: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
        """First-call set-up: validate the parameters and data, record the input shape, seeds, device."""
        self._validate_hyperparameters()
        X, y = self._check_X_y(X, y, reset=True)
        self.random_seed_ = seed_streams(self.random_state).entropy
        self.device_ = resolve_device(self.device)
        self.n_tasks_ = 0
        return X, y

    def _set_classes(self, y: np.ndarray, classes: Any, needs_classes: bool = False) -> np.ndarray:
        """``classes_`` from ``classes`` (None: the labels of ``y``, an error if ``needs_classes``); ``y`` encoded."""
        if classes is None and needs_classes:
            raise ValueError(error_message("classes", "passed on the first call to partial_fit", None,
                                           "Pass every label of every task, e.g. classes=np.unique(y_all)."))
        self.classes_ = np.unique(y) if classes is None else np.unique(np.asarray(classes))
        self._check_two_classes(self.classes_)
        return self._encode_new(y)

    def _new_module(self, X: np.ndarray, n_classes: int, task: int = 0) -> nn.Module:
        """The network of a task, built at stream ``init`` and checked on two examples of ``X``."""
        module = self._build_module(self.n_features_in_, n_classes, self._seeds.seed("init", task))
        module = module.to(self.device_)
        self._check_module(module, X, n_classes)
        return module

    def _first_prior(self, module: nn.Module) -> KroneckerPrior:
        """The prior of the first task, matched to ``module``, which starts at the prior mean."""
        prior = self._resolve_prior(module).to(self.device_)
        self._init_at_prior_mean(module, prior)
        return prior

    def _learn_task(self, model: nn.Module, prior: KroneckerPrior, X: np.ndarray, y: np.ndarray, task: int, *,
                    loss: Callable[[int], Callable] | None = None, trained: nn.Module | None = None,
                    scaling: str | None = None) -> TaskFit:
        """One task: validation split, MAP training, curvature, Laplace posterior, scales.

        ``loss(n)`` gives the training criterion for ``n`` examples (default: the MAP loss under
        ``prior`` weighted by ``alpha / beta``); ``trained`` is the module skorch trains
        (default: ``model``); ``scaling`` overrides the estimator's (``"fixed"`` where only the
        Laplace posterior at the given scales is used, e.g. a hand-over).
        """
        alpha, beta, tau = self._given_scales()
        scaling = self._scaling() if scaling is None else scaling
        X = self._module_input(X, model)
        if scaling == "cv":
            if loss is not None or trained is not None:
                raise ValueError(error_message(f"scaling of {type(self).__name__}", "not 'cv' (this estimator "
                                               "trains its own criterion)", "'cv'", "Use scaling='validation'."))
            return self._cross_validated_task(model, prior, X, y, task)
        X_fit, y_fit, X_val, y_val = X, y, X, y
        if scaling == "validation":
            X_fit, y_fit, X_val, y_val = validation_split(X, y, self.validation_fraction,
                                                          self._seeds.seed32("split", task))
        n = len(y_fit)
        criterion = self._map_loss(prior, n, alpha / beta) if loss is None else loss(n)
        history = self._train(model if trained is None else trained, X_fit, y_fit, criterion, task)
        model.eval()
        curvature = self._curvature(model, X_fit, y_fit, task)
        laplace = posterior(prior, curvature, model, prior_scale=alpha, likelihood_scale=beta, temperature=tau)
        scaled = scale_posterior(laplace, scaling, model=model, curvature=curvature, n=n, X_val=X_val, y_val=y_val,
                                 prior_scale=alpha, temperature=tau, predictive=self.predictive,
                                 n_samples=self.n_samples,
                                 generator=self._seeds.generator("validation", task, device=self.device_),
                                 **self._pac_bayes_options())
        return TaskFit(history, curvature, laplace, scaled)

    def _prior_weights(self, prior: KroneckerPrior) -> list[float | None]:
        """The multipliers of the learned ``beta_0`` that ``scaling="cv"`` scores (``[None]``: the
        prior as it is, for a prior that cannot be re-weighted, e.g. an isotropic one)."""
        if not prior.reweightable:
            if prior.metadata.get("kind") == "kronecker":  # learned, but saved before the factors were kept
                logger.warning("scaling='cv': the learned prior holds no source factors (a file written before "
                               "they were stored), so the source weight is not cross-validated; re-learn the "
                               "prior with learn_prior(...) to re-weight it")
            return [None]
        return [float(w) for w in self.source_weights]

    def _weighted_prior(self, prior: KroneckerPrior, weight: float | None) -> KroneckerPrior:
        """``prior`` with its source curvature weight ``beta_0`` multiplied by ``weight``; ``weight = 0``
        is the isotropic prior with the learned mean at the plain floor ``N(theta_s, delta^-1 I)``."""
        if weight is None or weight == 1.0:
            return prior
        if weight == 0.0:
            return prior.reweighted(likelihood_scale=0.0, prior_scale=1.0, temperature=1.0)
        learned = prior.metadata["calibration"]["likelihood_scale"]
        return prior.reweighted(likelihood_scale={k: weight * float(v) for k, v in learned.items()
                                                  if k in prior.groups})

    def _cv_members(self, prior: KroneckerPrior, module: nn.Module) -> list[tuple[float | None, bool, KroneckerPrior]]:
        """The prior family ``scaling="cv"`` scores: ``(source weight, zero mean, prior)`` per member.

        The learned prior re-weighted by each of ``source_weights`` (:meth:`_prior_weights`) and,
        for a re-weightable learned prior with ``cv_zero_mean``, the zero-mean isotropic prior
        ``N(0, weight_decay^-1 I)`` of ``prior=None`` (source weight None), so the family holds
        both isotropic priors a learned one is compared with. A prior without the source-weight
        axis (isotropic, or a continual hand-over) is scored as it is: choosing a zero mean there
        would let one task's held-out folds discard what earlier tasks taught.
        """
        weights = self._prior_weights(prior)
        members = [(w, False, self._weighted_prior(prior, w)) for w in weights]
        if weights != [None] and self.cv_zero_mean:
            members.append((None, True, self._zero_mean_prior(module).to(self.device_)))
        return members

    def _cross_validated_task(self, model: nn.Module, prior: KroneckerPrior, X: np.ndarray, y: np.ndarray,
                              task: int) -> TaskFit:
        """``scaling="cv"``: choose ``(prior member, alpha, tau)`` by k-fold cross-validation, refit on all data.

        Per fold and per member of the prior family (:meth:`_cv_members`): the MAP on the other
        folds under that prior (from ``model``'s starting weights), its curvature and Laplace
        posterior, and the predictive NLL and accuracy of every grid point on the held-out fold
        (:func:`tune_validation`, the grid of ``scaling="validation"``; the held-out draws from
        stream ``validation`` at ``(task, fold)``, common to all members). The winner
        (:func:`cv_choice`, by ``cv_scoring``) is refitted on all data under its prior.
        """
        alpha, beta, tau = self._given_scales()
        start = copy.deepcopy(model)
        folds = cv_folds(y, self.cv, self._seeds.seed32("folds", task))
        members = self._cv_members(prior, model)
        prior_scales = [alpha * g for g in VALIDATION_PRIOR_GRID]
        temperatures = [tau * g for g in VALIDATION_TEMPERATURE_GRID]
        shape = (len(members), len(prior_scales) * len(temperatures), len(folds))
        nlls, accuracies = np.full(shape, np.inf), np.full(shape, np.nan)
        for f, (train, held_out) in enumerate(folds):
            for i, (_, _, member) in enumerate(members):
                module = copy.deepcopy(start)
                self._train(module, X[train], y[train], self._map_loss(member, len(train), alpha / beta), task)
                module.eval()
                curvature = self._curvature(module, X[train], y[train], task)
                laplace = posterior(member, curvature, module, prior_scale=alpha, likelihood_scale=beta,
                                    temperature=tau)
                result = tune_validation(laplace, module, torch.from_numpy(X[held_out]),
                                         torch.from_numpy(y[held_out]), prior_scales=prior_scales,
                                         temperatures=temperatures, n_samples=min(self.n_samples, 30),
                                         generator=self._seeds.generator("validation", task, f, device=self.device_),
                                         predictive="linearized" if self.predictive == "linearized" else "mc")
                nlls[i, :, f] = result.history
                accuracies[i, :, f] = result.accuracy
        sizes = np.array([len(held_out) for _, held_out in folds])
        results = []
        for i, (w, zero_mean, _) in enumerate(members):
            for j, (a, t) in enumerate((a, t) for a in prior_scales for t in temperatures):
                results.append({"source_weight": w, "zero_mean": zero_mean, "prior_scale": float(a),
                                "likelihood_scale": float(beta), "temperature": float(t),
                                "mean_nll": float(nlls[i, j].mean()),
                                # every example is held out once: the accuracy over all of them
                                "mean_accuracy": float((accuracies[i, j] * sizes).sum() / sizes.sum()),
                                "fold_nll": [float(v) for v in nlls[i, j]],
                                "fold_accuracy": [float(v) for v in accuracies[i, j]]})
        best = cv_choice(results, self.cv_scoring, n_held_out=int(sizes.sum()))
        choice = {k: results[best][k] for k in ("source_weight", "zero_mean", "prior_scale", "likelihood_scale",
                                                "temperature", "mean_nll", "mean_accuracy")}
        choice.update(n_folds=len(folds), scoring=self.cv_scoring)
        logger.info("scaling='cv': %d folds, %d prior members; chose %s", len(folds), len(members), choice)
        chosen = members[best // (len(prior_scales) * len(temperatures))][2]
        history = self._train(model, X, y, self._map_loss(chosen, len(y), alpha / beta), task)
        model.eval()
        curvature = self._curvature(model, X, y, task)
        laplace = posterior(chosen, curvature, model, prior_scale=alpha, likelihood_scale=beta, temperature=tau)
        scaled = laplace.with_scales(prior_scale=choice["prior_scale"], temperature=choice["temperature"])
        return TaskFit(history, curvature, laplace, scaled, chosen, results, choice)

    def _handover(self, post: KroneckerPosterior) -> KroneckerPrior:
        """The continual hand-over: the posterior at the *given* scales, compressed to a prior.

        Not at the scales tuned for prediction: a cold, sharpened predictive posterior (e.g.
        ``tau = 0.01``, ``alpha = 1000`` from the validation grid) folded into a prior would pin
        the network.
        """
        return post.with_scales(*self._given_scales()).as_prior()

    def _encode_new(self, y: np.ndarray) -> np.ndarray:
        encoder = LabelEncoder().fit(self.classes_)
        unseen = np.setdiff1d(np.unique(y), self.classes_)
        if unseen.size:
            raise ValueError(error_message("labels of y", f"among the classes {self.classes_.tolist()}",
                                           f"unseen labels {unseen.tolist()}",
                                           "Pass every label in `classes` on the first partial_fit call."))
        return encoder.transform(y).astype(np.int64)

    def _check_two_classes(self, classes: np.ndarray) -> None:
        if len(classes) < 2:
            raise ValueError(error_message(f"y passed to {type(self).__name__}",
                                           "labels of at least 2 classes", f"1 class ({classes.tolist()})",
                                           "A classifier can't train when only one class is present."))

    # -- prediction -----------------------------------------------------------------------------------------
    def _predict_tensor(self, X: Any) -> torch.Tensor:
        check_is_fitted(self)
        Xt = torch.from_numpy(self._module_input(self._check_X(X, reset=False), self.module_))
        if self.predictive == "map":
            return predict_proba_map(self.module_, Xt, batch_size=max(self.batch_size, 256), device=self.device_)
        if self.predictive == "linearized":
            return predict_proba_linearized(self.module_, self.posterior_, Xt, batch_size=self.batch_size)
        generator = self._seeds.generator("predict", self.n_tasks_ - 1, device=self.device_)
        return predict_proba_mc(self.module_, self.posterior_, Xt, n_samples=self.n_samples,
                                generator=generator, batch_size=max(self.batch_size, 256))

    def predict_proba(self, X: Any) -> np.ndarray:
        """Posterior predictive class probabilities.

        Parameters
        ----------
        X : array-like

        Returns
        -------
        ndarray of shape (n_samples, n_classes), float64
            ``predictive="mc"``: the model average over ``n_samples`` posterior draws (seeded by
            ``random_state``); ``"map"``: the MAP network; ``"linearized"``: the linearized
            predictive with the probit approximation.
        """
        return self._predict_tensor(X).detach().to("cpu", torch.float64).numpy()

    def predict(self, X: Any) -> np.ndarray:
        """Class labels of the highest posterior predictive probability.

        Parameters
        ----------
        X : array-like

        Returns
        -------
        ndarray of shape (n_samples,)
        """
        check_is_fitted(self)
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]

    # -- pickling: a fitted estimator pickled on a GPU loads on a CPU-only machine -------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        device = getattr(self, "device_", None)
        if device is not None and torch.device(device).type != "cpu":
            for key in self._device_attributes:
                if state.get(key) is not None:
                    state[key] = _to(state[key], "cpu")
            for key in self._device_lists:
                if key in state:
                    state[key] = [None if v is None else _to(v, "cpu") for v in state[key]]
            state["_pickled_device"] = str(device)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        pickled_device = state.pop("_pickled_device", None)
        super().__setstate__(state)
        if pickled_device is None:
            return
        target = torch.device(pickled_device)
        if target.type == "cuda" and torch.cuda.is_available():
            for key in self._device_attributes:
                if getattr(self, key, None) is not None:
                    setattr(self, key, getattr(self, key).to(target))
            for key in self._device_lists:
                if hasattr(self, key):
                    setattr(self, key, [None if v is None else v.to(target) for v in getattr(self, key)])
            self.device_ = target
        else:
            logger.warning("estimator pickled on %s loaded on the CPU", pickled_device)
            self.device_ = torch.device("cpu")


def _to(value: Any, device: str) -> Any:
    """``value`` on ``device``; a module is copied first (the fitted one stays where it is)."""
    return copy.deepcopy(value).to(device) if isinstance(value, nn.Module) else value.to(device)
