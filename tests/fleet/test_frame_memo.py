"""The nodes of one process decode each neighbour's frame once (FrameMemo), and every
receiver still gets exactly what its own decode would give it: the same masks, the same
stored bases, the same errors."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
import torch

from dslth_edge.fleet.exchange import Exchange, FrameMemo, ReceivedMasks
from dslth_edge.fleet.sharing import share_frame_memo
from dslth_edge.transport.memory import MemoryHub, MemoryTransport
from dslth_edge.wire import BaseMismatchError

SHAPES = [(8, 16), (4, 2, 3), (64, 40)]
FP = bytes(range(32))


def exchange(i: int, **kw: Any) -> Exchange:
    return Exchange(node_id=i, shapes=SHAPES, fingerprint=FP, fleet="t", **kw)


def masks(seed: int, p: float = 0.3) -> list[torch.Tensor]:
    rng = np.random.default_rng(seed)
    return [torch.from_numpy(rng.random(s) < p) for s in SHAPES]


def drift(prev: list[torch.Tensor], seed: int) -> list[torch.Tensor]:
    """A few bits flipped: the next round's masks, so the sender sends deltas."""
    rng = np.random.default_rng(seed)
    return [m ^ torch.from_numpy(rng.random(m.shape) < 0.05) for m in prev]


def collect(ex: Exchange, t: MemoryTransport, rnd: int, expected: set[int]) -> ReceivedMasks:
    return ex.collect(t, rnd, expected, time.monotonic() + 5)


def star(hub: MemoryHub, receivers: int) -> tuple[MemoryTransport, list[MemoryTransport]]:
    """Node 0 sends to nodes 1..receivers."""
    ids = list(range(1, receivers + 1))
    return hub.connect(0, ids), [hub.connect(i, [0]) for i in ids]


def test_receivers_sharing_a_memo_get_what_their_own_decode_gives() -> None:
    """Key frame, then deltas: receivers with a memo hold the same masks and bases as one
    decoding alone, and the frame is decoded once per round, not once per receiver."""
    sender_t, recv_t = star(MemoryHub(), 4)
    sender = exchange(0)
    rx = [exchange(i) for i in range(1, 5)]
    memo = FrameMemo(capacity=8)
    for ex in rx[1:]:
        ex.memo = memo  # rx[0] decodes alone: the reference
    m = masks(0)
    for rnd in range(6):
        sent = m
        sender_t.publish(sender.encode(sent, rnd))
        got = [collect(ex, t, rnd, {0}) for ex, t in zip(rx, recv_t)]
        for g in got:
            assert list(g.frames) == [0] and g.rejected == 0
            assert all(torch.equal(a, b) for a, b in zip(g.frames[0], sent))
        for ex in rx[1:]:  # the same bases held for later deltas
            assert len(_bits(ex)) == len(_bits(rx[0])) and all(
                np.array_equal(x, y) for x, y in zip(_bits(ex), _bits(rx[0])))
        m = drift(m, rnd + 1)
    assert sender.last_kind == "delta"
    assert memo.misses == 6 and memo.hits == 6 * 2  # one decode per frame; the two others reuse it


def _bits(ex: Exchange) -> list[np.ndarray]:
    return [bits for _, rounds in ex.store.state()["peers"] for _, packed in rounds for bits, _ in packed]


def test_a_receiver_without_the_base_still_asks_for_a_key_frame() -> None:
    """The memo holds a delta, but this receiver missed its base: no reuse, a key request,
    exactly as without a memo."""
    hub = MemoryHub()
    sender_t, (t1, t2) = star(hub, 2)
    sender, a, b = exchange(0), exchange(1), exchange(2)
    memo = FrameMemo(capacity=8)
    a.memo = b.memo = memo
    m0 = masks(1)
    sender_t.publish(sender.encode(m0, 0))
    collect(a, t1, 0, {0})  # only a hears the key frame
    t2.poll(0)  # b's copy is lost
    m1 = drift(m0, 2)
    sender_t.publish(sender.encode(m1, 1))
    assert sender.last_kind == "delta"
    got_a = collect(a, t1, 1, {0})
    got_b = b.collect(t2, 1, {0}, time.monotonic() + 0.2)
    assert all(torch.equal(x, y) for x, y in zip(got_a.frames[0], m1))
    assert 0 not in got_b.frames and got_b.key_requests_sent == 1


def test_a_receiver_with_another_base_decodes_for_itself() -> None:
    """Same delta bytes, but this receiver's stored base of that round differs (a forged or
    stale copy): the memo's result is not used; its own decode refuses the delta (the base
    digest differs: a key request, never the delta applied to the wrong base)."""
    sender = exchange(0)
    a, b = exchange(1), exchange(2)
    memo = FrameMemo(capacity=8)
    a.memo = b.memo = memo
    m0 = masks(3)
    key = sender.encode(m0, 0)
    other = [x.clone() for x in m0]
    other[2][0, :5] = ~other[2][0, :5]
    rnd0_a = a._decode(key, 0)
    rnd0_a[2]()  # commit the base
    b.store.put(0, 0, [x.numpy() for x in other])  # b holds a different round-0 base
    m1 = drift(m0, 4)
    delta = sender.encode(m1, 1)
    _, got_a, _ = a._decode(delta, 0)
    with pytest.raises(BaseMismatchError):
        b._decode(delta, 0)
    assert all(torch.equal(x, y) for x, y in zip(got_a, m1))
    assert memo.hits == 0


def test_a_memoized_frame_on_another_nodes_topic_is_still_refused() -> None:
    from dslth_edge.transport.identity import AuthError

    sender, a, b = exchange(0), exchange(1), exchange(2)
    a.memo = b.memo = FrameMemo(capacity=4)
    data = sender.encode(masks(5), 0)
    a._decode(data, 0)
    with pytest.raises(AuthError):
        b._decode(data, 7)  # the same bytes, on node 7's topic


def test_memo_is_bounded_and_shared_per_weights_and_fleet() -> None:
    memo = FrameMemo(capacity=2)
    sender, a = exchange(0), exchange(1)
    a.memo = memo
    for rnd in range(4):
        _, _, commit = a._decode(sender.encode(masks(10 + rnd), rnd), 0)
        commit()
    assert len(memo._entries) == 2
    x, y, z = exchange(5), exchange(6), Exchange(node_id=7, shapes=SHAPES, fingerprint=FP, fleet="other")
    assert share_frame_memo(x) is share_frame_memo(y) is x.memo is y.memo
    assert share_frame_memo(z) is not x.memo
