"""The keep-ratio planner: hand-computed cases, properties, real profiles, the CLI."""

from __future__ import annotations

import dataclasses
import json
import sys
import types

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from dslth_edge.cli.profiles import profiles
from dslth_edge.cost.layers import LayerCost
from dslth_edge.errors import ProfileError, UsageError
from dslth_edge.device.planner import (
    FRAME_HEADER_BYTES,
    LAYER_HEADER_BYTES,
    PlanError,
    binary_entropy,
    check_budgets,
    plan,
    costs_at_keep,
)
from dslth_edge.device.profiles import MIB, Profile, load_profile, parse_profile

# --------------------------------------------------------------------------- helpers


def synthetic_profile(
    *,
    fp32_gmacs: float = 1.0,
    int8_gmacs: float = 4.0,
    overhead_us: float = 50.0,
    latency_ms: float = 1e9,
    ram_bytes: float = 1e15,
    storage_bytes: float = 1e15,
    traffic_bytes: float = 1e15,
    dtype: str = "fp32",
    can_train: bool = True,
    channel_multiple: int = 1,
) -> Profile:
    """A profile whose budgets are given in the planner's own units."""
    data = {
        "device": "synthetic test device",
        "can_train": can_train,
        "cpu": {"arch": "test", "core": "test", "cores": 1, "clock_mhz": 100.0},
        "memory": {
            "ram_mib": ram_bytes / MIB,
            "storage_mib": storage_bytes / MIB,
            "storage_kind": "test",
        },
        "compute": {
            "backend": "test",
            "effective_fp32_gmacs": fp32_gmacs,
            "effective_int8_gmacs": int8_gmacs,
            "per_op_overhead_us": overhead_us,
            "channel_multiple": channel_multiple,
        },
        "budget": {
            "latency_ms": latency_ms,
            "model_ram_mib": ram_bytes / MIB,
            "model_storage_mib": storage_bytes / MIB,
        },
        # traffic budget = uplink_kbps * 1000 / 8 * round_period_s; with a 1 s round:
        "network": {"link": "test", "uplink_kbps": traffic_bytes * 8 / 1000, "round_period_s": 1.0},
        "export": {"format": "onnx", "dtype": dtype},
        "sources": [{"title": "t", "url": "https://example.org", "supports": "tests"}],
    }
    return parse_profile(data, name="synthetic", source_path="<test>")


def lc(name, params, macs, in_elems, out_elems, input_from, prunable_out=True):
    # 100 channels: every grid keep k = i/100 is an exact channel count (channel_multiple 1)
    return LayerCost(name, "conv", 100, 100, params, macs, in_elems, out_elems, input_from, prunable_out)


def two_layers():
    # A: network input -> k of its outputs; B: classifier fed by A (k_in = k, k_out = 1)
    return [
        lc("A", 100, 1_000_000, 100, 1000, None),
        lc("B", 1000, 1_000_000, 1000, 2, "A", prunable_out=False),
    ]


def three_layers():
    # A (1 x k), B (k x k), C classifier (k x 1)
    return [
        lc("A", 100, 1_000_000, 100, 1000, None),
        lc("B", 400, 4_000_000, 1000, 1000, "A"),
        lc("C", 100, 1_000_000, 1000, 10, "B", prunable_out=False),
    ]


def paper_cnn_costs():
    """Paper CNN on 1x28x28: conv5x5 1->64, pool, 64->128, pool, 128->256, pool to 3x3, fc 2304->192->10."""
    def conv(name, cin, cout, hw, src):
        return LayerCost(
            name, "conv", cin, cout, cin * cout * 25, cin * cout * 25 * hw * hw,
            cin * hw * hw, cout * hw * hw, src, True,
        )

    return [
        conv("conv1", 1, 64, 28, None),  # pad 2: 28x28 out, then maxpool -> 14x14
        conv("conv2", 64, 128, 14, "conv1"),  # maxpool -> 7x7
        conv("conv3", 128, 256, 7, "conv2"),  # maxpool -> 3x3: 256 * 9 = 2304 features
        LayerCost("fc1", "linear", 2304, 192, 2304 * 192, 2304 * 192, 2304, 192, "conv3", True),
        LayerCost("fc2", "linear", 192, 10, 1920, 1920, 192, 10, "fc1", False),
    ]


# --------------------------------------------------------------------------- hand-computed


def test_binary_entropy():
    assert binary_entropy(0.5) == 1.0
    assert binary_entropy(0.0) == binary_entropy(1.0) == 0.0
    assert binary_entropy(0.1) == pytest.approx(0.4689955935892812)
    assert binary_entropy(0.3) == pytest.approx(binary_entropy(0.7))


def test_two_layer_latency_by_hand():
    # latency(k) = (1e6 k + 1e6 k) MAC / 1e9 MAC/s + 2 x 50 us = 2k ms + 0.1 ms.
    # Budget 1.005 ms -> k <= 0.4525 -> 0.45 on the grid (1.0 ms); 0.46 needs 1.02 ms.
    profile = synthetic_profile(latency_ms=1.005)
    result = plan(two_layers(), profile)
    assert result.keep_ratio == result.keep == 0.45
    assert result.binding == "latency"
    lat = result.check("latency")
    assert lat.predicted == pytest.approx(1.0)
    assert lat.budget == 1.005
    assert lat.next_predicted == pytest.approx(1.02)
    assert lat.ok and lat.next_ok is False
    assert result.keep_ratios == {"A": 0.45, "B": 1.0}
    b = result.layers[1]
    assert (b.keep_out, b.keep_in) == (1.0, 0.45)
    assert b.params == pytest.approx(450) and b.macs == pytest.approx(450_000)
    assert result.explain() == (
        "keep 0.45 — bound by latency: 1 ms predicted vs 1.005 ms budget (keep 0.46 would need 1.02 ms)"
    )


def test_three_layer_latency_quadratic_by_hand():
    # latency(k) = (1e6 k + 4e6 k^2 + 1e6 k) / 1e9 s = 4k^2 + 2k ms (no overhead).
    # 4k^2 + 2k <= 1.9 -> k <= 0.4831 -> 0.48 (1.8816 ms); 0.49 needs 1.9404 ms.
    profile = synthetic_profile(latency_ms=1.9)
    profile = dataclasses.replace(
        profile, compute=dataclasses.replace(profile.compute, per_op_overhead_us=0.0)
    )
    result = plan(three_layers(), profile)
    assert result.keep_ratio == 0.48
    assert result.check("latency").predicted == pytest.approx(1.8816)
    assert result.check("latency").next_predicted == pytest.approx(1.9404)


def test_storage_by_hand_and_dtype():
    # fp32 bytes(k) = 4 (100k + 400k^2 + 100k) = 800k + 1600k^2 <= 1000 -> k <= 0.5792
    # -> 0.57 (975.84 B); 0.58 needs 1002.24 B.
    profile = synthetic_profile(storage_bytes=1000)
    result = plan(three_layers(), profile)
    assert (result.keep_ratio, result.binding) == (0.57, "storage")
    assert result.check("storage").predicted == pytest.approx(975.84)
    assert result.check("storage").next_predicted == pytest.approx(1002.24)
    # int8 (1 byte per weight): 200 + 400 = 600 B at keep 1.0 fits
    result = plan(three_layers(), profile, dtype="int8")
    assert (result.keep_ratio, result.binding, result.dtype) == (1.0, "none", "int8")
    assert result.check("storage").predicted == 600


def test_ram_by_hand():
    # activations (fp32): A 100 + 1000k, B 1000k + 1000k, C 1000k + 10 -> peak 4 x 2000k for k >= 0.1
    # plus weights 800k + 1600k^2: 1600k^2 + 8800k <= 5000 -> k <= 0.5192 -> 0.51 (4904.16 B).
    profile = synthetic_profile(ram_bytes=5000)
    result = plan(three_layers(), profile)
    assert (result.keep_ratio, result.binding) == (0.51, "ram")
    assert result.check("ram").predicted == pytest.approx(4904.16)
    assert result.check("ram").next_predicted == pytest.approx(5008.64)


def test_traffic_entropy_is_not_monotone_and_grid_handles_it():
    # Frame = 8000 bits x H(k) / 8 + 64 + 2 x 16 = 1000 H(k) + 96 bytes (the classifier's mask
    # is all ones in channel mode: 0 bits). Budget between H(0.30) and H(0.31): feasible for
    # k <= 0.30 or k >= 0.70.
    costs = [lc("A", 8000, 1_000_000, 10, 10, None), lc("B", 80, 1_000_000, 10, 2, "A", False)]
    budget = 96 + 1000 * (binary_entropy(0.30) + binary_entropy(0.31)) / 2
    assert FRAME_HEADER_BYTES + 2 * LAYER_HEADER_BYTES == 96

    # Traffic alone: an all-ones mask costs only the header.
    result = plan(costs, synthetic_profile(traffic_bytes=budget))
    assert (result.keep_ratio, result.binding) == (1.0, "none")
    assert result.check("traffic").predicted == 96

    # Latency 2k ms + 0.1 ms <= 1.305 ms caps k at 0.60; traffic then forces 0.30.
    result = plan(costs, synthetic_profile(traffic_bytes=budget, latency_ms=1.305))
    assert (result.keep_ratio, result.binding) == (0.30, "traffic")
    assert result.check("traffic").predicted == pytest.approx(96 + 1000 * binary_entropy(0.30))
    assert result.check("latency").next_ok is True  # latency does not rule out 0.31

    # Latency capping k at 0.75 lands in the upper feasible branch [0.70, 0.75].
    result = plan(costs, synthetic_profile(traffic_bytes=budget, latency_ms=1.605))
    assert (result.keep_ratio, result.binding) == (0.75, "latency")


def test_unstructured_export_stays_dense():
    profile = synthetic_profile(latency_ms=10.0)
    result = plan(three_layers(), profile, granularity="unstructured")
    assert (result.keep_ratio, result.binding) == (1.0, "none")
    assert any("dense" in note for note in result.notes)
    # latency of the dense export whatever k is: 6e6 MAC / 1e9 + 3 x 50 us
    assert costs_at_keep(three_layers(), profile, 0.3, granularity="unstructured").latency_ms == pytest.approx(6.15)
    with pytest.raises(PlanError) as info:
        plan(three_layers(), synthetic_profile(latency_ms=5.0), granularity="unstructured")
    message = str(info.value)
    assert "latency: 6.15 ms predicted vs 5 ms budget" in message
    assert "0.02" in message and "latency binds" in message
    assert "nearest feasible: --granularity channel (keep 0.87)" in message  # 6k ms + 0.15 <= 5 at the grid
    assert "\n" not in message and info.value.binding == "latency"
    # every layer (the classifier too) carries k of its weights in unstructured mode
    pred = costs_at_keep(three_layers(), synthetic_profile(), 0.25, granularity="unstructured")
    assert [layer.mask_density for layer in pred.layers] == [0.25, 0.25, 0.25]
    assert pred.frame_bytes == pytest.approx(600 * binary_entropy(0.25) / 8 + 64 + 48)


def test_infeasible_at_floor_names_budget_and_numbers():
    with pytest.raises(PlanError) as info:
        plan(two_layers(), synthetic_profile(latency_ms=0.1))
    message = str(info.value)
    assert isinstance(info.value, ProfileError)
    assert "floor keep 0.02" in message
    assert "latency: 0.14 ms predicted vs 0.1 ms budget" in message
    assert "storage" not in message


def test_bad_inputs():
    profile = synthetic_profile()
    with pytest.raises(PlanError, match="granularity"):
        plan(two_layers(), profile, granularity="filter")
    with pytest.raises(PlanError, match="dtype"):
        plan(two_layers(), profile, dtype="fp16")
    with pytest.raises(PlanError, match="no weight layers"):
        plan([], profile)
    with pytest.raises(PlanError, match="unknown layer 'Z'"):
        plan([lc("A", 1, 1, 1, 1, "Z")], profile)
    with pytest.raises(PlanError, match="step"):
        plan(two_layers(), profile, step=0.03)


def test_can_train_false_is_planned_and_noted():
    result = plan(two_layers(), synthetic_profile(can_train=False))
    assert result.keep_ratio == 1.0 and result.can_train is False
    assert any("inference target" in note for note in result.notes)
    assert result.to_dict()["can_train"] is False


def test_to_dict_is_json():
    result = plan(two_layers(), synthetic_profile(latency_ms=1.005))
    data = json.loads(json.dumps(result.to_dict()))
    assert data["keep_ratio"] == 0.45 and data["binding"] == "latency"
    assert data["keep_ratios"] == {"A": 0.45, "B": 1.0}
    assert {c["name"] for c in data["checks"]} == {"latency", "storage", "ram", "traffic"}
    assert data["explanation"].startswith("keep 0.45 — bound by latency")


# --------------------------------------------------------------------------- properties


@st.composite
def cost_chains(draw):
    n = draw(st.integers(2, 5))
    layers = []
    for i in range(n):
        layers.append(
            LayerCost(
                name=f"l{i}",
                kind="conv",
                in_channels=1,
                out_channels=1,
                params=draw(st.integers(1, 2_000_000)),
                macs=draw(st.integers(1, 100_000_000)),
                in_elems=draw(st.integers(1, 200_000)),
                out_elems=draw(st.integers(1, 200_000)),
                input_from=None if i == 0 else f"l{i - 1}",
                prunable_out=i < n - 1,
            )
        )
    return layers


profiles_st = st.builds(
    synthetic_profile,
    fp32_gmacs=st.floats(0.005, 100.0),
    overhead_us=st.floats(1.0, 200.0),
    latency_ms=st.floats(0.05, 2000.0),
    ram_bytes=st.floats(1e3, 1e8),
    storage_bytes=st.floats(1e3, 1e8),
    traffic_bytes=st.floats(200.0, 1e6),
)


def scaled(profile: Profile, what: str, s: float) -> Profile:
    r = dataclasses.replace
    if what == "compute":
        c = profile.compute
        return r(profile, compute=r(c, effective_fp32_gmacs=c.effective_fp32_gmacs * s,
                                    effective_int8_gmacs=c.effective_int8_gmacs * s))
    if what == "overhead":
        return r(profile, compute=r(profile.compute, per_op_overhead_us=profile.compute.per_op_overhead_us / s))
    if what == "latency":
        return r(profile, budget=r(profile.budget, latency_ms=profile.budget.latency_ms * s))
    if what == "ram":
        return r(profile, budget=r(profile.budget, model_ram_mib=profile.budget.model_ram_mib * s))
    if what == "storage":
        return r(profile, budget=r(profile.budget, model_storage_mib=profile.budget.model_storage_mib * s))
    if what == "uplink":
        return r(profile, network=r(profile.network, uplink_kbps=profile.network.uplink_kbps * s))
    if what == "round":
        return r(profile, network=r(profile.network, round_period_s=profile.network.round_period_s * s))
    raise AssertionError(what)


@settings(max_examples=120, deadline=None)
@given(
    costs=cost_chains(),
    profile=profiles_st,
    what=st.sampled_from(["compute", "overhead", "latency", "ram", "storage", "uplink", "round"]),
    s=st.floats(1.0, 50.0),
    granularity=st.sampled_from(["channel", "unstructured"]),
)
def test_more_capability_never_lowers_keep(costs, profile, what, s, granularity):
    bigger = scaled(profile, what, s)
    try:
        base = plan(costs, profile, granularity=granularity)
    except PlanError:
        return  # nothing to compare against; the bigger profile may or may not fit
    better = plan(costs, bigger, granularity=granularity)  # must not raise
    assert better.keep_ratio >= base.keep_ratio


@settings(max_examples=60, deadline=None)
@given(costs=cost_chains(), profile=profiles_st)
def test_result_is_the_largest_feasible_grid_point(costs, profile):
    feasible = [
        i / 100
        for i in range(2, 101)
        if all(c.ok for c in check_budgets(costs_at_keep(costs, profile, i / 100), profile))
    ]
    if not feasible:
        with pytest.raises(PlanError):
            plan(costs, profile)
        return
    result = plan(costs, profile)
    assert result.keep_ratio == max(feasible)
    if result.keep_ratio < 1.0:
        assert result.binding in {"latency", "storage", "ram", "traffic"}
        assert not result.check(result.binding).next_ok
    else:
        assert result.binding == "none"


# --------------------------------------------------------------------------- real profiles


def test_paper_cnn_costs_match_hand_sums():
    costs = paper_cnn_costs()
    assert sum(c.params for c in costs) == 1_469_888
    assert sum(c.macs for c in costs) == 81_980_288


def test_esp32_keeps_less_than_jetson_nano_on_paper_cnn():
    costs = paper_cnn_costs()
    jetson = plan(costs, load_profile("jetson-nano"))
    esp = plan(costs, load_profile("esp32-s3"))
    assert esp.keep_ratio < jetson.keep_ratio
    assert (jetson.keep_ratio, jetson.binding) == (1.0, "none")
    # channels rounded down to esp32-s3's multiple of 16: 64*0.68 -> 32, 128*0.68 -> 80, ...
    assert (esp.keep_ratio, esp.binding) == (0.68, "latency")
    assert esp.channels == {"conv1": 32, "conv2": 80, "conv3": 160, "fc1": 128, "fc2": 10}
    assert esp.dtype == "int8" and not esp.can_train


def test_every_builtin_plans_the_paper_cnn():
    costs = paper_cnn_costs()
    keeps = {name: plan(costs, load_profile(name)).keep_ratio for name in
             ("nrf52840", "esp32-s3", "stm32h743", "raspberry-pi-zero-2w", "raspberry-pi-4",
              "raspberry-pi-5", "jetson-nano", "jetson-orin-nano", "x86-host")}
    assert keeps["nrf52840"] < keeps["esp32-s3"] <= keeps["jetson-nano"]
    assert all(0.02 <= k <= 1.0 for k in keeps.values())


# --------------------------------------------------------------------------- CLI


@pytest.fixture
def fake_models(monkeypatch):
    """Stand-in for dslth_edge.learn.models so the CLI test does not build torch models."""
    calls = []
    module = types.ModuleType("dslth_edge.learn.models")
    module.MODEL_NAMES = ("paper-cnn", "mcu-cnn")

    def build_model(name, input_shape, num_classes, **kw):
        calls.append((name, input_shape, num_classes))
        return object()

    module.build_model = build_model
    module.layer_costs = lambda model, input_shape: paper_cnn_costs()
    # the CLI plans with device.keep.plan_costs (residual coupling): the same stand-in; keep is
    # imported before the fake module replaces the real one, which it imports by name
    from dslth_edge.device import keep

    monkeypatch.setattr(keep, "plan_costs", lambda model, input_shape: module.layer_costs(model, input_shape))
    monkeypatch.setitem(sys.modules, "dslth_edge.learn.models", module)
    from dslth_edge.device import training  # the training rows trace a model too: the same stand-in

    monkeypatch.setattr(training, "trace_model", lambda name, shape, classes: training.trace_from_costs(
        name, paper_cnn_costs(), shape, saved_fixed_bytes=0.0, saved_per_sample_bytes=4.0 * 64 * 28 * 28, batch_norm=False))
    return calls


def test_cli_plan_text(fake_models):
    result = CliRunner().invoke(
        profiles, ["plan", "esp32-s3", "--model", "paper-cnn"], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    assert fake_models == [("paper-cnn", (1, 28, 28), 10)]
    assert "keep 0.68 — bound by latency: 193.7 ms predicted vs 200 ms budget" in result.output
    for word in ("storage", "ram", "traffic", "conv3", "inference target"):
        assert word in result.output


def test_cli_plan_json(fake_models):
    result = CliRunner().invoke(
        profiles,
        ["plan", "jetson-nano", "--model", "paper-cnn", "--dataset-shape", "1x28x28",
         "--classes", "10", "--granularity", "unstructured", "--json"],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["keep_ratio"] == 1.0 and data["binding"] == "none"
    assert data["granularity"] == "unstructured" and data["model"] == "paper-cnn"
    assert data["input_shape"] == [1, 28, 28]


def test_cli_plan_errors(fake_models):
    runner = CliRunner()
    result = runner.invoke(profiles, ["plan", "esp32", "--model", "paper-cnn"])
    assert isinstance(result.exception, ProfileError)
    assert "esp32-s3" in str(result.exception)  # lists the available profiles

    result = runner.invoke(profiles, ["plan", "esp32-s3", "--model", "vgg-16"])
    assert isinstance(result.exception, UsageError)
    assert "paper-cnn" in str(result.exception)

    result = runner.invoke(
        profiles, ["plan", "esp32-s3", "--model", "paper-cnn", "--dataset-shape", "28x28"]
    )
    assert isinstance(result.exception, UsageError)
    assert "CxHxW" in str(result.exception)

    result = runner.invoke(
        profiles, ["plan", "nrf52840", "--model", "paper-cnn", "--granularity", "unstructured"]
    )
    assert isinstance(result.exception, PlanError)
    assert "latency" in str(result.exception) and "budget" in str(result.exception)
