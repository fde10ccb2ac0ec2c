"""The model zoo, built from masked layers over fixed seeded weights.

Every model adapts to the input shape (C, H, W) and the class count. ``dense=True``
builds the same architecture with ordinary trainable weights (same seeded init), the
weight-training baseline. Normalisation is BatchNorm without affine parameters: nothing
but the mask is learned, and a ChannelGate after it zeroes pruned channels.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from dslth_edge.cost.layers import LayerCost
from dslth_edge.cost.macs import trace_macs
from dslth_edge.errors import UsageError
from dslth_edge.learn.names import MODEL_NAMES
from dslth_edge.learn.masking import (DEFAULT_SCORE_INIT, DEFAULT_WEIGHT_INIT, INIT_SCHEMES, ChannelGate, MaskedConv2d,
                                      MaskedLayer, MaskedLinear, fixed_bias, init_weights, link_inputs, masked_layers)

__all__ = ["MODEL_NAMES", "ModelSpec", "arch_name", "build_model", "layer_costs", "masked_layer_shapes"]



@dataclass(frozen=True)
class ModelSpec:
    """Everything that determines a model's fixed weights and mask structure."""

    name: str
    input_shape: tuple[int, int, int]  # (C, H, W)
    num_classes: int
    keep: float | list[float] = 0.5  # one ratio, or one per masked layer
    granularity: str = "unstructured"
    weight_seed: int = 0  # shared by the whole fleet: identical w everywhere
    score_seed: int = 0  # the node's own: initial scores
    weight_init: str = DEFAULT_WEIGHT_INIT  # fixed weights' scheme (masking.INIT_SCHEMES)
    score_init: str = DEFAULT_SCORE_INIT  # initial scores' scheme
    dense: bool = False

    def __post_init__(self) -> None:
        for what, scheme in (("weight", self.weight_init), ("score", self.score_init)):
            if scheme not in INIT_SCHEMES:
                raise UsageError(f"unknown {what} init {scheme!r}; choose one of {', '.join(INIT_SCHEMES)}")


class _Factory:
    """Creates the layers of one model, numbering them so each gets its own weight stream."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.stream = 0

    def _keep(self) -> float:
        keep = self.spec.keep
        if not isinstance(keep, list):
            return keep
        if self.stream >= len(keep):
            raise UsageError(f"{self.spec.name} needs one keep ratio per masked layer, got only {len(keep)}")
        return keep[self.stream]

    def conv(self, cin: int, cout: int, k: int, *, stride: int = 1, padding: int = 0) -> nn.Module:
        s = self.spec
        if s.dense:
            layer: nn.Module = nn.Conv2d(cin, cout, k, stride=stride, padding=padding, bias=False)
            with torch.no_grad():
                layer.weight.copy_(init_weights(tuple(layer.weight.shape), s.weight_seed, self.stream, s.weight_init))
        else:
            layer = MaskedConv2d(
                cin, cout, k, stride=stride, padding=padding, keep=self._keep(), granularity=s.granularity,
                seed=s.weight_seed, stream=self.stream, score_seed=s.score_seed, weight_init=s.weight_init,
                score_init=s.score_init,
            )
        self.stream += 1
        return layer

    def linear(self, fin: int, fout: int, *, classifier: bool = False, bias: bool = False) -> nn.Module:
        """A linear layer; the classifier's mask is always unstructured: its output
        channels are the classes, and a pruned class row would be a class never predicted.
        ``bias``: a fixed bias (masked) or a trainable one with the same start (dense)."""
        s = self.spec
        if s.dense:
            layer: nn.Module = nn.Linear(fin, fout, bias=bias)
            with torch.no_grad():
                layer.weight.copy_(init_weights(tuple(layer.weight.shape), s.weight_seed, self.stream, s.weight_init))
                if bias:
                    layer.bias.copy_(fixed_bias(fout, fin, s.weight_seed, self.stream))
        else:
            layer = MaskedLinear(
                fin, fout, keep=self._keep(), granularity="unstructured" if classifier else s.granularity,
                seed=s.weight_seed, stream=self.stream, score_seed=s.score_seed, weight_init=s.weight_init,
                score_init=s.score_init, bias=bias,
            )
        self.stream += 1
        return layer

    @staticmethod
    def gate(layer: nn.Module) -> nn.Module:
        return ChannelGate(layer) if isinstance(layer, MaskedLayer) else nn.Identity()


def _link(consumer: nn.Module, producer: nn.Module | None) -> None:
    if isinstance(consumer, MaskedLayer):
        consumer._producer = [producer] if producer is not None else []  # resolved to names later


class PaperCNN(nn.Module):
    """The paper's CNN: 3 × (5×5 conv, ReLU, 2×2 max-pool) with 64/128/256 channels, fc 192, classifier.

    No biases and no LRN (LRN mixes channels, so it is not channel-prunable).
    """

    def __init__(self, f: _Factory, input_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        c, h, w = input_shape
        self.conv1, self.conv2, self.conv3 = f.conv(c, 64, 5, padding=2), f.conv(64, 128, 5, padding=2), f.conv(128, 256, 5, padding=2)
        self.pool = nn.MaxPool2d(2)
        h3, w3 = h // 8, w // 8
        if h3 < 1 or w3 < 1:
            raise UsageError(f"paper-cnn needs inputs of at least 8x8, got {h}x{w}")
        self.fc1 = f.linear(256 * h3 * w3, 192)
        self.fc2 = f.linear(192, num_classes, classifier=True)
        _link(self.conv1, None), _link(self.conv2, self.conv1), _link(self.conv3, self.conv2)
        _link(self.fc1, self.conv3), _link(self.fc2, self.fc1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, classes)
        x = self.pool(torch.relu(self.conv1(x)))  # (B, 64, H/2, W/2)
        x = self.pool(torch.relu(self.conv2(x)))  # (B, 128, H/4, W/4)
        x = self.pool(torch.relu(self.conv3(x)))  # (B, 256, H/8, W/8)
        x = torch.relu(self.fc1(x.flatten(1)))  # (B, 192)
        return self.fc2(x)


class AuthorsCNN(nn.Module):
    """The authors' network as their code builds it (ZhuoJTian/MCE-PL, models/alex_cifar_att2.py).

    3 × (5×5 conv, padding 1, no bias → ELU → LocalResponseNorm(4, α, 0.75) → 3×3/2
    max-pool; the last pool padded by 1) with 64/128/256 channels, fc 192 → ELU,
    classifier → ELU (their output layer: the logits pass an ELU before the loss). FC
    layers carry fixed biases (PyTorch's default U(±1/√fan_in)), never masked or trained.
    3×32×32 CIFAR-10 gives their fc1 of 256·2·2 = 1024 inputs; 1×28×28 Fashion-MNIST
    takes one input channel and the same layers, so the spatial size reaching fc1 is 1×1
    (28 → 26 → 12 → 10 → 4 → 2 → 1) and fc1 has 256 inputs.

    LRN normalises each channel by its neighbours' squares, so removing a channel would
    change its neighbours' outputs: shrink keeps every conv channel (exporters/shrink.py),
    and the fixed biases keep every fc1 row alive.
    """

    def __init__(self, f: _Factory, input_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        c, h, w = input_shape
        self.conv1, self.conv2, self.conv3 = f.conv(c, 64, 5, padding=1), f.conv(64, 128, 5, padding=1), f.conv(128, 256, 5, padding=1)
        self.norm1 = nn.LocalResponseNorm(4, 2e-5, 0.75)
        self.norm2, self.norm3 = nn.LocalResponseNorm(4, 1e-4, 0.75), nn.LocalResponseNorm(4, 1e-4, 0.75)
        self.pool1, self.pool2 = nn.MaxPool2d(3, 2), nn.MaxPool2d(3, 2)
        self.pool3 = nn.MaxPool2d(3, 2, padding=1)
        for _ in range(2):  # conv (k5, p1): −2; pool (3/2): floor((n − 3) / 2) + 1
            h, w = (h - 2 - 3) // 2 + 1, (w - 2 - 3) // 2 + 1
        h, w = (h - 2 - 1) // 2 + 1, (w - 2 - 1) // 2 + 1  # conv3, then the pool padded by 1
        if h < 1 or w < 1:
            raise UsageError(f"authors-cnn needs inputs of at least 21x21, got {input_shape[1]}x{input_shape[2]}")
        self.fc1 = f.linear(256 * h * w, 192, bias=True)
        self.fc2 = f.linear(192, num_classes, classifier=True, bias=True)
        _link(self.conv1, None), _link(self.conv2, self.conv1), _link(self.conv3, self.conv2)
        _link(self.fc1, self.conv3), _link(self.fc2, self.fc1)
        for layer in (self.conv1, self.conv2, self.conv3, self.fc1):
            if isinstance(layer, MaskedLayer):
                layer.keeps_channels = True  # LRN after the convs, a fixed bias in fc1

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, classes)
        elu = nn.functional.elu
        x = self.pool1(self.norm1(elu(self.conv1(x))))  # (B, 64, (H−5)/2+1, …)
        x = self.pool2(self.norm2(elu(self.conv2(x))))  # (B, 128, …)
        x = self.pool3(self.norm3(elu(self.conv3(x))))  # (B, 256, 2, 2) for 32×32
        x = elu(self.fc1(x.flatten(1)))  # (B, 192)
        return elu(self.fc2(x))  # the authors' ELU on the logits: they are > −1


class ConvBNGate(nn.Module):
    """conv → BatchNorm (no affine) → gate; the gate keeps pruned channels at zero."""

    def __init__(self, f: _Factory, cin: int, cout: int, k: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = f.conv(cin, cout, k, stride=stride, padding=k // 2)
        self.bn = nn.BatchNorm2d(cout, affine=False)
        self.gate = f.gate(self.conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gate(self.bn(self.conv(x)))


class McuCNN(nn.Module):
    """A small CNN for microcontrollers: 3 × (3×3 conv, BN, ReLU) with 16/32/64 channels, GAP, classifier.

    ``width`` multiplies every hidden layer's channels (``mcu-cnn-x2``: 32/64/128).
    """

    def __init__(self, f: _Factory, input_shape: tuple[int, int, int], num_classes: int, width: int = 1) -> None:
        super().__init__()
        c, (c1, c2, c3) = input_shape[0], (16 * width, 32 * width, 64 * width)
        self.block1, self.block2, self.block3 = ConvBNGate(f, c, c1, 3), ConvBNGate(f, c1, c2, 3), ConvBNGate(f, c2, c3, 3)
        self.pool = nn.MaxPool2d(2)
        self.fc = f.linear(c3, num_classes, classifier=True)
        _link(self.block1.conv, None), _link(self.block2.conv, self.block1.conv)
        _link(self.block3.conv, self.block2.conv), _link(self.fc, self.block3.conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.block1(x)))  # (B, 16·width, H/2, W/2)
        x = self.pool(torch.relu(self.block2(x)))  # (B, 32·width, H/4, W/4)
        x = torch.relu(self.block3(x))  # (B, 64·width, H/4, W/4)
        return self.fc(x.mean((2, 3)))  # global average pool -> (B, classes)


class ResidualStack(nn.Module):
    """MLPerf Tiny ResNet-8 stack: two 3×3 conv+BN, shortcut identity or strided 1×1 conv."""

    def __init__(self, f: _Factory, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body1 = ConvBNGate(f, cin, cout, 3, stride)
        self.body2 = ConvBNGate(f, cout, cout, 3)
        # the 1x1 shortcut has no BN in the reference, so a pruned channel is already zero
        self.shortcut = f.conv(cin, cout, 1, stride=stride) if (stride != 1 or cin != cout) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body2(torch.relu(self.body1(x)))
        return torch.relu(y + (x if self.shortcut is None else self.shortcut(x)))


class ResNet8(nn.Module):
    """ResNet-8 as in MLPerf Tiny image classification: stem 16, stacks 16/32/64, GAP, classifier."""

    def __init__(self, f: _Factory, input_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        self.stem = ConvBNGate(f, input_shape[0], 16, 3)
        self.stack1, self.stack2, self.stack3 = ResidualStack(f, 16, 16, 1), ResidualStack(f, 16, 32, 2), ResidualStack(f, 32, 64, 2)
        self.fc = f.linear(64, num_classes, classifier=True)
        prev = self.stem.conv
        for stack in (self.stack1, self.stack2, self.stack3):
            _link(stack.body1.conv, prev), _link(stack.body2.conv, stack.body1.conv)
            if stack.shortcut is not None:
                _link(stack.shortcut, prev)
            prev = stack.body2.conv  # representative of the add's channel group
        _link(self.stem.conv, None), _link(self.fc, prev)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = self.stack3(self.stack2(self.stack1(x)))
        return self.fc(x.mean((2, 3)))


_ZOO_ATTR = "zoo_name"  # every zoo model carries its name (variants share a class)
_ARCHS: dict[str, Callable[[_Factory, tuple[int, int, int], int], nn.Module]] = {
    "paper-cnn": PaperCNN,
    "authors-cnn": AuthorsCNN,
    "mcu-cnn": McuCNN,
    "resnet-8": ResNet8,
    "mcu-cnn-x2": functools.partial(McuCNN, width=2),
    "mcu-cnn-x4": functools.partial(McuCNN, width=4),
}


def arch_name(model: nn.Module) -> str | None:
    """The zoo name of ``model``'s architecture (None for a model from elsewhere)."""
    name = getattr(model, _ZOO_ATTR, None)
    return name if isinstance(name, str) and name in _ARCHS else None


def build_model(
    spec: ModelSpec | str, input_shape: tuple[int, int, int] | None = None, num_classes: int | None = None, **kw: object
) -> nn.Module:
    """Build a zoo model from a spec (or a name, input shape, class count and spec fields).

    Masked layers learn their ``input_from`` names here.
    """
    if isinstance(spec, str):
        if input_shape is None or num_classes is None:
            raise UsageError("build_model(name, ...) needs input_shape and num_classes")
        spec = ModelSpec(spec, tuple(input_shape), num_classes, **kw)  # type: ignore[arg-type]
    if spec.name not in _ARCHS:
        raise UsageError(f"unknown model {spec.name!r}; choose one of {', '.join(MODEL_NAMES)}")
    model = _ARCHS[spec.name](_Factory(spec), tuple(spec.input_shape), spec.num_classes)
    setattr(model, _ZOO_ATTR, spec.name)
    n_masked = sum(1 for _ in masked_layers(model))
    if isinstance(spec.keep, list) and not spec.dense and n_masked != len(spec.keep):
        raise UsageError(f"{spec.name} needs one keep ratio per masked layer ({n_masked}), got {len(spec.keep)}")
    names = {id(m): name for name, m in model.named_modules()}
    for _, layer in masked_layers(model):
        producer = getattr(layer, "_producer", [])
        layer.input_from = names[id(producer[0])] if producer else None
        if hasattr(layer, "_producer"):
            del layer._producer
    link_inputs(model)  # input channels a layer reads (its mask, its gain) follow its producer's live channels
    return model


def masked_layer_shapes(model: nn.Module) -> list[tuple[int, ...]]:
    """Weight shape of every masked layer, canonical order (dim 0 = output channels)."""
    return [tuple(layer.weight.shape) for _, layer in masked_layers(model)]


def layer_costs(model: nn.Module, input_shape: tuple[int, int, int]) -> list[LayerCost]:
    """Dense per-sample cost of every masked layer, measured by one traced forward pass
    (:func:`dslth_edge.cost.macs.trace_macs`, the one MAC counter)."""
    traced = {t.name: t for t in trace_macs(model, torch.zeros(1, *input_shape))}
    costs = []
    layers = list(masked_layers(model))
    for i, (name, layer) in enumerate(layers):
        t = traced[name]
        params = layer.weight.numel()
        kind = t.kind if isinstance(layer, MaskedConv2d) else "linear"
        costs.append(LayerCost(
            name=name, kind=kind, in_channels=int(layer.weight.shape[1]) * getattr(layer, "groups", 1),
            out_channels=int(layer.weight.shape[0]), params=params, macs=t.macs,
            in_elems=math.prod(t.in_shape[1:]), out_elems=math.prod(t.out_shape[1:]),
            input_from=layer.input_from, prunable_out=i != len(layers) - 1 and not layer.keeps_channels,
        ))
    return costs
