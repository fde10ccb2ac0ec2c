"""A node's micro-batch comes from its own device's training RAM, in every driver (FleetPlan.node_config)."""

from __future__ import annotations

from dslth_edge.data import make_synthetic
from dslth_edge.device.profiles import load_profile
from dslth_edge.device.training import device_micro_batch, node_training_plan
from dslth_edge.fleet.plan import FleetOptions, plan_fleet

DATA = make_synthetic(shape=(1, 28, 28), num_classes=4, train_size=200, test_size=40, noise=2.0)


def _plan(profiles: tuple[str, ...], **kw: object):
    opts = FleetOptions(nodes=len(profiles), topology="ring", dataset="synthetic", partition="iid", model="paper-cnn",
                        profiles=profiles, rounds=2, keep=0.5, **kw)  # type: ignore[arg-type]
    return plan_fleet(opts, dataset=DATA)


def test_a_pi_zero_node_accumulates_micro_batches_and_a_jetson_node_does_not() -> None:
    plan = _plan(("raspberry-pi-zero-2w", "jetson-nano"))
    zero, jetson = plan.node_config(0).algorithm, plan.node_config(1).algorithm
    # the Pi Zero 2 W cannot hold a whole paper-CNN batch of 128 (docs/results.md, issue 13)
    assert 0 < zero.micro_batch < zero.batch_size
    assert jetson.micro_batch == 0
    split = plan.splits[0]
    expected = node_training_plan("paper-cnn", DATA.input_shape, DATA.num_classes, load_profile("raspberry-pi-zero-2w"),
                                  plan.algorithm, len(split.train_indices), len(split.test_indices), DATA.memory_mapped)
    assert zero.micro_batch == device_micro_batch(expected, 0)
    # the rest of the algorithm is the fleet's
    assert zero.to_dict() | {"micro_batch": 0} == plan.algorithm.to_dict()


def test_a_requested_micro_batch_wins_and_gateway_nodes_keep_whole_batches() -> None:
    plan = _plan(("raspberry-pi-zero-2w", "nrf52840"), overrides={"micro_batch": 16})
    assert plan.node_config(0).algorithm.micro_batch == 16
    assert plan.node_config(1).algorithm.micro_batch == 16  # asked for: every node takes it
    plan = _plan(("nrf52840",))
    assert plan.node_config(0).algorithm.micro_batch == 0  # the host trains for the MCU: its RAM is not the MCU's
