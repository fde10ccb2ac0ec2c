"""``fleet run``: a fleet as OS processes around an MQTT broker, with a live table.

The launcher starts the embedded broker unless one is given, writes one spec file per
worker and starts ``W`` worker processes (``python -m dslth_edge.fleet.processes SPEC``),
each hosting its share of the nodes in threads, every node with its own MQTT client.
Progress is read from the nodes' ``metrics.jsonl`` (the same files the simulator
writes), so the launcher needs no channel to its workers and survives their crashes.
At the end it writes the simulator's ``summary.json``/``summary.md``/plots.

The run directory follows :mod:`dslth_edge.runs.guard` (fresh, resume, resume-or-start,
overwrite). A worker exits with the code of its nodes' errors (4: a node heard no
neighbour, 5: network, 2: bad input or run directory), and the launcher raises the
matching error, so ``fleet run`` exits with the same codes as ``train --fleet``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from dslth_edge.errors import (EXIT_BUG, EXIT_ISOLATED, EXIT_NETWORK, EXIT_USAGE, CheckpointError, DslthError,
                               IsolatedError, TransportError, UsageError)
from dslth_edge.device.footprint import return_freed_memory
from dslth_edge.fleet.device_node import NodeRunOptions, fleet_key, MISSES_FILE, read_misses, run_fleet_node
from dslth_edge.fleet.node import step_slots
from dslth_edge.runs.guard import open_node_dir, open_run_dir
from dslth_edge.runs.rundir import NodePaths, read_metrics
from dslth_edge.transport.identity import choose_identity, launcher_epoch
from dslth_edge.transport.mqtt_options import ENV_PASSWORD, MqttOptions

__all__ = ["MAX_NODES_PER_WORKER", "FleetRunOptions", "NodeStatus", "StatusReader", "add_deadline_misses", "run_fleet", "worker_main", "node_status",
           "parse_node_slice", "worker_count", "StartGate"]


def parse_node_slice(text: str, nodes: int) -> tuple[int, ...]:
    """``--only``: node ids and ranges, e.g. ``0-3,8`` (inclusive), each within ``0..nodes-1``."""
    ids: set[int] = set()
    for item in (part.strip() for part in text.split(",")):
        lo, sep, hi = item.partition("-")
        try:
            first, last = int(lo), int(hi) if sep else int(lo)
        except ValueError:
            raise UsageError(f"--only: expected node ids or ranges like 0-3,8, got {item!r}") from None
        if not 0 <= first <= last < nodes:
            raise UsageError(f"--only: {item!r} is not within the fleet's nodes 0..{nodes - 1}")
        ids.update(range(first, last + 1))
    return tuple(sorted(ids))


@dataclass(frozen=True)
class FleetRunOptions:
    """``fleet run`` beyond the simulator's options."""

    node: NodeRunOptions = field(default_factory=NodeRunOptions)
    broker_url: str | None = None  # None: start the embedded broker on a free loopback port
    broker_host: str = "127.0.0.1"
    workers: int | None = None  # default: one per CPU core, more when a worker would host over MAX_NODES_PER_WORKER
    timeout_s: float | None = None  # give up (kill the workers) after this long
    only: tuple[int, ...] | None = None  # run only these nodes (a slice; the rest run elsewhere on the same broker)


@dataclass
class NodeStatus:
    """What the live table shows for one node (from its metrics.jsonl)."""

    node: int
    round: int = 0  # rounds done
    acc: float | None = None
    loss: float | None = None
    bytes_sent: int = 0
    bytes_received: int = 0
    stale: int = 0
    rejected: int = 0
    deadline_misses: int = 0  # neighbour-rounds waited for and not heard (deadline_misses.jsonl)


def node_status(run_dir: Path, node: int) -> NodeStatus:
    paths = NodePaths.of(run_dir, node)
    rows = read_metrics(paths.metrics)
    st = NodeStatus(node, round=len(rows))
    st.deadline_misses = sum(len(m) for m in read_misses(paths.root, len(rows)).values())
    for r in rows:
        st.bytes_sent += int(r.get("bytes_sent", 0))
        st.bytes_received += int(r.get("bytes_received", 0))
        st.rejected += int(r.get("rejected", 0))
        if r.get("acc") is not None:
            st.acc = r["acc"]
    if rows:
        st.loss, st.stale = rows[-1].get("loss"), int(rows[-1].get("stale", 0))
    return st


class StatusReader:
    """The live table's node statuses, re-reading a node's files only when they changed.

    The launcher polls every node's metrics while its workers compute on the same cores:
    with hundreds of nodes, re-parsing every metrics.jsonl twice a second costs real CPU.
    """

    def __init__(self, run_dir: Path, nodes: int) -> None:
        self.run_dir, self.nodes = run_dir, nodes
        self._cache: dict[int, tuple[tuple[int, int], NodeStatus]] = {}

    def read(self) -> list[NodeStatus]:
        out = []
        for i in range(self.nodes):
            paths = NodePaths.of(self.run_dir, i)
            stamp = (_size(paths.metrics), _size(paths.root / MISSES_FILE))
            hit = self._cache.get(i)
            if hit is None or hit[0] != stamp:
                hit = (stamp, node_status(self.run_dir, i))
                self._cache[i] = hit
            out.append(hit[1])
        return out


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return -1


def _history(run_dir: Path, nodes: int, rounds: int) -> list[list[dict[str, Any]]]:
    per_node = [read_metrics(NodePaths.of(run_dir, i).metrics) for i in range(nodes)]
    short = [i for i, rows in enumerate(per_node) if len(rows) < rounds]
    if short:
        raise TransportError(f"node(s) {short[:10]} did not finish all {rounds} rounds; see their metrics.jsonl "
                             f"and {run_dir}/worker-*.log")
    return [[per_node[i][k] for i in range(nodes)] for k in range(rounds)]


#: The nodes one worker process can host. Each node's paho client watches its socket and a
#: wake-up socket pair with select(), which cannot watch a file descriptor above 1023: past
#: ~330 nodes per process the newest clients never connect (paho reads the ValueError as a
#: lost connection and retries forever; 320 of 1,000 nodes on 2 workers, before this).
MAX_NODES_PER_WORKER = 250


def worker_count(nodes: int, asked: int | None = None) -> int:
    """Worker processes for ``nodes`` nodes: ``asked``, else one per core, or more where a
    worker would host over :data:`MAX_NODES_PER_WORKER`; never more than the nodes.
    Raises UsageError when ``asked`` leaves a worker more nodes than it can host."""
    asked = asked or None  # 0: the default
    needed = -(-nodes // MAX_NODES_PER_WORKER)
    if asked is not None and asked < needed:
        raise UsageError(f"{nodes} nodes need at least {needed} workers: a worker hosts at most "
                         f"{MAX_NODES_PER_WORKER} MQTT clients (paho watches each with select(), which stops at "
                         f"file descriptor 1023); use --workers {needed} or more")
    return max(1, min(asked or max(os.cpu_count() or 1, needed), nodes))


def _spec(fleet: Any, node_ids: list[int], run_dir: Path, node_opts: NodeRunOptions, workers: int) -> dict[str, Any]:
    mqtt = asdict(node_opts.mqtt)
    mqtt["password"] = None  # passed in the environment, never written to disk
    # the host's cores shared by its workers: more passes at a time than cores only
    # switch between them (and hold more activations), never add speed
    slots = max(1, (os.cpu_count() or 1) // max(1, workers))
    return {"fleet": asdict(fleet), "nodes": node_ids, "run_dir": str(run_dir), "step_slots": slots,
            "node": {**asdict(node_opts), "mqtt": mqtt}}


def run_fleet(
    fleet: Any,
    opts: FleetRunOptions,
    *,
    on_start: Callable[[Any, Path, str, str], None] | None = None,
    on_tick: Callable[[list[NodeStatus]], None] | None = None,
    write_plots: bool = True,
) -> dict[str, Any]:
    """Run ``fleet`` (a :class:`~dslth_edge.fleet.FleetOptions`) as processes; returns the summary."""
    from dslth_edge.fleet.plan import default_fleet_dir, plan_fleet
    from dslth_edge.fleet.summary import build_summary, security_record, write_summary

    plan = plan_fleet(fleet)  # validates everything before a process starts; the summary needs it
    mode = opts.node.mode
    if mode != "fresh" and fleet.out is None:
        raise CheckpointError(f"--{mode} needs --out: the run directory")
    run_dir = Path(fleet.out) if fleet.out else default_fleet_dir(fleet)
    if fleet.out is None:
        fleet = _replace_out(fleet, str(run_dir))
    ids = list(range(fleet.nodes)) if opts.only is None else sorted(set(opts.only))
    if opts.only is None:
        open_run_dir(run_dir, mode, ids)
    else:  # a slice: the other nodes may be running from the same directory
        if opts.broker_url is None:
            raise UsageError("--only runs a slice of the fleet: give the shared broker with --broker")
        if not ids or not all(0 <= i < fleet.nodes for i in ids):
            raise UsageError(f"--only must name nodes within 0..{fleet.nodes - 1}, got {list(opts.only)[:10]}")
        for i in ids:
            open_node_dir(NodePaths.of(run_dir, i).root, mode)
    run_dir.mkdir(parents=True, exist_ok=True)
    workers = worker_count(len(ids), opts.workers)
    tag = "" if opts.only is None else f"only-{ids[0]}-{ids[-1]}-"  # slices sharing a directory keep their files apart
    broker = None
    url = opts.broker_url
    if url is None:
        from dslth_edge.transport.broker import EmbeddedBroker, free_port

        broker = EmbeddedBroker(opts.broker_host, free_port(opts.broker_host)).start()
        url = broker.url
    # the directory is ready (an overwrite cleared it): the nodes start fresh or resume, never clear;
    # the URL's credentials leave it here: the spec files, summary and logs show the bare URL
    mqtt_opts = MqttOptions(**{**asdict(opts.node.mqtt), "url": url,
                               "keepalive_s": _keepalive_s(opts.node.mqtt.keepalive_s, len(ids), workers),
                               "connect_timeout_s": _connect_timeout_s(opts.node.mqtt.connect_timeout_s, len(ids),
                                                                       workers)}).split_credentials()
    url = mqtt_opts.url
    node_opts = NodeRunOptions(**{**asdict(opts.node), "overwrite": False,
                                  "run_epoch": launcher_epoch(opts.node.roster, opts.node.run_epoch),
                                  "mqtt": mqtt_opts})
    if opts.only is not None and node_opts.run_epoch != opts.node.run_epoch:
        # a fresh per-run epoch here would differ from the other slices': their frames would be refused
        raise UsageError("the roster draws a fresh epoch per run: give every --only slice the same run epoch")
    env = dict(os.environ)
    if node_opts.mqtt.password is not None:
        env[ENV_PASSWORD] = node_opts.mqtt.password
    env.setdefault("OMP_NUM_THREADS", "1")
    procs: list[subprocess.Popen[bytes]] = []
    logs = []
    try:
        # the security mode, stated once for the fleet (as `train` states it per node) and recorded
        # in the summary; built for the slice's first node, as its worker will build it
        identity = choose_identity(fleet.fleet_id, ids[0], roster=node_opts.roster, node_key=node_opts.node_key,
                                   hmac_key=fleet_key(node_opts.fleet_key_file), epoch=node_opts.run_epoch,
                                   fixed_epoch=node_opts.fixed_epoch)
        security = security_record(identity, node_opts.mqtt)
        if on_start is not None:
            on_start(plan, run_dir, url, identity.describe())
        for w in range(workers):
            spec = run_dir / f"worker-{tag}{w}.json"
            spec.write_text(json.dumps(_spec(fleet, ids[w::workers], run_dir, node_opts, workers), indent=2))
            log = open(run_dir / f"worker-{tag}{w}.log", "wb")
            logs.append(log)
            procs.append(subprocess.Popen([sys.executable, "-m", "dslth_edge.fleet.processes", str(spec)],
                                          stdout=log, stderr=subprocess.STDOUT, env=env))
        t0 = time.perf_counter()
        reader = StatusReader(run_dir, fleet.nodes)
        tick_s = max(0.5, fleet.nodes / 400)  # a 1,000-node table every 2.5 s: the workers need the CPU
        while any(p.poll() is None for p in procs):
            if on_tick is not None:
                on_tick(reader.read())
            if opts.timeout_s is not None and time.perf_counter() - t0 > opts.timeout_s:
                raise TransportError(f"fleet did not finish within {opts.timeout_s:.0f} s")
            time.sleep(tick_s)
        seconds = time.perf_counter() - t0
        if on_tick is not None:
            on_tick(reader.read())
        failed = [w for w, p in enumerate(procs) if p.returncode != 0]
        if failed:
            tail = (run_dir / f"worker-{tag}{failed[0]}.log").read_text(errors="replace").strip().splitlines()[-1:] or ["?"]
            raise _worker_error(procs[failed[0]].returncode,
                                f"worker(s) {failed} failed (exit {procs[failed[0]].returncode}): {tail[0]}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        for log in logs:
            log.close()
        if broker is not None:
            broker.stop()
    if opts.only is not None and any(len(read_metrics(NodePaths.of(run_dir, i).metrics)) < fleet.rounds
                                     for i in range(fleet.nodes)):
        # this slice is done; the fleet's summary comes from whichever slice finishes last
        # with every node's metrics in its run directory (a shared one on one machine)
        statuses = [node_status(run_dir, i) for i in ids]
        return {"run_dir": str(run_dir), "slice": ids, "rounds": fleet.rounds, "seconds": seconds,
                "nodes": [asdict(st) for st in statuses],
                "transport": {"broker": url, "workers": workers}, "security": security}
    history = _history(run_dir, fleet.nodes, fleet.rounds)
    stand_ins = [SimpleNamespace(neighbours=plan.topology.neighbours(i), split=plan.splits[i]) for i in range(fleet.nodes)]
    summary = build_summary(plan, stand_ins, history, run_dir, seconds=seconds)  # type: ignore[arg-type]
    summary["transport"] = {"broker": "embedded (amqtt)" if broker is not None else url, "workers": workers}
    summary["security"] = security
    add_deadline_misses(summary, run_dir, fleet.nodes, fleet.rounds)
    write_summary(summary, run_dir, history, write_plots=write_plots)
    return summary


def add_deadline_misses(summary: dict[str, Any], run_dir: Path, nodes: int, rounds: int) -> None:
    """Per node and in total: neighbour-rounds a node waited for and did not hear (0 in a healthy fleet)."""
    total = 0
    for i in range(nodes):
        missed = read_misses(NodePaths.of(run_dir, i).root, rounds)
        n = sum(len(m) for m in missed.values())
        summary["nodes"][i]["deadline_misses"] = n
        total += n
    summary["deadline_misses"] = total


def _keepalive_s(given: int, nodes: int, workers: int) -> int:
    """The MQTT keep-alive of a worker's nodes: longer when a worker hosts many. Its paho network
    threads share one interpreter with hundreds of busy nodes and may answer a broker late;
    a lapsed keep-alive disconnects them (425 times at 1,000 nodes on 2 workers, before this)."""
    per_worker = -(-nodes // max(1, workers))
    return max(given, min(60, 10 + per_worker // 10))


def _connect_timeout_s(given: float, nodes: int, workers: int) -> float:
    """How long a worker's node waits for the broker's CONNACK: longer when a worker hosts many.
    The start gate lets all of a worker's nodes connect at once, each with its duplicate-id
    check, while the other workers' nodes compute; on a loaded host the CONNACKs of a few
    hundred clients queue behind that, and the broker is local and up. (It was not what
    kept 320 of 1,000 nodes off the broker: that was select(), see MAX_NODES_PER_WORKER.)"""
    per_worker = -(-nodes // max(1, workers))
    return max(given, min(180.0, 20.0 + per_worker / 4))


def _worker_error(code: int, message: str) -> DslthError:
    """The error (hence the exit code) a worker's exit code stands for."""
    if code == EXIT_ISOLATED:
        return IsolatedError(message)
    if code == EXIT_USAGE:
        return CheckpointError(message)
    if code == EXIT_NETWORK:
        return TransportError(message)
    return DslthError(message)


def _replace_out(fleet: Any, out: str) -> Any:
    from dataclasses import replace

    return replace(fleet, out=out)


# ---------------------------------------------------------------------- worker process
class StartGate:
    """A worker's nodes go on the network together, once every one of them is built.

    Building is bounded per core, so a worker's last node is built minutes after its first
    at a thousand nodes (204 s on 2 cores); a node that connected early began round 0 and
    gave up on a late-built neighbour after ``--start-timeout``, and that start-up skew
    travelled one hop a round (10 deadline misses, 51 of 1,000 final masks unlike the
    simulator's). Held here, every worker's nodes connect within seconds of each other.
    """

    def __init__(self, nodes: Iterable[int]) -> None:
        self._waiting = set(nodes)
        self._all_in = threading.Condition()

    def arrive(self, node: int) -> None:
        """``node`` is built, failed, or has nothing to run (idempotent)."""
        with self._all_in:
            self._waiting.discard(node)
            if not self._waiting:
                self._all_in.notify_all()

    def wait(self, node: int) -> None:
        """Arrive, then wait until every node of the worker has."""
        self.arrive(node)
        with self._all_in:
            self._all_in.wait_for(lambda: not self._waiting)


def worker_main(spec_path: str) -> int:
    """Host the spec's nodes, one thread each; exit 0 when all finished, else the code of the worst error.

    Node errors rank: a bug (1) or bad input (2) over a network failure (5) over an
    isolated node (4): the launcher reports the most telling one.
    """
    from dslth_edge.fleet.plan import FleetOptions, plan_fleet

    spec = json.loads(Path(spec_path).read_text())
    fl = spec["fleet"]
    fl["profiles"] = tuple(fl["profiles"])
    fleet = FleetOptions(**fl)
    nd = spec["node"]
    node_opts = NodeRunOptions(**{**nd, "mqtt": MqttOptions(**nd["mqtt"])})
    if node_opts.torch_threads:
        import torch

        torch.set_num_threads(node_opts.torch_threads)
    return_freed_memory()  # freed step tensors go back to the OS (see dslth_edge.device.footprint)
    plan = plan_fleet(fleet)
    errors: list[str] = []
    codes: list[int] = []
    stop = threading.Event()
    # this worker's share of the cores: its node threads take turns (and learn how long a turn of all takes)
    slots = step_slots(spec.get("step_slots"), hosted=len(spec["nodes"]))
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    signal.signal(signal.SIGINT, lambda *a: stop.set())  # Ctrl-C reaches the whole group: finish the round, checkpoint

    gate = StartGate(spec["nodes"])

    def run(i: int) -> None:
        try:
            run_fleet_node(plan, i, spec["run_dir"], node_opts, stop_requested=stop.is_set, step_slots=slots,
                           before_connect=lambda: gate.wait(i))
        except DslthError as exc:
            errors.append(f"node {i}: {exc}")
            codes.append(exc.exit_code)
        except Exception as exc:  # noqa: BLE001 - reported in the worker's log and exit code
            errors.append(f"node {i}: {type(exc).__name__}: {exc}")
            codes.append(EXIT_BUG)
        else:
            return
        finally:
            gate.arrive(i)  # a node that failed (or had nothing left to run) holds nobody back
        print(f"error: {errors[-1]}", file=sys.stderr, flush=True)  # now: the launcher shows the log's last line

    threads = [threading.Thread(target=run, args=(i,), name=f"node-{i}", daemon=True) for i in spec["nodes"]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if not codes:
        return 0
    rank = [EXIT_BUG, EXIT_USAGE, EXIT_NETWORK, EXIT_ISOLATED]
    return min(codes, key=lambda c: rank.index(c) if c in rank else 0)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(f"usage: {sys.executable} -m dslth_edge.fleet.processes SPEC.json  (started by `fleet run`)")
    raise SystemExit(worker_main(sys.argv[1]))
