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
* fleet (issue 27): for each of --sizes (default 100, 500, 1000) MCU-CNN nodes, ring,
  ``fleet run`` over Mosquitto with the adaptive deadline, and ``simulate`` with the same
  options (cached under --cache): rounds per minute, seconds per round after start-up,
  start-up time (launch until every node finished round 0), peak RSS per worker, deadline
  misses, and how many final masks equal the simulator's. Run it niced on a shared machine:

    nice -n 10 python tools/bench_fleet.py fleet --sizes 100,500 --rounds 5 --cache /tmp/bench-fleet-sim

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
        "workers": summary["transport"]["workers"], "cpus": os.cpu_count(), "wall_s": round(wall, 1),
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


def _simulated(opts: FleetOptions, cache: Path) -> Path:
    """The simulator's run directory for ``opts`` (cached: simulate once per configuration)."""
    from dataclasses import asdict, replace
    import hashlib

    from dslth_edge.fleet.simulator import simulate

    key = hashlib.sha256(json.dumps({k: v for k, v in asdict(opts).items() if k != "out"}, sort_keys=True,
                                    default=str).encode()).hexdigest()[:16]
    out = cache / f"sim-{opts.nodes}-{key}"
    if not all((out / f"node-{i}" / "mask.npz").is_file() for i in range(opts.nodes)):
        t0 = time.perf_counter()
        simulate(replace(opts, out=str(out), fleet_id="sim"), write_plots=False)
        print(json.dumps({"simulated": opts.nodes, "seconds": round(time.perf_counter() - t0, 1)}), flush=True)
    return out


def fleet_at_scale(args: argparse.Namespace, nodes: int) -> dict:
    """One ``fleet run`` of ``nodes`` over a private Mosquitto, against the simulator's masks."""
    import threading

    import numpy as np

    from dslth_edge.errors import DslthError
    from dslth_edge.fleet.device_node import read_misses
    from dslth_edge.runs.rundir import load_mask

    tmp = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    opts = FleetOptions(nodes=nodes, topology=args.topology, dataset=args.dataset, model=args.model, keep=args.keep,
                        partition="classes:2", rounds=args.rounds, eval_every=0, eval_samples=200,
                        out=str(tmp / "run"), fleet_id="bench")
    sim_dir = _simulated(opts, Path(args.cache))
    broker = _broker("mosquitto", tmp)
    run_dir = tmp / "run"
    first_round: dict[str, float] = {}
    done = threading.Event()

    def watch_start(t0: float) -> None:  # launch until every node finished round 0
        while not done.is_set():
            if all((run_dir / f"node-{i}" / "metrics.jsonl").is_file() for i in range(nodes)):
                first_round["s"] = time.perf_counter() - t0
                return
            time.sleep(0.5)

    t0 = time.perf_counter()
    threading.Thread(target=watch_start, args=(t0,), daemon=True).start()
    try:
        summary = run_fleet(opts, FleetRunOptions(broker_url=broker.url, workers=args.workers,
                                                  node=NodeRunOptions(deadline_max_s=args.deadline_max)),
                            write_plots=False)
    except DslthError as exc:  # a failed size is a row of the table, not the end of the benchmark
        return {"what": "fleet", "nodes": nodes, "rounds": args.rounds, "workers": args.workers,
                "cpus": os.cpu_count(), "model": args.model, "failed": str(exc)[:500],
                "seconds": round(time.perf_counter() - t0, 1), "run_dir": str(run_dir)}
    finally:
        done.set()
        broker.stop()
    seconds = summary["seconds"]
    startup = first_round.get("s", float("nan"))
    workers = int(summary["transport"]["workers"])  # the launcher's choice unless --workers
    peak = [max((r.get("peak_rss_bytes") or 0 for i in range(w, nodes, workers)
                 for r in read_metrics(run_dir / f"node-{i}" / "metrics.jsonl")), default=0)
            for w in range(workers)]
    equal = 0
    for i in range(nodes):
        a, b = load_mask(run_dir / f"node-{i}" / "mask.npz").masks, load_mask(sim_dir / f"node-{i}" / "mask.npz").masks
        equal += all(np.array_equal(x, y) for x, y in zip(a, b))
    misses = sum(len(m) for i in range(nodes) for m in read_misses(run_dir / f"node-{i}").values())
    return {"what": "fleet", "nodes": nodes, "rounds": args.rounds, "workers": workers, "cpus": os.cpu_count(),
            "model": args.model, "seconds": round(seconds, 1), "rounds_per_minute": round(60 * args.rounds / seconds, 2),
            "s_per_round_after_startup": round((seconds - startup) / max(args.rounds - 1, 1), 1),
            "startup_s": round(startup, 1), "peak_rss_mib_per_worker": [round(p / 2**20) for p in peak],
            "deadline_misses": misses, "masks_equal_simulator": f"{equal}/{nodes}"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["overhead", "bytes", "scale", "fleet"])
    ap.add_argument("--sizes", default="100,500,1000", help="fleet: node counts, comma-separated")
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "bench-fleet-sim"),
                    help="fleet: where the simulator's runs are kept")
    ap.add_argument("--deadline-max", type=float, default=60.0, help="fleet: the adaptive deadline's bound (s)")
    ap.add_argument("--nodes", type=int, default=20)
    ap.add_argument("--model", default="paper-cnn")
    ap.add_argument("--dataset", default="synthetic")
    ap.add_argument("--topology", default="ring")
    ap.add_argument("--keep", type=float, default=0.5)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--workers", type=int, default=None, help="default: fleet run's (one per core, or more for large fleets)")
    ap.add_argument("--deadline", type=float, default=120.0)
    ap.add_argument("--broker", choices=["mosquitto", "embedded"], default="mosquitto")
    args = ap.parse_args()
    if args.what == "fleet":
        if args.model == "paper-cnn":
            args.model = "mcu-cnn"
        rows = []
        for n in (int(x) for x in args.sizes.split(",")):
            rows.append(fleet_at_scale(args, n))
            print(json.dumps(rows[-1]), flush=True)
        print("| nodes | rounds/min | s/round | start-up s | peak RSS/worker MiB | deadline misses | masks = simulate |")
        print("| ---: | ---: | ---: | ---: | --- | ---: | ---: |")
        for r in rows:
            print(f"| {r['nodes']} | {r['rounds_per_minute']} | {r['s_per_round_after_startup']} | {r['startup_s']} | "
                  f"{', '.join(map(str, r['peak_rss_mib_per_worker']))} | {r['deadline_misses']} | "
                  f"{r['masks_equal_simulator']} |")
        return
    print(json.dumps(run(args)), flush=True)


if __name__ == "__main__":
    main()
