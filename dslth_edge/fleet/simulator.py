"""The lock-step in-process simulator: every node of a :class:`FleetPlan` in this process,
over a :class:`~dslth_edge.transport.memory.MemoryHub`.

Each round runs every node's ``begin_round`` (local step, mask, publish) before any
node's ``finish_round`` (collect, average, fine-tune): the round loop itself is the
Node's, the same code a device runs over MQTT.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from dslth_edge.data import Dataset
from dslth_edge.errors import UsageError
from dslth_edge.fleet.node import RoundResult
from dslth_edge.fleet.plan import FleetOptions, FleetPlan, default_fleet_dir, make_node, plan_fleet
from dslth_edge.fleet.summary import build_summary, write_summary
from dslth_edge.transport.memory import MemoryHub

__all__ = ["simulate"]


def simulate(
    opts: FleetOptions,
    *,
    dataset: Dataset | None = None,
    on_start: Callable[[FleetPlan, Path], None] | None = None,
    on_round: Callable[[int, list[RoundResult]], None] | None = None,
    write_plots: bool = True,
) -> dict[str, Any]:
    """Run the fleet lock-step in this process; returns the summary (also written to disk)."""
    plan = plan_fleet(opts, dataset)
    run_dir = Path(opts.out) if opts.out else default_fleet_dir(opts)
    if any(run_dir.glob("node-*/metrics.jsonl")):
        raise UsageError(f"{run_dir} already holds a fleet run; choose another --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    hub = MemoryHub()
    nodes = [make_node(plan, i, hub.connect(i, plan.topology.neighbours(i)), run_dir) for i in range(opts.nodes)]
    for node in nodes:
        node.start()
    if on_start is not None:
        on_start(plan, run_dir)
    history: list[list[dict[str, Any]]] = []
    t0 = time.perf_counter()
    for k in range(opts.rounds):
        for node in nodes:  # every node's half-round (3) and publish, before anyone collects
            node.begin_round()
        results = [node.finish_round() for node in nodes]
        history.append([asdict(r) for r in results])
        if on_round is not None:
            on_round(k, results)
    summary = build_summary(plan, nodes, history, run_dir, seconds=time.perf_counter() - t0)
    write_summary(summary, run_dir, history, write_plots=write_plots)
    return summary
