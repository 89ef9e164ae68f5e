"""The columns of :class:`~skkprior.progressive.ProgressivePriorClassifier`: fx tracing and the column network.

The requirements on a wrappable network are in the docstring of :mod:`skkprior.progressive`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from itertools import chain
from typing import Any, Callable, Sequence

import torch
from torch import fx, nn
from torch.func import functional_call

from ._layers import kronecker_layers
from ._validation import error_message
from .gaussian import GaussianGroup, LayerwiseGaussian

__all__ = ["ColumnRunner", "ColumnTracer", "ProgressiveNet", "SampledEarlier", "Structure", "WRAP_FIX", "renamed",
           "trace_column"]


# --------------------------------------------------------------------------------------------
# tracing a column
# --------------------------------------------------------------------------------------------
class ColumnTracer(fx.Tracer):
    """``torch.fx`` tracer that keeps every Linear / Conv2d (also subclasses) as a leaf module."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, (nn.Linear, nn.Conv2d)) or super().is_leaf_module(m, module_qualified_name)


@dataclass(frozen=True)
class Structure:
    """The Kronecker layers of a traced column, in call order, and its first layer and head."""

    layers: tuple[str, ...]
    first: str
    head: str


WRAP_FIX = ("See the 'Which networks can be wrapped' section of skkprior.progressive: one tensor in, "
             "logits out, torch.fx-traceable, every Linear/Conv2d called once as a module.")


def trace_column(module: nn.Module) -> tuple[fx.Graph, Structure]:
    """Trace ``module`` and check the requirements of the module docstring."""
    name = type(module).__name__
    try:
        graph = ColumnTracer().trace(module)
    except Exception as exc:  # fx raises TraceError, TypeError, RuntimeError, ... on untraceable code
        raise ValueError(error_message(
            f"the network {name}", "traceable by torch.fx.symbolic_trace",
            f"a forward that failed to trace ({type(exc).__name__}: {str(exc)[:160]})",
            "Remove Python control flow that depends on input values. " + WRAP_FIX)) from exc
    layers = kronecker_layers(module)
    if not layers:
        raise ValueError(error_message(f"the network {name}", "a module with at least one trainable "
                                       "nn.Linear or nn.Conv2d layer", f"{name} without one", WRAP_FIX))
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise ValueError(error_message(f"the forward of {name}", "a function of exactly one input tensor",
                                       f"{len(placeholders)} inputs ({[n.target for n in placeholders]})",
                                       WRAP_FIX))
    output = next(n for n in graph.nodes if n.op == "output")
    if not isinstance(output.args[0], fx.Node):
        raise ValueError(error_message(f"the output of {name}", "one tensor of logits",
                                       "a tuple or another container", WRAP_FIX))
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
                                       "; ".join(problems[:4]), WRAP_FIX))
    return graph, Structure(tuple(order), order[0], order[-1])


class _StopColumn(Exception):
    """Raised inside a column's graph once everything later columns need has been recorded."""


class ColumnRunner(fx.Interpreter):
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
class ProgressiveNet(nn.Module):
    """Columns, laterals and the averaging of docs/concepts.md, section 5; ``forward`` gives task ``active``'s logits.

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
            graph = self._graphs[j] = ColumnTracer().trace(self.columns[j])  # checked when the column was added
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

    def train(self, mode: bool = True) -> "ProgressiveNet":
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
                out = ColumnRunner(self.columns[j], self.graph(j), on_layer).run(x)
            except _StopColumn:
                pass
        return out


class SampledEarlier(nn.Module):
    """Training wrapper: one fresh draw of the frozen columns (and their laterals) per forward pass."""

    def __init__(self, net: ProgressiveNet, gaussian: LayerwiseGaussian, generator: torch.Generator) -> None:
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


def renamed(g: GaussianGroup, old: str, new: str) -> GaussianGroup:
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
