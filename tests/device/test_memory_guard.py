"""Training memory that holds: a measured runtime base, and a re-plan when the measured peak
exceeds the plan (injected measurements, never a timing or this machine's figures)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dslth_edge.device import memory_guard as mg
from dslth_edge.device.memory_guard import MemoryGuard, measure_runtime_base
from dslth_edge.device.profiles import MIB, load_profile
from dslth_edge.device.training import TrainingSetup, predict_memory, trace_model
from dslth_edge.errors import OverBudgetError

SHAPE = (1, 28, 28)


@pytest.fixture()
def resets(monkeypatch) -> list[bool]:
    done: list[bool] = []
    monkeypatch.setattr(mg, "reset_peak_rss", lambda: done.append(True) or True)
    return done


def _guard(micro: int, base_mib: float = 250.0) -> MemoryGuard:
    profile = load_profile("raspberry-pi-zero-2w")  # 384 MiB training budget
    setup = TrainingSetup(batch_size=128, sample_bytes=784, runtime_base=base_mib * MIB, runtime_note="injected")
    return MemoryGuard(trace_model("paper-cnn", SHAPE, 10), setup, profile, micro, resettable=True)


def test_a_measured_base_replaces_the_constant_and_holds_the_data() -> None:
    t = trace_model("paper-cnn", SHAPE, 10)
    measured = TrainingSetup(batch_size=128, sample_bytes=784, mapped=False, runtime_base=300 * MIB, runtime_note="here")
    m = predict_memory(t, measured, 16, "x86_64")
    assert m.runtime == 300 * MIB and m.runtime_note == "here"
    assert m.data == 16 * 784 * 5  # labels and in-RAM images are inside the measured base: only the batch
    assert m.evaluation > 0 and m.eval_batch == 16
    assert m.total == pytest.approx(300 * MIB + (m.model + m.data + max(m.step, m.evaluation)) * 1.10)


def test_the_base_is_measured_in_process() -> None:
    got = measure_runtime_base("mcu-cnn", SHAPE, 10)
    assert got is not None and got[0] > 0 and "measured in this process" in got[1]


def test_within_the_plan_nothing_changes(resets) -> None:
    g = _guard(64)
    assert g.after_round(None) is None
    assert g.after_round(g.planned) is None and g.micro_batch == 64 and not resets


def test_over_the_plan_but_within_the_budget_keeps_the_setting_and_says_so(resets) -> None:
    g = _guard(32)
    measured = min(g.planned + 2 * MIB, g.budget)
    r = g.after_round(measured)
    assert r is not None and not r.changed and r.micro_batch == 32 and not resets
    msg = r.message("raspberry-pi-zero-2w", 1)
    assert "exceeds the plan's" in msg and "micro-batch 32 stays" in msg and "\n" not in msg
    assert g.after_round(measured) is None  # the corrected plan now holds


def test_an_overshoot_replans_down_to_what_fits(resets) -> None:
    g = _guard(64)
    over = g.budget + 20 * MIB  # the first round measured 20 MiB over the budget
    r = g.after_round(over)
    assert r is not None and r.changed and r.previous == 64 and r.micro_batch < 64
    assert r.predicted <= g.budget and g.micro_batch == r.micro_batch == g.node_micro_batch()
    assert resets == [True]  # the next round measures the new setting
    assert "re-planned to micro-batch" in r.message("raspberry-pi-zero-2w", 1)
    # the prediction's error is carried: the new setting is predicted from what was measured
    model_only = _guard(64)
    assert r.predicted == pytest.approx(over - model_only.predict(64) + model_only.predict(r.micro_batch))
    # a second overshoot goes further down
    r2 = g.after_round(r.predicted + 10 * MIB)
    assert r2 is not None and r2.micro_batch <= r.micro_batch


def test_nothing_fits_stops_with_exit_3_naming_the_budget(resets) -> None:
    g = _guard(8)
    with pytest.raises(OverBudgetError, match=r"raspberry-pi-zero-2w's training RAM budget 384 MiB") as info:
        g.after_round(g.budget + 300 * MIB)
    assert info.value.exit_code == 3 and "micro-batch 1 would need" in str(info.value)


def test_a_plan_over_the_budget_is_checked_against_the_measurement(resets) -> None:
    """Nothing fitted the plan (micro-batch 1 predicted over the budget): the measurement decides."""
    g = _guard(1, base_mib=390.0)  # the base alone is over the 384 MiB budget
    assert g.planned > g.budget
    with pytest.raises(OverBudgetError, match="budget 384 MiB"):
        g.after_round(g.budget + 1 * MIB)  # under the plan, over the budget: still nothing fits
    h = _guard(4, base_mib=390.0)
    r = h.after_round(h.predict(4) - 100 * MIB)  # the plan overestimated: 4 fits after all
    assert r is None or (r.micro_batch == 4 and not r.changed)


def test_train_replans_on_an_injected_overshoot(tmp_path, monkeypatch, resets) -> None:
    """The solo driver applies the guard: round 1's (injected) peak is over the plan, the node
    re-plans to a smaller micro-batch, says so once, and the next rounds train with it."""
    from dslth_edge.fleet import node as node_module
    from dslth_edge.fleet.solo import TrainOptions, train

    budget = load_profile("raspberry-pi-zero-2w").training_ram_budget_bytes
    peaks = iter([budget + 1 * MIB, 100 * MIB, 100 * MIB])  # 1 MiB over: a smaller micro-batch fits
    monkeypatch.setattr(node_module, "peak_rss_bytes", lambda: next(peaks))
    from dslth_edge.fleet import solo

    monkeypatch.setattr(solo, "measure_runtime_base", lambda *a, **k: (200.0 * MIB, "injected"))
    said: list[str] = []
    res = train(TrainOptions(profile="raspberry-pi-zero-2w", dataset="synthetic", model="mcu-cnn", rounds=3,
                             eval_every=0, batch_size=32, out=str(tmp_path / "run")), on_warning=said.append)
    assert len(said) == 1 and "re-planned to micro-batch" in said[0]
    assert 0 < res.micro_batch < 32 and resets == [True]
    assert res.predicted_peak_bytes is not None and res.predicted_peak_bytes <= budget
    rows = [json.loads(line) for line in (Path(res.node_dir) / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3


def test_train_stops_with_exit_3_when_nothing_fits(tmp_path, monkeypatch, resets) -> None:
    from dslth_edge.fleet import node as node_module
    from dslth_edge.fleet import solo
    from dslth_edge.fleet.solo import TrainOptions, train

    monkeypatch.setattr(node_module, "peak_rss_bytes", lambda: 4096 * MIB)
    monkeypatch.setattr(solo, "measure_runtime_base", lambda *a, **k: (200.0 * MIB, "injected"))
    with pytest.raises(OverBudgetError, match="training RAM budget 384 MiB"):
        train(TrainOptions(profile="raspberry-pi-zero-2w", dataset="synthetic", model="mcu-cnn", rounds=3,
                           eval_every=0, batch_size=8, out=str(tmp_path / "run")))
    assert (tmp_path / "run" / "node-0" / "checkpoint.pt").exists()  # what was trained is kept
