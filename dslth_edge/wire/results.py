"""What encoding and decoding a frame return: frames plus per-layer statistics."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Masks", "BaseLookup", "LayerStats", "EncodedFrame", "DecodedFrame"]

Masks = Sequence[np.ndarray]
BaseLookup = Callable[[int, int], "Masks | None"]


@dataclass(frozen=True)
class LayerStats:
    """What the encoder did with one layer: the codec it picked and what the others cost.

    ``candidates`` maps every allowed codec name to its payload size in bytes, or None
    when the codec was skipped because its lower bound could not beat the winner.
    """

    index: int
    codec: str
    elements: int
    ones: int
    payload_bytes: int
    candidates: Mapping[str, int | None]


@dataclass(frozen=True)
class EncodedFrame:
    """An encoded frame and its per-layer statistics."""

    data: bytes
    kind: str
    round: int
    base_round: int | None
    layers: tuple[LayerStats, ...]

    @property
    def elements(self) -> int:
        return sum(s.elements for s in self.layers)

    @property
    def payload_bytes(self) -> int:
        return sum(s.payload_bytes for s in self.layers)

    @property
    def bits_per_param(self) -> float:
        """Whole frame (header and trailer included) in bits per mask element."""
        return 8 * len(self.data) / max(1, self.elements)


@dataclass(frozen=True)
class DecodedFrame:
    """A verified, decoded frame; ``masks`` are full masks (deltas already applied)."""

    sender: int
    round: int
    kind: str
    base_round: int | None
    masks: tuple[np.ndarray, ...]
    codecs: tuple[str, ...]
    layer_bytes: tuple[int, ...]
    frame_bytes: int
    authenticated: bool
