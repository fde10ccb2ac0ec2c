"""Which weight layers a residual add couples: the one residual-group analysis.

Channels that an element-wise operation (a residual add) combines must be removed from
every layer that produces them together, or the add no longer lines up. The planner
(:func:`dslth_edge.device.keep.plan_costs`) keeps those layers at full width, and shrink
(:mod:`dslth_edge.exporters.shrink`) checks that its pruning engine couples exactly the
same layers, so what the plan counts is what shrink delivers. Both ask here.

One forward pass of a private copy of the model follows which weight layer's output
channels each value carries: normalisation, gates, activations, pooling and flattening keep
them; a weight layer (:func:`~dslth_edge.cost.macs.weight_layer_kind`) starts new ones; an
element-wise op of two or more tensors unites its operands' producers. The ops are seen
through a :class:`torch.overrides.TorchFunctionMode`, which is thread-local, and the
module boundaries through hooks on the copy. (A torch.fx trace patches ``nn.Module.__call__``
for the whole process: a node thread re-planning beside others that train would capture
their forwards, and break them.) torch is imported lazily.
"""

from __future__ import annotations

import copy
from typing import Any, Sequence

from dslth_edge.cost.macs import weight_layer_kind
from dslth_edge.errors import UsageError

__all__ = ["residual_groups"]

_INPUT = "<input>"  # the network input, as a channel source
_ELEMENTWISE = frozenset({"add", "add_", "__add__", "__radd__", "__iadd__",
                          "sub", "sub_", "__sub__", "__rsub__", "__isub__",
                          "mul", "mul_", "__mul__", "__rmul__", "__imul__"})
_DATA_DEPENDENT = frozenset({"__bool__", "item", "tolist"})  # a branch on the input's values


class _Untraceable(Exception):
    pass


def residual_groups(model: Any, input_shape: Sequence[int], *,
                    leaves: tuple[type, ...] = ()) -> tuple[frozenset[str], ...]:
    """Sets of weight layers (module names) whose output channels an element-wise op combines.

    ``input_shape`` is one sample's (C, H, W). ``leaves``: module types whose insides the
    analysis does not follow (a masked layer, a gate: what they do to a value's channels is
    what their kind says). Layers coupled to the network input itself form a group without
    the input. Layers in no group are left out; groups are sorted by their sorted member
    names. Raises UsageError when the model branches on its input's values, since one pass
    then cannot say what every input couples. ``model`` is not touched: a copy runs.
    """
    import torch
    from torch.overrides import TorchFunctionMode
    from torch.utils._pytree import tree_leaves

    net = copy.deepcopy(model).eval()
    sources: dict[int, frozenset[str]] = {}
    alive: list[Any] = []  # keeps every tensor seen, so no id is reused during the pass
    parent: dict[str, str] = {}
    inside_leaf = [0]

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            x = parent[x]
        return x

    def of(t: Any) -> frozenset[str]:
        return sources.get(id(t), frozenset()) if isinstance(t, torch.Tensor) else frozenset()

    def mark(out: Any, carried: frozenset[str]) -> None:
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                alive.append(t)
                sources[id(t)] = carried

    class _Follow(TorchFunctionMode):
        def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            out = func(*args, **(kwargs or {}))
            if inside_leaf[0]:
                return out
            name = getattr(func, "__name__", "")
            tensors = [a for a in args if isinstance(a, torch.Tensor)]
            if name in _DATA_DEPENDENT and any(of(t) for t in tensors):
                raise _Untraceable(f"its forward branches on the input's values ({name})")
            first = of(args[0]) if args else frozenset()
            if name in _ELEMENTWISE and len(tensors) > 1:
                members = frozenset().union(*(of(t) for t in tensors))
                for m in members:
                    parent[find(m)] = find(min(members))
                mark(out, members)
            else:  # flatten, mean, relu, pooling ...: the channels of the first operand (or none)
                mark(out, first)
            return out

    def enter(module: Any, args: Any) -> None:
        inside_leaf[0] += 1

    def leave(name: str, weighted: bool) -> Any:
        def hook(module: Any, args: Any, out: Any) -> None:
            inside_leaf[0] -= 1
            mark(out, frozenset({name}) if weighted else (of(args[0]) if args else frozenset()))
        return hook

    for name, module in net.named_modules():
        weighted = weight_layer_kind(module) is not None
        if name and (weighted or isinstance(module, leaves)):
            module.register_forward_pre_hook(enter)
            module.register_forward_hook(leave(name, weighted))
    x = torch.randn(1, *(int(s) for s in input_shape), generator=torch.Generator().manual_seed(0))
    mark(x, frozenset({_INPUT}))
    try:
        with torch.no_grad(), _Follow():
            net(x)
    except Exception as exc:  # a model that cannot run on this shape, or branches on its input
        raise UsageError(f"cannot trace {type(model).__name__} to find its residual adds: {exc}") from exc
    groups: dict[str, set[str]] = {}
    for m in list(parent):
        groups.setdefault(find(m), set()).add(m)
    out = [frozenset(members - {_INPUT}) for members in groups.values() if len(members) > 1]
    return tuple(sorted((g for g in out if g), key=lambda g: sorted(g)))
