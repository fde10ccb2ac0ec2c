"""No broker needed: the start-up deadline, and hearing neighbours when nobody is waited for."""

from __future__ import annotations

import time

import torch

from dslth_edge.fleet.deadline import AdaptiveDeadline, FixedDeadline, StartupDeadline
from dslth_edge.fleet.exchange import Exchange
from dslth_edge.transport.memory import MemoryHub


def test_startup_deadline_first_round_only() -> None:
    d = StartupDeadline(FixedDeadline(2.0), 120.0)
    assert d.next_s() == 120.0
    d.observe(50.0, complete=True)
    assert d.next_s() == 2.0 and d.next_s() == 2.0
    assert StartupDeadline(FixedDeadline(2.0), 0.0).next_s() == 2.0  # neighbours missing: no extra wait
    a = StartupDeadline(AdaptiveDeadline(max_s=60.0, warmup=1), 120.0)
    a.next_s()
    a.observe(100.0, complete=True)  # the start-up wait is not learned from
    a.observe(0.5, complete=True)
    assert a.next_s() == max(2.0, 3 * 0.5 + 1.0)


def _exchange(i: int) -> Exchange:
    return Exchange(node_id=i, shapes=[(8, 4)], fingerprint=bytes(range(32)), fleet="t")


def test_collect_takes_arrivals_when_nobody_is_expected() -> None:
    """A node that waits for nobody (neighbours stale or out of step) must still read its inbox,
    or it never hears them again (the restarted node in the kill -9 test)."""
    hub = MemoryHub()
    t0, t1 = hub.connect(0, [1]), hub.connect(1, [0])
    ex0, ex1 = _exchange(0), _exchange(1)
    mask = [torch.rand(8, 4) > 0.5]
    t1.publish(ex1.encode(mask, 9))  # node 1 is far ahead of node 0
    got = ex0.collect(t0, 0, set(), time.monotonic() + 5)
    assert 1 in got.latest and torch.equal(got.latest[1][0], mask[0])
    assert ex0.newest[1] == 9 and 1 in ex0.out_of_step(0)
