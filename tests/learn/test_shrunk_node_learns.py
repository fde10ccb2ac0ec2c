"""Issue 23: a node whose plan removes channels must still learn (the nRF52840 demo node stayed at chance).

The cause: the fixed weights are scaled for the full fan-in, so once a layer's producer
has dropped channels its outputs shrink by √(live / all); without normalisation (the
paper CNN) the losses multiply layer by layer, a shrunk node's logits end ~10× smaller
than a full-width node's, its score gradients with them, and its masks barely move.
``MaskedLayer.input_gain`` restores each layer's scale (and shrink bakes it in).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dslth_edge.data.idx import FASHION_MNIST_DIR
from dslth_edge.learn.masking import configure_structure, drop_channels_, masked_layers
from dslth_edge.learn.models import ModelSpec, build_model

NRF52840_CHANNELS = [20, 40, 84, 64, 10]  # the demo's nRF52840 plan for the paper CNN (Fashion-MNIST)
ROUNDS = 20


def _logit_std(channels: list[int] | None) -> float:
    model = build_model(ModelSpec("paper-cnn", (1, 28, 28), 10, keep=0.5))
    configure_structure(model, channels)
    for _, layer in masked_layers(model):
        if layer.target_channels:
            drop_channels_(layer, layer.target_channels)
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((64, 1, 28, 28)).astype(np.float32))
    with torch.no_grad():
        return float(model(x).std())


def test_dropped_input_channels_keep_the_output_scale() -> None:
    full, shrunk = _logit_std(None), _logit_std(NRF52840_CHANNELS)
    assert 0.5 < shrunk / full < 2.0, (full, shrunk)  # before the fix: ~0.1


def test_gain_is_one_until_channels_are_dropped_and_shrink_bakes_it_in() -> None:
    pytest.importorskip("torch_pruning")
    from dslth_edge.exporters.shrink import shrink

    model = build_model(ModelSpec("paper-cnn", (1, 28, 28), 10, keep=0.5))
    assert all(layer.input_gain() == 1.0 for _, layer in masked_layers(model))
    configure_structure(model, NRF52840_CHANNELS)
    for _, layer in masked_layers(model):
        if layer.target_channels:
            drop_channels_(layer, layer.target_channels)
    gains = {name: layer.input_gain() for name, layer in masked_layers(model)}
    assert gains["conv1"] == 1.0 and gains["conv2"] == pytest.approx((64 / 20) ** 0.5)
    model.eval()
    x = torch.from_numpy(np.random.default_rng(1).standard_normal((8, 1, 28, 28)).astype(np.float32))
    small = shrink(model, (1, 28, 28))
    with torch.no_grad():
        assert float((model(x) - small(x)).abs().max()) < 1e-4 * float(model(x).abs().max())


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="Debian package dataset-fashion-mnist not installed "
                    "(apt-get install dataset-fashion-mnist)")
def test_a_short_run_of_the_demos_nrf52840_node_beats_chance(tmp_path) -> None:
    """Close to the demo's setting, two nRF52840 nodes: the paper CNN shrunk to the nRF52840's
    plan (progressive route), Fashion-MNIST 2 classes per node, batch 32, seed 0, cut to
    ROUNDS rounds (the drop schedule ends at half of them). Before the fix a shrunk node sat at
    chance (50 %) at every evaluation once its channels were gone; now it learns, though
    its accuracy swings from round to round (lr 0.1 on the scores, both nodes shrunk:
    at 30 rounds node 0 read 94 % at round 24 and 50 % at round 29), so one final snapshot
    is no verdict. The bar: after the drop schedule, some evaluation of each node beats
    chance by 20 points on its 200 test samples."""
    import json

    from dslth_edge.fleet.plan import FleetOptions
    from dslth_edge.fleet.simulator import simulate
    from dslth_edge.runs.runinfo import load_run

    rounds = ROUNDS
    out = tmp_path / "fleet"
    simulate(FleetOptions(nodes=2, topology="full", partition="classes:2", profiles=("nrf52840", "nrf52840"),
                          model="paper-cnn", rounds=rounds, eval_every=2, eval_samples=200, test_size=200, out=str(out),
                          overrides={"batch_size": 32}), write_plots=False)
    for i in range(2):
        info = load_run(out, i, load_data=False)
        assert info.mask_file.meta["channels"][:4] == NRF52840_CHANNELS[:4]  # the plan shrank it
        rows = [json.loads(line) for line in (out / f"node-{i}" / "metrics.jsonl").read_text().splitlines()]
        after_drop = {r["round"]: r["acc"] for r in rows if r["acc"] is not None and r["round"] + 1 >= rounds // 2}
        assert after_drop and max(after_drop.values()) > 0.5 + 0.20, (f"node {i}", after_drop)
