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


def test_store_decode_with_sender_refuses_before_storing() -> None:
    """A frame naming sender 3 that came from node 5 is refused and leaves the store as it was."""
    from dslth_edge.wire import HeaderError

    masks = drift(1, 1)[0]
    data = MaskEncoderState().encode(masks, round=0, **FRAME_ARGS).data
    store = PeerMaskStore()
    with pytest.raises(HeaderError, match="names sender 3"):
        store.decode(data, sender=5, **DECODE_ARGS)
    assert store.get(3, 0) is None and store.rounds(3) == []
    assert same(store.decode(data, sender=3, **DECODE_ARGS).masks, masks) and store.rounds(3) == [0]


def _state_equal(a: object, b: object) -> bool:
    """Two plain states (dicts, lists, ints, arrays …) hold the same values, arrays by dtype and content."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(_state_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_state_equal(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def test_encoder_and_store_state_round_trip() -> None:
    """state() is plain data (no object of this package); load_state() of it into fresh objects
    continues exactly: the same frames, bases and decisions as the originals, round after round."""
    seq = drift(7, 12)
    enc = MaskEncoderState(key_interval=5, history=3, receivers=[4, 2], optimistic=True)
    store = PeerMaskStore(rounds_per_sender=2, max_senders=3)
    for rnd in range(6):
        store.decode(enc.encode(seq[rnd], round=rnd, **FRAME_ARGS).data, **DECODE_ARGS)
    enc.confirm(4, 5)
    enc.request_key(2)  # a unicast request: the broadcast's key flag (None) is set too
    enc.sent(5, seq[5], base_round=None, receiver=9)  # a unicast key: a per-target last key
    store.put(8, 1, seq[1])
    store.put(1, 0, seq[0])  # senders 3, 8, 1 in update order; 1 round each kept for 8 and 1
    es, ss = enc.state(), store.state()
    plain = (dict, list, int, bool, str, type(None), np.ndarray)

    def walk(x: object) -> None:
        assert isinstance(x, plain), type(x)
        for v in (x.values() if isinstance(x, dict) else x if isinstance(x, list) else ()):
            walk(v)

    walk(es)
    walk(ss)
    assert es["key_requested"] == [None, 2] and [9, 5] in es["last_key"] and [s for s, _ in ss["peers"]] == [3, 8, 1]
    enc2, store2 = MaskEncoderState(), PeerMaskStore()
    enc2.load_state(es)
    store2.load_state(ss)
    assert _state_equal(enc2.state(), es) and _state_equal(store2.state(), ss)
    es["sent"][0][1][0][0, 0] ^= True  # the state is a copy: editing it changes neither object
    assert not _state_equal(enc.state(), es) and not _state_equal(enc2.state(), es)
    kinds = []
    for rnd in range(6, 12):
        a = enc.encode(seq[rnd], round=rnd, **FRAME_ARGS)
        b = enc2.encode(seq[rnd], round=rnd, **FRAME_ARGS)
        assert a.data == b.data
        kinds.append(a.kind)
        assert same(store.decode(a.data, **DECODE_ARGS).masks, store2.decode(b.data, **DECODE_ARGS).masks)
        assert _state_equal(store.state(), store2.state())
    assert kinds[0] == "key" and "delta" in kinds  # the requested key, then deltas on restored bases
    store.put(5, 0, seq[0])  # the least recently updated sender (8) is evicted from both
    store2.put(5, 0, seq[0])
    assert store.get(8, 1) is None and store2.get(8, 1) is None and store2.get(1, 0) is not None


def test_malformed_state_is_refused_and_changes_nothing() -> None:
    enc, store = MaskEncoderState(optimistic=True), PeerMaskStore()
    store.decode(enc.encode(drift(2, 1)[0], round=0, **FRAME_ARGS).data, **DECODE_ARGS)
    es, ss = enc.state(), store.state()
    bad_encoder = [
        {**es, "sent": [[0, [m.astype(np.uint8) for m in es["sent"][0][1]]]]},  # not bool masks
        {**es, "history": 0},
        {**es, "confirmed": [["1", 0]]},
        {k: v for k, v in es.items() if k != "last_key"},
        b"\x80\x04pickled",
    ]
    for bad in bad_encoder:
        with pytest.raises(ValueError, match="MaskEncoderState"):
            enc.load_state(bad)  # type: ignore[arg-type]
    bits = ss["peers"][0][1][0][1][0][0]
    bad_store = [
        {**ss, "peers": [[3, [[0, [[bits[:-1], SHAPES[0]]]]]]]},  # too few packed bytes for the shape
        {**ss, "peers": [[3, [[0, [[bits.astype(np.int64), SHAPES[0]]]]]]]},
        {**ss, "max_senders": True},
    ]
    for bad in bad_store:
        with pytest.raises(ValueError, match="PeerMaskStore"):
            store.load_state(bad)
    assert _state_equal(enc.state(), es) and _state_equal(store.state(), ss)
