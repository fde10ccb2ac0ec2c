"""Wire version 2: a delta names its base (digest), and version 1 frames are refused clearly."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from dslth_edge.wire import (
    BaseMismatchError,
    MissingBaseError,
    PeerMaskStore,
    VersionError,
    decode_frame,
    encode_frame,
    mask_digest,
)

from . import spec_decoder
from .helpers import FLEET, FP, HEADER, reseal

SHAPES = [(4, 3, 3), (6, 10)]


def _masks(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.random(s) < 0.4 for s in SHAPES]


def test_delta_on_another_base_of_the_same_round_is_refused_not_misdecoded() -> None:
    """A sender that re-did round 3 after a restart: the receiver holds the old round 3."""
    old_base, new_base, now = _masks(1), _masks(2), _masks(3)
    store = PeerMaskStore()
    store.put(5, 3, old_base)
    delta = encode_frame(now, shapes=SHAPES, sender=5, round=4, fingerprint=FP, fleet=FLEET, base=(3, new_base))
    with pytest.raises(BaseMismatchError) as err:
        decode_frame(delta, shapes=SHAPES, fingerprint=FP, fleet=FLEET, base_lookup=store.get)
    assert isinstance(err.value, MissingBaseError)  # handled like a lost base: a key request
    assert (err.value.sender, err.value.base_round) == (5, 3)
    store.put(5, 3, new_base)  # the right base: the same bytes decode to the sender's masks
    got = decode_frame(delta, shapes=SHAPES, fingerprint=FP, fleet=FLEET, base_lookup=store.get)
    assert all(np.array_equal(a, b) for a, b in zip(got.masks, now))


def test_the_digest_is_in_the_header_and_covers_the_base() -> None:
    base, now = _masks(4), _masks(5)
    delta = encode_frame(now, shapes=SHAPES, sender=1, round=2, fingerprint=FP, fleet=FLEET, base=(1, base))
    assert delta[44:52] == mask_digest(base)
    flipped = [m.copy() for m in base]
    flipped[1][5, 9] ^= True  # one bit of one layer
    assert mask_digest(flipped) != mask_digest(base)
    key = encode_frame(now, shapes=SHAPES, sender=1, round=2, fingerprint=FP, fleet=FLEET)
    assert key[44:52] == bytes(8)


def test_spec_decoder_reads_and_checks_a_delta() -> None:
    base, now = _masks(6), _masks(7)
    delta = encode_frame(now, shapes=SHAPES, sender=1, round=2, fingerprint=FP, fleet=FLEET, base=(0, base))
    flat = [m.reshape(-1).astype(int).tolist() for m in base]
    ref = spec_decoder.decode(delta, shapes=SHAPES, fleet=FLEET, fingerprint=FP, base=flat)
    assert ref["layers"] == [m.reshape(-1).astype(int).tolist() for m in now]
    other = [m.reshape(-1).astype(int).tolist() for m in _masks(8)]
    with pytest.raises(spec_decoder.SpecError):
        spec_decoder.decode(delta, shapes=SHAPES, fleet=FLEET, fingerprint=FP, base=other)


def test_key_frame_with_a_digest_is_malformed() -> None:
    key = bytearray(encode_frame(_masks(9), shapes=SHAPES, sender=1, round=2, fingerprint=FP, fleet=FLEET))
    key[44] = 1
    with pytest.raises(Exception, match="base digest"):
        decode_frame(reseal(key), shapes=SHAPES, fingerprint=FP, fleet=FLEET)


def test_version_1_frames_are_refused_with_a_clear_error() -> None:
    """A node of an older dslth-edge (48-byte header, no base digest) is told so, not misread."""
    v2 = encode_frame(_masks(10), shapes=SHAPES, sender=1, round=2, fingerprint=FP, fleet=FLEET)
    v1 = bytearray(v2[:44] + v2[52:-4])  # the version 1 layout: no digest field
    v1[4] = 1
    struct.pack_into("<H", v1, 44, len(SHAPES))
    with pytest.raises(VersionError, match="version 1 .*older dslth-edge.*speaks 2"):
        decode_frame(reseal(bytes(v1) + bytes(4)), shapes=SHAPES, fingerprint=FP, fleet=FLEET)
    assert HEADER == 56
