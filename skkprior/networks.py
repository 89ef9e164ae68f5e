"""Built-in networks: the default MLP of the estimators.

A module class used with the estimators may accept ``n_features`` and/or ``n_classes`` in its
constructor; the estimators fill them in from the data, so one class serves any data set.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ._validation import error_message

__all__ = ["MLP"]

_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "elu": nn.ELU}


class MLP(nn.Module):
    """A multi-layer perceptron for tabular data (the estimators' default module).

    Parameters
    ----------
    n_features : int
        Input features (filled in by the estimators: the flattened size of one example, since
        ``forward`` flattens N-D inputs such as images).
    n_classes : int
        Output classes (filled in by the estimators).
    hidden_sizes : sequence of int, default=(64,)
        Widths of the hidden layers.
    activation : {"relu", "tanh", "gelu", "elu"}, default="relu"

    Examples
    --------
    >>> import torch
    >>> MLP(4, 3, hidden_sizes=(8, 8))(torch.zeros(2, 4)).shape
    torch.Size([2, 3])
    """

    def __init__(self, n_features: int, n_classes: int, hidden_sizes: Sequence[int] = (64,),
                 activation: str = "relu") -> None:
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(error_message("activation of MLP", f"one of {sorted(_ACTIVATIONS)}", activation))
        sizes = [int(n_features), *[int(h) for h in hidden_sizes]]
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), _ACTIVATIONS[activation]()]
        layers.append(nn.Linear(sizes[-1], int(n_classes)))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))
