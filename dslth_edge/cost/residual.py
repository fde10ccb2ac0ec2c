"""Which weight layers a residual add couples: the one residual-group analysis.

Channels that an element-wise operation (a residual add) combines must be removed from
every layer that produces them together, or the add no longer lines up. The planner
(:func:`dslth_edge.device.keep.plan_costs`) keeps those layers at full width, and shrink
(:mod:`dslth_edge.exporters.shrink`) checks that its pruning engine couples exactly the
same layers, so what the plan counts is what shrink delivers. Both ask here.

A torch.fx trace follows which weight layer's output channels each value carries:
normalisation, gates, activations, pooling and flattening keep them; a weight layer
(:func:`~dslth_edge.cost.macs.weight_layer_kind`) starts new ones; an element-wise op of
two or more tensors unites its operands' producers. torch is imported lazily.
"""

from __future__ import annotations

import operator
from typing import Any

from dslth_edge.cost.macs import weight_layer_kind
from dslth_edge.errors import UsageError

__all__ = ["residual_groups"]

_INPUT = "<input>"  # the network input, as a channel source


def _elementwise() -> set[Any]:
    import torch

    return {operator.add, operator.iadd, operator.sub, operator.isub, operator.mul, operator.imul,
            torch.add, torch.sub, torch.mul, "add", "add_", "sub", "sub_", "mul", "mul_"}


def residual_groups(model: Any, *, leaves: tuple[type, ...] = ()) -> tuple[frozenset[str], ...]:
    """Sets of weight layers (module names) whose output channels an element-wise op combines.

    ``leaves``: module types the trace must not enter (a masked layer, a gate: modules
    whose forward reads state fx cannot follow). Layers coupled to the network input
    itself form a group without the input. Layers in no group are left out; groups are
    sorted by their sorted member names. Raises UsageError when the model cannot be traced.
    """
    from torch import fx

    class _Tracer(fx.Tracer):
        def is_leaf_module(self, m: Any, qualname: str) -> bool:
            return isinstance(m, leaves) or super().is_leaf_module(m, qualname)

    try:
        graph = _Tracer().trace(model)
    except Exception as exc:  # fx raises assorted types on data-dependent control flow
        raise UsageError(f"cannot trace {type(model).__name__} to find its residual adds: {exc}") from exc
    elementwise = _elementwise()
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            x = parent[x]
        return x

    sources: dict[Any, frozenset[str]] = {}
    for node in graph.nodes:
        args = [a for a in node.args if isinstance(a, fx.Node)]
        first = sources.get(args[0], frozenset()) if args else frozenset()
        if node.op == "placeholder":
            sources[node] = frozenset({_INPUT})
        elif node.op == "call_module":
            weighted = weight_layer_kind(model.get_submodule(str(node.target))) is not None
            sources[node] = frozenset({str(node.target)}) if weighted else first
        elif node.op in ("call_function", "call_method") and node.target in elementwise and len(args) > 1:
            members = frozenset().union(*(sources.get(a, frozenset()) for a in args))
            for m in members:
                parent[find(m)] = find(next(iter(sorted(members))))
            sources[node] = members
        else:  # flatten, mean, relu, pooling ...: the channels of the first operand (or none)
            sources[node] = first
    groups: dict[str, set[str]] = {}
    for m in list(parent):
        groups.setdefault(find(m), set()).add(m)
    out = [frozenset(members - {_INPUT}) for members in groups.values() if len(members) > 1]
    return tuple(sorted((g for g in out if g), key=lambda g: sorted(g)))
