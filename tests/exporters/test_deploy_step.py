"""The personal deploy-time step: the shrunk model's surviving weights train on the node's data, zeros stay zero."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dslth_edge.errors import UsageError
from dslth_edge.exporters.deploy_step import DeployStepOptions, plan_shrinks, run_deploy_step
from dslth_edge.runs.runinfo import accuracy, load_run


def _weights(m: nn.Module) -> list[torch.Tensor]:
    return [mod.weight.detach().clone() for mod in m.modules() if isinstance(mod, (nn.Conv2d, nn.Linear))]


def test_plan_shrinks_reads_the_nodes_plan() -> None:
    assert plan_shrinks({"channels": [8, 16, 32, 10]})
    assert plan_shrinks({"extra": {"plan": {"channels": [8, 16]}}})
    assert not plan_shrinks({"channels": None, "extra": {"plan": {"channels": None}}})


def test_unknown_kind_and_distill_without_teacher_are_refused() -> None:
    with pytest.raises(UsageError, match="unknown deploy-time step"):
        DeployStepOptions(kind="prune-more")
    with pytest.raises(UsageError, match="negative|>= 0"):
        DeployStepOptions(steps=-1)


def test_finetune_trains_surviving_weights_only_and_learns(trained_run) -> None:
    pytest.importorskip("torch_pruning")
    from dslth_edge.exporters.shrink import shrink

    info = load_run(trained_run)
    shrunk = shrink(info.model, info.input_shape, channel_multiple=8)  # zero-padded channels included
    before = _weights(shrunk)
    x, y = info.test_arrays(300)
    tuned, rec = run_deploy_step(shrunk, info, DeployStepOptions(kind="finetune", steps=60))
    after = _weights(tuned)
    assert rec["kind"] == "finetune" and rec["steps"] == 60 and rec["memory"]["predicted_bytes"] > 0
    for b, a in zip(before, after):
        assert torch.equal(a[b == 0], torch.zeros_like(a[b == 0]))  # removed weights, padding: still exactly zero
    assert any(not torch.equal(a, b) for a, b in zip(before, after))  # surviving weights trained
    assert _weights(shrunk)[0].equal(before[0])  # the input module is left as it was
    assert accuracy(tuned, x, y) >= accuracy(shrunk, x, y) - 0.02
    with pytest.raises(UsageError, match="needs a teacher"):
        run_deploy_step(shrunk, info, DeployStepOptions(kind="distill", steps=1))
    same, rec0 = run_deploy_step(shrunk, info, DeployStepOptions(kind="none"))
    assert same is shrunk and rec0["steps"] == 0


def test_the_steps_device_time_is_the_planners_time_per_round_model(trained_run) -> None:
    """One cost model: the deploy-time step's predicted device seconds are predict_round's
    for its steps, and move with the profile's calibrated training fit."""
    pytest.importorskip("torch_pruning")
    from dataclasses import replace

    from dslth_edge.cost.calibration import TRAINING_COEFFICIENTS, LatencyCalibration, TrainingFit
    from dslth_edge.cost.latency import predict_round
    from dslth_edge.cost.macs import count_macs
    from dslth_edge.device.profiles import load_profile
    from dslth_edge.exporters.shrink import shrink

    info = load_run(trained_run)
    shrunk = shrink(info.model, info.input_shape)
    profile = load_profile("stm32h743")
    _, rec = run_deploy_step(shrunk, info, DeployStepOptions(kind="finetune", steps=3), profile=profile)
    layers = sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in shrunk.modules())
    cited = predict_round(profile, forward_macs=count_macs(shrunk, info.input_shape), layers=layers,
                          batch=rec["batch_size"], local_steps=3)
    assert cited.basis == "cited" and rec["seconds_device_predicted"] == pytest.approx(cited.compute_s)
    fit = TrainingFit(runtime="torch", version="test", threads=1, coefficients={k: 1e-3 for k in TRAINING_COEFFICIENTS},
                      points=4, passes=1, median_rel_error=0.0)
    measured = replace(profile, calibration=LatencyCalibration(created="now", host={}, runtimes={}, training=fit))
    _, rec2 = run_deploy_step(shrunk, info, DeployStepOptions(kind="finetune", steps=3), profile=measured)
    assert rec2["seconds_device_predicted"] != pytest.approx(rec["seconds_device_predicted"])
    assert rec2["seconds_device_predicted"] == pytest.approx(predict_round(
        measured, forward_macs=count_macs(shrunk, info.input_shape), layers=layers,
        batch=rec["batch_size"], local_steps=3).compute_s)
