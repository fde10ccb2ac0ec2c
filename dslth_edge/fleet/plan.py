"""A fleet of nodes: its plan (data, partition, topology, profiles, keep ratios) and the
lock-step in-process simulator.

The pieces are separate so that every driver builds identical nodes:

* :func:`plan_fleet` — everything deterministic about a fleet from :class:`FleetOptions`
  (dataset, per-node splits, topology, profile and keep ratio per node);
* :func:`node_parts` and :func:`make_node` — node ``i`` of a plan over any transport
  (memory here, MQTT in ``fleet run``), complete: its algorithm and its exchange (mask
  frames, or fp32 weights for the dense baselines);
* :func:`simulate` — all nodes in one process over a :class:`MemoryHub`, lock-step:
  every ``begin_round`` then every ``finish_round``; the round loop itself is the Node's.

The simulator writes ``runs/<run-id>/node-<i>/`` per node, then ``summary.json``,
``summary.md`` and PNG plots in the run directory (:mod:`dslth_edge.fleet.summary`).
"""

from __future__ import annotations

import json
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from dslth_edge.learn.algorithm import AlgorithmConfig, get_preset, preset_run
from dslth_edge.learn.keep_spec import model_layer_kinds, parse_keep
from dslth_edge.fleet.dense_exchange import DenseExchange
from dslth_edge.data import Dataset, NodeSplit, load_dataset, partition
from dslth_edge.errors import UsageError
from dslth_edge.fleet.deadline import DeadlinePolicy
from dslth_edge.fleet.exchange import Exchange, PayloadExchange
from dslth_edge.learn.models import ModelSpec, masked_layer_shapes
from dslth_edge.learn.names import STRUCTURED_ROUTES
from dslth_edge.fleet.node import Node, NodeConfig, algorithm_setup
from dslth_edge.learn.algorithms.base import Algorithm
from dslth_edge.learn.algorithms.registry import algorithm_class
from dslth_edge.fleet.sharing import share_fixed_weights, share_frame_memo
from dslth_edge.fleet.topology import Topology, parse_topology
from dslth_edge.device.keep import NodePlan, plan_node
from dslth_edge.device.profiles import Profile, load_profile
from dslth_edge.device.training import device_micro_batch, node_training_plan
from dslth_edge.transport.base import Transport
from dslth_edge.transport.identity import Identity
from dslth_edge.wire import KEY_INTERVAL

__all__ = ["FleetOptions", "FleetPlan", "recorded_options", "load_profile_map", "assign_profiles", "fleet_keeps", "fleet_node_plans",
           "plan_fleet", "NodeParts", "node_parts", "make_node", "default_fleet_dir", "gateway_note"]


def gateway_note(profile: Profile) -> str:
    """The words every command uses for a node the host trains on an MCU's behalf (can_train = false)."""
    return f"trained on this host for {profile.name} (can_train = false: it runs the exported model only)"


@dataclass(frozen=True)
class FleetOptions:
    """The options of ``dslth-edge simulate`` (and of ``fleet run``)."""

    nodes: int = 20
    topology: str = "ring"  # see topology.parse_topology, or an adjacency file
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    partition: str = "iid"  # iid | classes:K | dirichlet:A | file:PATH
    partition_file: str | None = None  # shorthand for partition "file:PATH"
    scarce: int | None = None  # at most this many training samples per node
    test_size: int | None = None  # per-node test split size (None: disjoint split of the test set)
    profiles: tuple[str, ...] = ("jetson-nano",)  # assigned round-robin ...
    profile_map: str | None = None  # ... unless a file maps node -> profile
    algorithm: str = "mce-pl"
    preset: str = "default"
    model: str = "paper-cnn"
    keep: float | str | None = None  # every node's keep: a ratio or "conv=0.3,fc=0.9" (None: the preset's, else each profile's plan)
    granularity: str = "unstructured"
    rounds: int = None  # type: ignore[assignment]  # None: the preset's (paper: 400), else 100
    eval_every: int = 10
    eval_samples: int = 1000
    seed: int = 0  # partition, scores, batches
    weight_seed: int | None = None  # fixed weights (None: same as seed)
    out: str | None = None
    fleet_id: str = "sim"
    overrides: dict[str, Any] = field(default_factory=dict)  # AlgorithmConfig fields (lr, ft_rounds …)
    stale_after: int = 3  # rounds of silence before a neighbour leaves m̄
    checkpoint_every: int | None = None  # None: only at the end
    key_interval: int = KEY_INTERVAL  # rounds between a node's periodic key frames (lossless: traffic only)
    weight_init: str | None = None  # fixed weights' init scheme (None: the preset's)
    score_init: str | None = None  # initial scores' scheme (None: the preset's)

    def __post_init__(self) -> None:
        if self.key_interval < 1:
            raise UsageError(f"the key interval must be at least 1 round, got {self.key_interval}")
        if self.rounds is None:
            object.__setattr__(self, "rounds", preset_run(self.preset).rounds or 100)
        # resolved here, so summary.json and the resume record name the schemes the run used
        for key in ("weight_init", "score_init"):
            if getattr(self, key) is None:
                object.__setattr__(self, key, getattr(preset_run(self.preset), key))

    @property
    def keep_spec(self) -> str | float | None:
        """The keep the user gave, else the preset's (None: each profile's plan)."""
        return self.keep if self.keep is not None else preset_run(self.preset).keep

    @property
    def partition_spec(self) -> str:
        """The partition as one spec string (what config.json records)."""
        if self.partition_file:
            return f"file:{Path(self.partition_file).resolve()}"
        if self.partition.startswith("file:"):
            return f"file:{Path(self.partition[5:]).resolve()}"
        return self.partition

    def algorithm_config(self) -> AlgorithmConfig:
        """The preset for the algorithm with the overrides; dpsgd-ft fine-tunes the last 20% by default."""
        over = dict(self.overrides)
        if self.algorithm == "dpsgd-ft" and not over.get("ft_rounds"):
            over["ft_rounds"] = max(1, self.rounds // 5)
        return get_preset(self.preset, self.algorithm, **over)


@dataclass
class FleetPlan:
    """Everything deterministic about a fleet, shared by all its nodes."""

    options: FleetOptions
    dataset: Dataset
    splits: list[NodeSplit]
    topology: Topology
    profiles: list[str]
    keeps: list[float]  # fraction of the node's weights kept (per-type specs: the weighted mean)
    keep_notes: list[str]
    algorithm: AlgorithmConfig
    layer_keeps: list[list[float]] | None = None  # per masked layer, when a keep spec names layer types
    node_plans: list[NodePlan] | None = None  # per node: its profile's per-layer plan (keeps, channels)

    def node_config(self, i: int) -> NodeConfig:
        """NodeConfig of node ``i``; ``extra`` lets other tools rebuild its data."""
        o = self.options
        ds = self.dataset
        extra: dict[str, Any] = {}
        profile = load_profile(self.profiles[i])
        algo = self.algorithm
        if not profile.can_train:
            extra = {"for_device": True, "trained_by": gateway_note(profile)}
        else:
            # the device's own training RAM decides its micro-batch, whichever driver runs the node
            split = self.splits[i]
            training = node_training_plan(o.model, ds.input_shape, ds.num_classes, profile, algo,
                                          len(split.train_indices), len(split.test_indices), ds.memory_mapped)
            algo = replace(algo, micro_batch=device_micro_batch(training, algo.micro_batch))
        # the node's own plan (per-layer keeps, granularity, channel counts), recorded in config.json
        np_ = self.node_plans[i] if self.node_plans else None
        keep: float | list[float] = self.layer_keeps[i] if self.layer_keeps else self.keeps[i]
        granularity = "unstructured" if o.granularity in STRUCTURED_ROUTES else o.granularity
        if np_ is not None:
            keep, granularity = np_.model_keep, np_.granularity
            extra["plan"] = np_.to_dict()
        return NodeConfig(
            node_id=i,
            model=ModelSpec(o.model, ds.input_shape, ds.num_classes, keep=keep,
                            granularity=granularity, weight_seed=o.seed if o.weight_seed is None else o.weight_seed,
                            weight_init=o.weight_init, score_init=o.score_init),  # type: ignore[arg-type]
            channels=None if np_ is None else np_.channels, channel_order="score" if np_ is None else np_.channel_order,
            algorithm=algo, rounds=o.rounds, fleet=o.fleet_id, seed=o.seed, profile=self.profiles[i],
            eval_every=o.eval_every, eval_samples=o.eval_samples, stale_after=o.stale_after,
            checkpoint_every=o.checkpoint_every or max(o.rounds, 1),
            extra={"dataset": o.dataset, "data_dir": o.data_dir, "partition": o.partition_spec,
                   "num_nodes": o.nodes, "partition_seed": o.seed, "scarce": o.scarce, "test_size": o.test_size,
                   "topology": o.topology, "keep_source": self.keep_notes[i], **extra},
        )


def load_profile_map(path: str | Path, num_nodes: int) -> list[str]:
    """Profiles from a file: JSON ({"0": "esp32-s3", ...} or a list) or lines "node_id profile"."""
    text = Path(path).read_text()
    mapping: dict[int, str] = {}
    try:
        obj = json.loads(text)
        items = obj.items() if isinstance(obj, dict) else enumerate(obj)
        mapping = {int(k): str(v) for k, v in items}
    except json.JSONDecodeError:
        for ln, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            if len(parts) != 2 or not parts[0].isdigit():
                raise UsageError(f"{path}:{ln}: expected 'node_id profile', got {line!r}")
            mapping[int(parts[0])] = parts[1]
    missing = [i for i in range(num_nodes) if i not in mapping]
    if missing:
        raise UsageError(f"profile map {path} names no profile for node(s) {missing[:10]}")
    return [mapping[i] for i in range(num_nodes)]


def assign_profiles(opts: FleetOptions) -> list[str]:
    """One profile per node: the map file's, else round-robin over ``opts.profiles``."""
    if opts.profile_map:
        return load_profile_map(opts.profile_map, opts.nodes)
    if not opts.profiles:
        raise UsageError("no profiles given")
    return [opts.profiles[i % len(opts.profiles)] for i in range(opts.nodes)]


def fleet_keeps(opts: FleetOptions, input_shape: tuple[int, int, int], num_classes: int,
                profiles: list[str]) -> tuple[list[float], list[str]]:
    """Keep ratio per node from its profile's plan (or ``opts.keep``), with a note each.

    A profile whose dense model cannot meet its budget at any unstructured keep (MCU
    profiles with the paper CNN) is planned channel-wise: the exported model is
    shrunk by channels, and that plan's ratio is what the node trains with.
    """
    if opts.keep_spec is not None:
        spec = parse_keep(opts.keep_spec)
        source = "--keep" if opts.keep is not None else f"preset {opts.preset}"
        if spec.uniform is not None:
            return [spec.uniform] * len(profiles), [source] * len(profiles)
        kinds, sizes = model_layer_kinds(opts.model, input_shape, num_classes)
        per_layer = spec.layer_keeps(kinds)
        mean = sum(k * n for k, n in zip(per_layer, sizes)) / sum(sizes)
        return [mean] * len(profiles), [f"{source} {spec} (weighted mean {mean:.3f})"] * len(profiles)
    plans = fleet_node_plans(opts, input_shape, num_classes, profiles)
    assert plans is not None
    return [p.keep for p in plans], [p.note for p in plans]


def fleet_node_plans(opts: FleetOptions, input_shape: tuple[int, int, int], num_classes: int,
                     profiles: list[str]) -> list[NodePlan] | None:
    """Each node's per-layer plan from its own profile (None when a per-layer-type keep spec rules).

    A profile whose dense model cannot meet its budgets gets a plan that removes
    channels, and its node trains a mask that removes them (:mod:`dslth_edge.device.keep`);
    when no plan fits, :class:`PlanError` names the device, the binding budget and the
    nearest feasible setting. With a uniform ``--keep`` and a structured granularity the
    keep is the channel fraction.
    """
    keep: float | None = None
    if opts.keep_spec is not None:
        spec = parse_keep(opts.keep_spec)
        if spec.uniform is None:
            return None
        keep = spec.uniform
    cache: dict[str, NodePlan] = {}
    route = opts.algorithm_config().structured_route  # the preset's, for nodes whose dense export does not fit
    for name in dict.fromkeys(profiles):
        cache[name] = plan_node(opts.model, input_shape, num_classes, name, opts.granularity, keep=keep,
                                structured_route=route)
    return [cache[p] for p in profiles]


def plan_fleet(opts: FleetOptions, dataset: Dataset | None = None) -> FleetPlan:
    """Data, splits, topology, profiles and keep ratios of the fleet (pass ``dataset`` to reuse one)."""
    if opts.nodes < 1 or opts.rounds < 1:
        raise UsageError(f"need at least one node and one round, got {opts.nodes} nodes, {opts.rounds} rounds")
    ds = dataset if dataset is not None else load_dataset(opts.dataset, opts.data_dir)
    splits = partition(ds, opts.nodes, opts.partition_spec, seed=opts.seed, test_size=opts.test_size,
                       max_train_per_node=opts.scarce)
    topo = parse_topology(opts.topology, opts.nodes, opts.seed)
    profiles = assign_profiles(opts)
    shape = ds.input_shape
    keeps, notes = fleet_keeps(opts, shape, ds.num_classes, profiles)  # type: ignore[arg-type]
    layer_keeps = None
    if opts.keep_spec is not None and parse_keep(opts.keep_spec).uniform is None:
        per_layer = parse_keep(opts.keep_spec).layer_keeps(model_layer_kinds(opts.model, shape, ds.num_classes)[0])  # type: ignore[arg-type]
        layer_keeps = [list(per_layer) for _ in range(opts.nodes)]
    node_plans = fleet_node_plans(opts, shape, ds.num_classes, profiles)  # type: ignore[arg-type]
    if node_plans is not None and opts.keep_spec is None:
        keeps, notes = [p.keep for p in node_plans], [p.note for p in node_plans]
    return FleetPlan(opts, ds, splits, topo, profiles, keeps, notes, opts.algorithm_config(), layer_keeps, node_plans)


#: FleetOptions fields added after runs were recorded, with the value those runs used
_RECORDED_BEFORE = {"key_interval": 10, "weight_init": "kaiming-normal", "score_init": "kaiming-uniform"}


def recorded_options(record: dict[str, Any]) -> dict[str, Any]:
    """A FleetOptions record as read back from a run (summary.json, the resume record),
    with the fields it predates filled in as the run used them (key frames every 10 rounds,
    kaiming-normal weights and kaiming-uniform scores under every preset)."""
    return {**_RECORDED_BEFORE, **record}


@dataclass
class NodeParts:
    """What node ``i`` of a plan is made of before it meets a transport: its configuration,
    its algorithm (model, fixed weights' fingerprint) and its exchange."""

    config: NodeConfig
    neighbours: tuple[int, ...]
    algorithm: Algorithm
    exchange: PayloadExchange


def node_parts(plan: FleetPlan, i: int, *, config: NodeConfig | None = None,
               identity: Identity | None = None) -> NodeParts:
    """Node ``i``'s configuration (``config``: the plan's, unless given), algorithm and exchange.

    The exchange carries what the algorithm sends (mask frames, or fp32 weights for the
    dense baselines). With an ``identity`` (a node on a real network) every payload is
    sealed, refused past the run's last round, and a returning (stale) neighbour's
    payloads are taken again.
    """
    config = config if config is not None else plan.node_config(i)
    nb = plan.topology.neighbours(i)
    cls = algorithm_class(config.algorithm.name)
    mixing = None
    if cls.payload == "weights":  # Metropolis-Hastings weights of the dense average
        row = plan.topology.mixing_matrix("metropolis")[i]
        mixing = {j: float(row[j]) for j in nb}
    algorithm = cls(config.algorithm, algorithm_setup(config, mixing))
    # the worker's nodes hold one copy of the identical fixed weights
    share_fixed_weights(algorithm.model, algorithm.fingerprint)
    max_round = config.rounds if identity is not None else None
    exchange: PayloadExchange
    if cls.payload == "weights":
        exchange = DenseExchange(node_id=i, num_params=algorithm.num_params, fingerprint=algorithm.fingerprint,
                                 identity=identity, max_round=max_round)
    else:
        exchange = Exchange(node_id=i, shapes=masked_layer_shapes(algorithm.model), fingerprint=algorithm.fingerprint,
                            fleet=plan.options.fleet_id, key_interval=plan.options.key_interval,
                            identity=identity, max_round=max_round)
        share_frame_memo(exchange)  # and decode each neighbour's frame once, not once per receiver
    if identity is not None:  # take a returning (stale) neighbour's frames again
        exchange.neighbours = set(nb)
    return NodeParts(config, nb, algorithm, exchange)


def make_node(plan: FleetPlan, i: int, transport: Transport | None, run_dir: str | Path | None, *,
              parts: NodeParts | None = None, deadline_policy: DeadlinePolicy | None = None,
              step_slots: AbstractContextManager[Any] | None = None) -> Node:
    """Node ``i`` of the plan over ``transport``, complete (``parts``: :func:`node_parts`' unless given)."""
    parts = parts if parts is not None else node_parts(plan, i)
    return Node(parts.config, plan.dataset, plan.splits[i], neighbours=parts.neighbours, transport=transport,
                run_dir=run_dir, exchange=parts.exchange, algorithm=parts.algorithm,
                deadline_policy=deadline_policy, step_slots=step_slots)


def default_fleet_dir(opts: FleetOptions) -> Path:
    """runs/fleet-<algorithm>-<dataset>-<YYYYmmdd-HHMMSS>."""
    return Path("runs") / f"fleet-{opts.algorithm}-{opts.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"

