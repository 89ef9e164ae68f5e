"""skkprior: learned Kronecker-factored priors for PyTorch classifiers, behind scikit-learn."""

from .kron import Kron, KronDecomposed, KronSum

__version__ = "0.1.0.dev0"

__all__ = sorted(["Kron", "KronDecomposed", "KronSum", "__version__"])
