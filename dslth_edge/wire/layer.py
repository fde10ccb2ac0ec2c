"""One layer's mask as the codecs see it: flat C-order bits, rows = output channels.

Dim 0 of a layer's shape is its output channel, so channel ``c`` owns the flat
elements ``[c * inner, (c + 1) * inner)``. Statistics several codecs need (row counts,
packed bits) are computed once and cached.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

__all__ = ["LayerGeometry", "LayerBits", "max_payload_bytes"]


@dataclass(frozen=True)
class LayerGeometry:
    """Sizes derived from a layer shape: element count, channels (dim 0), elements per channel."""

    shape: tuple[int, ...]

    @property
    def n(self) -> int:
        return math.prod(self.shape)

    @property
    def channels(self) -> int:
        return self.shape[0]

    @property
    def inner(self) -> int:
        return self.n // self.shape[0]

    @property
    def count_width(self) -> int:
        """Bits for a per-channel count in ``[0, inner]``."""
        return self.inner.bit_length()


def max_payload_bytes(geom: LayerGeometry) -> int:
    """Upper bound on any codec's payload for this layer; larger declared sizes are refused.

    Covers the worst case of each codec: raw bits; zstd's compress bound on them;
    roaring's 8 KiB bitset per 65536-position container (even a short last one) plus
    headers; and the entropy codecs' side tables plus ANS's final state.
    """
    raw = (geom.n + 7) // 8
    zstd_bound = raw + raw // 256 + 128
    full, last = divmod(geom.n, 65536)
    # A container is at most an 8 KiB bitset, and only one holding > 4096 values is one.
    roaring_bound = 8 + full * (8192 + 9) + (9 + (8192 if last > 4096 else 2 * last) if last else 0)
    side = (geom.channels * geom.count_width + 7) // 8 + (geom.channels + 7) // 8
    return max(zstd_bound, roaring_bound) + side + 16


class LayerBits:
    """A bool mask of one layer with cached views and counts."""

    def __init__(self, mask: np.ndarray) -> None:
        self.geom = LayerGeometry(tuple(int(d) for d in mask.shape))
        self.flat = np.ascontiguousarray(mask).reshape(-1)

    @functools.cached_property
    def rows(self) -> np.ndarray:
        """The mask as ``(channels, inner)``."""
        return self.flat.reshape(self.geom.channels, self.geom.inner)

    @functools.cached_property
    def row_ones(self) -> np.ndarray:
        """Number of ones in each output channel (int64)."""
        return np.count_nonzero(self.rows, axis=1).astype(np.int64)

    @functools.cached_property
    def ones(self) -> int:
        return int(self.row_ones.sum())

    @functools.cached_property
    def packed(self) -> bytes:
        """``np.packbits`` of the flat bits (MSB first, zero padding): the raw payload."""
        return np.packbits(self.flat).tobytes()
