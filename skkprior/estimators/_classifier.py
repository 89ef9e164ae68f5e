"""``KroneckerPriorClassifier``: the task pipeline with given or tuned scales, one task per ``partial_fit``."""

from __future__ import annotations

import copy
import math
import os
from numbers import Integral, Real
from typing import Any

import numpy as np
import torch
from sklearn.utils.validation import check_is_fitted
from torch import nn

from .._validation import error_message
from ..laplace import KroneckerPrior
from ._base import CV_SCORINGS, CV_SOURCE_WEIGHTS, Anything, BaseKroneckerEstimator, OpenUnit, Options, Positive


class KroneckerPriorClassifier(BaseKroneckerEstimator):
    r"""A PyTorch classifier with a learned Kronecker-factored prior and a Laplace posterior.

    ``fit`` trains the network to the MAP under the prior (starting at the prior mean where
    shapes match), computes the curvature at the MAP, forms the Laplace posterior
    ``N(theta_MAP, tau (beta F + alpha P)^-1)`` per layer and chooses its scales;
    ``predict_proba`` is the posterior predictive. ``partial_fit`` learns one *task* per call:
    the posterior of the previous task becomes the prior of the next.

    Parameters
    ----------
    module : nn.Module class, nn.Module instance or None, default=None
        The network. A class is instantiated with the ``module__*`` keywords (``n_features`` /
        ``n_classes`` filled in when its constructor accepts them); an instance is deep-copied
        at fit; None is :class:`~skkprior.networks.MLP`.
    prior : KroneckerPrior, path or None, default=None
        The prior (e.g. from :func:`~skkprior.learn_prior`); a path is loaded safely; None is
        ``N(0, weight_decay^-1 I)``.
    weight_decay : float, default=1.0
        ``delta``, precision of the isotropic prior (``prior=None`` and new heads).
    prior_scale : float, default=1.0
        ``alpha``, multiplies the prior precision (posterior and MAP loss).
    likelihood_scale : float, default=1.0
        ``beta``, multiplies the curvature (posterior) and the likelihood (MAP loss).
    temperature : float, default=1.0
        ``tau``, multiplies the posterior covariance (``< 1``: cold).
    scaling : {"validation", "cv", "marglik", "pac-bayes", "fixed"}, default="validation"
        How ``(alpha, beta, tau)`` are chosen after training: a grid (``alpha`` times 1, 10,
        100, 1000; ``tau`` times 1, 0.1, 0.01) scored by the predictive NLL on a held-out
        ``validation_fraction`` (below about two examples per class on both sides it falls back,
        with a warning, to the training data); the same grid scored by ``cv``-fold
        cross-validation (``"cv"``, below); ``alpha`` by the Laplace marginal likelihood (no
        held-out data; pair it with ``predictive="linearized"``); the PAC-Bayes objective
        (Catoni); or as given. See the concepts page.
    validation_fraction : float, default=0.1
        Held-out fraction for ``scaling="validation"``.
    cv : int, default=5
        Folds of ``scaling="cv"``. Every grid point is scored on held-out folds only (by
        ``cv_scoring``); the best is refitted on all data. The grid is that of ``"validation"``
        (12 points) and, for a learned prior that can be re-weighted
        (:meth:`~skkprior.laplace.KroneckerPrior.reweighted`), also a prior axis: the weight of
        the source curvature, ``beta_0`` times each of ``source_weights`` (0: the isotropic
        prior with the learned mean at the plain floor, ``N(theta_s, delta^-1 I)``, whatever
        ``alpha_0``, ``tau_0`` the calibration chose), and with ``cv_zero_mean`` the zero-mean
        prior ``N(0, weight_decay^-1 I)`` of ``prior=None``, so the family contains both
        isotropic priors. An isotropic prior (or a continual hand-over) has no such axis.
        Cost: ``k * m`` MAP fits, curvature passes and posteriors (``m`` prior members, 1
        without the axis), ``12`` predictive evaluations on a held-out fold each, and 1 refit.
        Folds are stratified and shuffled by ``random_state``, ``k = min(cv, smallest class
        count)``; with a class of a single example (1-shot), ``min(cv, n)`` folds that hold out
        each class once (that class is then missing from the fold's training data; a warning is
        logged).
    source_weights : sequence of float, default=(0.0, 0.01, 0.1, 1.0)
        ``scaling="cv"`` with a re-weightable learned prior: the multipliers of its learned
        ``beta_0`` that are scored (each needs a MAP fit per fold).
    cv_scoring : {"accuracy", "nll", "nll-1se"}, default="accuracy"
        What ``scaling="cv"`` optimizes over the held-out folds: the number of held-out examples
        classified correctly, ties broken by the lower mean held-out NLL (as scikit-learn's
        cross-validation scores a classifier by accuracy; the NLL picks the scales among equally
        accurate points); the mean held-out NLL alone; or the lowest mean held-out NLL among the
        points within one standard error of the best held-out accuracy (the one-standard-error
        rule). With a few examples per class the NLL alone can prefer a posterior so broad that
        its predictive is nearly uniform, at chance accuracy, and the accuracy alone picks among
        points one held-out example apart (measured: see the relatedness example).
    cv_zero_mean : bool, default=True
        ``scaling="cv"`` with a re-weightable learned prior: also score the zero-mean prior
        ``N(0, weight_decay^-1 I)`` (trained from the same start), one more MAP fit per fold.
    fisher : {"mc", "exact", "empirical"}, default="mc"
        Fisher type of the curvature.
    curvature : {"kfac", "kfoc", "diag"}, default="kfac"
        Structure of the curvature (:func:`~skkprior.curvature.kfac`'s ``method``); ``"diag"``
        gives diagonal posterior precisions.
    predictive : {"mc", "map", "linearized"}, default="mc"
        How ``predict_proba`` integrates over the posterior.
    n_samples : int, default=100
        Posterior draws of the Monte-Carlo predictive.
    max_epochs : int, default=30
    lr : float, default=1e-2
    batch_size : int, default=64
    optimizer : torch.optim.Optimizer class, default=torch.optim.Adam
    callbacks : list of skorch callbacks, optional
        Passed to the skorch training engine (e.g. ``EarlyStopping``).
    device : str, default="auto"
        "auto" is CUDA when available, else CPU, resolved at fit.
    random_state : int, RandomState or None, default=None
        Entropy of the estimator's named seed streams (initialization, shuffling, validation
        split, Fisher labels, draws); the global RNGs are untouched.
    verbose : int, default=0
        1 prints skorch's epoch log, 2 adds progress bars.
    **module_kwargs
        ``module__<name>`` keywords of the module's constructor.

    Attributes
    ----------
    module_ : nn.Module
        The trained (MAP) network.
    prior_ : KroneckerPrior
        The prior of the last task, matched to the network.
    posterior_ : KroneckerPosterior
        The posterior of the last task, at the chosen scales.
    curvature_ : Curvature
        The curvature of the last task at the MAP.
    classes_ : ndarray
    n_features_in_ : int
    n_tasks_ : int
        Tasks learned so far (``fit`` resets to 1; each ``partial_fit`` adds one).
    history_ : list of dict
        skorch's training history of the last task.
    cv_results_ : list of dict
        ``scaling="cv"`` only: per grid point ``source_weight`` (None without the prior axis and
        for the zero-mean member), ``zero_mean``, ``prior_scale``, ``likelihood_scale``,
        ``temperature``, ``mean_nll`` and ``mean_accuracy`` (over all held-out examples),
        ``fold_nll`` and ``fold_accuracy`` (per fold), of the last task.
    scales_ : dict
        ``scaling="cv"`` only: the chosen grid point (the keys of ``cv_results_`` but the
        per-fold lists, plus ``n_folds`` and ``scoring``); ``prior_`` is the chosen member.
    random_seed_ : int
        Entropy of the seed streams.
    device_ : torch.device

    Examples
    --------
    >>> from sklearn.datasets import load_iris
    >>> from sklearn.preprocessing import StandardScaler
    >>> X, y = load_iris(return_X_y=True)
    >>> X = StandardScaler().fit_transform(X)
    >>> clf = KroneckerPriorClassifier(max_epochs=20, n_samples=20, random_state=0, device="cpu")
    >>> clf.fit(X, y).score(X, y) > 0.9
    True
    >>> clf.predict_proba(X[:2]).shape
    (2, 3)

    Scales chosen by 3-fold cross-validation (the zero-mean isotropic prior: no source weight):

    >>> clf = KroneckerPriorClassifier(scaling="cv", cv=3, max_epochs=10, n_samples=10, random_state=0,
    ...                                device="cpu").fit(X, y)
    >>> len(clf.cv_results_), clf.scales_["n_folds"], clf.scales_["source_weight"] is None
    (12, 3, True)
    """

    _parameter_constraints = {
        **BaseKroneckerEstimator._parameter_constraints,
        "prior_scale": Positive(),
        "likelihood_scale": Positive(),
        "temperature": Positive(),
        "scaling": Options("fixed", "marglik", "pac-bayes", "validation", "cv"),
        "validation_fraction": OpenUnit(),
        "cv": Anything("an integer >= 2", lambda v: isinstance(v, Integral) and not isinstance(v, bool) and v >= 2),
        "source_weights": Anything("a non-empty sequence of finite numbers >= 0", lambda v: hasattr(v, "__len__")
                                   and not isinstance(v, str) and len(v) > 0 and all(
                                       isinstance(a, Real) and not isinstance(a, bool) and math.isfinite(a) and a >= 0
                                       for a in v)),
        "cv_scoring": Options(*CV_SCORINGS),
        "cv_zero_mean": Anything("a bool", lambda v: isinstance(v, (bool, np.bool_))),
    }

    def __init__(self, module: type[nn.Module] | nn.Module | None = None, *,
                 prior: KroneckerPrior | str | os.PathLike | None = None, weight_decay: float = 1.0,
                 prior_scale: float = 1.0, likelihood_scale: float = 1.0, temperature: float = 1.0,
                 scaling: str = "validation", validation_fraction: float = 0.1, cv: int = 5,
                 source_weights: tuple[float, ...] = CV_SOURCE_WEIGHTS, cv_scoring: str = "accuracy",
                 cv_zero_mean: bool = True, fisher: str = "mc",
                 curvature: str = "kfac", predictive: str = "mc", n_samples: int = 100, max_epochs: int = 30,
                 lr: float = 1e-2, batch_size: int = 64,
                 optimizer: type[torch.optim.Optimizer] = torch.optim.Adam, callbacks: list | None = None,
                 device: str = "auto", random_state: int | np.random.RandomState | None = None, verbose: int = 0,
                 **module_kwargs: Any) -> None:
        self.module = module
        self.prior = prior
        self.weight_decay = weight_decay
        self.prior_scale = prior_scale
        self.likelihood_scale = likelihood_scale
        self.temperature = temperature
        self.scaling = scaling
        self.validation_fraction = validation_fraction
        self.cv = cv
        self.source_weights = source_weights
        self.cv_scoring = cv_scoring
        self.cv_zero_mean = cv_zero_mean
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

    def fit(self, X: Any, y: Any) -> "KroneckerPriorClassifier":
        """Learn one task from scratch; equal to ``partial_fit(X, y, classes=np.unique(y))`` on a fresh estimator.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or (n_samples, *input_shape)
        y : array-like of shape (n_samples,)

        Returns
        -------
        self
        """
        self._reset()
        return self._next_task(X, y, None, first_needs_classes=False)

    def partial_fit(self, X: Any, y: Any, classes: Any = None) -> "KroneckerPriorClassifier":
        """Learn one more *task* (not one epoch): the current posterior becomes the prior.

        The next prior is the previous posterior at the *given* ``prior_scale``,
        ``likelihood_scale`` and ``temperature`` (one Kronecker product per layer), not at the
        scales tuned for prediction.

        Parameters
        ----------
        X : array-like
        y : array-like of shape (n_samples,)
        classes : array-like, optional
            All labels of every task; required on the first call (it fixes the output head),
            omitted or equal afterwards.

        Returns
        -------
        self
        """
        return self._next_task(X, y, classes, first_needs_classes=True)

    def _next_task(self, X: Any, y: Any, classes: Any, first_needs_classes: bool) -> "KroneckerPriorClassifier":
        first = not hasattr(self, "classes_")
        try:
            if first:
                X, y = self._start(X, y)
                y_enc = self._set_classes(y, classes, first_needs_classes)
                module = self._new_module(X, len(self.classes_))
                prior = self._first_prior(module)
            else:
                check_is_fitted(self)
                X, y = self._check_X_y(X, y, reset=False)
                if classes is not None and not np.array_equal(np.unique(np.asarray(classes)), self.classes_):
                    raise ValueError(error_message("classes", f"equal to the classes of the first call "
                                                   f"{self.classes_.tolist()}", np.unique(np.asarray(classes)).tolist(),
                                                   "Omit classes after the first call."))
                y_enc = self._encode_new(y)
                # a copy: a task that fails (e.g. diverged training) leaves the fitted state as it was
                module = copy.deepcopy(self.module_)
                self._check_module(module, X, len(self.classes_))
                prior = self._handover(self.posterior_).match(module)
            fit = self._learn_task(module, prior, X, y_enc, self.n_tasks_)
        except BaseException:
            if first:  # no half-fitted estimator: check_is_fitted keeps failing
                self._reset()
            raise
        self.module_, self.posterior_, self.curvature_ = module, fit.posterior, fit.curvature
        self.prior_ = prior if fit.prior is None else fit.prior
        self.history_ = fit.history
        if fit.scales is not None:
            self.cv_results_, self.scales_ = fit.cv_results, fit.scales
        else:  # another scaling on a later task: no stale selection
            for key in ("cv_results_", "scales_"):
                self.__dict__.pop(key, None)
        self.n_tasks_ += 1
        return self
