"""Structured learning: relative drop threshold, progressive channel drop, untouched classifier rows."""

from __future__ import annotations

import pytest
import torch

from dslth_edge.data import make_synthetic, partition
from dslth_edge.errors import UsageError
from dslth_edge.fleet.node import Node, NodeConfig
from dslth_edge.learn.algorithm import AlgorithmConfig, channel_cap, get_preset
from dslth_edge.learn.masking import (
    MaskedConv2d,
    check_drop_threshold,
    configure_structure,
    drop_channels_,
    masked_layers,
)
from dslth_edge.learn.models import ModelSpec, build_model


def test_threshold_is_relative_and_validated() -> None:
    assert check_drop_threshold(0.0) == 0.0 and check_drop_threshold(1.0) == 1.0
    with pytest.raises(UsageError, match="empty"):
        check_drop_threshold(1.5)
    with pytest.raises(UsageError, match="relative"):
        AlgorithmConfig(drop_threshold=1.2)
    with pytest.raises(UsageError):
        AlgorithmConfig(drop_threshold=-0.1)
    assert AlgorithmConfig(drop_threshold=1.0).drop_threshold == 1.0


def test_relative_threshold_drops_against_the_layers_keep() -> None:
    layer = MaskedConv2d(1, 4, 2, keep=0.5, score_seed=3)  # 4 weights per channel, 8 kept in all
    with torch.no_grad():  # channel c keeps 4, 3, 1, 0 of its weights (|scores| decide)
        layer.scores.copy_(torch.tensor([[9, 9, 9, 9], [8, 8, 8, 0.1], [7, 0.1, 0.1, 0.1], [0.1] * 4]).view(4, 1, 2, 2))
    assert layer.current_mask().reshape(4, -1).sum(1).tolist() == [4, 3, 1, 0]
    # τ = 0.5 relative to keep 0.5: channels below 0.25 of their weights go (channel 3, 0/4);
    # channel 2 keeps exactly 1/4 and stays; an absolute 0.5 would also have dropped it
    assert drop_channels_(layer, None, 0.5) == 1
    assert layer.channel_alive.tolist() == [True, True, True, False]
    mask = layer.current_mask()
    assert not mask[3].any()  # a dropped channel stays out: the mask chooses among live channels
    assert int(mask.sum()) == 6  # keep 0.5 of the 12 live weights


def test_threshold_one_never_empties_a_layer() -> None:
    torch.manual_seed(0)
    layer = MaskedConv2d(3, 16, 3, keep=0.3, score_seed=5)
    for _ in range(20):  # repeated drops at the strictest valid τ
        drop_channels_(layer, None, 1.0)
        assert int(layer.channel_alive.sum()) >= 1
        assert layer.current_mask().any()


def test_progressive_drop_reaches_the_planned_channels_and_respects_inputs() -> None:
    model = build_model(ModelSpec("mcu-cnn", (1, 8, 8), 4, keep=0.5, score_seed=1))
    configure_structure(model, [8, 12, 24, 4], drop_threshold=0.5)
    layers = [layer for _, layer in masked_layers(model)]
    rounds = 10
    for r in range(1, rounds + 1):
        for layer in layers:
            if layer.target_channels is not None:
                drop_channels_(layer, channel_cap(layer.weight.shape[0], layer.target_channels, r, rounds, 0.5))
    assert [int(layer.channel_alive.sum()) for layer in layers] == [8, 12, 24, 4]
    for layer in layers[1:]:  # no kept weight reads a dropped input channel
        dead_in = ~layer._input_layer[0].channel_alive
        m = layer.current_mask()
        assert not m[:, dead_in].any()


def test_channel_cap_schedule_by_hand() -> None:
    # 64 -> 16 over the first half of 10 rounds: 64, 54.4->55, ..., 16 from round 5 on
    assert [channel_cap(64, 16, r, 10, 0.5) for r in (0, 1, 5, 9)] == [64, 55, 16, 16]
    assert channel_cap(64, 16, 1, 10, 0.0) == 16


def test_classifier_rows_are_never_structured() -> None:
    model = build_model(ModelSpec("mcu-cnn", (1, 8, 8), 4, keep=0.3, score_seed=2))
    configure_structure(model, None, drop_threshold=1.0)
    fc = dict(masked_layers(model))["fc"]
    with torch.no_grad():  # make class row 3 the sparsest by far
        fc.scores[3].mul_(1e-3)
    assert drop_channels_(fc, 1, 1.0) == 0 and bool(fc.channel_alive.all())
    with pytest.raises(UsageError, match="classifier"):
        configure_structure(model, [16, 32, 64, 2])


def test_node_with_drop_threshold_keeps_every_class_row() -> None:
    ds = make_synthetic(shape=(1, 8, 8), num_classes=4, train_size=64, test_size=16, noise=2.0)
    split = partition(ds, 1, "iid", seed=0)[0]
    algo = get_preset("default", "local", batch_size=16, drop_threshold=1.0)
    cfg = NodeConfig(node_id=0, model=ModelSpec("mcu-cnn", (1, 8, 8), 4, keep=0.2), algorithm=algo, rounds=4,
                     eval_every=0, channels=(12, 24, 48, 4))  # a node whose plan removes channels
    node = Node(cfg, ds, split)
    for _ in range(4):
        node.run_round()
    fc_mask = node.current_masks()[-1]
    assert bool(node.layers[-1].channel_alive.all())
    assert all(bool(row.any()) for row in fc_mask)  # every class can still be predicted
    assert any(not bool(layer.channel_alive.all()) for layer in node.layers[:-1])  # τ = 1 did drop channels


def test_structured_defaults_apply_only_to_nodes_that_remove_channels() -> None:
    ds = make_synthetic(shape=(1, 8, 8), num_classes=4, train_size=32, test_size=8, noise=2.0)
    split = partition(ds, 1, "iid", seed=0)[0]
    algo = get_preset("default", "local", batch_size=8)
    assert (algo.group_lasso, algo.drop_threshold) == (0.0, 0.0)
    spec = ModelSpec("mcu-cnn", (1, 8, 8), 4, keep=0.5)
    dense_shape = Node(NodeConfig(node_id=0, model=spec, algorithm=algo, rounds=1), ds, split)
    shrinking = Node(NodeConfig(node_id=0, model=spec, algorithm=algo, rounds=1, channels=(8, 16, 32, 4)), ds, split)
    assert all(layer.drop_threshold == 0.0 for layer in dense_shape.layers)
    assert [layer.drop_threshold for layer in shrinking.layers] == [algo.structured_drop_threshold] * 4
    assert [layer.target_channels for layer in shrinking.layers] == [8, 16, 32, None]
