"""The fleet: profile assignment, deterministic lock-step simulation, baselines, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from dslth_edge.cli import cli
from dslth_edge.data import make_synthetic
from dslth_edge.errors import UsageError
from dslth_edge.fleet.plan import FleetOptions, assign_profiles, load_profile_map
from dslth_edge.fleet.simulator import simulate
from dslth_edge.runs.rundir import load_mask, read_metrics



pytestmark = pytest.mark.usefixtures("one_torch_thread")


TINY = make_synthetic(shape=(1, 8, 8), num_classes=4, train_size=240, test_size=80, noise=2.0)


def _opts(tmp: Path, algorithm: str = "mce-pl", **kw: object) -> FleetOptions:
    base = dict(nodes=4, topology="ring", dataset="synthetic", partition="classes:2", model="mcu-cnn",
                algorithm=algorithm, rounds=3, eval_every=2, eval_samples=10, keep=0.3, out=str(tmp),
                profiles=("jetson-nano", "esp32-s3"), overrides={"batch_size": 8, "lr": 1.0})
    base.update(kw)
    return FleetOptions(**base)  # type: ignore[arg-type]


def test_profiles_round_robin_and_map(tmp_path: Path) -> None:
    assert assign_profiles(FleetOptions(nodes=3, profiles=("a", "b"))) == ["a", "b", "a"]
    lines = tmp_path / "map.txt"
    lines.write_text("# node profile\n0 esp32-s3\n1 jetson-nano\n")
    assert load_profile_map(lines, 2) == ["esp32-s3", "jetson-nano"]
    js = tmp_path / "map.json"
    js.write_text(json.dumps({"1": "b", "0": "a"}))
    assert load_profile_map(js, 2) == ["a", "b"]
    with pytest.raises(UsageError, match="node"):
        load_profile_map(js, 3)
    lines.write_text("zero esp32\n")
    with pytest.raises(UsageError):
        load_profile_map(lines, 1)


def test_simulation_is_deterministic_and_writes_run_dirs(tmp_path: Path) -> None:
    a = simulate(_opts(tmp_path / "a"), dataset=TINY, write_plots=False)
    b = simulate(_opts(tmp_path / "b"), dataset=TINY, write_plots=False)
    for i in range(4):
        ma, mb = load_mask(tmp_path / "a" / f"node-{i}" / "mask.npz"), load_mask(tmp_path / "b" / f"node-{i}" / "mask.npz")
        assert all(np.array_equal(x, y) for x, y in zip(ma.masks, mb.masks))
    assert [n["final_acc"] for n in a["nodes"]] == [n["final_acc"] for n in b["nodes"]]
    cfg = json.loads((tmp_path / "a" / "node-1" / "config.json").read_text())
    assert {"dataset", "data_dir", "partition", "num_nodes", "partition_seed", "scarce"} <= cfg["extra"].keys()
    assert cfg["extra"]["partition"] == "classes:2" and cfg["extra"]["num_nodes"] == 4
    assert cfg["profile"] == "esp32-s3" and cfg["neighbours"] == [0, 2]
    rows = read_metrics(tmp_path / "a" / "node-0" / "metrics.jsonl")
    assert len(rows) == 3 and rows[0]["bytes_sent"] > 0 and rows[0]["neighbours_heard"] == 2
    kept = sum(int(m.sum()) for m in load_mask(tmp_path / "a" / "node-0" / "mask.npz").masks)
    assert rows[-1]["keep_actual"] == kept / sum(m.size for m in ma.masks)  # arithmetic count = real mask
    assert (tmp_path / "a" / "summary.md").read_text().startswith("# Fleet simulation: mce-pl")
    assert a["per_round"][0]["bytes_reference"] > a["per_round"][0]["bytes_sent"] > 0


@pytest.mark.parametrize("algorithm", ["local", "consensus", "dpsgd", "dpsgd-ft"])
def test_baselines_run_and_count_bytes(tmp_path: Path, algorithm: str) -> None:
    s = simulate(_opts(tmp_path, algorithm, rounds=4), dataset=TINY, write_plots=False)
    per_round = [r["bytes_sent"] for r in s["per_round"]]
    if algorithm == "local":
        assert sum(per_round) == 0
    elif algorithm == "dpsgd":
        assert len(set(per_round)) == 1 and per_round[0] > 0  # fixed-size fp32 payloads
    elif algorithm == "dpsgd-ft":
        assert per_round[-1] == 0 and per_round[0] > 0  # last 20% (1 round): local fine-tuning
    assert s["final"]["acc_mean"] is not None


def test_dpsgd_payload_is_32_bits_per_parameter(tmp_path: Path) -> None:
    s = simulate(_opts(tmp_path, "dpsgd", rounds=1), dataset=TINY, write_plots=False)
    cfg = json.loads((tmp_path / "node-0" / "config.json").read_text())
    assert cfg["layers"] == []  # dense model: nothing masked
    per_node = s["per_round"][0]["bytes_sent"] / 4
    mce = simulate(_opts(tmp_path / "m", rounds=1), dataset=TINY, write_plots=False)
    assert per_node > 20 * mce["per_round"][0]["bytes_sent"] / 4


def test_cli_simulate_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = CliRunner().invoke(cli, [
        "simulate", "--nodes", "3", "--topology", "full", "--dataset", "synthetic", "--partition", "iid",
        "--model", "mcu-cnn", "--rounds", "2", "--eval-every", "1", "--keep", "0.5", "--batch-size", "4",
        "--profiles", "jetson-nano,esp32-s3", "--out", str(out), "--json",
    ])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert summary["rounds"] == 2 and len(summary["nodes"]) == 3
    assert {"accuracy.png", "accuracy_vs_bytes.png", "acc_vs_keep.png"} <= {p.name for p in out.iterdir()}


def test_refuses_to_overwrite_a_run(tmp_path: Path) -> None:
    simulate(_opts(tmp_path, "local", rounds=1), dataset=TINY, write_plots=False)
    with pytest.raises(UsageError, match="already holds"):
        simulate(_opts(tmp_path, "local", rounds=1), dataset=TINY, write_plots=False)


PAPER_SHAPE = (1, 28, 28)


def test_paper_cnn_heterogeneous_fleet_mcu_models_fit(tmp_path: Path) -> None:
    """jetson-nano, raspberry-pi-4, nrf52840 on the paper CNN: each node trains its own plan; the MCU's
    shrunk model has at most the planned channels and fits its budgets (structure and budgets, not accuracy)."""
    from dslth_edge.device.profiles import BYTES_PER_VALUE, load_profile
    from dslth_edge.exporters.shrink import count_params, shrink, shrunk_info
    from dslth_edge.cost.analysis import analyze_torch_module
    from dslth_edge.cost.latency import predict
    from dslth_edge.runs.runinfo import load_run

    ds = make_synthetic(shape=PAPER_SHAPE, num_classes=4, train_size=96, test_size=24, noise=2.0)
    opts = FleetOptions(nodes=3, topology="ring", dataset="synthetic", partition="iid", model="paper-cnn", rounds=4,
                        eval_every=2, eval_samples=8, out=str(tmp_path / "run"),
                        profiles=("jetson-nano", "raspberry-pi-4", "nrf52840"),
                        overrides={"batch_size": 8, "group_lasso": 1e-4, "drop_threshold": 0.5})
    simulate(opts, dataset=ds, write_plots=False)
    for i in range(3):
        cfg = json.loads((tmp_path / "run" / f"node-{i}" / "config.json").read_text())
        plan = cfg["extra"]["plan"]  # the plan actually used
        assert plan["profile"] == cfg["profile"]
        if cfg["profile"] != "nrf52840":
            assert plan["route"] == "unstructured" and plan["channels"] is None and cfg["channels"] is None
            continue
        assert plan["route"] == "progressive" and cfg["channels"] == plan["channels"]
        profile = load_profile("nrf52840")
        info = load_run(tmp_path / "run", i, load_data=False)
        shrunk = shrink(info.model, PAPER_SHAPE)
        widths = list(shrunk_info(shrunk).widths().values())
        assert all(w <= c for w, c in zip(widths, plan["channels"])), (widths, plan["channels"])
        assert widths[-1] == 4  # every class row stays
        ops = list(analyze_torch_module(shrunk, torch.zeros(1, *PAPER_SHAPE)).ops)
        assert predict(ops, profile, dtype="int8").total_ms <= profile.budget.latency_ms
        weight_bytes = count_params(shrunk) * BYTES_PER_VALUE["int8"]
        assert weight_bytes <= profile.model_storage_budget_bytes
        # op.bytes = (input + output + weights) elements x 4 (fp32 analysis): activations in elements
        peak_act = max(op.bytes / BYTES_PER_VALUE["fp32"] - op.params for op in ops)
        assert weight_bytes + peak_act * BYTES_PER_VALUE["int8"] <= profile.model_ram_budget_bytes


def test_simulate_refuses_when_no_plan_fits(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    tight = tmp_path / "tight-nrf.toml"
    tight.write_text((root / "firmware_profiles" / "nrf52840.toml").read_text()
                     .replace("latency_ms = 500.0", "latency_ms = 5.0"))
    res = CliRunner().invoke(cli, [
        "simulate", "--nodes", "2", "--dataset", "synthetic", "--model", "paper-cnn", "--rounds", "1",
        "--profiles", f"jetson-nano,{tight}", "--out", str(tmp_path / "run"),
    ])
    from dslth_edge.device.planner import PlanError

    assert isinstance(res.exception, PlanError), res.output  # cli main maps it to exit 2
    assert res.exception.exit_code == 2 and "\n" not in str(res.exception)
    assert "tight-nrf" in str(res.exception) and "latency binds" in str(res.exception)
    assert "nearest feasible: --model mcu-cnn" in str(res.exception)
    assert not (tmp_path / "run" / "node-0" / "metrics.jsonl").exists()
