"""The training plan: memory at a micro-batch, the largest micro-batch that fits, time per round."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from dslth_edge.device.footprint import current_rss_bytes, peak_rss_bytes
from dslth_edge.device.planner import plan
from dslth_edge.device.profiles import MIB, Profile, list_profiles, load_profile, parse_profile
from dslth_edge.device.training import (
    BYTES_PER_MASKED_WEIGHT,
    RUNTIME_BASE_MIB,
    TrainingSetup,
    accumulation_chunks,
    attach_training,
    plan_training,
    predict_memory,
    runtime_base_bytes,
    trace_model,
    trace_saved_bytes,
)
from dslth_edge.errors import ProfileError, UsageError

SHAPE = (1, 28, 28)
ROOT = Path(__file__).resolve().parents[2]


def profile_with(*, training_mib: float | None, period_s: float = 20.0, gmacs: float = 3.2, arch: str = "x86_64") -> Profile:
    """The Pi Zero 2 W's profile with another training budget, round period, throughput or arch."""
    import tomllib

    data = tomllib.loads(Path(load_profile("raspberry-pi-zero-2w").source_path).read_text())
    data["network"]["round_period_s"] = period_s
    data["compute"]["effective_fp32_gmacs"] = gmacs
    data["cpu"]["arch"] = arch
    if training_mib is None:
        del data["training"]
    else:
        data["training"]["ram_mib"] = training_mib
    return parse_profile(data, name="test-board", source_path="<test>")


def test_every_trainable_builtin_profile_has_a_training_budget_with_its_rule():
    trainable = [p for p in list_profiles() if p.can_train]
    assert {p.name for p in trainable} >= {"jetson-nano", "jetson-orin-nano", "raspberry-pi-4", "raspberry-pi-5",
                                           "raspberry-pi-zero-2w", "x86-host"}
    for p in trainable:
        assert p.training is not None, p.name
        assert 0 < p.training.ram_mib <= p.memory.ram_mib and p.training.ram_rule.strip()
        assert p.training_ram_budget_bytes == p.training.ram_mib * MIB
    assert load_profile("raspberry-pi-zero-2w").training.ram_mib == 384.0


def test_training_table_is_validated():
    with pytest.raises(ProfileError, match=r"training.ram_mib.*at most memory.ram_mib \(512 MiB\)"):
        profile_with(training_mib=1024.0)
    default = profile_with(training_mib=None)
    assert default.training is None and default.training_ram_budget_bytes == 0.5 * 512 * MIB
    assert "default rule" in default.training_ram_rule


def test_trace_counts_saved_tensors_linearly_in_the_batch():
    t = trace_model("paper-cnn", SHAPE, 10)
    assert t.saved_per_sample_bytes > 0 and not t.batch_norm
    # conv1's output alone (64 x 28 x 28 float32) is kept for backward by the ReLU
    assert t.saved_per_sample_bytes >= 64 * 28 * 28 * 4
    assert t.forward_macs > 0 and t.masked_weights == 64 * 25 + 128 * 64 * 25 + 256 * 128 * 25 + 256 * 9 * 192 + 192 * 10
    assert trace_model("mcu-cnn", SHAPE, 10).batch_norm
    from dslth_edge.learn.models import ModelSpec, build_model

    model = build_model(ModelSpec("paper-cnn", SHAPE, 10, keep=0.5))
    s2, s4, s6 = (trace_saved_bytes(model, SHAPE, b) for b in (2, 4, 6))
    assert s6 - s4 == pytest.approx(s4 - s2, rel=1e-6)


def test_memory_model_adds_up():
    t = trace_model("paper-cnn", SHAPE, 10)
    setup = TrainingSetup(batch_size=64, momentum=True, train_samples=1000, test_samples=100, sample_bytes=784)
    m1, m2 = predict_memory(t, setup, 8, "x86_64"), predict_memory(t, setup, 16, "x86_64")
    assert m1.model == t.masked_weights * (BYTES_PER_MASKED_WEIGHT + 4)
    assert m1.runtime == RUNTIME_BASE_MIB["x86_64"] * MIB
    assert m2.activations == pytest.approx(2 * m1.activations) and m2.total > m1.total
    assert m1.data >= 1100 * 8 + 8 * 784 * 5  # labels and the batch; mapped images are not in RAM
    inram = predict_memory(t, TrainingSetup(batch_size=64, train_samples=1000, test_samples=100, mapped=False), 8, "x86_64")
    assert inram.data - m1.data == 1100 * 784
    assert runtime_base_bytes("riscv64")[1].startswith("not measured")


def test_largest_micro_batch_that_fits_with_equal_chunks():
    t = trace_model("paper-cnn", SHAPE, 10)
    setup = TrainingSetup(batch_size=128, sample_bytes=784)
    base = predict_memory(t, setup, 1, "x86_64").total
    per = predict_memory(t, setup, 2, "x86_64").total - base
    budget_mib = (base + 20.5 * per) / MIB  # room for about 21 samples
    tp = plan_training("paper-cnn", SHAPE, 10, profile_with(training_mib=budget_mib), setup)
    assert tp.fits and tp.accumulation == accumulation_chunks(128, tp.micro_batch)
    assert tp.micro_batch * tp.accumulation >= 128 > (tp.micro_batch - 1) * tp.accumulation
    assert tp.memory.total <= tp.ram_budget
    # one chunk fewer would need a micro-batch that does not fit
    bigger = math.ceil(128 / (tp.accumulation - 1))
    assert predict_memory(t, setup, bigger, "x86_64").total > tp.ram_budget
    assert tp.checks[0].name == "training-ram" and tp.checks[0].ok
    assert any("accumulated" in n for n in tp.notes)


def test_whole_batch_when_it_fits_and_nothing_when_the_runtime_alone_does_not():
    roomy = plan_training("mcu-cnn", SHAPE, 10, profile_with(training_mib=512.0), TrainingSetup(batch_size=32))
    assert roomy.fits and roomy.micro_batch == 32 and roomy.accumulation == 1
    tight = plan_training("paper-cnn", SHAPE, 10, profile_with(training_mib=100.0))
    assert not tight.fits and tight.micro_batch == 0 and not tight.checks[0].ok
    assert "does not fit" in tight.explain() and "100 MiB" in tight.explain()
    assert any("nothing fits the training RAM budget" in n for n in tight.notes)


def test_time_per_round_against_the_round_period():
    t = trace_model("paper-cnn", SHAPE, 10)
    slow = profile_with(training_mib=384.0, period_s=1.0, gmacs=1.0)
    tp = plan_training("paper-cnn", SHAPE, 10, slow, TrainingSetup(batch_size=128, local_steps=1))
    assert tp.macs_per_round == 3 * t.forward_macs * 128
    assert tp.time_per_round_s >= tp.macs_per_round / 1e9
    assert not tp.checks[1].ok and any("lower the batch" in n for n in tp.notes)
    steps = plan_training("paper-cnn", SHAPE, 10, profile_with(training_mib=384.0, period_s=60.0, gmacs=1.0),
                          TrainingSetup(batch_size=128, local_steps=10))
    assert not steps.checks[1].ok and any("lower local steps to" in n for n in steps.notes)
    fast = plan_training("paper-cnn", SHAPE, 10, profile_with(training_mib=384.0, period_s=60.0, gmacs=100.0))
    assert fast.checks[1].ok


def test_attach_training_fills_the_plan_and_its_json():
    from dslth_edge.learn.models import ModelSpec, build_model, layer_costs

    p = load_profile("raspberry-pi-zero-2w")
    costs = layer_costs(build_model(ModelSpec("paper-cnn", SHAPE, 10, keep=1.0)), SHAPE)
    result = attach_training(plan(costs, p, granularity="unstructured"), "paper-cnn", SHAPE, 10, p)
    assert result.training is not None and result.training.profile == "raspberry-pi-zero-2w"
    data = json.loads(json.dumps(result.to_dict()))
    assert data["training"]["ram_budget"] == 384 * MIB
    assert {c["name"] for c in data["training"]["checks"]} == {"training-ram", "training-time"}


def test_setup_is_validated():
    with pytest.raises(UsageError):
        TrainingSetup(batch_size=0)


def test_peak_rss_follows_the_kernel_high_water_mark():
    now = current_rss_bytes()
    assert peak_rss_bytes() >= now > 0
    block = np.ones(64 * MIB, dtype=np.uint8)  # every page written: resident
    assert current_rss_bytes() >= now + 48 * MIB
    del block
    assert peak_rss_bytes() >= now + 48 * MIB  # the high-water mark stays after the block is freed


def test_train_records_its_peak_and_stops_with_exit_3_when_nothing_fits(tmp_path):
    """A budget no process meets: the first round's measured peak is recorded, the node finds no
    micro-batch that fits, keeps its checkpoint and stops with exit 3 naming the budget."""
    from dslth_edge.errors import OverBudgetError
    from dslth_edge.fleet.solo import TrainOptions, train

    text = Path(load_profile("raspberry-pi-zero-2w").source_path).read_text()
    tiny = tmp_path / "tiny-board.toml"
    tiny.write_text(text.replace("ram_mib = 384.0", "ram_mib = 1.0"))  # far below any Python process
    warnings: list[str] = []
    with pytest.raises(OverBudgetError, match="tiny-board's training RAM budget 1 MiB") as info:
        train(TrainOptions(profile=str(tiny), dataset="synthetic", model="mcu-cnn", rounds=3, eval_every=0,
                           batch_size=8, out=str(tmp_path / "run")), on_warning=warnings.append)
    assert info.value.exit_code == 3 and "\n" not in str(info.value) and not warnings
    rows = [json.loads(line) for line in (tmp_path / "run" / "node-0" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["peak_rss_bytes"] > MIB
    assert (tmp_path / "run" / "node-0" / "checkpoint.pt").exists()
    roomy = train(TrainOptions(profile="x86-host", dataset="synthetic", model="mcu-cnn", rounds=1, batch_size=8,
                               out=str(tmp_path / "run2")), on_warning=warnings.append)
    assert not warnings and roomy.micro_batch == 0  # the whole batch fits: no accumulation, no warning
    assert roomy.peak_rss_bytes is not None and roomy.seconds_per_round is not None and roomy.seconds_per_round > 0
