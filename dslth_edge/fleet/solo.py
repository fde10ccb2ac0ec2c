"""``dslth-edge train``: one device's training run, as a library call.

Without fleet options the node trains alone (no neighbours): the keep ratio comes from
the profile's plan unless given, the run directory follows the design, and a stopped
run continues exactly with ``resume=True``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dslth_edge.learn.algorithm import get_preset
from dslth_edge.data import load_dataset, partition
from dslth_edge.errors import CheckpointError, UsageError
from dslth_edge.learn.models import ModelSpec
from dslth_edge.fleet.node import Node, NodeConfig, RoundResult
from dslth_edge.device.keep import plan_keep
from dslth_edge.device.profiles import load_profile

__all__ = ["FleetTrainOptions", "TrainOptions", "TrainResult", "train", "default_run_dir"]


@dataclass(frozen=True)
class TrainOptions:
    """The options of ``dslth-edge train`` (solo)."""

    profile: str
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    model: str = "paper-cnn"
    rounds: int = 200
    keep: float | None = None  # None: from the profile's plan
    granularity: str = "unstructured"
    out: str | None = None  # the run directory; None: runs/<profile>-<dataset>-<time>
    resume: bool = False
    seed: int = 0
    weight_seed: int = 0
    init: str = "kaiming-normal"
    preset: str = "default"
    batch_size: int | None = None
    lr: float | None = None
    group_lasso: float | None = None
    eval_every: int = 25
    checkpoint_every: int = 25
    weights_file: str | None = None


@dataclass(frozen=True)
class FleetTrainOptions:
    """``train --fleet``: this device is node ``node_id`` of a fleet gossiping over MQTT.

    The fleet-wide settings (nodes, topology, partition, seeds) must be the same on every
    device: each derives its own split and neighbours from them exactly as ``simulate``
    and ``fleet run`` do (:func:`dslth_edge.fleet.plan_fleet`).
    """

    fleet: str
    node_id: int
    broker: str = "mqtt://127.0.0.1:1883"
    nodes: int = 2
    topology: str = "ring"
    partition: str = "iid"
    partition_file: str | None = None
    scarce: int | None = None
    test_size: int | None = None
    round_deadline_s: float | None = None  # None: adaptive
    deadline_max_s: float = 60.0
    stale_after: int = 3
    start_timeout_s: float = 120.0
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False
    username: str | None = None
    password_file: str | None = None  # else $DSLTH_MQTT_PASSWORD
    fleet_key_file: str | None = None  # else $DSLTH_FLEET_KEY
    mqtt_protocol: str = "auto"


@dataclass(frozen=True)
class TrainResult:
    """What a finished (or stopped) run reports."""

    run_dir: str
    node_dir: str
    rounds_done: int
    rounds: int
    keep: float
    keep_source: str  # "--keep" or "plan: bound by <budget>"
    accuracy: float | None
    loss: float | None
    seconds: float
    stopped: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_run_dir(profile: str, dataset: str) -> Path:
    """runs/<profile>-<dataset>-<YYYYmmdd-HHMMSS> under the current directory."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{Path(profile).stem}-{dataset}-{stamp}"


def train(
    opts: TrainOptions,
    *,
    on_start: Callable[[Node, TrainResult], None] | None = None,
    on_round: Callable[[RoundResult], None] | None = None,
    stop_requested: Callable[[], bool] = lambda: False,
    fleet: FleetTrainOptions | None = None,
) -> TrainResult:
    """Train one node alone (or, with ``fleet``, as a fleet node); returns the final (or, when stopped, the last) figures."""
    if opts.rounds <= 0:
        raise UsageError(f"--rounds must be positive, got {opts.rounds}")
    if fleet is not None:
        return _train_in_fleet(opts, fleet, on_start=on_start, on_round=on_round, stop_requested=stop_requested)
    profile = load_profile(opts.profile)
    ds = load_dataset(opts.dataset, opts.data_dir)
    input_shape = tuple(ds.x_train.shape[1:])
    num_classes = len(ds.class_names)
    if opts.keep is not None:
        if not 0.0 < opts.keep <= 1.0:
            raise UsageError(f"--keep must be in (0, 1], got {opts.keep}")
        keep, keep_source = opts.keep, "--keep"
    else:
        keep, keep_source = plan_keep(opts.model, input_shape, num_classes, opts.profile, opts.granularity)
    algo = get_preset(opts.preset, "local", batch_size=opts.batch_size, lr=opts.lr, group_lasso=opts.group_lasso)
    run_dir = Path(opts.out) if opts.out else default_run_dir(opts.profile, opts.dataset)
    config = NodeConfig(
        node_id=0,
        model=ModelSpec(opts.model, input_shape, num_classes, keep=keep, granularity=opts.granularity,
                        weight_seed=opts.weight_seed, init=opts.init),
        algorithm=algo, rounds=opts.rounds, fleet="solo", seed=opts.seed, profile=profile.name,
        eval_every=opts.eval_every, checkpoint_every=opts.checkpoint_every, weights_file=opts.weights_file,
        extra={"dataset": opts.dataset, "data_dir": opts.data_dir, "partition": "all", "keep_source": keep_source},
    )
    split = partition(ds, 1, "iid", seed=opts.seed)[0]
    node = Node(config, ds, split, run_dir=run_dir)
    if opts.resume:
        _check_resumable(node)
    elif node.paths is not None and node.paths.checkpoint.exists():
        raise CheckpointError(f"{node.paths.root} already holds a run; pass --resume to continue it or choose another --out")
    node.start(resume=opts.resume)
    t0 = time.perf_counter()
    last: RoundResult | None = None
    accuracy = None

    def result(stopped: bool) -> TrainResult:
        return TrainResult(
            run_dir=str(run_dir), node_dir=str(node.paths.root) if node.paths else "", rounds_done=node.round,
            rounds=opts.rounds, keep=keep, keep_source=keep_source, accuracy=accuracy,
            loss=last.loss if last else None, seconds=time.perf_counter() - t0, stopped=stopped,
        )

    if on_start is not None:
        on_start(node, result(False))
    while node.round < opts.rounds:
        last = node.run_round()
        if last.acc is not None:
            accuracy = last.acc
        if on_round is not None:
            on_round(last)
        if stop_requested() and node.round < opts.rounds:
            node.save()
            return result(True)
    return result(False)


def _check_resumable(node: Node) -> None:
    """A resumed run must have been started with the same settings (rounds may grow)."""
    assert node.paths is not None
    if not node.paths.config.is_file():
        raise CheckpointError(f"nothing to resume in {node.paths.root}: no config.json (start without --resume)")
    saved = json.loads(node.paths.config.read_text())
    now = node.describe()
    diffs = [k for k in ("model", "algorithm", "seed", "weights_fingerprint", "node_id")
             if saved.get(k) != json.loads(json.dumps(now.get(k)))]
    if diffs:
        raise CheckpointError(f"cannot resume {node.paths.root}: settings differ from the saved run in {', '.join(diffs)}")


def _train_in_fleet(
    opts: TrainOptions,
    fl: FleetTrainOptions,
    *,
    on_start: Callable[[Node, TrainResult], None] | None,
    on_round: Callable[[RoundResult], None] | None,
    stop_requested: Callable[[], bool],
) -> TrainResult:
    """Node ``fl.node_id`` of the fleet, built as the simulator builds it, gossiping over MQTT."""
    from dslth_edge.fleet.plan import FleetOptions, plan_fleet
    from dslth_edge.fleet.device_node import NodeRunOptions, run_fleet_node
    from dslth_edge.transport.mqtt import ENV_PASSWORD, MqttOptions, read_secret

    if opts.weights_file:
        raise UsageError("--weights is not supported with --fleet yet: fleet nodes derive the fixed weights from --weight-seed")
    overrides = {k: v for k, v in {"batch_size": opts.batch_size, "lr": opts.lr, "group_lasso": opts.group_lasso}.items()
                 if v is not None}
    run_dir = Path(opts.out) if opts.out else Path("runs") / f"fleet-{fl.fleet}"
    # every node of the fleet gets this device's profile in its plan; only node_id's entry is used
    fleet_opts = FleetOptions(
        nodes=fl.nodes, topology=fl.topology, dataset=opts.dataset, data_dir=opts.data_dir, partition=fl.partition,
        partition_file=fl.partition_file, scarce=fl.scarce, test_size=fl.test_size, profiles=(opts.profile,),
        preset=opts.preset, model=opts.model, keep=opts.keep, granularity=opts.granularity, rounds=opts.rounds,
        eval_every=opts.eval_every, seed=opts.seed, weight_seed=opts.weight_seed, out=str(run_dir),
        fleet_id=fl.fleet, overrides=overrides,
    )
    plan = plan_fleet(fleet_opts)
    password = read_secret(env=ENV_PASSWORD, file=fl.password_file)
    mqtt = MqttOptions(url=fl.broker, ca_file=fl.ca_file, cert_file=fl.cert_file, key_file=fl.key_file, insecure=fl.insecure,
                       username=fl.username, password=password, protocol=fl.mqtt_protocol)
    node_opts = NodeRunOptions(mqtt=mqtt, round_deadline_s=fl.round_deadline_s, deadline_max_s=fl.deadline_max_s,
                               stale_after=fl.stale_after, start_timeout_s=fl.start_timeout_s,
                               checkpoint_every=opts.checkpoint_every, resume=opts.resume, fleet_key_file=fl.fleet_key_file)
    keep = plan.keeps[fl.node_id] if 0 <= fl.node_id < fl.nodes else 0.0
    keep_source = plan.keep_notes[fl.node_id] if 0 <= fl.node_id < fl.nodes else ""
    t0 = time.perf_counter()
    state: dict[str, Any] = {"node": None, "last": None, "acc": None}

    def result(stopped: bool) -> TrainResult:
        node = state["node"]
        last = state["last"]
        return TrainResult(run_dir=str(run_dir), node_dir=str(node.paths.root) if node and node.paths else "",
                           rounds_done=node.round if node else 0, rounds=opts.rounds, keep=keep, keep_source=keep_source,
                           accuracy=state["acc"], loss=last.loss if last else None, seconds=time.perf_counter() - t0,
                           stopped=stopped)

    def started(node: Node) -> None:
        state["node"] = node
        if on_start is not None:
            on_start(node, result(False))

    def round_done(r: RoundResult) -> None:
        state["last"] = r
        if r.acc is not None:
            state["acc"] = r.acc
        if on_round is not None:
            on_round(r)

    node = run_fleet_node(plan, fl.node_id, run_dir, node_opts, on_start=started, on_round=round_done,
                          stop_requested=stop_requested)
    state["node"] = node
    return result(node.round < opts.rounds)
