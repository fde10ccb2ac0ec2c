"""Mask frames on the wire: codecs, key/delta frames, integrity, chunking.

Masks travel, weights never do. A frame carries one sender's per-layer bool masks for
one round, each layer in whichever codec is smallest (raw bits, roaring, zstd, or rANS
entropy coding under an order-0, per-channel or channel-sparse model), as a key frame
or as an XOR delta against a round the receiver holds. The normative byte layout is
``docs/wire-format.md``.

Typical use::

    data = encode_frame(masks, shapes=shapes, sender=3, round=7,
                        fingerprint=fp, fleet="lab", key=fleet_key)
    frame = decode_frame(data, shapes=shapes, fingerprint=fp, fleet="lab",
                         key=fleet_key, base_lookup=store.get)

``shapes`` lists each layer's shape (dim 0 = output channels); masks are numpy bool
arrays of those shapes. Every malformed input raises a :class:`FrameError` subclass.
"""

from __future__ import annotations

from dslth_edge.wire.chunks import CHUNK_MAGIC, DEFAULT_MAX_MESSAGE_BYTES, Chunker, Reassembler
from dslth_edge.wire.codecs import CODEC_NAMES
from dslth_edge.wire.delta import KEY_INTERVAL, MaskEncoderState, PeerMaskStore, pack_masks, same_packed, unpack_masks
from dslth_edge.wire.errors import (
    BaseMismatchError,
    ChecksumError,
    ChunkError,
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
    UnknownCodecError,
    VersionError,
)
from dslth_edge.wire.frame import (
    MAGIC,
    VERSION,
    decode_frame,
    default_max_frame_bytes,
    encode_frame,
    encode_frame_stats,
    mask_digest,
)
from dslth_edge.wire.results import BaseLookup, DecodedFrame, EncodedFrame, LayerStats, Masks

__all__ = [
    # frames
    "encode_frame",
    "encode_frame_stats",
    "decode_frame",
    "default_max_frame_bytes",
    "mask_digest",
    "EncodedFrame",
    "DecodedFrame",
    "LayerStats",
    "Masks",
    "BaseLookup",
    "CODEC_NAMES",
    "MAGIC",
    "VERSION",
    # key/delta bookkeeping
    "KEY_INTERVAL",
    "MaskEncoderState",
    "PeerMaskStore",
    "pack_masks",
    "same_packed",
    "unpack_masks",
    # chunking
    "Chunker",
    "Reassembler",
    "CHUNK_MAGIC",
    "DEFAULT_MAX_MESSAGE_BYTES",
    # errors
    "FrameError",
    "MagicError",
    "VersionError",
    "LengthError",
    "ChecksumError",
    "HmacError",
    "HeaderError",
    "FleetError",
    "FingerprintError",
    "ShapeError",
    "CodecError",
    "UnknownCodecError",
    "MissingBaseError",
    "BaseMismatchError",
    "ChunkError",
]
