"""The entropy coder is exactly the integer rANS of docs/wire-format.md section 3."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dslth_edge.wire.ans import byte_tables, decode_segments, encode_segments, entropy_bits, ideal_bits, model_k
from dslth_edge.wire.bitio import bytes_to_words, get_varint, pack_uints, put_varint, unpack_uints, words_to_bytes
from dslth_edge.wire.errors import CodecError

from . import spec_decoder

ONE = 1 << 24


def ref_encode(segments: list[tuple[list[int], int]]) -> list[int]:
    """Section 3.3 verbatim: push letters in reverse decoding order, then flush."""
    letters = []
    for bits, k in segments:
        n_bytes = len(bits) // 8
        table = spec_decoder.byte_table(k)
        for i in range(n_bytes):
            value = int("".join(map(str, bits[8 * i : 8 * i + 8])), 2)
            letters.append((table, value))
        letters += [([ONE - k, k], bit) for bit in bits[8 * n_bytes :]]
    state, out = 0, []
    for freqs, v in reversed(letters):
        c, f = sum(freqs[:v]), freqs[v]
        if (state >> 40) >= f:
            out.append(state & 0xFFFFFFFF)
            state >>= 32
        state = ((state // f) << 24) | (c + state % f)
    while state:
        out.append(state & 0xFFFFFFFF)
        state >>= 32
    return out


segments_st = st.lists(
    st.tuples(st.lists(st.integers(0, 1), max_size=300), st.integers(1, ONE - 1)),
    min_size=1,
    max_size=4,
)


@settings(max_examples=200, deadline=None, database=None)
@given(segments=segments_st)
def test_constriction_matches_the_documented_coder(segments: list[tuple[list[int], int]]) -> None:
    arrays = [(np.array(bits, dtype=bool), k) for bits, k in segments]
    payload = encode_segments(arrays)
    assert bytes_to_words(payload).tolist() == ref_encode(segments)
    decoded = decode_segments(payload, [(len(bits), k) for bits, k in segments])
    assert [d.astype(int).tolist() for d in decoded] == [bits for bits, _ in segments]
    flat = [b for bits, _ in segments for b in bits]
    assert spec_decoder.ans_decode(payload, [(len(bits), k) for bits, k in segments]) == flat


@settings(max_examples=100, deadline=None, database=None)
@given(ks=st.lists(st.integers(1, ONE - 1), min_size=1, max_size=5))
def test_byte_tables_match_the_documented_construction(ks: list[int]) -> None:
    tables = byte_tables(np.array(ks))
    for k, row in zip(ks, tables):
        assert row.tolist() == spec_decoder.byte_table(k)
        assert row.sum() == ONE and row.min() >= 1


def test_model_k_matches_the_formula() -> None:
    assert model_k(17, 128) == 2228224
    assert model_k(1, 10**9) == 1  # clamped up
    assert model_k(10**9 - 1, 10**9) == ONE - 1  # clamped down
    assert model_k(1, 2) == ONE // 2


@settings(max_examples=100, deadline=None, database=None)
@given(value=st.integers(0, 2**32 - 1))
def test_varint_round_trip(value: int) -> None:
    enc = put_varint(value)
    assert get_varint(enc + b"junk", 0) == (value, len(enc))


def test_varint_rejects_bad_encodings() -> None:
    for bad in (b"", b"\x80", b"\x80\x00", b"\xff\xff\xff\xff\x7f", b"\x80\x80\x80\x80\x80\x01"):
        with pytest.raises(CodecError):
            get_varint(bad, 0)
    with pytest.raises(ValueError):
        put_varint(2**32)


@settings(max_examples=100, deadline=None, database=None)
@given(width=st.integers(1, 32), data=st.data())
def test_uint_fields_round_trip(width: int, data: st.DataObject) -> None:
    values = data.draw(st.lists(st.integers(0, 2**width - 1), max_size=40))
    packed = pack_uints(np.array(values, dtype=np.int64), width)
    assert len(packed) == (len(values) * width + 7) // 8
    assert unpack_uints(packed, len(values), width).tolist() == values


def test_words_bytes_round_trip_and_canonical() -> None:
    for words in ([], [1], [0xFFFFFFFF], [5, 0x100], [0, 0, 0x12345678]):
        arr = np.array(words, dtype=np.uint32)
        assert bytes_to_words(words_to_bytes(arr)).tolist() == words
    with pytest.raises(CodecError):
        bytes_to_words(b"\x01\x00")


def test_bounds_helpers() -> None:
    assert entropy_bits(0, 10) == 0 and entropy_bits(10, 10) == 0
    assert abs(entropy_bits(3, 10) - 10 * 0.8812908992306927) < 1e-9
    assert ideal_bits(np.array([3]), np.array([10])) >= entropy_bits(3, 10) - 1e-6
