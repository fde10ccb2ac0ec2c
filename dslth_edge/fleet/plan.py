"""A fleet of nodes: its plan (data, partition, topology, profiles, keep ratios) and the
lock-step in-process simulator.

The pieces are separate so that every driver builds identical nodes:

* :func:`plan_fleet` — everything deterministic about a fleet from :class:`FleetOptions`
  (dataset, per-node splits, topology, profile and keep ratio per node);
* :func:`make_node` — node ``i`` of a plan over any transport (memory here, MQTT in
  ``fleet run``), with its exchange (mask frames, or fp32 weights for the dense baselines);
* :func:`simulate` — all nodes in one process over a :class:`MemoryHub`, lock-step:
  every ``begin_round`` then every ``finish_round``; the round loop itself is the Node's.

The simulator writes ``runs/<run-id>/node-<i>/`` per node, then ``summary.json``,
``summary.md`` and PNG plots in the run directory (:mod:`dslth_edge.fleet.summary`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dslth_edge.learn.algorithm import AlgorithmConfig, get_preset
from dslth_edge.fleet.dense_exchange import DenseExchange
from dslth_edge.data import Dataset, NodeSplit, load_dataset, partition
from dslth_edge.errors import UsageError
from dslth_edge.fleet.exchange import Exchange
from dslth_edge.learn.models import ModelSpec, masked_layer_shapes
from dslth_edge.fleet.node import Node, NodeConfig
from dslth_edge.device.planner import PlanError
from dslth_edge.fleet.topology import Topology, parse_topology
from dslth_edge.device.keep import plan_keep
from dslth_edge.transport.base import Transport

__all__ = ["FleetOptions", "FleetPlan", "load_profile_map", "assign_profiles", "fleet_keeps",
           "plan_fleet", "make_node", "default_fleet_dir"]


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
    keep: float | None = None  # override every node's planned keep ratio
    granularity: str = "unstructured"
    rounds: int = 100
    eval_every: int = 10
    eval_samples: int = 1000
    seed: int = 0  # partition, scores, batches
    weight_seed: int | None = None  # fixed weights (None: same as seed)
    out: str | None = None
    fleet_id: str = "sim"
    overrides: dict[str, Any] = field(default_factory=dict)  # AlgorithmConfig fields (lr, ft_rounds …)

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
    keeps: list[float]
    keep_notes: list[str]
    algorithm: AlgorithmConfig

    def node_config(self, i: int) -> NodeConfig:
        """NodeConfig of node ``i``; ``extra`` lets other tools rebuild its data."""
        o = self.options
        ds = self.dataset
        return NodeConfig(
            node_id=i,
            model=ModelSpec(o.model, tuple(ds.x_train.shape[1:]), ds.num_classes, keep=self.keeps[i],
                            granularity=o.granularity, weight_seed=o.seed if o.weight_seed is None else o.weight_seed),
            algorithm=self.algorithm, rounds=o.rounds, fleet=o.fleet_id, seed=o.seed, profile=self.profiles[i],
            eval_every=o.eval_every, eval_samples=o.eval_samples, checkpoint_every=max(o.rounds, 1),
            extra={"dataset": o.dataset, "data_dir": o.data_dir, "partition": o.partition_spec,
                   "num_nodes": o.nodes, "partition_seed": o.seed, "scarce": o.scarce, "test_size": o.test_size,
                   "topology": o.topology, "keep_source": self.keep_notes[i]},
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
    if opts.keep is not None:
        if not 0.0 < opts.keep <= 1.0:
            raise UsageError(f"--keep must be in (0, 1], got {opts.keep}")
        return [opts.keep] * len(profiles), ["--keep"] * len(profiles)
    cache: dict[str, tuple[float, str]] = {}
    for name in dict.fromkeys(profiles):
        try:
            cache[name] = plan_keep(opts.model, input_shape, num_classes, name, opts.granularity)
        except PlanError as exc:
            if opts.granularity == "channel":
                raise
            keep, note = plan_keep(opts.model, input_shape, num_classes, name, "channel")
            cache[name] = (keep, f"{note} [planned channel-wise: unstructured plan failed: {str(exc)[:80]}]")
    return [cache[p][0] for p in profiles], [cache[p][1] for p in profiles]


def plan_fleet(opts: FleetOptions, dataset: Dataset | None = None) -> FleetPlan:
    """Data, splits, topology, profiles and keep ratios of the fleet (pass ``dataset`` to reuse one)."""
    if opts.nodes < 1 or opts.rounds < 1:
        raise UsageError(f"need at least one node and one round, got {opts.nodes} nodes, {opts.rounds} rounds")
    ds = dataset if dataset is not None else load_dataset(opts.dataset, opts.data_dir)
    splits = partition(ds, opts.nodes, opts.partition_spec, seed=opts.seed, test_size=opts.test_size,
                       max_train_per_node=opts.scarce)
    topo = parse_topology(opts.topology, opts.nodes, opts.seed)
    profiles = assign_profiles(opts)
    keeps, notes = fleet_keeps(opts, tuple(ds.x_train.shape[1:]), ds.num_classes, profiles)
    return FleetPlan(opts, ds, splits, topo, profiles, keeps, notes, opts.algorithm_config())


def make_node(plan: FleetPlan, i: int, transport: Transport | None, run_dir: str | Path | None) -> Node:
    """Node ``i`` of the plan over ``transport``, with its exchange attached."""
    nb = plan.topology.neighbours(i)
    node = Node(plan.node_config(i), plan.dataset, plan.splits[i], neighbours=nb, transport=transport, run_dir=run_dir)
    if node.dense:
        node.exchange = DenseExchange(node_id=i, num_params=node.num_params, fingerprint=node.fingerprint)
    else:
        node.exchange = Exchange(node_id=i, shapes=masked_layer_shapes(node.model), fingerprint=node.fingerprint,
                                 fleet=plan.options.fleet_id)
    return node


def default_fleet_dir(opts: FleetOptions) -> Path:
    """runs/fleet-<algorithm>-<dataset>-<YYYYmmdd-HHMMSS>."""
    return Path("runs") / f"fleet-{opts.algorithm}-{opts.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"

