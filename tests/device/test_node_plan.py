"""The per-node plan: routes, channel counts on the profile's multiple, refusal, plan ⇔ verdict agreement."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dslth_edge.device.keep import plan_node
from dslth_edge.device.planner import PlanError, plan, planned_channels
from dslth_edge.device.profiles import load_profile
from dslth_edge.errors import EXIT_USAGE
from dslth_edge.exporters.shrink import shrink, shrunk_info
from dslth_edge.learn.masking import masked_layers, set_masks
from dslth_edge.learn.models import ModelSpec, build_model, layer_costs
from dslth_edge.profiler.analysis import analyze_torch_module
from dslth_edge.profiler.predictor import predict as predict_latency

SHAPE = (1, 28, 28)
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


@pytest.mark.parametrize("profile", ["nrf52840", "esp32-s3"])
def test_plan_and_verdict_predict_the_same_latency(profile: str) -> None:
    """The shrunk model of a plan, judged by the profiler's predictor, costs what the plan said."""
    p = load_profile(profile)
    model = build_model(ModelSpec("paper-cnn", SHAPE, 10, keep=1.0))
    result = plan(layer_costs(model, SHAPE), p, granularity="channel")
    masks = []
    for (name, layer), lk in zip(masked_layers(model), result.layers):
        m = torch.zeros_like(layer.weight, dtype=torch.bool)
        m[: lk.channels] = True  # keep the plan's channel count, whole
        masks.append(m)
    set_masks(model, masks)
    model.eval()
    shrunk = shrink(model, SHAPE)
    assert list(shrunk_info(shrunk).widths().values()) == [lk.channels for lk in result.layers]
    ops = analyze_torch_module(shrunk, torch.zeros(1, *SHAPE)).ops
    verdict_ms = predict_latency(list(ops), p, dtype=result.dtype).total_ms
    assert verdict_ms == pytest.approx(result.check("latency").predicted, rel=1e-9)
    stored = sum(op.params for op in ops)
    assert stored == pytest.approx(sum(lk.params for lk in result.layers))
