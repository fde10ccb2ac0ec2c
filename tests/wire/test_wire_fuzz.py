"""Fuzzing the decoder and the reassembler: >= 10,000 cases, all small and fast.

The property everywhere: malformed input raises a FrameError subclass and nothing
else; input that decodes yields masks of the model's shapes. Most mutations are
"resealed" (trailer recomputed) so they get past the checksum and reach the header,
table and codec parsers; the rest check that the checksum/HMAC catches raw damage.
"""

from __future__ import annotations

import struct

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dslth_edge.wire import (
    CODEC_NAMES,
    Chunker,
    FrameError,
    Reassembler,
    decode_frame,
    default_max_frame_bytes,
    encode_frame,
)

from .helpers import FLEET, FP, KEY, reseal

SHAPES = [(4, 5), (3, 2, 2), (2, 40), (1, 3)]
_rng = np.random.default_rng(11)
BASE = [_rng.random(s) < 0.4 for s in SHAPES]
_MASKS = [BASE[0] ^ (_rng.random(SHAPES[0]) < 0.1), np.zeros(SHAPES[1], bool), BASE[2] & (_rng.random(SHAPES[2]) < 0.5), np.ones(SHAPES[3], bool)]
_MASKS[2][1] = False  # an empty channel, so channel-sparse is exercised


def _frames(key: bytes | None) -> list[bytes]:
    out = []
    for codecs in [[c] for c in CODEC_NAMES] + [None]:
        common = dict(shapes=SHAPES, sender=9, round=5, fingerprint=FP, fleet=FLEET, key=key, codecs=codecs)
        out.append(encode_frame(_MASKS, **common))  # type: ignore[arg-type]
        out.append(encode_frame(_MASKS, base=(4, BASE), **common))  # type: ignore[arg-type]
    return out


CRC_FRAMES = _frames(None)
HMAC_FRAMES = _frames(KEY)
LIMIT = default_max_frame_bytes(SHAPES)
FUZZ = dict(deadline=None, database=None, suppress_health_check=list(HealthCheck))


def check(data: bytes, key: bytes | None = None) -> None:
    """Decode; only FrameError may escape, and a success must have the right shapes."""
    try:
        frame = decode_frame(data, shapes=SHAPES, fingerprint=FP, fleet=FLEET, key=key, base_lookup=lambda s, r: BASE)
    except FrameError:
        return
    assert [m.shape for m in frame.masks] == SHAPES
    assert all(m.dtype == np.bool_ for m in frame.masks)


@st.composite
def flipped(draw: st.DrawFn, frames: list[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(frames)))
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(data) - 1))
        data[i] ^= draw(st.integers(1, 255))
    return bytes(data)


@settings(max_examples=1200, **FUZZ)
@given(data=flipped(CRC_FRAMES))
def test_fuzz_byte_flips_hit_the_checksum(data: bytes) -> None:
    check(data)


@settings(max_examples=300, **FUZZ)
@given(data=flipped(HMAC_FRAMES))
def test_fuzz_byte_flips_hit_the_hmac(data: bytes) -> None:
    check(data, KEY)


@settings(max_examples=2500, **FUZZ)
@given(data=flipped(CRC_FRAMES))
def test_fuzz_byte_flips_resealed(data: bytes) -> None:
    check(reseal(data))


@settings(max_examples=500, **FUZZ)
@given(data=flipped(HMAC_FRAMES))
def test_fuzz_byte_flips_resealed_hmac(data: bytes) -> None:
    check(reseal(data, KEY), KEY)


@settings(max_examples=1500, **FUZZ)
@given(frame=st.sampled_from(CRC_FRAMES), cut=st.integers(0, 400), extra=st.binary(max_size=40), seal=st.booleans(), grow=st.booleans())
def test_fuzz_truncations_and_extensions(frame: bytes, cut: int, extra: bytes, seal: bool, grow: bool) -> None:
    body = frame[:-4]
    body = body + extra if grow else body[: cut % (len(body) + 1)]
    check(reseal(body + b"\0\0\0\0") if seal else body)


# Header and table fields: (offset, struct format).
_FIELDS = [(5, "B"), (6, "B"), (7, "B"), (16, "<I"), (20, "<I"), (24, "<I"), (44, "<Q"), (52, "<H"), (54, "<H")]
for _i in range(len(SHAPES)):
    _FIELDS += [(56 + 12 * _i, "<H"), (58 + 12 * _i, "B"), (59 + 12 * _i, "B"), (60 + 12 * _i, "<I"), (64 + 12 * _i, "<I")]
_EDGE = [0, 1, 2, 3, 4, 5, 6, 7, 8, 15, 16, 40, 127, 128, 255, 256, 65535, 65536, 2**31, 2**32 - 1]


@settings(max_examples=2000, **FUZZ)
@given(frame=st.sampled_from(CRC_FRAMES), field=st.sampled_from(_FIELDS), value=st.one_of(st.sampled_from(_EDGE), st.integers(0, 2**32 - 1)))
def test_fuzz_field_mutations(frame: bytes, field: tuple[int, str], value: int) -> None:
    offset, fmt = field
    value %= 1 << (8 * struct.calcsize(fmt))
    data = bytearray(frame)
    struct.pack_into(fmt, data, offset, value)
    check(reseal(data))


@settings(max_examples=1500, **FUZZ)
@given(frame=st.sampled_from(CRC_FRAMES), layer=st.integers(0, len(SHAPES) - 1), codec=st.integers(0, 7), payload=st.binary(max_size=80))
def test_fuzz_payload_replacement(frame: bytes, layer: int, codec: int, payload: bytes) -> None:
    """Arbitrary bytes under every codec id: reaches each codec's parser directly."""
    from .helpers import replace_payload

    check(replace_payload(frame, layer, payload, codec_id=codec))


@settings(max_examples=500, **FUZZ)
@given(prefix=st.sampled_from([b"", b"DSLM", b"DSLM\x01", b"DSLM\x01\x00\x00\x00"]), tail=st.binary(max_size=300))
def test_fuzz_random_bytes(prefix: bytes, tail: bytes) -> None:
    check(prefix + tail)
    check(reseal(prefix + tail + b"\0\0\0\0"))


_BIG = bytes(range(256)) * 4
_CHUNKS = Chunker(max_message_bytes=200).split(_BIG)


@settings(max_examples=700, **FUZZ)
@given(
    picks=st.lists(st.tuples(st.integers(0, len(_CHUNKS) - 1), st.integers(0, 3), st.integers(0, 255), st.integers(0, 255)), max_size=12),
    now=st.floats(0, 100),
)
def test_fuzz_reassembler(picks: list[tuple[int, int, int, int]], now: float) -> None:
    """Mutated, repeated, reordered chunks: only FrameErrors, bounded state, exact frames."""
    clock = [0.0]
    r = Reassembler(max_frame_bytes=2048, timeout_s=30, max_pending=3, clock=lambda: clock[0])
    for idx, how, pos, val in picks:
        msg = bytearray(_CHUNKS[idx])
        if how == 1:
            msg[pos % len(msg)] ^= val or 1
        elif how == 2:
            msg = msg[: pos % (len(msg) + 1)]
        clock[0] += now / 10
        try:
            out = r.feed("peer", bytes(msg))
        except FrameError:
            continue
        assert out is None or len(out) <= 2048
        assert r.pending <= 3 and r.pending_bytes <= r.max_pending_bytes
