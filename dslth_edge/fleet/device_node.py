"""One fleet node over MQTT: the device's own process (``train --fleet``) or one of a
``fleet run`` worker's threads.

The node is built exactly as the simulator builds it (:func:`dslth_edge.fleet.plan_fleet`
and :func:`~dslth_edge.fleet.make_node`), so node ``i`` gets the same NodeConfig, data
split, keep ratio and fixed weights in both; only the transport differs. Before round 0
it waits (bounded) for its neighbours' hello; then it runs the Node's round loop with a
round deadline (fixed or adaptive), telling the exchange to send a key frame whenever a
neighbour comes back online.

Its run directory follows :mod:`dslth_edge.runs.guard` (a resumed node must have the
saved run's settings). A node that hears no neighbour for ``stale_after`` rounds says so
once (a warning on the ``dslth_edge`` logger); one that finishes without having heard any
neighbour in any round raises :class:`~dslth_edge.errors.IsolatedError` (exit 4) naming
the fleet, the broker and the neighbours it waited for, unless ``allow_solo``. On the
device's own process (``train --fleet``: ``memory_guard``) a
:class:`~dslth_edge.device.memory_guard.MemoryGuard` holds the training RAM to the
profile's budget after every round (a smaller micro-batch, or exit 3).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dslth_edge.fleet.deadline import AdaptiveDeadline, FixedDeadline, LiveDeadline, StartupDeadline, heavy_round
from dslth_edge.device.memory_guard import MemoryGuard, measure_runtime_base
from dslth_edge.device.profiles import load_profile
from dslth_edge.device.training import node_training_setup, trace_model
from dslth_edge.errors import CheckpointError, IsolatedError, OverBudgetError, UsageError
from dslth_edge.fleet.node import Node, RoundResult, StepSlots
from dslth_edge.fleet.summary import security_record
from dslth_edge.runs.guard import check_rounds, check_same_settings, open_node_dir, run_mode
from dslth_edge.runs.rundir import NodePaths, load_checkpoint, load_mask, read_metrics, write_json
from dslth_edge.transport.identity import choose_identity, load_fleet_key
from dslth_edge.transport.messages import Hello
from dslth_edge.transport.mqtt import MqttTransport
from dslth_edge.transport.mqtt_options import ENV_FLEET_KEY, MqttOptions, redact_url
from dslth_edge.transport.report import NodeReport, ReportThrottle
from dslth_edge.wire import CODEC_NAMES

if TYPE_CHECKING:
    from dslth_edge.fleet.node import NodeConfig
    from dslth_edge.fleet.plan import FleetPlan

__all__ = ["ENV_FLEET_KEY", "MISSES_FILE", "NodeRunOptions", "fleet_key", "run_fleet_node", "start_node",
           "IsolationWatch", "guard_round", "node_deadline", "read_misses", "RoundLedger"]


#: per node directory: one JSON line per round in which a neighbour waited for was not heard
MISSES_FILE = "deadline_misses.jsonl"


log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeRunOptions:
    """How a node runs on the network (everything that is not the fleet's plan)."""

    mqtt: MqttOptions = MqttOptions()
    round_deadline_s: float | None = None  # None: adaptive, at most deadline_max_s
    deadline_max_s: float = 60.0
    stale_after: int = 3
    start_timeout_s: float = 120.0  # wait this long for neighbours' hello before round 0
    checkpoint_every: int = 10
    resume: bool = False  # continue from the checkpoint (an error when there is none)
    fleet_key_file: str | None = None  # HMAC key for frames; else $DSLTH_FLEET_KEY; else CRC only
    torch_threads: int | None = 1  # the same in every process: bit-identical to the simulator
    resume_or_start: bool = False  # resume when there is a checkpoint, else start fresh
    overwrite: bool = False  # clear the node's directory first
    allow_solo: bool = False  # finish normally even when no neighbour was ever heard
    roster: str | None = None  # fleet roster (Ed25519 identities); see `dslth-edge keys init`
    node_key: str | None = None  # this node's private key (default: node-<id>.key next to the roster)
    run_epoch: int | None = None  # None: the roster's epoch (0 without a roster)
    fixed_epoch: bool = False  # the old behaviour: trust the run epoch alone (see transport.identity)
    # the device's own process (train --fleet): hold the training RAM to the profile's budget
    # (device.memory_guard); a fleet-run worker hosts many nodes in one process and does not
    memory_guard: bool = False
    report_gap_s: float = 2.0  # at most one progress report (fleet watch) per this many seconds

    @property
    def mode(self) -> str:
        """The run-directory mode (:data:`dslth_edge.runs.guard.RUN_MODES`)."""
        return run_mode(self.resume, self.resume_or_start, self.overwrite)


def fleet_key(key_file: str | None) -> bytes | None:
    """The fleet's HMAC key from a file, else ``$DSLTH_FLEET_KEY``; None means CRC-32C frames."""
    # a private file of at least 32 bytes (transport.identity.load_fleet_key)
    return load_fleet_key(key_file, os.environ.get(ENV_FLEET_KEY))


def _final_mask_current(node: Node) -> bool:
    assert node.paths is not None
    if not node.paths.mask.is_file():
        return False
    try:
        return load_mask(node.paths.mask).meta.get("round") == node.round
    except CheckpointError:
        return False


def saved_round(paths: NodePaths) -> int:
    """The round of the node's checkpoint (0 when it cannot be read: resuming then says why)."""
    try:
        return int(load_checkpoint(paths.checkpoint)["round"])
    except (CheckpointError, KeyError, TypeError, ValueError):
        return 0


def start_node(node: Node, resume: bool) -> None:
    """Start ``node`` fresh, or resume it after checking the saved run's settings and rounds.

    A resumed node that had already done every round but was killed between its final
    checkpoint and its mask.npz gets its mask now, so such a kill is recoverable.
    """
    assert node.paths is not None
    if not resume:
        node.start()
        return
    try:
        saved = json.loads(node.paths.config.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot resume {node.paths.root}: its config.json is unreadable ({exc})") from exc
    check_same_settings(saved, node.describe(), node.paths.root)
    node.start(resume=True)
    check_rounds(node.round, node.config.rounds, node.paths.root)
    write_json(node.paths.config, node.describe())  # the rounds may have grown
    if node.round >= node.config.rounds and node.algorithm.has_mask and not _final_mask_current(node):
        node.save_final_mask(node.evaluate()[0])


class IsolationWatch:
    """Notices a node that hears none of its neighbours: one warning, and the verdict at the end."""

    def __init__(self, node: Node, fleet: str, broker: str, stale_after: int, heard_before: bool = False) -> None:
        self.node, self.fleet, self.broker, self.stale_after = node, fleet, broker, max(1, stale_after)
        self.heard_any = heard_before
        self.silent = 0
        self.warned = False

    @property
    def applies(self) -> bool:
        return bool(self.node.neighbours) and self.node.algo.communicates

    def waited_for(self) -> str:
        broker = redact_url(self.broker)
        return (f"fleet {self.fleet!r} on {broker}, neighbour(s) "
                f"{', '.join(str(j) for j in self.node.neighbours)}")

    def observe(self, result: RoundResult) -> None:
        if not self.applies or result.bytes_reference == 0:  # a round without gossip (dpsgd-ft's last ones)
            return
        if result.neighbours_heard > 0:
            self.heard_any, self.silent = True, 0
            return
        self.silent += 1
        if self.silent >= self.stale_after and not self.warned:
            self.warned = True
            log.warning("node %d has heard no neighbour for %d rounds (%s): check --fleet, --broker, --nodes and "
                        "--topology on every device", self.node.config.node_id, self.silent, self.waited_for())

    def verdict(self, allow_solo: bool) -> None:
        """Raise IsolatedError when the node finished without hearing any neighbour (unless ``allow_solo``)."""
        if not self.applies or self.heard_any or allow_solo:
            return
        raise IsolatedError(
            f"node {self.node.config.node_id} finished {self.node.round} rounds without hearing any neighbour: "
            f"{self.waited_for()}; check that every device uses the same --fleet, --broker, --nodes and --topology "
            "(--allow-solo accepts a run alone)")


def _memory_guard(plan: "FleetPlan", node_id: int, node: Node) -> MemoryGuard | None:
    """The node's memory guard, planned with the runtime base measured in this process (None for a gateway)."""
    profile = load_profile(plan.profiles[node_id])
    if not profile.can_train:
        return None
    ds, split, model = plan.dataset, plan.splits[node_id], plan.options.model
    base = measure_runtime_base(model, ds.input_shape, ds.num_classes)
    setup = node_training_setup(ds.input_shape, node.algo, len(split.train_indices), len(split.test_indices),
                                ds.memory_mapped, base)
    return MemoryGuard(trace_model(model, ds.input_shape, ds.num_classes), setup, profile, node.algo.micro_batch)


def node_deadline(config: "NodeConfig", get_node: Callable[[], Node], transport: MqttTransport,
                  opts: NodeRunOptions, cycle_s: Callable[[], float] = lambda: 0.0) -> LiveDeadline:
    """The node's round deadline: the fixed one given, else adaptive for absent neighbours and
    patient with online ones (:class:`~dslth_edge.fleet.deadline.LiveDeadline`).

    The deadline goes into the node's constructor, so it reads the node's round and its
    stale neighbours through ``get_node`` when a round runs, never before the node exists.
    """

    def expected() -> set[int]:  # the neighbours the round will wait for (as Node._collect computes them)
        node = get_node()
        return (set(node.neighbours) - set(node.stale_neighbours()) - transport.unavailable()
                - set(node.exchange.out_of_step(node.round)))

    fixed = opts.round_deadline_s is not None
    inner = FixedDeadline(opts.round_deadline_s) if fixed else AdaptiveDeadline(
        max_s=opts.deadline_max_s, min_s=min(2.0, opts.deadline_max_s))
    return LiveDeadline(inner, current_round=lambda: get_node().round, expected=expected,
                        online=transport.online_neighbours, patient=not fixed,
                        # start-up skew travels: a neighbour that waited for a late starter in its
                        # round 0 is late in its round 1, its neighbour in round 2 … (one hop a
                        # round), so an online neighbour is given at least the start-up's allowance
                        max_s=max(opts.deadline_max_s, opts.start_timeout_s), cycle_s=cycle_s,
                        heavy=lambda k: heavy_round(k, rounds=config.rounds, eval_every=config.eval_every,
                                                    checkpoint_every=config.checkpoint_every))


def read_misses(node_dir: str | Path, rounds: int | None = None) -> dict[int, list[int]]:
    """round -> neighbours missed, from a node directory's deadline_misses.jsonl (rounds < ``rounds``)."""
    path = Path(node_dir) / MISSES_FILE
    out: dict[int, list[int]] = {}
    for row in read_metrics(path):  # the same tolerant JSON Lines reader
        k = row.get("round")
        if isinstance(k, int) and (rounds is None or k < rounds) and isinstance(row.get("missed"), list):
            out[k] = [j for j in row["missed"] if isinstance(j, int)]  # a resumed round: the last line wins
    return out


class RoundLedger:
    """After each round: the deadline misses (logged, written beside metrics.jsonl) and the
    node's progress report for ``fleet watch`` (rate-limited, sealed)."""

    def __init__(self, node: Node, transport: MqttTransport, policy: LiveDeadline, opts: NodeRunOptions) -> None:
        assert node.paths is not None
        self.node, self.transport, self.policy = node, transport, policy
        self.path = node.paths.root / MISSES_FILE
        rows = read_metrics(node.paths.metrics)
        self.bytes_sent = sum(int(r.get("bytes_sent", 0)) for r in rows)
        self.acc = next((r["acc"] for r in reversed(rows) if r.get("acc") is not None), None)
        policy.misses = sum(len(m) for m in read_misses(node.paths.root, node.round).values())
        self.throttle = ReportThrottle(opts.report_gap_s)

    def after(self, result: RoundResult) -> list[int]:
        """Account for a finished round; returns the neighbours it missed."""
        heard = {j for j in self.node.neighbours if self.node.last_heard.get(j) == result.round}
        # a round without gossip (dpsgd-ft's last ones) waited for nobody: nothing to settle
        missed = self.policy.settle(heard) if self.policy.round == result.round else []
        if missed:
            log.warning("node %d round %d: the deadline (%.1f s) passed without neighbour(s) %s",
                        self.node.config.node_id, result.round, self.policy.last_s, ", ".join(map(str, missed)))
            with open(self.path, "a") as fh:
                row = {"round": result.round, "missed": missed, "deadline_s": round(self.policy.last_s, 3)}
                fh.write(json.dumps(row) + "\n")
        self.bytes_sent += result.bytes_sent
        if result.acc is not None:
            self.acc = result.acc
        done = self.node.round >= self.node.config.rounds
        self.report("done" if done else "running", force=done)
        return missed

    def report(self, state: str, *, force: bool = False) -> None:
        """Publish the node's progress report (retained) unless one went out less than a gap ago."""
        if not self.throttle.due(force=force):
            return
        acc = self.acc if self.acc is not None and 0.0 <= self.acc <= 1.0 else None  # NaN: no test samples
        rep = NodeReport(node=self.node.config.node_id, round=self.node.round, rounds=self.node.config.rounds,
                         state=state, acc=acc, bytes_sent=self.bytes_sent, misses=self.policy.misses,
                         profile=(self.node.config.profile or None) and str(self.node.config.profile)[:64],
                         time=round(time.time(), 3))
        identity = self.transport.identity
        data = rep.to_bytes()
        self.transport.publish_report(identity.seal("report", rep.round, data) if identity is not None else data)


def guard_round(node: Node, guard: MemoryGuard, result: RoundResult, warn: Callable[[str], None]) -> None:
    """After a round: the memory guard's verdict on its measured peak, the node re-planned down.

    Raises :class:`~dslth_edge.errors.OverBudgetError` (exit 3) when micro-batch 1 does not
    fit, after saving what was trained.
    """
    try:
        replan = guard.after_round(result.peak_rss_bytes)
    except OverBudgetError:  # micro-batch 1 does not fit: keep what was trained, then stop (exit 3)
        node.save()
        raise
    if replan is not None and replan.changed:  # (a corrected plan that still fits changes nothing)
        warn(replan.message(guard.profile.name, result.round + 1))
        node.algo = replace(node.algo, micro_batch=guard.node_micro_batch())


def run_fleet_node(
    plan: "FleetPlan",
    node_id: int,
    run_dir: str | Path,
    opts: NodeRunOptions,
    *,
    on_start: Callable[[Node], None] | None = None,
    on_round: Callable[[RoundResult], None] | None = None,
    stop_requested: Callable[[], bool] = lambda: False,
    step_slots: AbstractContextManager[Any] | None = None,
    before_connect: Callable[[], None] | None = None,
) -> Node:
    """Run node ``node_id`` of ``plan`` to the last round over MQTT; returns the node.

    Raises :class:`~dslth_edge.errors.TransportError` when the broker cannot be reached
    or refuses the credentials, :class:`~dslth_edge.errors.CheckpointError` on a bad resume
    or a directory that holds another run, :class:`~dslth_edge.errors.IsolatedError` when
    the node finished without hearing any neighbour (unless ``opts.allow_solo``).
    ``step_slots`` bound the training passes, and the model and data builds, of the nodes
    this process hosts (:func:`~dslth_edge.fleet.node.step_slots`; None: no bound).
    ``before_connect`` runs once the node is built, before it goes on the network (a
    worker holds its nodes there until all are built: see :mod:`dslth_edge.fleet.processes`).
    """
    from dslth_edge.fleet.plan import make_node, node_parts

    if not 0 <= node_id < plan.options.nodes:
        raise UsageError(f"--id {node_id} is outside the fleet's nodes 0..{plan.options.nodes - 1}")
    if opts.torch_threads:
        import torch

        torch.set_num_threads(opts.torch_threads)
    config = replace(plan.node_config(node_id), stale_after=opts.stale_after,
                     checkpoint_every=max(1, opts.checkpoint_every),
                     round_deadline_s=opts.round_deadline_s or opts.deadline_max_s)
    # every payload is sealed: bound to (fleet, run epoch, sender, round) and signed/tagged
    identity = choose_identity(plan.options.fleet_id, node_id, roster=opts.roster, node_key=opts.node_key,
                               hmac_key=fleet_key(opts.fleet_key_file), epoch=opts.run_epoch,
                               fixed_epoch=opts.fixed_epoch)
    # the security mode goes into config.json (and from there into summaries and --json output)
    config = replace(config, extra={**config.extra, "security": security_record(identity, opts.mqtt)})
    log.debug("node %d security: %s", node_id, identity.describe())  # stated in the startup line (cli.train)
    # the nodes a worker hosts build their models and data one per core at a time, as they train
    slots = step_slots if step_slots is not None else nullcontext()
    with slots:
        parts = node_parts(plan, node_id, config=config, identity=identity)
    paths = NodePaths.of(run_dir, node_id)
    resume = open_node_dir(paths.root, opts.mode)
    exchange, algorithm = parts.exchange, parts.algorithm
    hello = Hello(node=node_id, fleet=plan.options.fleet_id, fingerprint=algorithm.fingerprint.hex(),
                  profile=config.profile, keep=tuple(float(layer.keep) for layer in algorithm.layers),
                  codecs=tuple(CODEC_NAMES), extra={"round": saved_round(paths) if resume else 0, "pid": os.getpid()})
    transport = MqttTransport(opts.mqtt, fleet=plan.options.fleet_id, node_id=node_id, neighbours=parts.neighbours,
                              hello=hello, max_frame_bytes=exchange.max_payload_bytes() + identity.overhead,
                              fresh=not resume, identity=identity)
    built: list[Node] = []  # the node, once made: its deadline reads its round and stale neighbours
    policy = node_deadline(config, lambda: built[0], transport, opts,
                           cycle_s=step_slots.cycle_s if isinstance(step_slots, StepSlots) else lambda: 0.0)
    startup = StartupDeadline(policy, 0.0)  # round 0's allowance is set once the neighbours' hellos are in
    node = make_node(plan, node_id, transport, run_dir, parts=parts, deadline_policy=startup, step_slots=step_slots)
    built.append(node)
    guard = _memory_guard(plan, node_id, node) if opts.memory_guard else None
    with slots:
        start_node(node, resume)
    heard_before = any(int(r.get("neighbours_heard", 0)) > 0 for r in read_metrics(paths.metrics))
    watch = IsolationWatch(node, plan.options.fleet_id, opts.mqtt.url, config.stale_after, heard_before)
    if node.round >= config.rounds:  # a finished run resumed (restart loop): nothing to do on the network
        watch.verdict(opts.allow_solo)
        return node
    if before_connect is not None:
        before_connect()
    transport.connect()
    try:
        if resume:
            exchange.reconnected()  # our old deltas' bases are gone from the neighbours' stores
        missing = transport.wait_for_peers(opts.start_timeout_s)
        if missing:
            log.warning("node %d starts alone: no hello from neighbour(s) %s within %.0f s (%s); it takes their "
                        "frames once they appear", node_id, ", ".join(map(str, sorted(missing))),
                        opts.start_timeout_s, watch.waited_for())
        # On a fresh start every neighbour begins its round 0 only once *its* neighbours are up
        # (up to start_timeout_s), then computes it: round 0 waits for every neighbour the
        # topology names that long plus a round's bound, whichever hellos the broker happened
        # to deliver first. A resumed node's neighbours are normally mid-run: no such wait.
        startup.first_s = opts.start_timeout_s + opts.deadline_max_s if node.round == 0 and not missing else 0.0
        ledger = RoundLedger(node, transport, policy, opts)
        ledger.report("running" if node.round else "starting", force=True)
        if on_start is not None:
            on_start(node)
        while node.round < node.config.rounds:
            for j in transport.take_returned():  # a returning neighbour holds none of our bases
                exchange.peer_returned(j, node.round)  # (at most one key frame per gap and neighbour)
            result = node.run_round()
            ledger.after(result)
            watch.observe(result)
            if guard is not None:
                guard_round(node, guard, result, lambda msg: log.warning("node %d: %s", node_id, msg))
            if on_round is not None:
                on_round(result)
            if stop_requested() and node.round < node.config.rounds:
                node.save()
                ledger.report("stopped", force=True)
                break
    finally:
        transport.close()
        # the connection's counters, drops per cause included, for the fleet's summary.json
        write_json(node.paths.root / "transport.json", transport.stats.as_dict())
    if node.round >= node.config.rounds:
        watch.verdict(opts.allow_solo)
    return node
