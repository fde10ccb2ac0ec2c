"""The simulator across processes and sittings: workers and resume give the masks of one
uninterrupted single-process run, bit for bit; the paper preset and per-layer-type keep."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from dslth_edge.data import make_synthetic
from dslth_edge.errors import CheckpointError, UsageError
from dslth_edge.fleet.plan import FleetOptions, plan_fleet
from dslth_edge.fleet.simulator import resume_round, simulate
from dslth_edge.learn.algorithm import PRESETS, get_preset, preset_run
from dslth_edge.learn.keep_spec import model_layer_kinds, parse_keep
from dslth_edge.learn.masking import masked_layers
from dslth_edge.runs.rundir import load_mask, read_metrics

TINY = make_synthetic(shape=(1, 8, 8), num_classes=4, train_size=240, test_size=80, noise=2.0)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _opts(out: Path, **kw: Any) -> FleetOptions:
    base: dict[str, Any] = {"nodes": 4, "topology": "ring", "dataset": "synthetic", "partition": "classes:2", "model": "mcu-cnn",
                                "rounds": 6, "eval_every": 2, "eval_samples": 10, "keep": 0.3, "out": str(out),
                                "profiles": ("jetson-nano",), "overrides": {"batch_size": 8, "lr": 1.0}}
    base.update(kw)
    return FleetOptions(**base)


def _masks(run: Path, nodes: int = 4) -> list[list[np.ndarray]]:
    return [load_mask(run / f"node-{i}" / "mask.npz").masks for i in range(nodes)]


def _same_masks(a: Path, b: Path, nodes: int = 4) -> bool:
    return all(np.array_equal(x, y) for ma, mb in zip(_masks(a, nodes), _masks(b, nodes)) for x, y in zip(ma, mb))


def _metrics(run: Path, nodes: int = 4) -> list[list[dict[str, Any]]]:
    """Every metrics line but the machine's figures (wall-clock timings, memory)."""
    return [[{k: v for k, v in r.items() if not k.startswith(("t_", "peak_"))} for r in read_metrics(run / f"node-{i}" / "metrics.jsonl")]
            for i in range(nodes)]


def test_workers_are_bit_identical_to_one_process(tmp_path: Path) -> None:
    one = simulate(_opts(tmp_path / "one"), dataset=TINY, write_plots=False)
    two = simulate(_opts(tmp_path / "two"), dataset=TINY, write_plots=False, workers=2)
    assert _same_masks(tmp_path / "one", tmp_path / "two")
    assert _metrics(tmp_path / "one") == _metrics(tmp_path / "two")  # losses, accuracies and bytes too
    assert one["final"]["acc_mean"] == two["final"]["acc_mean"]
    assert two["simulator"]["workers"] == 2 and one["simulator"]["workers"] == 1
    # the run learned something on its way: masks moved away from round 0's
    rows = read_metrics(tmp_path / "two" / "node-0" / "metrics.jsonl")
    assert len(rows) == 6 and rows[0]["bytes_sent"] > 0 and rows[-1]["neighbours_heard"] == 2


def test_stop_and_resume_is_bit_identical(tmp_path: Path) -> None:
    simulate(_opts(tmp_path / "whole"), dataset=TINY, write_plots=False)
    asked = {"n": 0}

    def stop_after_third() -> bool:
        asked["n"] += 1
        return asked["n"] == 3

    with pytest.raises(KeyboardInterrupt):
        simulate(_opts(tmp_path / "cut"), dataset=TINY, write_plots=False, checkpoint_every=4, stop_requested=stop_after_third)
    assert resume_round(tmp_path / "cut") == 3  # a stop checkpoints the round it finished
    assert not (tmp_path / "cut" / "summary.json").exists()
    with pytest.raises(UsageError, match="resume"):
        simulate(_opts(tmp_path / "cut"), dataset=TINY, write_plots=False)  # without --resume: refused
    with pytest.raises(CheckpointError, match="seed"):
        simulate(_opts(tmp_path / "cut", seed=1), dataset=TINY, write_plots=False, resume=True)
    # the second sitting in two worker processes: still the same masks, metrics and summary figures
    s = simulate(_opts(tmp_path / "cut"), dataset=TINY, write_plots=False, resume=True, workers=2)
    assert s["simulator"]["resumed_from_round"] == 3 and s["rounds"] == 6
    assert _same_masks(tmp_path / "whole", tmp_path / "cut")
    assert _metrics(tmp_path / "whole") == _metrics(tmp_path / "cut")
    # a finished run resumes to its summary without running anything
    again = simulate(_opts(tmp_path / "cut"), dataset=TINY, write_plots=False, resume=True)
    assert again["final"] == s["final"]


_KILLED = """
import sys, torch
torch.set_num_threads(1)
from dslth_edge.data import make_synthetic
from dslth_edge.fleet.plan import FleetOptions
from dslth_edge.fleet.simulator import simulate
ds = make_synthetic(shape=(1, 8, 8), num_classes=4, train_size=240, test_size=80, noise=2.0)
opts = FleetOptions(nodes=4, topology="ring", dataset="synthetic", partition="classes:2", model="mcu-cnn",
                    rounds=int(sys.argv[2]), eval_every=2, eval_samples=10, keep=0.3, out=sys.argv[1],
                    profiles=("jetson-nano",), overrides={"batch_size": 8, "lr": 1.0})
simulate(opts, dataset=ds, write_plots=False, checkpoint_every=2, resume=True)
"""


def test_killed_run_resumes_exactly(tmp_path: Path) -> None:
    """SIGKILL in the middle of a run: the resumed run ends with the uninterrupted run's masks."""
    rounds = 40  # long enough to be killed mid-way
    script = tmp_path / "run.py"
    script.write_text(_KILLED)
    run = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(script), str(run), str(rounds)], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while resume_round(run) < 4 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    cut = resume_round(run)
    assert 4 <= cut < rounds
    done = len(read_metrics(run / "node-0" / "metrics.jsonl"))
    assert done >= cut  # rounds after the checkpoint were done, and are redone
    # continue to a shorter total than planned would change the options: continue to the same total,
    # then compare with an uninterrupted run of the same length
    subprocess.run([sys.executable, str(script), str(run), str(rounds)], cwd=tmp_path, check=True, timeout=600)
    simulate(_opts(tmp_path / "whole", rounds=rounds, eval_every=2), dataset=TINY, write_plots=False)
    assert _same_masks(tmp_path / "whole", run)
    assert _metrics(tmp_path / "whole") == _metrics(run)
    assert json.loads((run / "summary.json").read_text())["simulator"]["resumed_from_round"] == cut


def test_paper_preset_is_the_authors_code() -> None:
    p = PRESETS["paper"]
    assert (p.lr, p.momentum, p.weight_decay, p.batch_size, p.local_steps, p.beta, p.ft_lr, p.ft_recompute) == \
        (10.0, 0.0, 5e-4, 128, 1, 1.0, 10.0, False)
    assert preset_run("paper").rounds == 400 and preset_run("paper").keep == "conv=0.3,fc=0.9"
    assert preset_run("default").rounds is None and preset_run("default").keep is None
    assert get_preset("default").lr != p.lr  # the default preset is not the paper's
    assert FleetOptions(preset="paper").rounds == 400 and FleetOptions().rounds == 100
    assert FleetOptions(preset="paper", rounds=7).rounds == 7


def test_keep_specs() -> None:
    assert parse_keep(0.3).uniform == 0.3 and parse_keep("0.3").uniform == 0.3
    spec = parse_keep("conv=0.3, fc=0.9")
    assert spec.uniform is None and spec.layer_keeps(["conv", "conv", "fc"]) == [0.3, 0.3, 0.9]
    assert parse_keep("0.5,linear=0.9").layer_keeps(["conv", "fc"]) == [0.5, 0.9]
    for bad in ("conv=0.3,conv=0.4", "conv=1.5", "attn=0.3", "", "0.3,0.4", "conv=x", "0", "nan"):
        with pytest.raises(UsageError):
            parse_keep(bad)
    with pytest.raises(UsageError, match="fc"):
        parse_keep("conv=0.3").layer_keeps(["conv", "fc"])
    kinds, sizes = model_layer_kinds("paper-cnn", (1, 28, 28), 10)
    assert kinds == ["conv", "conv", "conv", "fc", "fc"] and sizes[0] == 64 * 25


def test_paper_keep_reaches_the_layers() -> None:
    """The paper preset's keep (conv 0.3, fc 0.9) is what every node's layers keep; --keep overrides it."""
    plan = plan_fleet(FleetOptions(nodes=2, dataset="synthetic", partition="iid", preset="paper", model="mcu-cnn",
                                   profiles=("jetson-nano",)), TINY)
    from dslth_edge.learn.models import build_model

    model = build_model(plan.node_config(1).model)
    assert [layer.keep for _, layer in masked_layers(model)] == [0.3, 0.3, 0.3, 0.9]
    sizes = [layer.weight.numel() for _, layer in masked_layers(model)]
    assert plan.keeps[0] == pytest.approx(sum(k * n for k, n in zip([0.3, 0.3, 0.3, 0.9], sizes)) / sum(sizes))
    assert "preset paper" in plan.keep_notes[0]
    plan = plan_fleet(FleetOptions(nodes=2, dataset="synthetic", partition="iid", preset="paper", model="mcu-cnn",
                                   keep=0.5, profiles=("jetson-nano",)), TINY)
    assert plan.layer_keeps is None and plan.keeps == [0.5, 0.5]


def test_self_weight_damps_the_neighbour_average() -> None:
    """m̄ with a self weight a is (1 − a) · the neighbours' mean + a · the node's own published mask."""
    from dslth_edge.fleet.plan import make_node
    from dslth_edge.learn.algorithm import neighbour_average
    from dslth_edge.transport.memory import MemoryHub

    for a in (0.0, 0.5):
        plan = plan_fleet(_opts(Path("unused"), overrides={"batch_size": 8, "lr": 1.0, "self_weight": a}), TINY)
        hub = MemoryHub()
        nodes = [make_node(plan, i, hub.connect(i, plan.topology.neighbours(i)), None) for i in range(4)]
        for n in nodes:
            n.begin_round()
        published = [n.current_masks() for n in nodes]
        for n in nodes:
            n.finish_round()
        node = nodes[1]
        mbar = node.algorithm.mbar  # type: ignore[attr-defined]
        assert mbar is not None
        for layer, mb in enumerate(mbar):
            mean = neighbour_average([published[j][layer] for j in node.neighbours])
            assert mean is not None
            assert torch.equal(mb, (1 - a) * mean + a * published[1][layer].to(torch.float32))


def test_resume_with_more_rounds_continues_the_run(tmp_path: Path) -> None:
    """A finished run given more rounds continues to the new total: the longer run's masks, bit for bit."""
    simulate(_opts(tmp_path / "long", rounds=6), dataset=TINY, write_plots=False)
    simulate(_opts(tmp_path / "grown", rounds=4), dataset=TINY, write_plots=False)
    s = simulate(_opts(tmp_path / "grown", rounds=6), dataset=TINY, write_plots=False, resume=True)
    assert s["rounds"] == 6 and s["simulator"]["resumed_from_round"] == 4
    assert _same_masks(tmp_path / "long", tmp_path / "grown")
    simulate(_opts(tmp_path / "dense", algorithm="dpsgd-ft", rounds=2), dataset=TINY, write_plots=False)
    with pytest.raises(CheckpointError, match="rounds"):  # dpsgd-ft's fine-tuning rounds depend on the total
        simulate(_opts(tmp_path / "dense", algorithm="dpsgd-ft", rounds=3), dataset=TINY, write_plots=False, resume=True)


def test_damaged_checkpoint_is_a_checkpoint_error_from_a_worker(tmp_path: Path) -> None:
    """A worker's own errors reach the caller as they are (exit code 2), not as a crash."""
    run = tmp_path / "run"
    simulate(_opts(run, rounds=2), dataset=TINY, write_plots=False, checkpoint_every=1)
    (run / "resume" / "round-000002" / "node-1.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="unreadable"):
        simulate(_opts(run, rounds=3), dataset=TINY, write_plots=False, resume=True, workers=2)
