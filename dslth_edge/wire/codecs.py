"""Codec registry and the per-layer choice of the smallest encoding.

A codec id is one byte in the layer table. Ids are part of the wire format: never
renumber, only append.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from dslth_edge.wire import bitmaps, entropy
from dslth_edge.wire.errors import UnknownCodecError
from dslth_edge.wire.layer import LayerBits, LayerGeometry

__all__ = ["Codec", "CODECS", "CODEC_NAMES", "codec_by_id", "resolve_codecs", "choose_encoding"]


@dataclass(frozen=True)
class Codec:
    """One layer codec: wire id, name, encoder, decoder and a cheap size lower bound.

    ``lower_bound`` returns bytes the encoding cannot undercut (the encoder skips the
    codec when that already loses to the best so far), or None when the codec cannot
    win on this layer at all.
    """

    id: int
    name: str
    encode: Callable[[LayerBits], bytes]
    decode: Callable[[memoryview, LayerGeometry], np.ndarray]
    lower_bound: Callable[[LayerBits], int | None]


CODECS: tuple[Codec, ...] = (
    Codec(0, "raw", bitmaps.encode_raw, bitmaps.decode_raw, lambda lb: (lb.geom.n + 7) // 8),
    Codec(1, "roaring", bitmaps.encode_roaring, bitmaps.decode_roaring, bitmaps.roaring_lower_bound),
    Codec(2, "zstd", bitmaps.encode_zstd, bitmaps.decode_zstd, lambda lb: 0),
    Codec(3, "ans-order0", entropy.encode_order0, entropy.decode_order0, entropy.order0_lower_bound),
    Codec(4, "ans-channel", entropy.encode_channel, entropy.decode_channel, entropy.channel_lower_bound),
    Codec(5, "channel-sparse", entropy.encode_sparse, entropy.decode_sparse, entropy.sparse_lower_bound),
)
CODEC_NAMES: tuple[str, ...] = tuple(c.name for c in CODECS)
_BY_ID = {c.id: c for c in CODECS}
_BY_NAME = {c.name: c for c in CODECS}


def codec_by_id(codec_id: int) -> Codec:
    """The codec for a wire id, or :class:`UnknownCodecError`."""
    try:
        return _BY_ID[codec_id]
    except KeyError:
        raise UnknownCodecError(f"unknown codec id {codec_id}") from None


def resolve_codecs(names: Iterable[str] | None) -> tuple[Codec, ...]:
    """Codecs for an allowed-name set (None: all), in id order; unknown names are a ValueError."""
    if names is None:
        return CODECS
    wanted = set(names)
    unknown = wanted - set(_BY_NAME)
    if unknown:
        raise ValueError(f"unknown codec names {sorted(unknown)}; known: {list(CODEC_NAMES)}")
    if not wanted:
        raise ValueError("the allowed codec set is empty")
    return tuple(c for c in CODECS if c.name in wanted)


def choose_encoding(
    layer: LayerBits, allowed: tuple[Codec, ...]
) -> tuple[Codec, bytes, dict[str, int | None]]:
    """Encode with every allowed codec that can still win; return the smallest.

    Candidates run in order of their lower bounds, so the likely winner runs first and
    codecs whose bound already loses are skipped (reported as None). Ties go to the
    codec tried first, then the lower id; the choice is deterministic.
    """
    bounds = [(c.lower_bound(layer), c) for c in allowed]
    ordered = sorted(((b, c.id, c) for b, c in bounds if b is not None), key=lambda t: t[:2])
    sizes: dict[str, int | None] = {c.name: None for c in allowed}
    best: tuple[Codec, bytes] | None = None
    for bound, _, codec in ordered:
        if best is not None and bound >= len(best[1]):
            continue
        payload = codec.encode(layer)
        sizes[codec.name] = len(payload)
        if best is None or len(payload) < len(best[1]):
            best = (codec, payload)
    if best is None:  # every allowed codec called itself a loser here; it still works
        codec = allowed[0]
        payload = codec.encode(layer)
        sizes[codec.name] = len(payload)
        best = (codec, payload)
    return best[0], best[1], sizes
