"""The scikit-learn estimators: :class:`KroneckerPriorClassifier`, :class:`PACBayesBoundEstimator` and
:class:`ProgressivePriorClassifier`.

Each wraps a PyTorch classifier (an ``nn.Module`` class plus ``module__*`` keywords, an instance
that is deep-copied at fit, or ``None`` for the built-in :class:`~skkprior.networks.MLP`) and
trains it on skorch, used as an internal engine: the estimators are plain ``ClassifierMixin,
BaseEstimator`` subclasses, so they pass scikit-learn's checks and work in ``Pipeline`` /
``GridSearchCV`` / ``clone`` / pickle, and accept skorch callbacks.

A task is: MAP training under the prior (initialized at the prior mean where shapes match),
the curvature at the MAP, the Laplace posterior, and its scales.
``partial_fit`` is one *task* per call (not one epoch): the posterior of the previous task
becomes the prior of the next.
"""

from ._classifier import KroneckerPriorClassifier
from ._pac_bayes import PACBayesBoundEstimator
from ._progressive import ProgressivePriorClassifier

__all__ = [
    "KroneckerPriorClassifier",
    "PACBayesBoundEstimator",
    "ProgressivePriorClassifier",
]
