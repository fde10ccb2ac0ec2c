"""The per-node plan: routes, channel counts on the profile's multiple, residual coupling, refusal,
plan ⇔ verdict agreement (zero-channel padding included)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dslth_edge.device.keep import plan_costs, plan_node, residual_groups
from dslth_edge.device.planner import PlanError, plan, planned_channels
from dslth_edge.device.profiles import load_profile
from dslth_edge.errors import EXIT_USAGE
from dslth_edge.exporters.shrink import shrink, shrunk_info
from dslth_edge.learn.masking import masked_layers, set_masks
from dslth_edge.learn.models import ModelSpec, build_model
from dslth_edge.cost.analysis import analyze_torch_module
from dslth_edge.cost.latency import predict as predict_latency

SHAPE = (1, 28, 28)
RESNET_SHAPE = (3, 32, 32)
TRUNK = ("stem.conv", "stack1.body2.conv", "stack2.body2.conv", "stack2.shortcut", "stack3.body2.conv", "stack3.shortcut")
ROOT = Path(__file__).resolve().parents[2]


def test_planned_channels_round_down_to_the_multiple() -> None:
    assert planned_channels(64, 0.34, 4) == 20  # 21.76 -> 21 -> 20
    assert planned_channels(64, 0.05, 16) == 16  # below one block: one block
    assert planned_channels(10, 0.99, 4) == 8
    assert planned_channels(64, 1.0, 16) == 64
    assert planned_channels(3, 0.5, 1) == 1


@pytest.mark.parametrize("profile", ["nrf52840", "esp32-s3", "stm32h743"])
def test_mcu_plans_remove_channels_on_the_profiles_multiple(profile: str) -> None:
    np_ = plan_node("paper-cnn", SHAPE, 10, profile)
    assert np_.route == "progressive" and np_.structured and np_.granularity == "unstructured"
    m = load_profile(profile).compute.channel_multiple
    assert np_.channels is not None
    assert all(c % m == 0 for c in np_.channels[:-1]) and np_.channels[-1] == 10  # classifier keeps its classes
    assert np_.plan is not None and all(c.ok for c in np_.plan.checks)
    assert "dense export does not fit" in np_.note
    data = np_.to_dict()
    assert data["channels"] == list(np_.channels) and data["route"] == "progressive"


def test_linux_boards_keep_the_dense_shape() -> None:
    for profile in ("jetson-nano", "raspberry-pi-4"):
        np_ = plan_node("paper-cnn", SHAPE, 10, profile)
        assert (np_.route, np_.channels, np_.keep) == ("unstructured", None, 0.5)


def test_refuses_in_one_line_when_no_plan_fits(tmp_path: Path) -> None:
    text = (ROOT / "firmware_profiles" / "nrf52840.toml").read_text().replace("latency_ms = 500.0", "latency_ms = 5.0")
    tight = tmp_path / "tight-nrf.toml"
    tight.write_text(text)
    with pytest.raises(PlanError) as info:
        plan_node("paper-cnn", SHAPE, 10, str(tight))
    msg = str(info.value)
    assert "\n" not in msg
    assert "tight-nrf" in msg and "latency binds" in msg and "nearest feasible" in msg
    assert info.value.exit_code == EXIT_USAGE == 2
    # the nearest feasible setting named there does fit
    assert "nearest feasible: --model mcu-cnn (keep " in msg
    assert plan_node("mcu-cnn", SHAPE, 10, str(tight)).plan is not None


def test_residual_groups() -> None:
    """The adds of ResNet-8 couple the stem with stack1's second conv, and each later
    stack's second conv with its shortcut; the plain CNNs have no add."""
    resnet = build_model(ModelSpec("resnet-8", RESNET_SHAPE, 10, keep=1.0))
    assert set(residual_groups(resnet, RESNET_SHAPE)) == {frozenset({"stem.conv", "stack1.body2.conv"}),
                                           frozenset({"stack2.body2.conv", "stack2.shortcut"}),
                                           frozenset({"stack3.body2.conv", "stack3.shortcut"})}
    for name in ("paper-cnn", "mcu-cnn"):
        assert residual_groups(build_model(ModelSpec(name, SHAPE, 10, keep=1.0)), SHAPE) == ()
    prunable = [c.name for c in plan_costs(resnet, RESNET_SHAPE) if c.prunable_out]
    assert prunable == ["stack1.body1.conv", "stack2.body1.conv", "stack3.body1.conv"]


@pytest.mark.parametrize("granularity", ["unstructured", "channel"])
def test_resnet8_plan_keeps_the_residual_trunk_whole(granularity: str) -> None:
    """Only the convs inside the blocks shrink: what shrink can always remove, whatever the
    coupled layers' independently trained masks keep."""
    np_ = plan_node("resnet-8", RESNET_SHAPE, 10, "nrf52840", granularity)
    assert np_.structured and np_.channels is not None and np_.plan is not None
    chans = dict(zip([lk.name for lk in np_.plan.layers], np_.channels))
    full = {lk.name: lk.out_channels for lk in np_.plan.layers}
    assert all(chans[n] == full[n] for n in TRUNK)
    inner = [n for n in chans if n.endswith("body1.conv")]
    assert any(chans[n] < full[n] for n in inner) and all(chans[n] % 4 == 0 for n in inner)
    if granularity == "channel":  # a trunk layer's channel mask keeps every channel
        assert all(k == 1.0 for k, lk in zip(np_.keeps, np_.plan.layers) if lk.name in TRUNK)


def _plan_masks(model: torch.nn.Module, channels: list[int]) -> None:
    """Pin masks keeping the first ``channels[i]`` output channels of layer i, whole."""
    masks = []
    for (_, layer), n in zip(masked_layers(model), channels):
        m = torch.zeros_like(layer.weight, dtype=torch.bool)
        m[:n] = True
        masks.append(m)
    set_masks(model, masks)
    model.eval()


CASES = [("paper-cnn", SHAPE, "nrf52840"), ("paper-cnn", SHAPE, "esp32-s3"), ("resnet-8", RESNET_SHAPE, "nrf52840")]


@pytest.mark.parametrize("short", [0, 3], ids=["planned", "drop-killed-3"])
@pytest.mark.parametrize("model_name, shape, profile", CASES, ids=[f"{c[0]}-{c[2]}" for c in CASES])
def test_plan_and_verdict_predict_the_same_latency(model_name: str, shape: tuple[int, int, int], profile: str,
                                                   short: int) -> None:
    """The shrunk model of a plan, judged by the profiler's predictor, costs what the plan said.

    ``short``: each shrinking layer ends 3 channels below its plan (a drop or mask that
    killed more): shrink's zero-channel padding to the profile's multiple restores the
    planned widths, so the figures still agree.
    """
    p = load_profile(profile)
    m = p.compute.channel_multiple
    model = build_model(ModelSpec(model_name, shape, 10, keep=1.0))
    result = plan(plan_costs(model, shape), p, granularity="channel")
    planned = [lk.channels for lk in result.layers]
    kept = [n - short if n < lk.out_channels and n - short >= max(1, n - m + 1) else n
            for n, lk in zip(planned, result.layers)]
    if short:
        assert kept != planned
    _plan_masks(model, kept)
    shrunk = shrink(model, shape, channel_multiple=m)
    assert list(shrunk_info(shrunk).widths().values()) == planned
    ops = analyze_torch_module(shrunk, torch.zeros(1, *shape)).ops
    verdict_ms = predict_latency(list(ops), p, dtype=result.dtype).total_ms
    assert verdict_ms == pytest.approx(result.check("latency").predicted, rel=1e-9)
    stored = sum(op.params for op in ops)
    assert stored == pytest.approx(sum(lk.params for lk in result.layers))
