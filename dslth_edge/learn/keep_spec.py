"""Keep ratios given by the user: one for every layer, or one per layer type.

``"0.3"`` (or the float 0.3) keeps 30 % of every masked layer; ``"conv=0.3,fc=0.9"``
keeps 30 % of every convolution and 90 % of every fully-connected layer (the authors'
uniform ratios); a bare number among the items is the ratio of the types not named
(``"0.5,fc=0.9"``). Layer types: ``conv`` (:class:`MaskedConv2d`) and ``fc``
(:class:`MaskedLinear`; ``linear`` is accepted as a synonym).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

from dslth_edge.errors import UsageError
from dslth_edge.learn.masking import MaskedConv2d, masked_layers
from dslth_edge.learn.models import ModelSpec, build_model

__all__ = ["LAYER_KINDS", "KeepSpec", "model_layer_kinds", "parse_keep"]

LAYER_KINDS = ("conv", "fc")
_ALIASES = {"conv": "conv", "fc": "fc", "linear": "fc"}


@dataclass(frozen=True)
class KeepSpec:
    """A parsed keep spec: ``default`` for every layer type not in ``by_kind``."""

    default: float | None = None
    by_kind: dict[str, float] = field(default_factory=dict)

    @property
    def uniform(self) -> float | None:
        """The single ratio of every layer, or None when layer types differ."""
        return self.default if not self.by_kind else None

    def layer_keeps(self, kinds: list[str]) -> list[float]:
        """One ratio per masked layer of the given types (in the model's order)."""
        out = []
        for kind in kinds:
            keep = self.by_kind.get(kind, self.default)
            if keep is None:
                raise UsageError(f"keep spec {self} names no ratio for {kind} layers; add {kind}=R or a bare default")
            out.append(keep)
        return out

    def __str__(self) -> str:
        items = [] if self.default is None else [f"{self.default:g}"]
        return ",".join(items + [f"{k}={v:g}" for k, v in self.by_kind.items()])


def _ratio(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"--keep: {what} must be a number in (0, 1], got {text!r}") from None
    if not (math.isfinite(value) and 0.0 < value <= 1.0):
        raise UsageError(f"--keep: {what} must be in (0, 1], got {text}")
    return value


def parse_keep(value: float | str) -> KeepSpec:
    """A keep spec from a float or text (``"0.3"``, ``"conv=0.3,fc=0.9"``, ``"0.5,fc=0.9"``)."""
    if isinstance(value, (int, float)):
        return KeepSpec(default=_ratio(str(value), "the keep ratio"))
    default: float | None = None
    by_kind: dict[str, float] = {}
    items = [item.strip() for item in str(value).split(",")]
    if not any(items):
        raise UsageError("--keep: empty keep spec")
    for item in items:
        if not item:
            raise UsageError(f"--keep: empty item in {value!r}")
        if "=" not in item:
            if default is not None:
                raise UsageError(f"--keep: two default ratios in {value!r}")
            default = _ratio(item, "the keep ratio")
            continue
        name, _, ratio = item.partition("=")
        kind = _ALIASES.get(name.strip().lower())
        if kind is None:
            raise UsageError(f"--keep: unknown layer type {name.strip()!r}; use {', '.join(LAYER_KINDS)}")
        if kind in by_kind:
            raise UsageError(f"--keep: {kind} given twice in {value!r}")
        by_kind[kind] = _ratio(ratio.strip(), f"the {kind} keep ratio")
    return KeepSpec(default=default, by_kind=by_kind)


@lru_cache(maxsize=16)
def _kinds_and_sizes(name: str, input_shape: tuple[int, int, int], num_classes: int) -> tuple[tuple[str, ...], tuple[int, ...]]:
    model = build_model(ModelSpec(name, input_shape, num_classes, keep=1.0))
    layers = [layer for _, layer in masked_layers(model)]
    return (tuple("conv" if isinstance(layer, MaskedConv2d) else "fc" for layer in layers),
            tuple(layer.weight.numel() for layer in layers))


def model_layer_kinds(name: str, input_shape: tuple[int, int, int], num_classes: int) -> tuple[list[str], list[int]]:
    """Type (``conv``/``fc``) and weight count of every masked layer of a zoo model, in order."""
    kinds, sizes = _kinds_and_sizes(name, tuple(input_shape), num_classes)
    return list(kinds), list(sizes)
