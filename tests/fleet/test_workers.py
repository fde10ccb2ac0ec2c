"""`fleet run`'s workers: how many it starts (a worker hosts at most MAX_NODES_PER_WORKER
MQTT clients: paho's select() stops at file descriptor 1023, and past ~330 clients per
process the newest never connected), and their start gate (nodes connect once all are built)."""

from __future__ import annotations

import os

import pytest

from dslth_edge.errors import UsageError
from dslth_edge.fleet.processes import MAX_NODES_PER_WORKER, worker_count


def test_default_is_a_worker_per_core_and_more_for_large_fleets() -> None:
    cores = os.cpu_count() or 1
    assert worker_count(3) == min(3, cores)
    big = 4 * MAX_NODES_PER_WORKER * cores
    assert worker_count(big) == 4 * cores
    assert -(-big // worker_count(big)) <= MAX_NODES_PER_WORKER


def test_asked_workers_are_kept_or_refused_with_the_number_needed() -> None:
    assert worker_count(10, 3) == 3 and worker_count(2, 8) == 2 and worker_count(10, 0) == worker_count(10)
    with pytest.raises(UsageError, match="1000 nodes need at least 4 workers.*--workers 4"):
        worker_count(1000, 2)


def test_start_gate_holds_nodes_until_every_one_is_built_or_failed() -> None:
    import threading

    from dslth_edge.fleet.processes import StartGate

    gate = StartGate([0, 1, 2])
    passed: list[int] = []
    waiters = [threading.Thread(target=lambda i=i: (gate.wait(i), passed.append(i))) for i in (0, 1)]
    for t in waiters:
        t.start()
    for t in waiters:
        t.join(0.2)
    assert passed == []  # node 2 is still being built
    gate.arrive(2)  # ... or failed: it holds nobody back
    for t in waiters:
        t.join(10)
    assert sorted(passed) == [0, 1]
    gate.arrive(2)  # idempotent
    gate.wait(0)  # everyone is in: no wait
