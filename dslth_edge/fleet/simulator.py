"""The lock-step simulator: every node of a :class:`FleetPlan`, in this process or spread
over worker processes, with checkpoints to resume from.

Each round runs every node's ``begin_round`` (local step, mask, publish) before any
node's ``finish_round`` (collect, average, fine-tune): the round loop itself is the
Node's, the same code a device runs over MQTT.

The network is a router here: a node's transport keeps what it publishes in an outbox;
after every node's ``begin_round`` the coordinator delivers each frame, in the order
of the senders' ids, to the inbox of every node that listens to its sender (what a
:class:`~dslth_edge.transport.memory.MemoryHub` does in one process). Because a node
only ever reads its own state and its inbox, where a node runs does not change what
it computes: ``workers=N`` (N processes, each hosting every N-th node with its own
torch thread count) gives the same masks bit for bit as ``workers=1``, given the same
torch thread count per process (``worker_threads``, and the caller's in-process).

Checkpoints (``checkpoint_every`` rounds, and after the last round) go to
``<run dir>/resume/``: one file per node (its :meth:`Node.state` and its exchange's
:meth:`~dslth_edge.fleet.exchange.PayloadExchange.state`, i.e. the codec's key/delta
state and the frames it holds) in ``round-<k>/``, committed by rewriting
``resume/state.json`` once every node's file is written. ``resume=True`` continues from
the committed round (metrics after it are dropped and redone), so a run killed at any
point ends with the masks of an uninterrupted one. A node's file is plain data (tensors,
ints, strs, lists, dicts) read with ``torch.load(..., weights_only=True)``: nothing in a
run directory can make a resume run code, and a file that needs more is refused
(:class:`~dslth_edge.errors.CheckpointError`), as is one of the older format that held
pickled exchange objects.
"""

from __future__ import annotations

import io
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from multiprocessing.connection import Connection
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from dslth_edge.data import Dataset
from dslth_edge.errors import CheckpointError, DslthError, UsageError
from dslth_edge.fleet.node import Node, RoundResult
from dslth_edge.fleet.plan import (
    FleetOptions,
    FleetPlan,
    default_fleet_dir,
    make_node,
    plan_fleet,
    recorded_options,
)
from dslth_edge.fleet.summary import build_summary, write_summary
from dslth_edge.runs.rundir import (
    NodePaths,
    atomic_write_bytes,
    read_metrics,
    truncate_metrics,
    write_json,
)
from dslth_edge.transport.base import Envelope

__all__ = ["NodeHost", "RoutedTransport", "SimulationError", "resume_round", "simulate", "worker_main"]

RESUME_DIR = "resume"


class SimulationError(DslthError):
    """The lock-step simulation cannot continue exactly (a worker died, or a message broke lock-step)."""


class RoutedTransport:
    """A node's end of the simulator's router: an outbox the coordinator empties, an inbox it fills."""

    #: everything of a round is published before anyone polls: Exchange.collect stops
    #: at the first empty poll instead of waiting for a deadline
    synchronous = True

    def __init__(self, node_id: int) -> None:
        self.node_id = node_id
        self.outbox: list[Envelope] = []
        self.inbox: list[Envelope] = []
        self.collecting = False

    def publish(self, payload: bytes, *, kind: str = "mask") -> int:
        if self.collecting:
            # a key request while collecting: never in a lossless lock-step run, and its
            # delivery order would depend on how nodes are spread over processes
            raise SimulationError(f"node {self.node_id} published a {kind} message while collecting; "
                                  "the lock-step simulator delivers only the masks of begin_round")
        self.outbox.append(Envelope(self.node_id, kind, payload))
        return len(payload)

    def poll(self, timeout: float) -> list[Envelope]:
        out, self.inbox = self.inbox, []
        return out

    def unavailable(self) -> set[int]:
        """Nobody: the router delivers every node's frames each round."""
        return set()

    def take_dropped(self) -> int:
        """Nothing: the router refuses no input."""
        return 0

    def close(self) -> None:
        pass


class NodeHost:
    """Some nodes of a plan (all of them, or one worker's share) and their transports."""

    def __init__(self, plan: FleetPlan, ids: list[int], run_dir: Path) -> None:
        self.plan = plan
        self.run_dir = run_dir
        self.transports = {i: RoutedTransport(i) for i in ids}
        self.nodes: dict[int, Node] = {i: make_node(plan, i, self.transports[i], run_dir) for i in sorted(ids)}

    def start(self, resume_from: int) -> None:
        """Write config.json (round 0) or load every node's checkpoint of round ``resume_from``."""
        for i, node in self.nodes.items():
            node.start()
            assert node.paths is not None
            if resume_from > 0:
                path = _node_checkpoint(self.run_dir, resume_from, i)
                try:
                    st = torch.load(path, map_location="cpu", weights_only=True)
                except Exception as exc:  # torch raises many types for a damaged file
                    raise CheckpointError(f"checkpoint {path} is unreadable: {exc}") from exc
                if not (isinstance(st, dict) and isinstance(st.get("node"), dict)
                        and isinstance(st.get("exchange"), dict)):
                    raise CheckpointError(f"checkpoint {path} holds no plain exchange state (one of an older "
                                          "version, which pickled it, is never loaded): start the run over")
                assert node.exchange is not None
                node.load_state(st["node"], str(path))
                node.exchange.load_state(st["exchange"], str(path))
            truncate_metrics(node.paths.metrics, resume_from)

    def begin(self) -> list[Envelope]:
        """Every node's first half-round, in id order; returns what they published."""
        out: list[Envelope] = []
        for i, node in self.nodes.items():
            node.begin_round()
            out += self.transports[i].outbox
            self.transports[i].outbox = []
        return out

    def finish(self, inboxes: dict[int, list[Envelope]]) -> list[dict[str, Any]]:
        """Deliver the inboxes, then every node's second half-round, in id order."""
        for i, envelopes in inboxes.items():
            self.transports[i].inbox += envelopes
        results = []
        for i, node in self.nodes.items():
            self.transports[i].collecting = True
            try:
                results.append(asdict(node.finish_round()))
            finally:
                self.transports[i].collecting = False
        return results

    def save(self, round_done: int) -> None:
        """Write each node's checkpoint of the rounds done so far (``round-<k>/node-<i>.pt``)."""
        for i, node in self.nodes.items():
            if node.round != round_done or self.transports[i].inbox:
                raise SimulationError(f"node {i} is not at a round boundary ({node.round} != {round_done})")
            buf = io.BytesIO()
            assert node.exchange is not None
            torch.save({"node": node.state(), "exchange": node.exchange.state()}, buf)
            atomic_write_bytes(_node_checkpoint(self.run_dir, round_done, i), buf.getvalue())

    def handle(self, command: str, arg: Any) -> Any:
        """One command from the coordinator (the same calls in-process and in a worker)."""
        if command == "start":
            return self.start(arg)
        if command == "begin":
            return self.begin()
        if command == "finish":
            return self.finish(arg)
        if command == "save":
            return self.save(arg)
        raise SimulationError(f"unknown host command {command!r}")


def _node_checkpoint(run_dir: Path, round_done: int, node: int) -> Path:
    path = run_dir / RESUME_DIR / f"round-{round_done:06d}" / f"node-{node}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def resume_round(run_dir: str | Path) -> int:
    """The round a resume of ``run_dir`` continues from (0: no committed checkpoint)."""
    state = Path(run_dir) / RESUME_DIR / "state.json"
    if not state.is_file():
        return 0
    try:
        return int(json.loads(state.read_text())["round"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{state} is unreadable: {exc}") from exc


# ---------------------------------------------------------------------- worker processes
def worker_main(fd: int) -> int:
    """A worker process (``python -m dslth_edge.fleet.simulator FD``): build its nodes from the
    first message, then answer (command, arg) with ("ok", value) or ("error", text)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the coordinator decides when the run stops
    conn = Connection(fd)
    try:
        opts, dataset, ids, run_dir, threads = conn.recv()
    except EOFError:
        return 1
    torch.set_num_threads(threads)
    try:
        host = NodeHost(plan_fleet(opts, dataset), ids, Path(run_dir))
        conn.send(("ok", None))
    except Exception as exc:  # noqa: BLE001 - reported to the coordinator
        conn.send(("error", _portable(exc)))
        return 1
    while True:
        try:
            command, arg = conn.recv()
        except EOFError:
            return 1
        if command == "exit":
            return 0
        try:
            conn.send(("ok", host.handle(command, arg)))
        except Exception as exc:  # noqa: BLE001 - reported to the coordinator
            conn.send(("error", _portable(exc)))


def _portable(exc: Exception) -> DslthError | str:
    """What a worker sends back: the toolkit's own errors as they are (their exit codes hold), else text."""
    return exc if isinstance(exc, DslthError) else f"{type(exc).__name__}: {exc}"


class _Workers:
    """``count`` worker processes, worker ``w`` hosting nodes w, w + count, …"""

    def __init__(self, opts: FleetOptions, dataset: Dataset | None, run_dir: Path, count: int, threads: int) -> None:
        # fresh interpreters (a fork of a process with torch's thread pools can hang, and
        # multiprocessing's spawn re-runs the caller's main script), each on a private socket pair
        self.shares = [list(range(w, opts.nodes, count)) for w in range(count)]
        self.conns: list[Connection] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        try:
            for ids in self.shares:
                ours, theirs = socket.socketpair()
                proc = subprocess.Popen([sys.executable, "-m", "dslth_edge.fleet.simulator", str(theirs.fileno())],
                                        pass_fds=(theirs.fileno(),))
                theirs.close()
                self.conns.append(Connection(ours.detach()))
                self.procs.append(proc)
            for ids, conn in zip(self.shares, self.conns):
                conn.send((opts, dataset, ids, str(run_dir), threads))
            self._gather()
        except BaseException:
            self.close()
            raise

    def _gather(self) -> list[Any]:
        out = []
        for w, conn in enumerate(self.conns):
            try:
                status, value = conn.recv()
            except EOFError:
                raise SimulationError(f"simulator worker {w} died (exit {self.procs[w].wait()})") from None
            if status != "ok":
                if isinstance(value, DslthError):
                    raise value
                raise SimulationError(f"simulator worker {w}: {value}")
            out.append(value)
        return out

    def call(self, command: str, args: list[Any] | None = None) -> list[Any]:
        """The command on every worker at once (each its own argument); their answers."""
        for w, conn in enumerate(self.conns):
            conn.send((command, None if args is None else args[w]))
        return self._gather()

    def close(self) -> None:
        for conn in self.conns:
            try:
                conn.send(("exit", None))
            except OSError:
                pass
            conn.close()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class _Local:
    """The same interface as :class:`_Workers`, all nodes in this process."""

    def __init__(self, plan: FleetPlan, run_dir: Path) -> None:
        self.shares = [list(range(plan.options.nodes))]
        self.host = NodeHost(plan, self.shares[0], run_dir)

    def call(self, command: str, args: list[Any] | None = None) -> list[Any]:
        return [self.host.handle(command, None if args is None else args[0])]

    def close(self) -> None:
        pass


def _route(plan: FleetPlan, published: list[Envelope]) -> dict[int, list[Envelope]]:
    """Each envelope, in sender order, to every node that has its sender as a neighbour."""
    inboxes: dict[int, list[Envelope]] = {i: [] for i in range(plan.options.nodes)}
    listeners: dict[int, list[int]] = {i: [] for i in range(plan.options.nodes)}
    for i in range(plan.options.nodes):
        for j in plan.topology.neighbours(i):
            listeners[j].append(i)
    for env in sorted(published, key=lambda e: e.sender):  # stable: a sender's own order is kept
        for i in listeners[env.sender]:
            inboxes[i].append(env)
    return inboxes


def _options_record(opts: FleetOptions) -> dict[str, Any]:
    rec = asdict(opts)
    rec.pop("out", None)
    return json.loads(json.dumps(rec))  # tuples as lists, as read back


def simulate(
    opts: FleetOptions,
    *,
    dataset: Dataset | None = None,
    on_start: Callable[[FleetPlan, Path], None] | None = None,
    on_round: Callable[[int, list[RoundResult]], None] | None = None,
    write_plots: bool = True,
    workers: int = 1,
    worker_threads: int = 1,
    resume: bool = False,
    checkpoint_every: int | None = None,
    stop_requested: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Run the fleet lock-step; returns the summary (also written to disk).

    ``workers`` > 1 spreads the nodes over that many processes (``worker_threads`` torch
    threads each), with the masks of one process. ``resume`` continues the run in
    ``opts.out`` from its last checkpoint (a finished run returns its summary; a run
    directory without a checkpoint starts over); a resume may raise ``rounds`` (not for
    dpsgd-ft, nor with a channel-drop schedule): the run continues to the new total, and the old last round's evaluation
    stays the full test split's. ``stop_requested`` is asked after every
    round: when it says so the run checkpoints and raises KeyboardInterrupt. Checkpoints
    are written every ``checkpoint_every`` rounds (default ``opts.checkpoint_every``, else 10).
    """
    checkpoint_every = checkpoint_every or opts.checkpoint_every or 10
    if workers < 1 or checkpoint_every < 1:
        raise UsageError(f"--workers and the checkpoint interval must be at least 1, got {workers}, {checkpoint_every}")
    plan = plan_fleet(opts, dataset)
    run_dir = Path(opts.out) if opts.out else default_fleet_dir(opts)
    record_path = run_dir / RESUME_DIR / "options.json"
    start_round = 0
    if resume:
        if not opts.out:
            raise UsageError("--resume needs the run directory (--out) of the run to continue")
        start_round = resume_round(run_dir)
        if record_path.is_file():
            recorded, mine = recorded_options(json.loads(record_path.read_text())), _options_record(opts)
            diff = sorted(k for k in set(recorded) | set(mine) if recorded.get(k) != mine.get(k))
            # more rounds may be given when the first rounds do not depend on the total: not for
            # dpsgd-ft (local fine-tuning in the last fifth) nor for a channel-drop schedule
            scheduled = any(p.channels is not None for p in plan.node_plans or [])
            extend = (diff == ["rounds"] and opts.algorithm != "dpsgd-ft" and not scheduled
                      and opts.rounds >= start_round)
            if diff and not extend:
                raise CheckpointError(f"{run_dir} was started with other options ({', '.join(diff)}); "
                                      "resume it with the same ones (only --rounds may grow)")
        summary_path = run_dir / "summary.json"
        if summary_path.is_file() and start_round == opts.rounds:
            return json.loads(summary_path.read_text())
    elif any(run_dir.glob("node-*/metrics.jsonl")):
        raise UsageError(f"{run_dir} already holds a fleet run; choose another --out, or --resume it")
    run_dir.mkdir(parents=True, exist_ok=True)
    record_path.parent.mkdir(parents=True, exist_ok=True)
    write_json(record_path, _options_record(opts))
    seconds_path = run_dir / RESUME_DIR / "seconds.json"
    seconds_before = json.loads(seconds_path.read_text())["seconds"] if start_round and seconds_path.is_file() else 0.0
    workers = min(workers, opts.nodes)
    pool: _Workers | _Local = (_Workers(opts, dataset, run_dir, workers, worker_threads) if workers > 1
                               else _Local(plan, run_dir))
    try:
        pool.call("start", [start_round] * len(pool.shares))
        if on_start is not None:
            on_start(plan, run_dir)
        history: list[list[dict[str, Any]]] = []
        if start_round:
            per_node = [read_metrics(NodePaths.of(run_dir, i).metrics) for i in range(opts.nodes)]
            history = [[per_node[i][k] for i in range(opts.nodes)] for k in range(start_round)]
        t0 = time.perf_counter()
        for k in range(start_round, opts.rounds):
            published = [env for part in pool.call("begin") for env in part]
            inboxes = _route(plan, published)
            parts = pool.call("finish", [{i: inboxes[i] for i in ids} for ids in pool.shares])
            by_node = {i: d for ids, part in zip(pool.shares, parts) for i, d in zip(ids, part)}
            results = [by_node[i] for i in range(opts.nodes)]
            history.append(results)
            done = k + 1
            stop = stop_requested is not None and stop_requested() and done < opts.rounds
            if done % checkpoint_every == 0 or done == opts.rounds or stop:
                _checkpoint(pool, run_dir, done)
                write_json(seconds_path, {"seconds": seconds_before + time.perf_counter() - t0})
            if on_round is not None:
                on_round(k, [RoundResult(**r) for r in results])
            if stop:
                raise KeyboardInterrupt(f"stopped after round {done}; continue with --resume")
        seconds = seconds_before + time.perf_counter() - t0  # the rounds, not the workers' start and exit
    finally:
        pool.close()
    stand_ins = [SimpleNamespace(neighbours=plan.topology.neighbours(i), split=plan.splits[i]) for i in range(opts.nodes)]
    summary = build_summary(plan, stand_ins, history, run_dir, seconds=seconds)  # type: ignore[arg-type]
    summary["simulator"] = {"workers": workers, "worker_threads": worker_threads if workers > 1 else None,
                            "resumed_from_round": start_round}
    write_summary(summary, run_dir, history, write_plots=write_plots)
    return summary


def _checkpoint(pool: _Workers | _Local, run_dir: Path, done: int) -> None:
    """Every node's checkpoint of round ``done``, then the commit; older checkpoints go."""
    pool.call("save", [done] * len(pool.shares))
    write_json(run_dir / RESUME_DIR / "state.json", {"round": done})
    for old in (run_dir / RESUME_DIR).glob("round-*"):
        if old.name != f"round-{done:06d}":
            shutil.rmtree(old, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(f"usage: {sys.executable} -m dslth_edge.fleet.simulator FD  (started by simulate(workers=N))")
    raise SystemExit(worker_main(int(sys.argv[1])))
