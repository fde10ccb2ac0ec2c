"""An exchange's resume state: plain data that ``torch.load(weights_only=True)`` reads, and an
exchange loaded from it continues exactly as the one it was taken from. No broker needed."""

from __future__ import annotations

import io
import time
from typing import Any

import numpy as np
import pytest
import torch

from dslth_edge.errors import CheckpointError
from dslth_edge.fleet.dense_exchange import DenseExchange
from dslth_edge.fleet.exchange import Exchange, PayloadExchange, ReceivedMasks
from dslth_edge.transport.memory import MemoryHub, MemoryTransport

SHAPES = [(8, 16), (4, 2, 3)]
FP = bytes(range(32))


def exchange(i: int, **kw: Any) -> Exchange:
    return Exchange(node_id=i, shapes=SHAPES, fingerprint=FP, fleet="t", **kw)


def masks(seed: int) -> list[torch.Tensor]:
    rng = np.random.default_rng(seed)
    return [torch.from_numpy(rng.random(s) < 0.3) for s in SHAPES]


def through_disk(state: dict[str, Any]) -> dict[str, Any]:
    """What a resume reads back: torch.save, then torch.load with weights_only=True."""
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, map_location="cpu", weights_only=True)


def same_state(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and torch.equal(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(same_state(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_state(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def same_received(a: ReceivedMasks, b: ReceivedMasks) -> bool:
    return (same_state({str(k): v for k, v in a.frames.items()}, {str(k): v for k, v in b.frames.items()})
            and same_state({str(k): v for k, v in a.latest.items()}, {str(k): v for k, v in b.latest.items()})
            and (a.bytes, a.rejected, a.duplicates, a.key_requests_sent)
            == (b.bytes, b.rejected, b.duplicates, b.key_requests_sent))


def collect(ex: PayloadExchange, t: MemoryTransport, rnd: int, expected: set[int]) -> ReceivedMasks:
    return ex.collect(t, rnd, expected, time.monotonic() + 5)


def wire(hub: MemoryHub) -> dict[int, MemoryTransport]:
    """0 and 1 send to 2; 2 sends (key requests) to 0 and 1."""
    return {0: hub.connect(0, [2]), 1: hub.connect(1, [2]), 2: hub.connect(2, [0, 1])}


def test_mask_exchange_state_round_trip() -> None:
    """Mid-run state (a frame buffered for a later round, a key request sent and honoured,
    codec bases on both sides) through torch.save/load(weights_only): the restored exchanges
    send the same bytes and receive the same frames as the originals, round after round."""
    t = wire(MemoryHub())
    ex = {i: exchange(i) for i in range(3)}
    ex[2].neighbours = {0, 1}
    for rnd in range(3):
        for i in (0, 1):
            t[i].publish(ex[i].encode(masks(10 * i + rnd), rnd))
        assert set(collect(ex[2], t[2], rnd, {0, 1}).frames) == {0, 1}
    t[0].publish(ex[0].encode(masks(3), 3))
    t[0].publish(ex[0].encode(masks(4), 4))  # a round ahead: buffered
    ex[1].encode(masks(13), 3)  # lost on the way
    t[1].publish(ex[1].encode(masks(14), 4))  # a delta on the lost round: a key request to 1
    got = collect(ex[2], t[2], 3, {0, 1})
    assert set(got.frames) == {0} and got.key_requests_sent == 1
    assert collect(ex[1], t[1], 3, set()).rejected == 0  # node 1 honours the request
    states = {i: through_disk(e.state()) for i, e in ex.items()}
    assert states[2]["future"][0][0] == 4 and states[2]["asked"] == [[1, 3]] and states[1]["honoured"] == [[2, 3]]
    restored = {i: exchange(i) for i in range(3)}
    for i, st in states.items():
        restored[i].load_state(st)
        assert same_state(restored[i].state(), ex[i].state())
    ta, tb = wire(MemoryHub()), wire(MemoryHub())
    kinds = []
    for rnd in range(4, 10):
        for i in (0, 1):
            if (i, rnd) == (0, 4):
                continue  # sent before the checkpoint
            a, b = ex[i].encode(masks(10 * i + rnd), rnd), restored[i].encode(masks(10 * i + rnd), rnd)
            assert a == b
            kinds.append(ex[i].last_kind)
            ta[i].publish(a)
            tb[i].publish(b)
        ga, gb = collect(ex[2], ta[2], rnd, {0, 1}), collect(restored[2], tb[2], rnd, {0, 1})
        assert set(ga.frames) == {0, 1} and same_received(ga, gb)
    assert kinds[0] == "key" and kinds.count("delta") >= 8  # node 1's requested key, then deltas on restored bases
    for i in range(3):
        assert same_state(restored[i].state(), ex[i].state())


def test_dense_exchange_state_round_trip() -> None:
    hub = MemoryHub()
    t0, t1 = hub.connect(0, [1]), hub.connect(1, [0])
    d0, d1 = (DenseExchange(node_id=i, num_params=5, fingerprint=FP, window=8) for i in (0, 1))
    vec = torch.arange(5, dtype=torch.float32) / 3
    t0.publish(d0.encode([vec], 2))
    assert not collect(d1, t1, 0, {0}).frames  # round 2's weights wait in the buffer
    st = through_disk(d1.state())
    back = DenseExchange(node_id=1, num_params=5, fingerprint=FP, window=8)
    back.load_state(st)
    assert same_state(back.state(), d1.state()) and back.newest == {0: 2}
    got = collect(back, hub.connect(1, [0]), 2, {0})
    assert torch.equal(got.frames[0][0], vec)


def test_foreign_or_malformed_state_is_refused_and_changes_nothing() -> None:
    t = wire(MemoryHub())
    e0, e2 = exchange(0), exchange(2)
    t[0].publish(e0.encode(masks(0), 0))
    t[0].publish(e0.encode(masks(1), 1))
    collect(e2, t[2], 0, {0})
    st = e2.state()
    target = exchange(2)
    before = target.state()
    dense = DenseExchange(node_id=2, num_params=5, fingerprint=FP).state()
    cases = {
        "node 2's exchange state, not node 1": (exchange(1), st),
        "other frames": (Exchange(node_id=2, shapes=SHAPES, fingerprint=bytes(32), fleet="t"), st),
        "malformed.*bytes": (target, b"\x80\x04\x95pickled exchange"),  # the old format's pickle.dumps
        "malformed.*shapes": (target, dense),
        "malformed.*MaskEncoderState": (target, {**st, "encoder": {**st["encoder"], "history": 0}}),
        "malformed.*tensor": (target, {**st, "future": [[1, [[0, [np.zeros((8, 16), bool)]]]]]}),
        "another model": (DenseExchange(node_id=2, num_params=6, fingerprint=FP), dense),
    }
    for match, (ex, bad) in cases.items():
        with pytest.raises(CheckpointError, match=match):
            ex.load_state(bad, "node-2.pt")  # type: ignore[arg-type]
    assert same_state(target.state(), before)
