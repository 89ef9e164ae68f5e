"""skkprior: learned Kronecker-factored priors for PyTorch classifiers, behind scikit-learn.

The Laplace posterior of a network trained on one task, stored as Kronecker factors, becomes
the prior for the next task (Schnaus, Lee, Cremers, Triebel, ICML 2023). The same algebra
gives closed-form KL terms, so PAC-Bayes certificates can be computed and optimized.
"""

from .bounds import Certificate
from .certify import certify
from .curvature import Curvature, kfac, kfoc
from .estimators import KroneckerPriorClassifier, PACBayesBoundEstimator
from .gaussian import LayerwiseGaussian
from .kron import Kron, KronDecomposed, KronSum
from .laplace import KroneckerPosterior, KroneckerPrior, isotropic_prior, learn_prior, posterior
from .networks import MLP
from .progressive import ProgressivePriorClassifier

__version__ = "0.1.0.dev0"

__all__ = [
    "Certificate",
    "Curvature",
    "Kron",
    "KronDecomposed",
    "KronSum",
    "KroneckerPosterior",
    "KroneckerPrior",
    "KroneckerPriorClassifier",
    "LayerwiseGaussian",
    "MLP",
    "PACBayesBoundEstimator",
    "ProgressivePriorClassifier",
    "__version__",
    "certify",
    "isotropic_prior",
    "kfac",
    "kfoc",
    "learn_prior",
    "posterior",
]
