"""Counting multiply-accumulates of a torch module: the one MAC counter of the toolkit.

A *weight layer* is a module with its own weight tensor of two or more dimensions:
``nn.Conv*``, ``nn.ConvTranspose*``, ``nn.Linear`` and the zoo's masked conv / linear
layers (which keep their fixed weight in a ``weight`` buffer). One forward pass with a
hook on every weight layer records what each one computes:

* convolution (dense, grouped or depthwise): every output element costs
  ``C_in / groups · kh · kw`` MACs (``weight[0].numel()``);
* transposed convolution: every *input* element is scattered through
  ``weight[0].numel()`` weights;
* linear: every output element costs ``in_features`` MACs.

Zeros in a weight count (a masked layer's MACs are its dense MACs): what a layer costs
after channel shrinking is the shrunk module's count, or a
:class:`~dslth_edge.cost.layers.LayerCost` scaled by its keep ratios. The learn room's
:func:`~dslth_edge.learn.models.layer_costs`, the exporters' MAC figures and the
profiler's analysis of a torch module all count here. torch is imported lazily.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["LayerMacs", "weight_layer_kind", "layer_macs", "trace_macs", "count_macs"]


@dataclass(frozen=True)
class LayerMacs:
    """What one weight layer computed in one traced forward pass."""

    name: str  # module path in the traced module
    kind: str  # "conv" | "depthwise" | "linear" | "transposed"
    macs: int  # multiply-accumulates over the traced batch
    out_channels: int  # output channels / features (the SIMD lane axis of CPU kernels)
    in_channels: int  # reduction channels per group (C_in / groups, or in_features)
    params: int  # weight elements plus bias elements
    in_shape: tuple[int, ...]  # the input tensor's shape (batch included)
    out_shape: tuple[int, ...]  # the output tensor's shape (batch included)
    in_itemsize: int  # bytes per input element
    out_itemsize: int  # bytes per output element
    weight_itemsize: int  # bytes per weight element
    reads_input: bool  # the layer's input is the traced sample itself


def weight_layer_kind(module: Any) -> str | None:
    """"conv", "depthwise", "linear" or "transposed" for a weight layer, None for anything else."""
    import torch
    from torch import nn

    w = getattr(module, "weight", None)
    if not isinstance(w, torch.Tensor) or w.dim() < 2 or isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
        return None
    if isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        return "transposed"
    if w.dim() == 2:
        return "linear"
    groups = int(getattr(module, "groups", 1))
    return "depthwise" if groups > 1 and groups == int(getattr(module, "in_channels", -1)) else "conv"


def layer_macs(module: Any, x: Any, y: Any) -> tuple[int, int, int]:
    """(MACs, output channels, reduction channels per group) of weight layer ``module`` mapping ``x`` to ``y``."""
    kind = weight_layer_kind(module)
    if kind is None:
        return 0, 0, 0
    w = module.weight
    if kind == "linear":
        return int(y.numel()) * int(w.shape[1]), int(w.shape[0]), int(w.shape[1])
    groups = int(getattr(module, "groups", 1))
    if kind == "transposed":  # weight (C_in, C_out / groups, k...)
        return int(x.numel()) * int(w[0].numel()), int(w.shape[1]) * groups, int(w.shape[0]) // groups
    return int(y.numel()) * int(w[0].numel()), int(w.shape[0]), int(w.shape[1])


def trace_macs(module: Any, sample: Any) -> list[LayerMacs]:
    """Every weight layer's MACs in one eval-mode, no-grad forward pass of ``sample``, in call order.

    The module's training flag is restored afterwards.
    """
    import torch

    found: list[LayerMacs] = []

    def hook(mod: Any, inp: tuple[Any, ...], out: Any, name: str) -> None:
        x = inp[0]
        macs, cout, cin = layer_macs(mod, x, out)
        bias = getattr(mod, "bias", None)
        params = int(mod.weight.numel()) + (int(bias.numel()) if isinstance(bias, torch.Tensor) else 0)
        found.append(LayerMacs(
            name, str(weight_layer_kind(mod)), macs, cout, cin, params, tuple(x.shape), tuple(out.shape),
            int(x.element_size()), int(out.element_size()), int(mod.weight.element_size()), x is sample,
        ))

    hooks = [mod.register_forward_hook(lambda m, i, o, name=name: hook(m, i, o, name))
             for name, mod in module.named_modules() if weight_layer_kind(mod) is not None]
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            module(sample)
    finally:
        for h in hooks:
            h.remove()
        module.train(was_training)
    return found


def count_macs(module: Any, input_shape: Sequence[int]) -> int:
    """Multiply-accumulates of one sample of shape ``input_shape`` (C, H, W) through every weight layer."""
    import torch

    return sum(layer.macs for layer in trace_macs(module, torch.zeros(1, *input_shape)))
