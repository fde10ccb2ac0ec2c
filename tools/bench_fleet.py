#!/usr/bin/env python3
"""Benchmark the fleet over MQTT on loopback: gossip overhead, broker bytes, largest fleet.

    python tools/bench_fleet.py overhead --nodes 20 --model paper-cnn --rounds 10 --broker mosquitto|embedded
    python tools/bench_fleet.py bytes    --nodes 20 --model paper-cnn --rounds 10
    python tools/bench_fleet.py scale    --nodes 100 --model mcu-cnn --rounds 5

* overhead: (round wall time - compute time) / round wall time, mean over nodes and
  rounds after the first (start-up), from the nodes' metrics. Target <= 10 %.
* bytes: Mosquitto's $SYS byte counters over the run against the frame bytes the nodes
  published (ingress) and the frame bytes delivered to subscribers (egress). Target
  <= 1.05x.
* scale: N MCU-CNN nodes in W processes; rounds per minute. Target: N >= 100.

Prints one JSON object per run. Figures depend on the machine: say how many cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dslth_edge.fleet.plan import FleetOptions  # noqa: E402
from dslth_edge.fleet.device_node import NodeRunOptions  # noqa: E402
from dslth_edge.fleet.processes import FleetRunOptions, run_fleet  # noqa: E402
from dslth_edge.runs.rundir import read_metrics  # noqa: E402
from tests.transport.brokers import Embedded, Mosquitto  # noqa: E402


def _broker(kind: str, tmp: Path, sys_interval: bool = False):
    if kind == "embedded":
        return Embedded().start()
    b = Mosquitto(tmp / "mosquitto")
    if sys_interval:
        b.conf.write_text(b.conf.read_text() + "sys_interval 1\n")
    return b.start()


class SysBytes:
    """Mosquitto's $SYS/broker/bytes/{received,sent} (updated every sys_interval)."""

    def __init__(self, port: int) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.values: dict[str, int] = {}
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-sys")
        self.client.on_message = lambda c, u, m: self.values.__setitem__(m.topic.rsplit("/", 1)[1], int(m.payload))
        self.client.connect("127.0.0.1", port)
        self.client.subscribe([("$SYS/broker/bytes/received", 0), ("$SYS/broker/bytes/sent", 0)])
        self.client.loop_start()

    def snapshot(self, wait: float = 2.5) -> dict[str, int]:
        time.sleep(wait)  # one fresh $SYS publication
        return dict(self.values)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def run(args: argparse.Namespace) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    broker = _broker(args.broker, tmp, sys_interval=args.what == "bytes")
    sysb = SysBytes(broker.port) if args.what == "bytes" and args.broker == "mosquitto" else None
    before = sysb.snapshot() if sysb else {}
    opts = FleetOptions(nodes=args.nodes, topology=args.topology, dataset=args.dataset, model=args.model, keep=args.keep,
                        partition="classes:2", rounds=args.rounds, eval_every=0, eval_samples=200, out=str(tmp / "run"),
                        fleet_id="bench")
    t0 = time.perf_counter()
    summary = run_fleet(opts, FleetRunOptions(broker_url=broker.url, workers=args.workers,
                                              node=NodeRunOptions(round_deadline_s=args.deadline)), write_plots=False)
    wall = time.perf_counter() - t0
    after = sysb.snapshot() if sysb else {}
    if sysb:
        sysb.close()
    broker.stop()
    rows = [r for i in range(args.nodes) for r in read_metrics(tmp / "run" / f"node-{i}" / "metrics.jsonl") if r["round"] > 0]
    overhead = statistics.fmean((r["t_round_s"] - r["t_compute_s"]) / r["t_round_s"] for r in rows)
    frames_out = sum(r["bytes_sent"] for r in rows)
    frames_in = sum(r["bytes_received"] for r in rows)
    out = {
        "what": args.what, "broker": args.broker, "nodes": args.nodes, "model": args.model, "rounds": args.rounds,
        "workers": args.workers, "cpus": os.cpu_count(), "wall_s": round(wall, 1),
        "fleet_seconds": round(summary["seconds"], 1),
        "rounds_per_minute": round(60 * args.rounds / summary["seconds"], 2),  # start-up included
        # after start-up: one round is a node's mean round wall time (round 0 excluded)
        "steady_rounds_per_minute": round(60 / statistics.fmean(r["t_round_s"] for r in rows), 2),
        "gossip_overhead": round(overhead, 4),
        "round_s_mean": round(statistics.fmean(r["t_round_s"] for r in rows), 3),
        "compute_s_mean": round(statistics.fmean(r["t_compute_s"] for r in rows), 3),
        "frame_bytes_per_round": frames_out / max(args.rounds - 1, 1),
    }
    if before and after:
        rounds = args.rounds
        all_out = summary["final"]["bytes_total"]
        all_in = sum(r["bytes_received"] for i in range(args.nodes)
                     for r in read_metrics(tmp / "run" / f"node-{i}" / "metrics.jsonl"))
        recv = after["received"] - before["received"]
        sent = after["sent"] - before["sent"]
        out.update(broker_bytes_received_per_round=recv / rounds, broker_bytes_sent_per_round=sent / rounds,
                   frame_bytes_published_per_round=all_out / rounds, frame_bytes_delivered_per_round=all_in / rounds,
                   ingress_ratio=round(recv / max(all_out, 1), 4), egress_ratio=round(sent / max(all_in, 1), 4),
                   total_ratio=round((recv + sent) / max(all_out + all_in, 1), 4))
    del frames_in
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["overhead", "bytes", "scale"])
    ap.add_argument("--nodes", type=int, default=20)
    ap.add_argument("--model", default="paper-cnn")
    ap.add_argument("--dataset", default="synthetic")
    ap.add_argument("--topology", default="ring")
    ap.add_argument("--keep", type=float, default=0.5)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--deadline", type=float, default=120.0)
    ap.add_argument("--broker", choices=["mosquitto", "embedded"], default="mosquitto")
    args = ap.parse_args()
    print(json.dumps(run(args)), flush=True)


if __name__ == "__main__":
    main()
