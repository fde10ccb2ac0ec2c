"""Mask frames: header, layer table, payloads, CRC-32C or HMAC-SHA256 trailer.

Byte layout (little-endian; ``docs/wire-format.md`` is the normative description)::

    0   4  magic "DSLM"          24  4  base round (delta; 0 for key)
    4   1  version (2)           28 16  weights fingerprint, first 16 bytes
    5   1  flags (bit 0: HMAC)   44  8  base digest (delta; 0 for key)
    6   1  kind (0 key, 1 delta) 52  2  layer count L
    7   1  reserved (0)          54  2  reserved (0)
    8   8  fleet-id hash         56 12L layer table: u16 index, u8 codec, u8 0,
    16  4  sender node id                u32 element count, u32 payload length
    20  4  round                 ..     payloads, concatenated in table order
                                 end    4-byte CRC-32C or 32-byte HMAC-SHA256 of all before

The base digest (:func:`mask_digest`) names the exact masks a delta was computed
against: a receiver whose stored base round holds other masks (a sender that restarted
and re-did that round, a frame of another run) gets a :class:`BaseMismatchError` and
asks for a key frame instead of XORing onto the wrong base.

Decoding checks, in order: length bounds, magic, version, integrity (HMAC in constant
time, else CRC), header fields, fleet, fingerprint, layer table against the model's
shapes, payload sizes against per-layer bounds, base availability and digest; only then
does any codec run. Everything malformed raises a :class:`FrameError` subclass.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Iterable, Sequence

import google_crc32c
import numpy as np

from dslth_edge.wire.codecs import Codec, choose_encoding, codec_by_id, resolve_codecs
from dslth_edge.wire.errors import (
    BaseMismatchError,
    ChecksumError,
    CodecError,
    FingerprintError,
    FleetError,
    FrameError,
    HeaderError,
    HmacError,
    LengthError,
    MagicError,
    MissingBaseError,
    ShapeError,
    VersionError,
)
from dslth_edge.wire.layer import LayerBits, LayerGeometry, max_payload_bytes
from dslth_edge.wire.results import BaseLookup, DecodedFrame, EncodedFrame, LayerStats, Masks

__all__ = [
    "BASE_DIGEST_BYTES",
    "CRC_BYTES",
    "ENTRY_BYTES",
    "HEADER_BYTES",
    "HMAC_BYTES",
    "MAGIC",
    "VERSION",
    "encode_frame",
    "encode_frame_stats",
    "decode_frame",
    "default_max_frame_bytes",
    "fleet_hash",
    "mask_digest",
]

MAGIC = b"DSLM"
VERSION = 2  # 2: delta frames name their base's digest (version 1 frames are refused)
FLAG_HMAC = 0x01
KIND_KEY, KIND_DELTA = 0, 1
_KIND_NAMES = {KIND_KEY: "key", KIND_DELTA: "delta"}
_HEADER = struct.Struct("<4sBBBB8sIII16s8sHH")
_ENTRY = struct.Struct("<HBBII")
HEADER_BYTES = _HEADER.size  # 56
ENTRY_BYTES = _ENTRY.size  # 12
CRC_BYTES, HMAC_BYTES = 4, 32
FINGERPRINT_BYTES = 16  # of the 32-byte SHA-256 carried in the header
BASE_DIGEST_BYTES = 8
_NO_DIGEST = bytes(BASE_DIGEST_BYTES)
_U32 = 1 << 32

def fleet_hash(fleet: str) -> bytes:
    """First 8 bytes of SHA-256 of the UTF-8 fleet name."""
    return hashlib.sha256(fleet.encode("utf-8")).digest()[:8]


def mask_digest(masks: Masks) -> bytes:
    """The 8-byte digest a delta frame carries of its base: the first 8 bytes of SHA-256
    over every layer's mask, flattened row-major and packed MSB-first (``numpy.packbits``,
    the last byte of each layer zero-padded), layers in order."""
    h = hashlib.sha256()
    for m in masks:
        h.update(np.packbits(np.asarray(m, dtype=bool).reshape(-1)).tobytes())
    return h.digest()[:BASE_DIGEST_BYTES]


def _geometries(shapes: Sequence[tuple[int, ...]]) -> tuple[LayerGeometry, ...]:
    geoms = []
    for shape in shapes:
        shape = tuple(int(d) for d in shape)
        if not shape or min(shape) < 1:
            raise ValueError(f"layer shape {shape} must have >= 1 dims, all >= 1")
        geom = LayerGeometry(shape)
        if geom.n >= _U32:
            raise ValueError(f"layer shape {shape} has >= 2**32 elements")
        geoms.append(geom)
    if not 1 <= len(geoms) < 1 << 16:
        raise ValueError(f"a frame holds 1..65535 layers, not {len(geoms)}")
    return tuple(geoms)


def default_max_frame_bytes(shapes: Sequence[tuple[int, ...]]) -> int:
    """Largest frame any codec choice can produce for these shapes (header to HMAC tag)."""
    geoms = _geometries(shapes)
    payloads = sum(max_payload_bytes(g) for g in geoms)
    return HEADER_BYTES + ENTRY_BYTES * len(geoms) + payloads + HMAC_BYTES


def _check_masks(masks: Masks, geoms: tuple[LayerGeometry, ...], what: str) -> list[np.ndarray]:
    if len(masks) != len(geoms):
        raise ShapeError(f"{what}: {len(masks)} layers, the model has {len(geoms)}")
    out = []
    for i, (mask, geom) in enumerate(zip(masks, geoms)):
        mask = np.asarray(mask)
        if mask.dtype != np.bool_ or mask.shape != geom.shape:
            raise ShapeError(f"{what} layer {i}: {mask.dtype}{mask.shape}, expected bool{geom.shape}")
        out.append(mask)
    return out


def _check_u32(name: str, value: int) -> int:
    if not 0 <= int(value) < _U32:
        raise ValueError(f"{name} must fit in 32 bits, got {value}")
    return int(value)


def _check_fingerprint(fingerprint: bytes) -> bytes:
    if len(fingerprint) != 32:
        raise ValueError(f"fingerprint must be the weights' 32-byte SHA-256, got {len(fingerprint)} bytes")
    return bytes(fingerprint)


def _check_key(key: bytes | None) -> bytes | None:
    if key is not None and len(key) == 0:
        raise ValueError("an empty fleet key is no key; pass None for CRC-only frames")
    return key


def encode_frame_stats(
    masks: Masks,
    *,
    shapes: Sequence[tuple[int, ...]],
    sender: int,
    round: int,  # noqa: A002 - the wire field's name
    fingerprint: bytes,
    fleet: str,
    key: bytes | None = None,
    base: tuple[int, Masks] | None = None,
    codecs: Iterable[str] | None = None,
    max_frame_bytes: int | None = None,
) -> EncodedFrame:
    """Encode masks as a key frame, or as a delta (XOR) against ``base = (round, masks)``.

    Each layer gets the smallest payload among the allowed ``codecs`` (None: all of
    :data:`CODEC_NAMES`). ``key`` switches the trailer from CRC-32C to HMAC-SHA256.
    """
    geoms = _geometries(shapes)
    bits = _check_masks(masks, geoms, "masks")
    sender, round = _check_u32("sender", sender), _check_u32("round", round)
    fingerprint, key = _check_fingerprint(fingerprint), _check_key(key)
    allowed = resolve_codecs(codecs)
    kind, base_round, digest = KIND_KEY, 0, _NO_DIGEST
    if base is not None:
        base_round = _check_u32("base round", base[0])
        if base_round >= round:
            raise ValueError(f"delta base round {base_round} must precede round {round}")
        base_masks = _check_masks(base[1], geoms, "base masks")
        digest = mask_digest(base_masks)
        bits = [np.bitwise_xor(m, b) for m, b in zip(bits, base_masks)]
        kind = KIND_DELTA
    flags = FLAG_HMAC if key else 0
    fp = fingerprint[:FINGERPRINT_BYTES]
    fields = (MAGIC, VERSION, flags, kind, 0, fleet_hash(fleet), sender, round, base_round, fp, digest, len(geoms), 0)
    header = _HEADER.pack(*fields)
    table, payloads, stats = [], [], []
    for i, layer_bits in enumerate(bits):
        layer = LayerBits(layer_bits)
        codec, payload, sizes = choose_encoding(layer, allowed)
        table.append(_ENTRY.pack(i, codec.id, 0, layer.geom.n, len(payload)))
        payloads.append(payload)
        stats.append(LayerStats(i, codec.name, layer.geom.n, layer.ones, len(payload), sizes))
    body = b"".join([header, *table, *payloads])
    if key:
        data = body + hmac.new(key, body, hashlib.sha256).digest()
    else:
        data = body + google_crc32c.value(body).to_bytes(4, "little")
    limit = default_max_frame_bytes(shapes) if max_frame_bytes is None else max_frame_bytes
    if len(data) > limit:
        raise LengthError(f"frame of {len(data)} bytes exceeds max_frame_bytes={limit}")
    base_out = base_round if kind == KIND_DELTA else None
    return EncodedFrame(data, _KIND_NAMES[kind], round, base_out, tuple(stats))


def encode_frame(
    masks: Masks,
    *,
    shapes: Sequence[tuple[int, ...]],
    sender: int,
    round: int,  # noqa: A002
    fingerprint: bytes,
    fleet: str,
    key: bytes | None = None,
    base: tuple[int, Masks] | None = None,
    codecs: Iterable[str] | None = None,
    max_frame_bytes: int | None = None,
) -> bytes:
    """:func:`encode_frame_stats` without the statistics: just the frame's bytes."""
    return encode_frame_stats(
        masks,
        shapes=shapes,
        sender=sender,
        round=round,
        fingerprint=fingerprint,
        fleet=fleet,
        key=key,
        base=base,
        codecs=codecs,
        max_frame_bytes=max_frame_bytes,
    ).data


def _verify(buf: memoryview, key: bytes | None, flags: int) -> memoryview:
    """Check the trailer before anything else is trusted; return the authenticated body."""
    if key is not None:
        if len(buf) < HEADER_BYTES + HMAC_BYTES:
            raise LengthError("frame too short for an HMAC trailer")
        body, tag = buf[:-HMAC_BYTES], buf[-HMAC_BYTES:]
        expected = hmac.new(key, body, hashlib.sha256).digest()
        if not hmac.compare_digest(expected, bytes(tag)):
            raise HmacError("HMAC-SHA256 mismatch: wrong fleet key or tampered frame")
        if not flags & FLAG_HMAC:  # authentic bytes, but the sender did not claim HMAC mode
            raise HmacError("frame is not flagged as HMAC-authenticated")
        return body
    if flags & FLAG_HMAC:
        raise HmacError("frame is HMAC-authenticated but no fleet key is configured")
    body, crc = buf[:-CRC_BYTES], buf[-CRC_BYTES:]
    if google_crc32c.value(bytes(body)) != int.from_bytes(crc, "little"):
        raise ChecksumError("CRC-32C mismatch")
    return body


def decode_frame(
    data: bytes | bytearray | memoryview,
    *,
    shapes: Sequence[tuple[int, ...]],
    fingerprint: bytes,
    fleet: str,
    key: bytes | None = None,
    base_lookup: BaseLookup | None = None,
    max_frame_bytes: int | None = None,
) -> DecodedFrame:
    """Verify and decode a frame for a model with ``shapes``.

    ``base_lookup(sender, base_round)`` returns the masks a delta frame is based on, or
    None; an unknown base raises :class:`MissingBaseError`, a held base whose digest is
    not the one the frame names :class:`BaseMismatchError` (a MissingBaseError: either
    way, ask the sender for a key frame). Frames over ``max_frame_bytes`` (default: :func:`default_max_frame_bytes`)
    are refused before any other work.
    """
    geoms = _geometries(shapes)
    fingerprint, key = _check_fingerprint(fingerprint), _check_key(key)
    buf = memoryview(bytes(data))
    limit = default_max_frame_bytes(shapes) if max_frame_bytes is None else max_frame_bytes
    if len(buf) > limit:
        raise LengthError(f"frame of {len(buf)} bytes exceeds max_frame_bytes={limit}")
    if len(buf) < 5:
        raise LengthError(f"frame of {len(buf)} bytes is shorter than a header")
    if bytes(buf[:4]) != MAGIC:
        raise MagicError(f"bad magic {bytes(buf[:4])!r}")
    if buf[4] != VERSION:  # before the length check: a version 1 frame has a shorter header
        old = " (an older dslth-edge: deltas without a base digest; upgrade every node)" if buf[4] < VERSION else ""
        raise VersionError(f"frame version {buf[4]}{old}, this decoder speaks {VERSION} only")
    if len(buf) < HEADER_BYTES + CRC_BYTES:
        raise LengthError(f"frame of {len(buf)} bytes is shorter than a header")
    (magic, version, flags, kind, reserved, fleet_id, sender, round_, base_round, fprint, digest, n_layers,
     reserved2) = _HEADER.unpack_from(buf, 0)
    body = _verify(buf, key, flags)
    if flags & ~FLAG_HMAC or reserved or reserved2:
        raise HeaderError("reserved flag bits or header bytes are set")
    if kind not in _KIND_NAMES:
        raise HeaderError(f"unknown frame kind {kind}")
    if kind == KIND_KEY and (base_round or digest != _NO_DIGEST):
        raise HeaderError("key frame carries a base round or base digest")
    if kind == KIND_DELTA and base_round >= round_:
        raise HeaderError(f"delta base round {base_round} does not precede round {round_}")
    if fleet_id != fleet_hash(fleet):
        raise FleetError("frame belongs to another fleet")
    if fprint != fingerprint[:FINGERPRINT_BYTES]:
        raise FingerprintError("sender's weights fingerprint differs from ours")
    if n_layers != len(geoms):
        raise ShapeError(f"frame has {n_layers} layers, the model has {len(geoms)}")
    payload_start = HEADER_BYTES + ENTRY_BYTES * n_layers
    if len(body) < payload_start:
        raise LengthError("layer table truncated")
    entries = []
    for i, geom in enumerate(geoms):
        index, codec_id, pad, elements, length = _ENTRY.unpack_from(body, HEADER_BYTES + ENTRY_BYTES * i)
        if index != i or pad:
            raise HeaderError(f"layer table entry {i}: index {index}, reserved {pad}")
        if elements != geom.n:
            raise ShapeError(f"layer {i}: {elements} elements, the model has {geom.n}")
        codec = codec_by_id(codec_id)
        if length > max_payload_bytes(geom):
            raise LengthError(f"layer {i}: payload of {length} bytes exceeds its bound")
        entries.append((codec, length))
    if payload_start + sum(length for _, length in entries) != len(body):
        raise LengthError("payload lengths do not add up to the frame length")
    base_masks = None
    if kind == KIND_DELTA:
        found = base_lookup(sender, base_round) if base_lookup is not None else None
        if found is None:
            message = f"no masks of sender {sender} round {base_round} to apply a delta to"
            raise MissingBaseError(message, sender=sender, base_round=base_round)
        base_masks = _check_masks(found, geoms, "base masks")
        if mask_digest(base_masks) != digest:
            message = (f"the masks held for sender {sender} round {base_round} are not the base of this delta "
                       "(the sender restarted and re-did that round, or the frame is of another run)")
            raise BaseMismatchError(message, sender=sender, base_round=base_round)
    masks, pos = [], payload_start
    for i, ((codec, length), geom) in enumerate(zip(entries, geoms)):
        flat = _decode_layer(codec, body[pos : pos + length], geom, i)
        mask = flat.reshape(geom.shape)
        masks.append(np.bitwise_xor(mask, base_masks[i]) if base_masks is not None else mask)
        pos += length
    return DecodedFrame(
        sender=sender,
        round=round_,
        kind=_KIND_NAMES[kind],
        base_round=base_round if kind == KIND_DELTA else None,
        masks=tuple(masks),
        codecs=tuple(c.name for c, _ in entries),
        layer_bytes=tuple(length for _, length in entries),
        frame_bytes=len(buf),
        authenticated=key is not None,
    )


def _decode_layer(codec: Codec, payload: memoryview, geom: LayerGeometry, index: int) -> np.ndarray:
    """Run one codec; anything but a FrameError from it is a codec failure, never a crash."""
    try:
        flat = codec.decode(payload, geom)
    except FrameError:
        raise
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - pyo3 panics are BaseExceptions
        raise CodecError(f"layer {index} ({codec.name}): {type(exc).__name__}: {exc}") from exc
    if flat.dtype != np.bool_ or flat.shape != (geom.n,):  # defensive: a codec bug, not input
        raise CodecError(f"layer {index} ({codec.name}) decoded to the wrong shape")
    return flat
