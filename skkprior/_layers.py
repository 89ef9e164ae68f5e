"""Which parameters carry Kronecker structure, and the ``[W | b]`` matrix convention.

Only ``nn.Linear`` and ``nn.Conv2d`` (``groups=1``) layers carry Kronecker structure. For such
a layer the parameter matrix is ``Wb = [W | b]`` of shape ``(n_out, m_in + 1)`` (bias as the
last column, present only when the layer has a bias); a conv weight of shape
``(C_out, C_in, kh, kw)`` is flattened to ``(C_out, C_in * kh * kw)`` first, in the same order
as ``torch.nn.functional.unfold`` lays out a patch. ``theta = Wb.flatten()`` is row-major.

Every other parameter is *uncovered* and gets an isotropic treatment downstream.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ._validation import error_message

__all__ = ["KroneckerLayer", "kronecker_layers", "uncovered_parameters", "layer_matrix", "split_layer_matrix"]


@dataclass(frozen=True)
class KroneckerLayer:
    """A Linear or Conv2d layer seen as one ``(n, m)`` parameter matrix.

    Attributes
    ----------
    name : str
        Qualified module name in the model (``""`` for a bare layer).
    weight_name, bias_name : str or None
        Qualified parameter names (``bias_name`` is None without bias).
    weight_shape : tuple of int
        Shape of the weight tensor.
    n, m : int
        Rows (outputs) and columns (inputs, +1 with bias) of ``Wb``.
    """

    name: str
    weight_name: str
    bias_name: str | None
    weight_shape: tuple[int, ...]
    n: int
    m: int

    @property
    def parameter_names(self) -> tuple[str, ...]:
        return (self.weight_name,) if self.bias_name is None else (self.weight_name, self.bias_name)

    @property
    def has_bias(self) -> bool:
        return self.bias_name is not None


def _qualified(prefix: str, leaf: str) -> str:
    return f"{prefix}.{leaf}" if prefix else leaf


def kronecker_layers(model: nn.Module) -> dict[str, KroneckerLayer]:
    """The Linear/Conv2d layers of ``model`` that have trainable weights, by qualified name.

    Raises
    ------
    ValueError
        For a Conv2d with ``groups != 1`` (not supported), naming the layer.

    Examples
    --------
    >>> from torch import nn
    >>> layers = kronecker_layers(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2, bias=False)))
    >>> [(k, v.n, v.m) for k, v in layers.items()]
    [('0', 4, 4), ('2', 2, 4)]
    """
    out: dict[str, KroneckerLayer] = {}
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Linear, nn.Conv2d)):
            continue
        if module.weight is None or not module.weight.requires_grad:
            continue
        if isinstance(module, nn.Conv2d) and module.groups != 1:
            raise ValueError(
                error_message(f"Conv2d layer '{name}'", "a convolution with groups=1",
                              f"groups={module.groups}",
                              "Grouped and depthwise convolutions are not supported; replace the layer "
                              "or freeze its parameters (requires_grad=False).")
            )
        has_bias = module.bias is not None and module.bias.requires_grad
        w = module.weight
        n = w.shape[0]
        m = int(w[0].numel()) + (1 if has_bias else 0)
        out[name] = KroneckerLayer(
            name=name,
            weight_name=_qualified(name, "weight"),
            bias_name=_qualified(name, "bias") if has_bias else None,
            weight_shape=tuple(w.shape),
            n=n,
            m=m,
        )
    return out


def uncovered_parameters(model: nn.Module, layers: dict[str, KroneckerLayer] | None = None) -> list[str]:
    """Qualified names of trainable parameters outside the Kronecker layers.

    Examples
    --------
    >>> from torch import nn
    >>> uncovered_parameters(nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4)))
    ['1.weight', '1.bias']
    """
    layers = kronecker_layers(model) if layers is None else layers
    covered = {p for layer in layers.values() for p in layer.parameter_names}
    return [name for name, p in model.named_parameters() if p.requires_grad and name not in covered]


def layer_matrix(weight: torch.Tensor, bias: torch.Tensor | None = None, *, batch_dims: int = 0) -> torch.Tensor:
    """``[W | b]`` of shape ``(*batch, n, m)`` from a weight ``(*batch, n, *rest)`` and a bias ``(*batch, n)``.

    ``batch_dims`` leading dimensions (e.g. a batch of sampled weights) are kept.

    Examples
    --------
    >>> import torch
    >>> layer_matrix(torch.ones(2, 3), torch.zeros(2)).shape
    torch.Size([2, 4])
    >>> layer_matrix(torch.ones(5, 2, 3, 3, 3), batch_dims=1).shape
    torch.Size([5, 2, 27])
    """
    batch = weight.shape[:batch_dims]
    w = weight.reshape(*batch, weight.shape[batch_dims], -1)
    if bias is None:
        return w
    return torch.cat([w, bias.unsqueeze(-1).to(w.dtype)], dim=-1)


def split_layer_matrix(matrix: torch.Tensor, layer: KroneckerLayer) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Inverse of :func:`layer_matrix`: ``(weight, bias)`` from ``(..., n, m)`` matrices.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> layer = kronecker_layers(nn.Conv2d(2, 3, 2))[""]
    >>> w, b = split_layer_matrix(torch.zeros(5, 3, 9), layer)
    >>> tuple(w.shape), tuple(b.shape)
    ((5, 3, 2, 2, 2), (5, 3))
    """
    batch = matrix.shape[:-2]
    if layer.has_bias:
        w, b = matrix[..., :-1], matrix[..., -1]
    else:
        w, b = matrix, None
    return w.reshape(*batch, *layer.weight_shape), b
