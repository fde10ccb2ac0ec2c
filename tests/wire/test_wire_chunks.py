"""Chunker / Reassembler: round trips, expiry on an injected clock, bounded memory, bad chunks."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dslth_edge.wire import (
    ChunkError,
    Chunker,
    LengthError,
    MagicError,
    Reassembler,
    VersionError,
    decode_frame,
    default_max_frame_bytes,
    encode_frame,
)

from .helpers import FLEET, FP, same


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@settings(max_examples=200, deadline=None, database=None)
@given(size=st.integers(1, 3000), limit=st.integers(21, 700), order_seed=st.integers(0, 2**31), dup=st.booleans())
def test_chunks_round_trip_in_any_order(size: int, limit: int, order_seed: int, dup: bool) -> None:
    frame = b"DSLM" + bytes(np.random.default_rng(order_seed).integers(0, 256, size, dtype=np.uint8))
    parts = Chunker(limit).split(frame)
    assert all(len(p) <= limit for p in parts) or len(parts) == 1 and len(frame) <= limit
    order = np.random.default_rng(order_seed).permutation(len(parts))
    r = Reassembler(max_frame_bytes=len(frame))
    outs = []
    for i in order:
        outs.append(r.feed("a", parts[i]))
        if dup:
            assert r.feed("a", parts[i]) is None or len(parts) == 1
    done = [o for o in outs if o is not None]
    assert done == [frame] and r.pending == 0 and r.pending_bytes == 0


def test_real_frame_over_the_limit_is_chunked() -> None:
    shapes = [(64, 64, 3, 3)]
    mask = np.random.default_rng(0).random(shapes[0]) < 0.5
    frame = encode_frame([mask], shapes=shapes, sender=1, round=1, fingerprint=FP, fleet=FLEET, codecs=["raw"])
    parts = Chunker(max_message_bytes=4096).split(frame)
    assert len(parts) == -(-len(frame) // (4096 - 20))
    r = Reassembler(max_frame_bytes=default_max_frame_bytes(shapes))
    out = [r.feed(("mqtt", "node/1"), p) for p in parts][-1]
    assert out == frame
    assert same(decode_frame(out, shapes=shapes, fingerprint=FP, fleet=FLEET).masks, [mask])


def test_small_frames_pass_through_untouched() -> None:
    assert Chunker().split(b"DSLM" + b"x" * 100) == [b"DSLM" + b"x" * 100]
    assert Reassembler(1000).feed("a", b"DSLM1234") == b"DSLM1234"
    with pytest.raises(LengthError):
        Reassembler(10).feed("a", b"DSLM" + b"x" * 20)


def test_sources_and_ids_do_not_mix() -> None:
    frame_a, frame_b = b"DSLM" + b"a" * 500, b"DSLM" + b"b" * 500
    chunker = Chunker(200)
    pa, pb = chunker.split(frame_a), chunker.split(frame_b)
    r = Reassembler(1000)
    got = []
    for x, y in zip(pa, pb):
        got += [r.feed("same", x), r.feed("same", y)]  # two frames interleaved, one source
    assert [g for g in got if g] == [frame_a, frame_b]
    pa2 = Chunker(200).split(frame_a)
    r2 = Reassembler(1000)
    assert [r2.feed(src, p) for src in ("x", "y") for p in pa2[:1]] == [None, None]
    assert r2.pending == 2


def test_incomplete_sets_expire_on_the_clock() -> None:
    clock = Clock()
    r = Reassembler(1000, timeout_s=5.0, clock=clock)
    parts = Chunker(200).split(b"DSLM" + b"z" * 600)
    r.feed("a", parts[0])
    clock.now = 4.9
    assert r.expire() == 0
    clock.now = 5.1
    assert r.expire() == 1 and r.pending == 0 and r.expired == 1
    # A late sibling starts a fresh set and never completes with the expired parts.
    assert all(r.feed("a", p) is None for p in parts[1:])
    clock.now = 20
    r.expire()
    assert r.pending == 0 and r.pending_bytes == 0


def test_memory_is_bounded() -> None:
    r = Reassembler(1000, max_pending=3, max_pending_bytes=1200)
    chunker = Chunker(220)
    for i in range(20):
        parts = chunker.split(b"DSLM" + bytes([i]) * 900)
        r.feed(i, parts[0])
        r.feed(i, parts[1])
        assert r.pending <= 3 and r.pending_bytes <= 1200
    assert r.evicted > 0


def _chunk(index: int, count: int, total: int, data: bytes, *, magic: bytes = b"DSLC", version: int = 1, res: int = 0) -> bytes:
    return struct.pack("<4sBBHHHII", magic, version, res, index, count, 0, 77, total) + data


def test_malformed_chunks() -> None:
    r = Reassembler(1000)
    with pytest.raises(MagicError):
        r.feed("a", _chunk(0, 2, 10, b"x" * 5, magic=b"NOPE"))
    with pytest.raises(VersionError):
        r.feed("a", _chunk(0, 2, 10, b"x" * 5, version=9))
    with pytest.raises(ChunkError):
        r.feed("a", _chunk(0, 2, 10, b"x" * 5, res=1))
    with pytest.raises(ChunkError):
        r.feed("a", _chunk(2, 2, 10, b"x" * 5))  # index out of range
    with pytest.raises(ChunkError):
        r.feed("a", _chunk(0, 0, 10, b""))
    with pytest.raises(ChunkError):
        r.feed("a", _chunk(0, 2, 10, b"x" * 4))  # wrong share length
    with pytest.raises(ChunkError):
        r.feed("a", _chunk(0, 4, 3, b"x"))  # more chunks than bytes
    with pytest.raises(ChunkError):
        r.feed("a", _chunk(0, 4, 5, b"xx"))  # shares of 2: three cover 6 >= 5, the 4th is empty
    with pytest.raises(LengthError):
        r.feed("a", _chunk(0, 2, 10**9, b"x"))  # bounded total, refused before buffering
    with pytest.raises(ChunkError):
        r.feed("a", b"DSL")
    assert r.feed("a", _chunk(0, 2, 10, b"x" * 5)) is None
    with pytest.raises(ChunkError):  # a sibling that disagrees on the total
        r.feed("a", _chunk(1, 2, 12, b"x" * 6))
    assert r.feed("a", _chunk(1, 2, 10, b"y" * 5)) == b"x" * 5 + b"y" * 5


def test_chunker_arguments() -> None:
    with pytest.raises(ValueError):
        Chunker(20)
    with pytest.raises(ValueError):
        Reassembler(0)
