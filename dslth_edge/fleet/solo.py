"""``dslth-edge train``: one device's training run, as a library call.

Without fleet options the node trains alone (no neighbours): the keep ratio comes from
the profile's plan unless given, the run directory follows the design, and a stopped
run continues exactly with ``resume=True``. The run directory follows the one rule of
:mod:`dslth_edge.runs.guard` (fresh, resume, resume-or-start, overwrite); a resumed run
must have the saved run's settings. A profile that cannot train (an MCU) is trained on
this host on its behalf only when asked (``for_device=True``), and config.json says so.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from dslth_edge.learn.algorithm import get_preset, preset_run
from dslth_edge.data import load_dataset, partition
from dslth_edge.errors import UsageError
from dslth_edge.learn.models import ModelSpec
from dslth_edge.fleet.node import Node, NodeConfig, RoundResult
from dslth_edge.cost.latency import RoundTimer
from dslth_edge.device.keep import plan_node
from dslth_edge.device.footprint import peak_rss_bytes, return_freed_memory
from dslth_edge.device.profiles import Profile, load_profile
from dslth_edge.device.memory_guard import MemoryGuard, measure_runtime_base
from dslth_edge.device.training import device_micro_batch, node_training_plan, node_training_setup, trace_model
from dslth_edge.fleet.device_node import guard_round, start_node
from dslth_edge.transport.messages import check_fleet_name
from dslth_edge.fleet.plan import gateway_note
from dslth_edge.runs.guard import open_node_dir, run_mode
from dslth_edge.wire import KEY_INTERVAL

__all__ = ["FleetTrainOptions", "TrainOptions", "TrainResult", "train", "default_run_dir", "check_can_train",
           "gateway_note"]


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
    resume: bool = False  # continue from the checkpoint in ``out`` (an error when there is none)
    resume_or_start: bool = False  # resume when there is a checkpoint, else start fresh
    overwrite: bool = False  # clear the run in ``out`` first
    seed: int = 0
    weight_seed: int | None = None  # None: the same as ``seed``
    weight_init: str | None = None  # None: the preset's (masking.INIT_SCHEMES)
    score_init: str | None = None  # None: the preset's
    algorithm: str | None = None  # None: "local" alone, "mce-pl" in a fleet
    preset: str = "default"
    batch_size: int | None = None
    lr: float | None = None
    local_steps: int | None = None
    group_lasso: float | None = None
    drop_threshold: float | None = None
    ft_recompute: bool | None = None
    eval_every: int = 25
    checkpoint_every: int = 25
    weights_file: str | None = None
    for_device: bool = False  # the profile cannot train: this host trains on its behalf

    @property
    def mode(self) -> str:
        """The run-directory mode (:data:`dslth_edge.runs.guard.RUN_MODES`)."""
        return run_mode(self.resume, self.resume_or_start, self.overwrite)

    def overrides(self) -> dict[str, Any]:
        """The algorithm constants given (not None), over the preset's."""
        over = {"batch_size": self.batch_size, "lr": self.lr, "local_steps": self.local_steps,
                "group_lasso": self.group_lasso, "drop_threshold": self.drop_threshold,
                "ft_recompute": self.ft_recompute}
        return {k: v for k, v in over.items() if v is not None}


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
    key_interval: int = KEY_INTERVAL
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
    roster: str | None = None  # Ed25519 identities (`dslth-edge keys init`)
    node_key: str | None = None  # default: node-<id>.key next to the roster
    run_epoch: int | None = None  # default: the roster's epoch (0 without one)
    fixed_epoch: bool = False  # the old behaviour: no per-run freshness check of neighbours' hellos
    mqtt_protocol: str = "auto"
    allow_solo: bool = False  # finish with exit 0 even when no neighbour was ever heard


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
    for_device: str | None = None  # the device this host trained for (its profile cannot train)
    peak_rss_bytes: int | None = None  # this process's measured peak resident set (VmHWM)
    seconds_per_round: float | None = None  # wall time per round run in this session
    training_ram_budget_bytes: float | None = None  # the profile's training RAM budget
    predicted_peak_bytes: float | None = None  # the training plan's predicted peak RSS
    micro_batch: int = 0  # 0: whole batches; else gradients accumulate over micro-batches of this size
    replans: int = 0  # times the memory guard lowered the micro-batch (measured peak over the plan)
    security: dict[str, Any] | None = None  # a fleet node's security mode (fleet.summary.security_record)
    predicted_seconds_per_round: float | None = None  # the training plan's time per round (cost.latency)
    round_time: str | None = None  # predicted vs measured seconds per round, after the first rounds

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_run_dir(profile: str, dataset: str) -> Path:
    """runs/<profile>-<dataset>-<YYYYmmdd-HHMMSS> under the current directory."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{Path(profile).stem}-{dataset}-{stamp}"


def check_can_train(profile: Profile, for_device: bool) -> str | None:
    """None for a profile that trains itself; the gateway note with ``for_device``; else refuse."""
    if profile.can_train:
        return None
    if not for_device:
        raise UsageError(f"{profile.name} cannot train (can_train = false): it is an inference target. "
                         f"Pass --for-device to train its mask on this host on its behalf, then export to it")
    return gateway_note(profile)


def train(
    opts: TrainOptions,
    *,
    on_start: Callable[[Node, TrainResult], None] | None = None,
    on_round: Callable[[RoundResult], None] | None = None,
    stop_requested: Callable[[], bool] = lambda: False,
    fleet: FleetTrainOptions | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train one node alone (or, with ``fleet``, as a fleet node); returns the final (or, when stopped, the last) figures.

    Alone, the micro-batch comes from the profile's training plan, made with the runtime
    base measured in this process (gradients accumulate to the preset's batch when the
    whole batch does not fit the training RAM budget). After every round a
    :class:`~dslth_edge.device.memory_guard.MemoryGuard` compares the measured peak RSS
    with the plan: over it, the node re-plans itself down (a smaller micro-batch, and so
    smaller evaluation chunks) and ``on_warning`` (default: :func:`warnings.warn`) says so
    in one line; when micro-batch 1 does not fit either, the checkpoint is saved and
    :class:`~dslth_edge.errors.OverBudgetError` (exit 3) names the budget.
    """
    if opts.rounds <= 0:
        raise UsageError(f"--rounds must be positive, got {opts.rounds}")
    mode = opts.mode
    if mode in ("resume", "resume-or-start") and not opts.out:
        raise UsageError(f"--{mode} needs --out: the run directory to continue")
    if fleet is not None:
        return _train_in_fleet(opts, fleet, on_start=on_start, on_round=on_round, stop_requested=stop_requested)
    profile = load_profile(opts.profile)
    gateway = check_can_train(profile, opts.for_device)
    return_freed_memory()  # freed step tensors go back to the OS: the peak RSS is the working set
    ds = load_dataset(opts.dataset, opts.data_dir)
    input_shape = ds.input_shape
    num_classes = len(ds.class_names)
    if opts.keep is not None:
        if isinstance(opts.keep, str):  # a per-layer-type spec (conv=…,fc=…): fleets only
            raise UsageError(f"train alone takes one --keep ratio, got {opts.keep!r}; per layer type: simulate, fleet run")
    # the node's per-layer plan: keeps, granularity and, where the budgets need it, channel counts
    node_plan = plan_node(opts.model, input_shape, num_classes, opts.profile, opts.granularity, keep=opts.keep,
                          structured_route=get_preset(opts.preset, "local", **opts.overrides()).structured_route)
    keep, keep_source = node_plan.keep, node_plan.note
    algorithm = opts.algorithm or "local"
    if algorithm != "local":
        raise UsageError(f"--algorithm {algorithm} needs neighbours: alone, a node trains with 'local' "
                         "(pass --fleet NAME to train in a fleet)")
    algo = get_preset(opts.preset, "local", **opts.overrides())
    # the device's own process: plan with the runtime base measured here, after the dataset is
    # loaded and the model traced (a gateway trains for a device whose memory this host is not)
    base = measure_runtime_base(opts.model, input_shape, num_classes) if gateway is None else None
    setup = node_training_setup(input_shape, algo, len(ds.y_train), len(ds.y_test), ds.memory_mapped, base)
    training = node_training_plan(opts.model, input_shape, num_classes, profile, algo, len(ds.y_train), len(ds.y_test),
                                  ds.memory_mapped, base)
    # micro-batches keep the device's own training RAM; the guard re-plans them down when the
    # measured peak exceeds the plan, and stops (exit 3) when micro-batch 1 does not fit; a
    # gateway (for_device) trains on this host, whose memory the MCU's budget says nothing about
    guard: MemoryGuard | None = None
    if gateway is None:
        algo = replace(algo, micro_batch=device_micro_batch(training, algo.micro_batch))
        guard = MemoryGuard(trace_model(opts.model, input_shape, num_classes), setup, profile, algo.micro_batch)
    run_dir = Path(opts.out) if opts.out else default_run_dir(opts.profile, opts.dataset)
    weight_seed = opts.seed if opts.weight_seed is None else opts.weight_seed
    extra = {"dataset": opts.dataset, "data_dir": opts.data_dir, "partition": "all", "keep_source": keep_source,
             "plan": node_plan.to_dict()}
    if gateway is not None:
        extra.update(for_device=True, trained_by=gateway)
    config = NodeConfig(
        node_id=0,
        model=ModelSpec(opts.model, input_shape, num_classes, keep=node_plan.model_keep,
                        granularity=node_plan.granularity, weight_seed=weight_seed,
                        weight_init=opts.weight_init or preset_run(opts.preset).weight_init,
                        score_init=opts.score_init or preset_run(opts.preset).score_init),
        channels=node_plan.channels, channel_order=node_plan.channel_order, algorithm=algo, rounds=opts.rounds, fleet="solo", seed=opts.seed, profile=profile.name,
        eval_every=opts.eval_every, checkpoint_every=opts.checkpoint_every, weights_file=opts.weights_file,
        extra=extra,
    )
    split = partition(ds, 1, "iid", seed=opts.seed)[0]
    node = Node(config, ds, split, run_dir=run_dir)
    assert node.paths is not None
    start_node(node, open_node_dir(node.paths.root, mode))
    t0 = time.perf_counter()
    first_round = node.round
    last: RoundResult | None = None
    accuracy = None
    budget = profile.training_ram_budget_bytes
    warn = on_warning or (lambda msg: warnings.warn(msg, RuntimeWarning, stacklevel=3))
    timer = RoundTimer(training.time_per_round_s)

    def result(stopped: bool) -> TrainResult:
        seconds = time.perf_counter() - t0
        ran = node.round - first_round
        return TrainResult(
            run_dir=str(run_dir), node_dir=str(node.paths.root) if node.paths else "", rounds_done=node.round,
            rounds=opts.rounds, keep=keep, keep_source=keep_source, accuracy=accuracy,
            loss=last.loss if last else None, seconds=seconds, stopped=stopped,
            for_device=profile.name if gateway is not None else None,
            peak_rss_bytes=peak_rss_bytes(), seconds_per_round=seconds / ran if ran else None,
            training_ram_budget_bytes=budget,
            predicted_peak_bytes=training.predicted_ram, micro_batch=node.algo.micro_batch,
            replans=sum(1 for m in guard.history if m) if guard is not None else 0,
            predicted_seconds_per_round=training.time_per_round_s, round_time=timer.line,
        )

    if on_start is not None:
        on_start(node, result(False))
    while node.round < opts.rounds:
        last = node.run_round()
        if last.acc is not None:
            accuracy = last.acc
        timer.observe(last.t_round_s, evaluated=last.acc is not None)
        if guard is not None:
            guard_round(node, guard, last, warn)
        if on_round is not None:
            on_round(last)
        if stop_requested() and node.round < opts.rounds:
            node.save()
            return result(True)
    return result(False)


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
    from dslth_edge.transport.mqtt_options import ENV_PASSWORD, MqttOptions, read_secret

    if opts.weights_file:
        raise UsageError("--weights is not supported with --fleet yet: fleet nodes derive the fixed weights from --weight-seed")
    profile = load_profile(opts.profile)
    gateway = check_can_train(profile, opts.for_device)
    # a new directory per start unless --out names one (a restart loop needs --out and --resume-or-start)
    check_fleet_name(fl.fleet)  # before the name becomes part of a path
    run_dir = Path(opts.out) if opts.out else Path("runs") / f"fleet-{fl.fleet}-node-{fl.node_id}-{time.strftime('%Y%m%d-%H%M%S')}"
    # every node of the fleet gets this device's profile in its plan; only node_id's entry is used
    fleet_opts = FleetOptions(
        nodes=fl.nodes, topology=fl.topology, dataset=opts.dataset, data_dir=opts.data_dir, partition=fl.partition,
        partition_file=fl.partition_file, scarce=fl.scarce, test_size=fl.test_size, profiles=(opts.profile,),
        algorithm=opts.algorithm or "mce-pl", preset=opts.preset, model=opts.model, keep=opts.keep,
        granularity=opts.granularity, rounds=opts.rounds, eval_every=opts.eval_every, seed=opts.seed,
        weight_seed=opts.weight_seed, weight_init=opts.weight_init, score_init=opts.score_init,
        out=str(run_dir), fleet_id=fl.fleet, overrides=opts.overrides(),
        stale_after=fl.stale_after, key_interval=fl.key_interval,
    )
    plan = plan_fleet(fleet_opts)
    password = read_secret(env=ENV_PASSWORD, file=fl.password_file)
    mqtt = MqttOptions(url=fl.broker, ca_file=fl.ca_file, cert_file=fl.cert_file, key_file=fl.key_file, insecure=fl.insecure,
                       username=fl.username, password=password, protocol=fl.mqtt_protocol)
    node_opts = NodeRunOptions(mqtt=mqtt, round_deadline_s=fl.round_deadline_s, deadline_max_s=fl.deadline_max_s,
                               stale_after=fl.stale_after, start_timeout_s=fl.start_timeout_s,
                               checkpoint_every=opts.checkpoint_every, resume=opts.resume,
                               resume_or_start=opts.resume_or_start, overwrite=opts.overwrite,
                               fleet_key_file=fl.fleet_key_file, allow_solo=fl.allow_solo, roster=fl.roster,
                               node_key=fl.node_key, run_epoch=fl.run_epoch, fixed_epoch=fl.fixed_epoch,
                               memory_guard=gateway is None)
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
                           stopped=stopped, for_device=profile.name if gateway is not None else None,
                           peak_rss_bytes=peak_rss_bytes(), training_ram_budget_bytes=profile.training_ram_budget_bytes,
                           micro_batch=node.algo.micro_batch if node else 0,
                           security=node.config.extra.get("security") if node else None)

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
