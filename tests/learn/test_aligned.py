"""The aligned structured route: channels dropped in the order every node shares.

Invariants only (no accuracy): final channel counts never above the plan's (exactly the
first ``target`` channels), the classifier untouched, the kept-weight count within the
layer's budget, nested models across plans, determinism from the seeds, and the route
flowing from the plan (``device.keep.plan_node``) to the node.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dslth_edge.learn.algorithms.masked import MaskAlgorithm
from dslth_edge.data import make_synthetic, partition
from dslth_edge.device.keep import plan_node
from dslth_edge.errors import UsageError
from dslth_edge.fleet.node import Node, NodeConfig
from dslth_edge.fleet.plan import FleetOptions
from dslth_edge.fleet.simulator import simulate
from dslth_edge.learn.algorithm import AlgorithmConfig, PRESETS, channel_cap, get_preset
from dslth_edge.learn.masking import configure_structure, drop_channels_, keep_count, masked_layers
from dslth_edge.learn.models import ModelSpec, build_model
from dslth_edge.runs.rundir import load_mask

SHAPE = (1, 8, 8)


def _node(channels: tuple[int, ...], *, node_id: int = 0, rounds: int = 6, seed: int = 0, **over: object) -> Node:
    ds = make_synthetic(shape=SHAPE, num_classes=4, train_size=64, test_size=16, noise=2.0)
    split = partition(ds, 1, "iid", seed=0)[0]
    algo = get_preset("default", "local", batch_size=16, **over)
    cfg = NodeConfig(node_id=node_id, model=ModelSpec("mcu-cnn", SHAPE, 4, keep=0.5), algorithm=algo, rounds=rounds,
                     eval_every=0, seed=seed, channels=channels, channel_order="index")
    return Node(cfg, ds, split)


def _live_inputs(layer: torch.nn.Module, node: Node) -> int:
    src = layer._input_layer[0] if layer._input_layer else None  # noqa: SLF001 - the producer configure_structure set
    return int(layer.weight.shape[1]) if src is None else int(src.channel_alive.sum())


def test_index_order_keeps_the_first_target_channels_whatever_the_scores() -> None:
    model = build_model(ModelSpec("mcu-cnn", SHAPE, 4, keep=0.5, score_seed=7))
    configure_structure(model, [8, 12, 24, 4], channel_order="index")
    layers = [layer for _, layer in masked_layers(model)]
    rounds = 10
    for r in range(1, rounds + 1):
        for layer in layers:
            cap = None if layer.target_channels is None else channel_cap(layer.weight.shape[0], layer.target_channels,
                                                                         r, rounds, 0.5)
            drop_channels_(layer, cap)
            if cap is not None:
                assert int(layer.channel_alive.sum()) == cap  # exactly the schedule, never below the plan
    for layer, target in zip(layers[:-1], (8, 12, 24)):
        assert layer.channel_alive.tolist() == [True] * target + [False] * (layer.weight.shape[0] - target)
    assert bool(layers[-1].channel_alive.all())  # the classifier: every class row


def test_unknown_channel_order_is_refused() -> None:
    model = build_model(ModelSpec("mcu-cnn", SHAPE, 4, keep=0.5))
    with pytest.raises(UsageError, match="channel order"):
        configure_structure(model, [8, 16, 32, 4], channel_order="random")


def test_aligned_node_meets_the_plan_and_keeps_within_each_layers_budget() -> None:
    node = _node((8, 16, 32, 4))
    algorithm = node.algorithm
    assert isinstance(algorithm, MaskAlgorithm)
    assert algorithm.group_lasso == 0.0 and algorithm.drop_threshold == 0.0  # the progressive route's λ, τ unused
    for _ in range(node.config.rounds):
        node.run_round()
    masks = node.current_masks()
    for layer, mask, target in zip(node.layers, masks, (8, 16, 32, 4)):
        c = layer.weight.shape[0]
        rows = mask.reshape(c, -1).any(1)
        assert int(layer.channel_alive.sum()) == target and int(rows.sum()) <= target
        assert not bool(rows[target:].any())  # the shared order: only the first channels remain
        # density keep inside the kept block: exactly keep_count(live weights), never above the full layer's budget
        live = target * _live_inputs(layer, node) * (layer.weight[0, 0].numel() if layer.weight.dim() > 2 else 1)
        assert int(mask.sum()) == keep_count(live, layer.keep) <= keep_count(layer.weight.numel(), layer.keep)
    assert all(bool(row.any()) for row in masks[-1])  # every class can still be predicted


def test_aligned_nodes_are_deterministic_and_nested_across_plans() -> None:
    a, b = _node((8, 16, 32, 4)), _node((8, 16, 32, 4))
    wide = _node((16, 24, 48, 4), node_id=1, seed=3)
    for _ in range(a.config.rounds):
        a.run_round(), b.run_round(), wide.run_round()
    assert all(torch.equal(x, y) for x, y in zip(a.current_masks(), b.current_masks()))  # same seeds, same masks
    for narrow, broad in zip(a.layers[:-1], wide.layers[:-1]):
        assert not bool((narrow.channel_alive & ~broad.channel_alive).any())  # the narrow node's channels ⊂ the wide's


def test_the_route_flows_from_the_plan() -> None:
    assert all(p.structured_route in ("progressive", "aligned") for p in PRESETS.values())
    with pytest.raises(UsageError, match="structured route"):
        AlgorithmConfig(structured_route="sideways")
    # a profile whose dense export does not fit: the preset's structured route (None: the default preset's)
    np_ = plan_node("paper-cnn", (1, 28, 28), 10, "nrf52840", structured_route="aligned")
    assert np_.route == "aligned" and np_.channel_order == "index" and np_.channels is not None
    assert plan_node("paper-cnn", (1, 28, 28), 10, "nrf52840").route == PRESETS["default"].structured_route
    assert plan_node("paper-cnn", (1, 28, 28), 10, "nrf52840", structured_route="progressive").channel_order == "score"
    asked = plan_node("mcu-cnn", (1, 28, 28), 10, "nrf52840", "aligned", keep=0.5)
    assert asked.route == "aligned" and asked.channels == (8, 16, 32, 10)
    assert asked.to_dict()["route"] == "aligned"


def test_simulate_takes_the_route_from_the_plan_to_every_node(tmp_path: Path) -> None:
    ds = make_synthetic(shape=SHAPE, num_classes=4, train_size=64, test_size=16, noise=2.0)
    opts = FleetOptions(nodes=2, topology="ring", dataset="synthetic", partition="iid", model="mcu-cnn", keep=0.5,
                        granularity="aligned", rounds=4, eval_every=2, eval_samples=8, out=str(tmp_path / "run"),
                        profiles=("nrf52840", "esp32-s3"), overrides={"batch_size": 8})
    simulate(opts, dataset=ds, write_plots=False)
    widths = []
    for i in range(2):
        node_dir = tmp_path / "run" / f"node-{i}"
        cfg = json.loads((node_dir / "config.json").read_text())
        plan = cfg["extra"]["plan"]
        assert plan["route"] == "aligned" and cfg["channel_order"] == "index" and cfg["channels"] == plan["channels"]
        masks = load_mask(node_dir / "mask.npz").masks
        rows = [torch.from_numpy(np.asarray(m).reshape(np.asarray(m).shape[0], -1).any(1)) for m in masks]
        for r, c in zip(rows, plan["channels"]):
            assert int(r.sum()) <= c and not bool(r[c:].any())  # within the first plan channels
        assert bool(rows[-1].all())  # every class row
        widths.append(plan["channels"])
    assert widths == [[8, 16, 32, 4], [16, 16, 32, 4]]
