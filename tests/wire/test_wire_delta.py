"""Key/delta policy (MaskEncoderState) and the receiver's store (PeerMaskStore)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dslth_edge.wire import MaskEncoderState, MissingBaseError, PeerMaskStore

from .helpers import FLEET, FP, same

SHAPES = [(6, 10), (4, 3, 3)]
FRAME_ARGS = dict(shapes=SHAPES, sender=3, fingerprint=FP, fleet=FLEET)
DECODE_ARGS = dict(shapes=SHAPES, fingerprint=FP, fleet=FLEET)


def drift(seed: int, rounds: int, rate: float = 0.05) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    masks = [rng.random(s) < 0.3 for s in SHAPES]
    out = []
    for _ in range(rounds):
        masks = [m ^ (rng.random(m.shape) < rate) for m in masks]
        out.append(masks)
    return out


def test_key_every_k_rounds_optimistic() -> None:
    state = MaskEncoderState(key_interval=4, optimistic=True)
    store = PeerMaskStore()
    kinds = []
    for rnd, masks in enumerate(drift(0, 10)):
        enc = state.encode(masks, round=rnd, **FRAME_ARGS)
        dec = store.decode(enc.data, **DECODE_ARGS)
        kinds.append(enc.kind)
        assert same(dec.masks, masks)
        if enc.kind == "delta":
            assert enc.base_round == rnd - 1
    assert kinds == ["key", "delta", "delta", "delta", "key", "delta", "delta", "delta", "key", "delta"]


def test_confirmations_gate_broadcast_deltas() -> None:
    state = MaskEncoderState(key_interval=100, receivers=[1, 2])
    seq = drift(1, 5)
    assert state.encode(seq[0], round=0, **FRAME_ARGS).kind == "key"
    assert state.encode(seq[1], round=1, **FRAME_ARGS).kind == "key"  # nobody confirmed yet
    state.confirm(1, 1)
    assert state.encode(seq[2], round=2, **FRAME_ARGS).kind == "key"  # receiver 2 has not
    state.confirm(2, 1)
    state.confirm(1, 2)
    enc = state.encode(seq[3], round=3, **FRAME_ARGS)
    assert (enc.kind, enc.base_round) == ("delta", 1)  # the oldest round both hold


def test_unicast_request_key_and_reconnect() -> None:
    state = MaskEncoderState(key_interval=100)
    seq = drift(2, 6)
    assert state.encode(seq[0], round=0, receiver=7, **FRAME_ARGS).kind == "key"
    state.confirm(7, 0)
    assert state.encode(seq[1], round=1, receiver=7, **FRAME_ARGS).base_round == 0
    state.confirm(7, 1)
    state.request_key(7)
    assert state.encode(seq[2], round=2, receiver=7, **FRAME_ARGS).kind == "key"
    state.confirm(7, 2)
    assert state.encode(seq[3], round=3, receiver=7, **FRAME_ARGS).kind == "delta"
    state.reconnect()
    assert state.encode(seq[4], round=4, receiver=7, **FRAME_ARGS).kind == "key"


def test_history_bounds_the_bases() -> None:
    state = MaskEncoderState(key_interval=100, history=2)
    seq = drift(3, 6)
    state.encode(seq[0], round=0, receiver=1, **FRAME_ARGS)
    state.confirm(1, 0)
    state.encode(seq[1], round=1, receiver=1, **FRAME_ARGS)
    state.encode(seq[2], round=2, receiver=1, **FRAME_ARGS)  # round 0 falls out of history
    assert state.base_for(3, receiver=1) is None


def test_missing_base_then_key_request_recovers() -> None:
    """A lost frame: the receiver raises MissingBaseError, asks for a key, and recovers."""
    state = MaskEncoderState(key_interval=100, optimistic=True)
    store = PeerMaskStore()
    seq = drift(4, 6)
    store.decode(state.encode(seq[0], round=0, **FRAME_ARGS).data, **DECODE_ARGS)
    state.encode(seq[1], round=1, **FRAME_ARGS)  # lost in transit
    lost_next = state.encode(seq[2], round=2, **FRAME_ARGS)
    with pytest.raises(MissingBaseError) as err:
        store.decode(lost_next.data, **DECODE_ARGS)
    state.request_key(err.value.sender)
    enc = state.encode(seq[3], round=3, **FRAME_ARGS)
    assert enc.kind == "key"
    assert same(store.decode(enc.data, **DECODE_ARGS).masks, seq[3])
    enc = state.encode(seq[4], round=4, **FRAME_ARGS)
    assert enc.kind == "delta" and same(store.decode(enc.data, **DECODE_ARGS).masks, seq[4])


def test_store_bounds_and_copies() -> None:
    store = PeerMaskStore(rounds_per_sender=2, max_senders=2)
    masks = [np.zeros(s, bool) for s in SHAPES]
    for rnd in range(5):
        store.put(1, rnd, masks)
    assert store.rounds(1) == [3, 4]
    store.put(2, 0, masks)
    store.put(3, 0, masks)
    assert store.get(1, 4) is None and store.get(3, 0) is not None  # sender 1 evicted
    masks[0][0, 0] = True  # the caller's later edits do not leak into the store
    held = store.get(3, 0)
    assert held is not None and not held[0][0, 0]
    held[0][0, 1] = True  # nor do edits to what get() returned
    assert not store.get(3, 0)[0][0, 1]
    assert store.latest(3)[0] == 0 and store.latest(99) is None
    store.forget(3)
    assert store.get(3, 0) is None


@settings(max_examples=40, deadline=None, database=None)
@given(seed=st.integers(0, 2**31), k=st.integers(1, 5), drops=st.lists(st.booleans(), min_size=8, max_size=8))
def test_lossy_sequence_always_converges(seed: int, k: int, drops: list[bool]) -> None:
    """With random losses, every frame that decodes is exact, and keys restore sync."""
    state = MaskEncoderState(key_interval=k, optimistic=True)
    store = PeerMaskStore(rounds_per_sender=3)
    for rnd, masks in enumerate(drift(seed, 8, rate=0.1)):
        enc = state.encode(masks, round=rnd, **FRAME_ARGS)
        if drops[rnd]:
            continue
        try:
            assert same(store.decode(enc.data, **DECODE_ARGS).masks, masks)
        except MissingBaseError as err:
            state.request_key(err.sender)
