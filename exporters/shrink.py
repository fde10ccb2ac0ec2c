"""Masks → a smaller plain torch module that computes the same outputs.

Three steps, each exact in eval mode:

1. :func:`to_plain` bakes the masks into ordinary layers: ``nn.Conv2d``/``nn.Linear``
   with weight ``w ⊙ m``, and every ``BatchNorm2d → ChannelGate`` pair becomes one
   affine ``BatchNorm2d`` whose scale and shift are multiplied by the gate. A gated
   channel that has to stay (because a residual add couples it to a live channel) then
   still outputs exactly 0, as the gate made it.
2. A structural liveness pass decides which channels carry nothing: every weight is
   replaced by its non-zero indicator, every BatchNorm by the indicators of its scale
   and shift, and the all-ones input is propagated in float64. All values stay ≥ 0, so
   a channel is exactly 0 for *every* input iff it is 0 here (no cancellation
   assumed, which is conservative). A channel can go when no consumer (conv or linear
   input) reads a live value from it through a non-zero weight.
3. torch-pruning's :class:`DependencyGraph` supplies the coupling (flatten → linear,
   residual adds, depthwise convs): a channel shared by several layers is removed
   from all of them together, and only when it is dead at every consumer in its group.
   Its residual coupling must equal the one the planner used
   (:func:`dslth_edge.cost.residual.residual_groups`), checked on every shrink.

The output layer (the model's last masked layer) keeps all its outputs.

Zero-channel padding (``channel_multiple``): fast kernels (XNNPACK, NEON, CMSIS-NN,
int8 GEMMs) process output channels in blocks, so a shrunk group whose kept width is
not a multiple is padded up to the next one (never beyond the dense width) with
channels that are exactly zero: the padding slots are pruned channels whose producer
weights, BatchNorm scale/shift/mean (variance 1) and consumer input weights (conv input
channels, the flattened columns of a linear) are all set to 0. Every slot was dead
(no consumer read it), so the shrunk module still computes the masked model's function
exactly; no pruned channel is ever given its weights back. A zero channel stays 0
through BatchNorm (scale 0, shift 0), ReLU, pooling and residual adds (all members of
an add's group are padded together).

A shrunk module is saved as ``shrink.json`` (architecture, layer shapes, widths,
provenance) plus ``shrunk.npz`` (plain arrays); :func:`load_shrunk` rebuilds the
module from the zoo class and loads the arrays without unpickling anything.
"""

from __future__ import annotations

import copy
import io
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dslth_edge.cost.residual import residual_groups
from dslth_edge.errors import ExportError
from dslth_edge.learn.masking import ChannelGate, MaskedConv2d, MaskedLayer, MaskedLinear, masked_layers
from dslth_edge.learn.models import ModelSpec, arch_name, build_model
from dslth_edge.runs.rundir import atomic_write_bytes, write_json

__all__ = [
    "SHRUNK_FORMAT",
    "SHRINK_JSON",
    "SHRUNK_ARRAYS",
    "LayerWidth",
    "ShrunkInfo",
    "padded_width",
    "to_plain",
    "shrink",
    "fold_batchnorm",
    "shrunk_info",
    "count_params",
    "count_nonzero_params",
    "save_shrunk",
    "load_shrunk",
]

SHRUNK_FORMAT = "dslth-shrunk-v1"
SHRINK_JSON = "shrink.json"
SHRUNK_ARRAYS = "shrunk.npz"
_INFO_ATTR = "dslth_shrunk"  # attribute a shrunk module carries (arch, input shape, widths)


# --------------------------------------------------------------------------------------
# Descriptions
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerWidth:
    """One conv/linear layer of a shrunk module, next to its dense shape."""

    name: str
    kind: str  # "conv" | "depthwise" | "linear"
    in_channels: int
    out_channels: int  # padding included
    dense_in: int
    dense_out: int
    params: int  # weights stored in the shrunk layer (zeros inside kept channels included)
    nonzero: int  # of which non-zero
    padded: tuple[int, ...] = ()  # output channels that are zero padding (indices in the shrunk layer)


@dataclass(frozen=True)
class ShrunkInfo:
    """What a shrunk module is: the zoo architecture it was built from and its widths."""

    arch: str | None  # zoo model name; None for other models (which cannot be saved)
    input_shape: tuple[int, int, int]
    num_classes: int
    layers: tuple[LayerWidth, ...]
    channel_multiple: int = 1  # widths were padded with zero channels to multiples of this

    def widths(self) -> dict[str, int]:
        """Output channels per layer name (zero padding included)."""
        return {w.name: w.out_channels for w in self.layers}

    def padding(self) -> dict[str, int]:
        """Zero output channels added per layer name (layers without padding left out)."""
        return {w.name: len(w.padded) for w in self.layers if w.padded}

    def to_dict(self) -> dict[str, Any]:
        return {"arch": self.arch, "input_shape": list(self.input_shape), "num_classes": self.num_classes,
                "channel_multiple": self.channel_multiple,
                "layers": [{**asdict(w), "padded": list(w.padded)} for w in self.layers]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ShrunkInfo":
        # files written before padding existed have neither "padded" nor "channel_multiple"
        layers = tuple(LayerWidth(**{**w, "padded": tuple(int(i) for i in w.get("padded", ()))}) for w in d["layers"])
        return cls(d.get("arch"), tuple(int(s) for s in d["input_shape"]), int(d["num_classes"]),  # type: ignore[arg-type]
                   layers, int(d.get("channel_multiple", 1)))


def padded_width(kept: int, size: int, multiple: int) -> int:
    """Width of a shrunk group that keeps ``kept`` of its ``size`` channels, padded with zero
    channels to a multiple of ``multiple``: at least one channel (a layer cannot have
    width 0), never more than ``size`` (padding past the dense width only adds work)."""
    if multiple < 1:
        raise ExportError(f"channel multiple must be >= 1, got {multiple}")
    if size < 1:
        raise ExportError(f"a layer has at least one channel, got {size}")
    return min(size, max(1, -(-max(kept, 0) // multiple)) * multiple)


# --------------------------------------------------------------------------------------
# Step 1: masked model -> equivalent plain model
# --------------------------------------------------------------------------------------
def _layer_mask(layer: MaskedLayer) -> torch.Tensor:
    with torch.no_grad():
        return layer.current_mask().to(torch.bool)


def _alive(layer: MaskedLayer) -> torch.Tensor:
    """1.0 per output channel that keeps any weight (what ChannelGate multiplies by)."""
    m = _layer_mask(layer)
    return m.reshape(m.shape[0], -1).any(1).to(torch.float32)


def _plain_layer(layer: MaskedLayer) -> nn.Module:
    w = (layer.weight * _layer_mask(layer)).detach().clone()
    gain = layer.input_gain()  # the masked layer's compensation for dropped input channels
    if gain != 1.0:
        w = w * gain
    new: nn.Module
    if isinstance(layer, MaskedConv2d):
        new = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, stride=layer.stride,
                        padding=layer.padding, groups=layer.groups, bias=False)
    elif isinstance(layer, MaskedLinear):
        new = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
    else:  # pragma: no cover - only two masked layer types exist
        raise ExportError(f"cannot bake masked layer type {type(layer).__name__}")
    with torch.no_grad():
        new.weight.copy_(w)
        if getattr(layer, "bias", None) is not None:  # a fixed bias (authors-cnn's FC layers), unmasked
            new.bias.copy_(layer.bias)
    return new


def _gated_bn(bn: nn.BatchNorm2d, alive: torch.Tensor) -> nn.BatchNorm2d:
    """An affine BatchNorm equal to gate(bn(x)): scale and shift multiplied by the gate."""
    if not bn.track_running_stats or bn.running_mean is None or bn.running_var is None:
        raise ExportError("BatchNorm without running statistics cannot be exported (eval output depends on the batch)")
    new = nn.BatchNorm2d(bn.num_features, eps=bn.eps, momentum=bn.momentum, affine=True, track_running_stats=True)
    with torch.no_grad():
        scale = bn.weight.detach() if bn.affine else torch.ones(bn.num_features)
        shift = bn.bias.detach() if bn.affine else torch.zeros(bn.num_features)
        new.weight.copy_(scale * alive)
        new.bias.copy_(shift * alive)
        new.running_mean.copy_(bn.running_mean)
        new.running_var.copy_(bn.running_var)
        new.num_batches_tracked.copy_(bn.num_batches_tracked)
    return new


def to_plain(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode with masks baked into plain layers (same outputs).

    Masked layers become ``nn.Conv2d``/``nn.Linear`` (weight w ⊙ m, no bias); a
    ``ChannelGate`` is folded into the BatchNorm it follows (a sibling named ``bn``) or,
    with no BatchNorm before it, dropped: a bias-free layer already outputs 0 on a
    channel without weights.
    """
    originals = dict(masked_layers(model))
    # the copy must not duplicate w, z and the shift of every masked layer only to drop
    # them: deepcopy's memo maps those tensors to empty placeholders
    memo: dict[int, Any] = {}
    for layer in originals.values():
        for t in (layer.weight, layer.scores, layer.score_shift, layer.mask_override):
            if t is not None:
                memo[id(t)] = torch.empty(0)
    plain = copy.deepcopy(model, memo).eval()
    copied_names = {id(m): n for n, m in plain.named_modules()}
    # gates first: they read their layer's mask, which the layer swap below removes
    for parent in list(plain.modules()):
        for child_name, child in list(parent.named_children()):
            if not isinstance(child, ChannelGate):
                continue
            alive = _alive(originals[copied_names[id(child.layer)]])
            bn = getattr(parent, "bn", None)
            if isinstance(bn, nn.BatchNorm2d):
                parent.bn = _gated_bn(bn, alive)
            elif bn is not None:
                raise ExportError(f"ChannelGate after a {type(bn).__name__} is not supported by shrink")
            setattr(parent, child_name, nn.Identity())
    for name, layer in originals.items():
        parent_name, _, child_name = name.rpartition(".")
        parent = plain.get_submodule(parent_name) if parent_name else plain
        setattr(parent, child_name, _plain_layer(layer))
    return plain.eval()


# --------------------------------------------------------------------------------------
# Step 2: structural liveness
# --------------------------------------------------------------------------------------
def _structural_inputs(plain: nn.Module, input_shape: Sequence[int]) -> dict[str, torch.Tensor]:
    """Per conv/linear layer name: bool per input channel (feature), True if it can be non-zero.

    Runs a float64 copy whose weights are their non-zero indicators (see module doc).
    """
    probe = copy.deepcopy(plain).double().eval()
    with torch.no_grad():
        for mod in probe.modules():
            if isinstance(mod, (nn.Conv2d, nn.Linear)):
                mod.weight.copy_((mod.weight != 0).double())
                if mod.bias is not None:
                    mod.bias.copy_((mod.bias != 0).double())
            elif isinstance(mod, nn.BatchNorm2d):
                var = mod.running_var if mod.running_var is not None else torch.ones(mod.num_features, dtype=torch.float64)
                mean = mod.running_mean if mod.running_mean is not None else torch.zeros(mod.num_features, dtype=torch.float64)
                scale = (mod.weight if mod.affine else 1.0) / torch.sqrt(var + mod.eps)
                shift = (mod.bias if mod.affine else 0.0) - mean * scale
                # a replacement BN computing x * [scale != 0] + [shift != 0]
                mod.affine, mod.track_running_stats = True, True
                mod.weight = nn.Parameter((scale != 0).double())
                mod.bias = nn.Parameter((shift != 0).double())
                mod.register_buffer("running_mean", torch.zeros(mod.num_features, dtype=torch.float64))
                mod.register_buffer("running_var", torch.full((mod.num_features,), 1.0 - mod.eps, dtype=torch.float64))
    live: dict[str, torch.Tensor] = {}
    hooks = []
    for name, mod in probe.named_modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            def hook(m: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor, name: str = name) -> None:
                x = inp[0]
                live[name] = (x.amax(dim=(0, 2, 3)) if x.dim() == 4 else x.reshape(-1, x.shape[-1]).amax(0)) > 0
            hooks.append(mod.register_forward_hook(hook))
    try:
        with torch.no_grad():
            probe(torch.ones(1, *input_shape, dtype=torch.float64))
    finally:
        for h in hooks:
            h.remove()
    return live


def _reads(mod: nn.Module, live_in: torch.Tensor) -> torch.Tensor:
    """Bool per input channel: the layer reads a possibly non-zero value through a non-zero weight."""
    w = mod.weight.detach()
    cols = w.transpose(0, 1).reshape(w.shape[1], -1).ne(0).any(1)
    return cols & live_in


# --------------------------------------------------------------------------------------
# Step 3: coupling from torch-pruning, removal of dead groups
# --------------------------------------------------------------------------------------
def _tp() -> Any:
    try:
        import torch_pruning
    except ImportError as exc:
        raise ExportError("shrink needs torch-pruning: pip install 'dslth-edge[export]'") from exc
    return torch_pruning


@dataclass
class _Group:
    """One coupled channel group of the plain model."""

    root: nn.Module
    root_name: str
    size: int
    dead: list[int]  # root indices that no consumer reads (all of them may be dead)
    producers: dict[str, dict[int, int]]  # layer name -> {root index: its output channel}

    @property
    def kept(self) -> int:
        """Channels some consumer reads: what the group must keep before padding."""
        return self.size - len(self.dead)


def _is_depthwise(mod: nn.Module) -> bool:
    return isinstance(mod, nn.Conv2d) and mod.groups > 1 and mod.groups == mod.in_channels == mod.out_channels


def _output_layer(plain: nn.Module) -> nn.Module:
    layers = [m for m in plain.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    if not layers:
        raise ExportError("model has no conv or linear layer to shrink")
    return layers[-1]  # canonical (construction) order: the zoo's classifier comes last


def _analyse(plain: nn.Module, input_shape: Sequence[int], fixed: frozenset[str] = frozenset()) -> tuple[Any, list[_Group]]:
    """Dependency graph of ``plain`` and every prunable group with its dead channels.

    ``fixed`` names layers whose output channels stay whatever the mask (the masked
    layer's ``keeps_channels``: a LocalResponseNorm after it mixes neighbouring
    channels, so removing one would change its neighbours' outputs)."""
    tp = _tp()
    example = torch.zeros(1, *input_shape)
    try:
        dg = tp.DependencyGraph().build_dependency(plain, example_inputs=example)
    except Exception as exc:  # torch-pruning raises assorted types on untraceable models
        raise ExportError(f"torch-pruning could not trace the model: {exc}") from exc
    live = _structural_inputs(plain, input_shape)
    names = {m: n for n, m in plain.named_modules()}
    groups: list[_Group] = []
    for group in dg.get_all_groups(ignored_layers=[_output_layer(plain)], root_module_types=(nn.Conv2d, nn.Linear)):
        root = group[0].dep.target.module
        size = int(dg.get_pruner_of_module(root).get_out_channels(root))
        read = torch.zeros(size, dtype=torch.bool)
        has_consumer, supported = False, True
        producers: dict[str, dict[int, int]] = {}
        for item in group.items:
            mod, fn = item.dep.target.module, item.dep.handler
            if not isinstance(mod, (nn.Conv2d, nn.Linear)):
                continue  # BatchNorm, activations, pooling: carried along by the coupling
            name = names[mod]
            if isinstance(mod, nn.Conv2d) and mod.groups > 1 and not _is_depthwise(mod):
                supported = False  # grouped (non-depthwise) convs: keep their groups whole
                break
            if _is_depthwise(mod) or dg.is_out_channel_pruning_fn(fn):
                # a depthwise conv passes channel c to channel c: it produces, the next layer consumes
                producers.setdefault(name, {}).update({int(r): int(i) for i, r in zip(item.idxs, item.root_idxs)})
                continue
            has_consumer = True
            reads = _reads(mod, live[name])
            for i, r in zip(item.idxs, item.root_idxs):
                if bool(reads[i]):
                    read[r] = True
        # an unsupported or fixed group, or one nobody reads (only the model output), stays whole
        supported = supported and not (fixed & {names[root], *producers})
        dead = [int(i) for i in torch.nonzero(~read).flatten()] if supported and has_consumer else []
        groups.append(_Group(root, names[root], size, dead, producers))
    _check_residual_coupling(plain, input_shape, groups)
    return dg, groups


def _check_residual_coupling(plain: nn.Module, input_shape: Sequence[int], groups: Sequence[_Group]) -> None:
    """Refuse to shrink when torch-pruning couples other layers than the planner assumed.

    The planner keeps every layer a residual add couples at full width
    (:func:`dslth_edge.cost.residual.residual_groups`); shrink removes channels by
    torch-pruning's groups. The two must name the same sets of (non-depthwise) producing
    layers, or the plan promised widths shrink cannot deliver.
    """
    depthwise = {n for n, m in plain.named_modules() if _is_depthwise(m)}
    planned = {g - depthwise for g in residual_groups(plain, input_shape)}
    pruned = {frozenset(g.producers) - depthwise for g in groups}
    planned = {g for g in planned if len(g) > 1}
    pruned = {g for g in pruned if len(g) > 1}
    if planned != pruned:
        def show(gs: set[frozenset[str]]) -> str:
            return "; ".join(sorted("{" + ", ".join(sorted(g)) + "}" for g in gs)) or "none"

        raise ExportError(f"torch-pruning couples the layers {show(pruned)} but the residual analysis the plan "
                          f"was made with couples {show(planned)}: shrink cannot deliver the plan's widths")


def shrunk_info(shrunk: nn.Module) -> ShrunkInfo:
    """The :class:`ShrunkInfo` a module from :func:`shrink` or :func:`load_shrunk` carries."""
    info = getattr(shrunk, _INFO_ATTR, None)
    if not isinstance(info, ShrunkInfo):
        raise ExportError("module was not made by dslth_edge.exporters.shrink.shrink() or load_shrunk()")
    return info


def _layer_widths(shrunk: nn.Module, dense: dict[str, tuple[int, int]],
                  padded: dict[str, tuple[int, ...]]) -> tuple[LayerWidth, ...]:
    out = []
    for name, mod in shrunk.named_modules():
        if isinstance(mod, nn.Conv2d):
            kind = "depthwise" if _is_depthwise(mod) else "conv"
            cin, cout = mod.in_channels, mod.out_channels
        elif isinstance(mod, nn.Linear):
            kind, cin, cout = "linear", mod.in_features, mod.out_features
        else:
            continue
        din, dout = dense.get(name, (cin, cout))
        out.append(LayerWidth(name, kind, cin, cout, din, dout, int(mod.weight.numel()), int((mod.weight != 0).sum()),
                              padded.get(name, ())))
    return tuple(out)


def _zero_channels(dg: Any, group: _Group, slots: list[int]) -> None:
    """Make the group's channels ``slots`` (root indices) exactly zero everywhere they appear.

    Producers (conv/linear rows, depthwise channels) and their BatchNorm get zero weights
    and biases (BN: mean 0, variance 1, so the normalised value is 0 too); consumers get
    zero input weights (conv input channels, a linear's flattened columns), so nothing
    downstream depends on the slot even in the int8 file, where a zero weight stays 0.
    The slots are dead (no consumer reads them), so this changes no output.
    """
    if not slots:
        return
    fn = dg.get_pruner_of_module(group.root).prune_out_channels
    with torch.no_grad():
        for item in dg.get_pruning_group(group.root, fn, slots).items:
            mod, handler = item.dep.target.module, item.dep.handler
            idx = torch.as_tensor([int(i) for i in item.idxs], dtype=torch.long)
            if isinstance(mod, nn.BatchNorm2d):
                if mod.affine:
                    mod.weight[idx] = 0.0
                    mod.bias[idx] = 0.0
                if mod.running_mean is not None and mod.running_var is not None:
                    mod.running_mean[idx] = 0.0
                    mod.running_var[idx] = 1.0
            elif isinstance(mod, (nn.Conv2d, nn.Linear)):
                if _is_depthwise(mod) or dg.is_out_channel_pruning_fn(handler):
                    mod.weight[idx] = 0.0
                    if mod.bias is not None:
                        mod.bias[idx] = 0.0
                else:
                    mod.weight[:, idx] = 0.0


def shrink(model: nn.Module, input_shape: Sequence[int], *, channel_multiple: int = 1) -> nn.Module:
    """A plain module (eval mode) without the model's dead channels; same outputs as ``model``.

    ``model`` is a masked model with its masks pinned (``set_masks``) or taken from its
    scores; ``input_shape`` is (C, H, W). ``channel_multiple``: each coupled group's width
    is padded with exactly-zero channels to a multiple of it (:func:`padded_width`; 1: no
    padding); the padding slots are dead channels whose weights are zeroed, never
    pruned channels given their weights back, so the outputs stay the masked model's.
    The result carries a :class:`ShrunkInfo` (see :func:`shrunk_info`); save it with
    :func:`save_shrunk`.
    """
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3:
        raise ExportError(f"input_shape must be (C, H, W), got {input_shape!r}")
    multiple = int(channel_multiple)
    if multiple < 1:
        raise ExportError(f"channel multiple must be >= 1, got {channel_multiple}")
    arch = arch_name(model)
    fixed = frozenset(name for name, layer in masked_layers(model) if layer.keeps_channels)
    plain = to_plain(model)
    dense = {n: ((m.in_channels, m.out_channels) if isinstance(m, nn.Conv2d) else (m.in_features, m.out_features))
             for n, m in plain.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    dg, groups = _analyse(plain, shape, fixed)
    removals: list[tuple[_Group, list[int]]] = []  # (group, root indices to remove)
    padded: dict[str, tuple[int, ...]] = {}
    for g in groups:
        if not g.dead:
            continue
        # the lowest dead indices become the zero padding (any dead slot would do: a zero
        # channel's position does not matter); the rest is removed
        n_pad = padded_width(g.kept, g.size, multiple) - g.kept
        slots, remove = g.dead[:n_pad], g.dead[n_pad:]
        _zero_channels(dg, g, slots)
        removals.append((g, remove))
        gone, pads = set(remove), set(slots)
        for name, idx in g.producers.items():
            removed = sorted(c for r, c in idx.items() if r in gone)
            pos = tuple(sorted(c - sum(1 for x in removed if x < c) for r, c in idx.items() if r in pads))
            if pos:
                padded[name] = pos
    # every group's slots are zeroed before any removal: pruning renumbers channels
    for g, remove in removals:
        if remove:
            fn = dg.get_pruner_of_module(g.root).prune_out_channels
            dg.get_pruning_group(g.root, fn, remove).prune()
    plain.eval()
    for p in plain.parameters():
        p.requires_grad_(False)
    num_classes = int(_output_layer(plain).weight.shape[0])
    info = ShrunkInfo(arch, shape, num_classes, _layer_widths(plain, dense, padded), multiple)  # type: ignore[arg-type]
    setattr(plain, _INFO_ATTR, info)
    return plain


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """A copy with every ``conv → bn`` pair (siblings named ``conv`` and ``bn``) fused into one conv.

    For deployment: one op fewer per block and the conv → ReLU pattern that int8
    quantizers (PT2E) expect. Eval-mode outputs are equal up to float rounding.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    out = copy.deepcopy(module).eval()
    for parent in list(out.modules()):
        conv, bn = getattr(parent, "conv", None), getattr(parent, "bn", None)
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats:
            parent.conv = fuse_conv_bn_eval(conv, bn)
            parent.bn = nn.Identity()
    info = getattr(module, _INFO_ATTR, None)
    if info is not None:
        setattr(out, _INFO_ATTR, info)
    return out


# --------------------------------------------------------------------------------------
# Costs
# --------------------------------------------------------------------------------------
def count_params(module: nn.Module) -> int:
    """Weights a deployed file stores: conv/linear weights and biases, 2 per BatchNorm channel.

    Masked layers count their dense weight (the masked-dense model stores the zeros);
    scores and score shifts are training state and do not count.
    """
    total = 0
    for mod in module.modules():
        if isinstance(mod, MaskedLayer):
            total += mod.weight.numel()
        elif isinstance(mod, (nn.Conv2d, nn.Linear)):
            total += mod.weight.numel() + (mod.bias.numel() if mod.bias is not None else 0)
        elif isinstance(mod, nn.BatchNorm2d):
            total += 2 * mod.num_features  # scale and shift after folding the statistics
    return total


def count_nonzero_params(module: nn.Module) -> int:
    """Like :func:`count_params`, counting only non-zero conv/linear weights (masks applied)."""
    total = 0
    for mod in module.modules():
        if isinstance(mod, MaskedLayer):
            total += int(_layer_mask(mod).sum())
        elif isinstance(mod, (nn.Conv2d, nn.Linear)):
            total += int((mod.weight != 0).sum()) + (mod.bias.numel() if mod.bias is not None else 0)
        elif isinstance(mod, nn.BatchNorm2d):
            total += 2 * mod.num_features
    return total


# --------------------------------------------------------------------------------------
# Save / load without pickles
# --------------------------------------------------------------------------------------
def _module_record(mod: nn.Module) -> dict[str, Any]:
    if isinstance(mod, nn.Conv2d):
        return {"type": "Conv2d", "in": mod.in_channels, "out": mod.out_channels, "kernel": list(mod.kernel_size),
                "stride": list(mod.stride), "padding": list(mod.padding), "dilation": list(mod.dilation),
                "groups": mod.groups, "bias": mod.bias is not None}
    if isinstance(mod, nn.Linear):
        return {"type": "Linear", "in": mod.in_features, "out": mod.out_features, "bias": mod.bias is not None}
    if isinstance(mod, nn.BatchNorm2d):
        return {"type": "BatchNorm2d", "num_features": mod.num_features, "eps": mod.eps, "momentum": mod.momentum,
                "affine": mod.affine, "track_running_stats": mod.track_running_stats}
    raise ExportError(f"cannot record module type {type(mod).__name__}")


def _module_from_record(rec: dict[str, Any]) -> nn.Module:
    t = rec.get("type")
    if t == "Conv2d":
        return nn.Conv2d(int(rec["in"]), int(rec["out"]), tuple(rec["kernel"]), stride=tuple(rec["stride"]),
                         padding=tuple(rec["padding"]), dilation=tuple(rec["dilation"]), groups=int(rec["groups"]),
                         bias=bool(rec["bias"]))
    if t == "Linear":
        return nn.Linear(int(rec["in"]), int(rec["out"]), bias=bool(rec["bias"]))
    if t == "BatchNorm2d":
        return nn.BatchNorm2d(int(rec["num_features"]), eps=float(rec["eps"]), momentum=rec["momentum"],
                              affine=bool(rec["affine"]), track_running_stats=bool(rec["track_running_stats"]))
    raise ExportError(f"shrink.json names an unknown module type {t!r}")


def save_shrunk(module: nn.Module, directory: str | Path, provenance: dict[str, Any]) -> Path:
    """Write ``shrink.json`` + ``shrunk.npz`` into ``directory`` (atomically); returns the JSON path.

    ``provenance``: node, profile, keep, weights fingerprint … (any JSON values).
    The arrays file is written first, so a complete shrink.json always has its arrays.
    """
    info = shrunk_info(module)
    if info.arch is None:
        raise ExportError("only zoo models can be saved: load_shrunk rebuilds the architecture from its zoo name")
    directory = Path(directory)
    state = {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}
    buf = io.BytesIO()
    np.savez(buf, **state)
    atomic_write_bytes(directory / SHRUNK_ARRAYS, buf.getvalue())
    records = {name: _module_record(m) for name, m in module.named_modules()
               if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d))}
    doc = {"format": SHRUNK_FORMAT, "arrays": SHRUNK_ARRAYS, **info.to_dict(), "modules": records,
           "widths": info.widths(), "params": count_params(module), "provenance": provenance}
    path = directory / SHRINK_JSON
    write_json(path, doc)
    return path


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    if not hasattr(parent, child):
        raise ExportError(f"shrink.json names module {name!r}, which the architecture does not have")
    setattr(parent, child, new)


def load_shrunk(path: str | Path) -> nn.Module:
    """The module saved by :func:`save_shrunk` (``path``: shrink.json or its directory), in eval mode.

    The architecture is rebuilt from the zoo class named in the JSON; arrays load with
    ``allow_pickle=False``: nothing in either file can run code.
    """

    path = Path(path)
    if path.is_dir():
        path = path / SHRINK_JSON
    if not path.is_file():
        raise ExportError(f"no shrunk model at {path}")
    try:
        doc = json.loads(path.read_text())
        if doc.get("format") != SHRUNK_FORMAT:
            raise ExportError(f"{path} is not a {SHRUNK_FORMAT} file (format {doc.get('format')!r})")
        info = ShrunkInfo.from_dict(doc)
        if info.arch is None:
            raise ExportError(f"{path} names no zoo architecture")
        arrays_path = path.parent / str(doc.get("arrays", SHRUNK_ARRAYS))
        with np.load(arrays_path, allow_pickle=False) as data:
            state = {k: torch.from_numpy(np.array(data[k])) for k in data.files}
        # the dense zoo model gives the module tree and forward; its layers are replaced below
        module = build_model(ModelSpec(info.arch, info.input_shape, info.num_classes, keep=1.0, dense=True,
                                       weight_init="signed-constant"))
        for name, rec in doc["modules"].items():
            _set_submodule(module, name, _module_from_record(rec))
        module.load_state_dict(state, strict=True)
    except ExportError:
        raise
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, json.JSONDecodeError) as exc:
        raise ExportError(f"shrunk model {path} is unreadable: {exc}") from exc
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    setattr(module, _INFO_ATTR, info)
    return module
