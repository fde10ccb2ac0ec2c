"""The run summary: a node without test samples has no accuracy, and the summary says so
(a 1,000-node fleet on the synthetic set gave 500 such nodes, and statistics.pstdev of
their NaNs crashed the simulator after its last round)."""

from __future__ import annotations

import json

import pytest

from dslth_edge.fleet.plan import FleetOptions
from dslth_edge.fleet.simulator import simulate

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_nodes_without_test_samples_are_counted_not_averaged(tmp_path) -> None:
    out = tmp_path / "run"
    summary = simulate(FleetOptions(nodes=4, topology="ring", dataset="synthetic", model="mcu-cnn", keep=0.5,
                                    partition="classes:2", rounds=1, test_size=0, out=str(out)), write_plots=False)
    assert [n["final_acc"] for n in summary["nodes"]] == [None] * 4
    assert summary["final"]["nodes_without_accuracy"] == 4 and summary["final"]["acc_mean"] is None
    json.loads((out / "summary.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in summary.json"))
