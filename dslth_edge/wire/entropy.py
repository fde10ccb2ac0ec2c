"""The three entropy codecs, all over the binary rANS of :mod:`.ans`.

* ``ans-order0``: one keep probability for the whole layer, sent as the exact count of
  ones (a varint); the model is derived from it, so nothing is lost to quantising it.
* ``ans-channel``: each output channel's own probability, sent as its exact count in a
  fixed-width side table. Channels that are all 0 or all 1 cost only their count.
  Channels with the same quantised model are coded as one vectorised segment.
* ``channel-sparse``: a bitmap of channels holding any 1, then only those channels'
  bits under one order-0 model: the cheap form for channel-pruned layers.

Every decoder re-counts what it decoded against the transmitted counts: a corrupt
stream that the coder happens to accept is still refused.
"""

from __future__ import annotations

import numpy as np

from dslth_edge.wire.ans import PRECISION, decode_segments, encode_segments, ideal_bits, model_k
from dslth_edge.wire.bitio import get_varint, pack_uints, put_varint, unpack_uints
from dslth_edge.wire.errors import CodecError
from dslth_edge.wire.layer import LayerBits, LayerGeometry

__all__ = [
    "encode_order0",
    "decode_order0",
    "order0_lower_bound",
    "encode_channel",
    "decode_channel",
    "channel_lower_bound",
    "encode_sparse",
    "decode_sparse",
    "sparse_lower_bound",
]

_ONE = 1 << PRECISION


def _lower_bound(ideal_bits_: float, fixed_bytes: int) -> int:
    """Bytes an ANS payload cannot undercut: ideal length less rounding slack (0.5% + 8 B)."""
    return fixed_bytes + max(0, int(ideal_bits_ / 8 * 0.995) - 8)


# --- order 0 ---------------------------------------------------------------------------


def encode_order0(layer: LayerBits) -> bytes:
    """varint(ones) + ANS of all bits under ``k = model_k(ones, n)``."""
    ones, n = layer.ones, layer.geom.n
    head = put_varint(ones)
    if ones in (0, n):
        return head
    return head + encode_segments([(layer.flat, model_k(ones, n))])


def order0_lower_bound(layer: LayerBits) -> int:
    return _lower_bound(ideal_bits(layer.ones, layer.geom.n), 1)


def decode_order0(payload: memoryview, geom: LayerGeometry) -> np.ndarray:
    n = geom.n
    ones, pos = get_varint(payload, 0)
    if ones > n:
        raise CodecError(f"order-0 count {ones} exceeds {n} elements")
    rest = payload[pos:]
    if ones in (0, n):
        if len(rest):
            raise CodecError("constant layer carries coded bytes")
        return np.full(n, ones == n, dtype=bool)
    (bits,) = decode_segments(rest, [(n, model_k(ones, n))])
    if int(np.count_nonzero(bits)) != ones:
        raise CodecError("decoded ones disagree with the order-0 count")
    return bits


# --- per-channel model -------------------------------------------------------------------


def _channel_plan(counts: np.ndarray, inner: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Channels to code, in coding order, their models, and segment boundaries.

    Mixed channels (0 < count < inner) are sorted by model ``k`` (stable, so ties keep
    channel order); each run of equal ``k`` is one segment.
    """
    mixed = np.flatnonzero((counts > 0) & (counts < inner))
    k = np.clip((counts[mixed] * _ONE + inner // 2) // inner, 1, _ONE - 1)
    order = np.argsort(k, kind="stable")
    mixed, k = mixed[order], k[order]
    bounds = np.flatnonzero(np.diff(k)) + 1
    starts = np.concatenate(([0], bounds)).astype(np.int64)
    return mixed, k, starts


def encode_channel(layer: LayerBits) -> bytes:
    """Side table of per-channel counts, then ANS segments grouped by equal model."""
    geom, counts = layer.geom, layer.row_ones
    side = pack_uints(counts, geom.count_width)
    mixed, k, starts = _channel_plan(counts, geom.inner)
    if len(mixed) == 0:
        return side
    rows = layer.rows[mixed]  # one gather so every segment below is a contiguous slice
    ends = np.append(starts[1:], len(mixed))
    segments = [(rows[s:e].reshape(-1), int(k[s])) for s, e in zip(starts, ends)]
    return side + encode_segments(segments)


def channel_lower_bound(layer: LayerBits) -> int:
    geom = layer.geom
    side = (geom.channels * geom.count_width + 7) // 8
    return _lower_bound(ideal_bits(layer.row_ones, np.full(geom.channels, geom.inner)), side)


def decode_channel(payload: memoryview, geom: LayerGeometry) -> np.ndarray:
    side_len = (geom.channels * geom.count_width + 7) // 8
    if len(payload) < side_len:
        raise CodecError("per-channel side table truncated")
    counts = unpack_uints(payload[:side_len], geom.channels, geom.count_width)
    if np.any(counts > geom.inner):
        raise CodecError("per-channel count exceeds the channel size")
    out = np.zeros((geom.channels, geom.inner), dtype=bool)
    out[counts == geom.inner] = True
    mixed, k, starts = _channel_plan(counts, geom.inner)
    rest = payload[side_len:]
    if len(mixed) == 0:
        if len(rest):
            raise CodecError("per-channel payload has bytes but nothing to code")
        return out.reshape(-1)
    ends = np.append(starts[1:], len(mixed))
    segs = [(int(e - s) * geom.inner, int(k[s])) for s, e in zip(starts, ends)]
    rows = np.concatenate(decode_segments(rest, segs)).reshape(len(mixed), geom.inner)
    if np.any(np.count_nonzero(rows, axis=1) != counts[mixed]):
        raise CodecError("decoded channel counts disagree with the side table")
    out[mixed] = rows
    return out.reshape(-1)


# --- channel bitmap + kept channels ------------------------------------------------------


def encode_sparse(layer: LayerBits) -> bytes:
    """packbits(channel has a 1) + varint(ones) + ANS of the kept channels' bits."""
    kept = layer.row_ones > 0
    ones = layer.ones
    head = np.packbits(kept).tobytes() + put_varint(ones)
    coded = int(kept.sum()) * layer.geom.inner
    if ones in (0, coded):
        return head
    bits = layer.rows[kept].reshape(-1)
    return head + encode_segments([(bits, model_k(ones, coded))])


def sparse_lower_bound(layer: LayerBits) -> int | None:
    """None (not a candidate) when no channel is empty: it would only add the bitmap."""
    kept = int(np.count_nonzero(layer.row_ones))
    if kept == layer.geom.channels:
        return None
    fixed = (layer.geom.channels + 7) // 8 + 1
    return _lower_bound(ideal_bits(layer.ones, kept * layer.geom.inner), fixed)


def decode_sparse(payload: memoryview, geom: LayerGeometry) -> np.ndarray:
    map_len = (geom.channels + 7) // 8
    if len(payload) < map_len:
        raise CodecError("channel bitmap truncated")
    packed = np.frombuffer(payload[:map_len], dtype=np.uint8)
    if geom.channels % 8 and packed[-1] & ((1 << (8 - geom.channels % 8)) - 1):
        raise CodecError("nonzero padding bits in the channel bitmap")
    kept = np.unpackbits(packed, count=geom.channels).view(bool)
    n_kept = int(kept.sum())
    coded = n_kept * geom.inner
    ones, pos = get_varint(payload, map_len)
    if ones > coded or ones < n_kept:  # every kept channel holds at least one 1
        raise CodecError(f"channel-sparse count {ones} impossible for {n_kept} kept channels")
    rest = payload[pos:]
    out = np.zeros((geom.channels, geom.inner), dtype=bool)
    if ones == coded:
        if len(rest):
            raise CodecError("constant kept channels carry coded bytes")
        out[kept] = True
        return out.reshape(-1)
    (bits,) = decode_segments(rest, [(coded, model_k(ones, coded))])
    rows = bits.reshape(n_kept, geom.inner)
    if int(np.count_nonzero(bits)) != ones or not np.all(rows.any(axis=1)):
        raise CodecError("decoded kept channels disagree with the channel bitmap")
    out[kept] = rows
    return out.reshape(-1)
