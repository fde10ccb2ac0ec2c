"""The simulator's resume files are plain data: written and read with torch.load(weights_only=True),
and a file that would run code when unpickled (or the older pickled format) is refused, not run."""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch

from dslth_edge.data import make_synthetic
from dslth_edge.errors import CheckpointError
from dslth_edge.fleet.plan import FleetOptions
from dslth_edge.fleet.simulator import simulate
from dslth_edge.runs.rundir import read_metrics

TINY = make_synthetic(shape=(1, 8, 8), num_classes=4, train_size=160, test_size=40, noise=2.0)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _opts(out: Path, **kw: Any) -> FleetOptions:
    base: dict[str, Any] = {"nodes": 3, "topology": "ring", "dataset": "synthetic", "partition": "classes:2",
                            "model": "mcu-cnn", "rounds": 2, "eval_every": 1, "eval_samples": 10, "keep": 0.3,
                            "out": str(out), "profiles": ("jetson-nano",), "overrides": {"batch_size": 8, "lr": 1.0}}
    base.update(kw)
    return FleetOptions(**base)


class _RunsCode:
    """Unpickling this creates ``path``: the stand-in for a payload that runs anything."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.path), "w"))


def _node_file(run: Path, round_done: int, node: int) -> Path:
    return run / "resume" / f"round-{round_done:06d}" / f"node-{node}.pt"


def _save(obj: Any, path: Path) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    path.write_bytes(buf.getvalue())


def test_resume_files_are_plain_and_pickles_are_refused(tmp_path: Path) -> None:
    run = tmp_path / "run"
    simulate(_opts(run), dataset=TINY, write_plots=False, checkpoint_every=1)
    path = _node_file(run, 2, 1)
    st = torch.load(path, map_location="cpu", weights_only=True)  # no pickled object in it
    assert set(st) == {"node", "exchange"} and st["exchange"]["node_id"] == 1 and st["exchange"]["encoder"]["sent"]
    marker = tmp_path / "ran"
    # a resume file with an object that runs code when unpickled: torch refuses it unread
    _save({"node": st["node"], "exchange": _RunsCode(marker)}, path)
    with pytest.raises(CheckpointError, match="unreadable"):
        simulate(_opts(run, rounds=3), dataset=TINY, write_plots=False, resume=True)
    # the older format: the exchange as pickle.dumps bytes, which load as bytes and are never unpickled
    _save({"node": st["node"], "exchange": pickle.dumps(_RunsCode(marker))}, path)
    with pytest.raises(CheckpointError, match="no plain exchange state"):
        simulate(_opts(run, rounds=3), dataset=TINY, write_plots=False, resume=True)
    assert not marker.exists()
    # node 1's file holding node 2's exchange state is refused too
    _save({"node": st["node"], "exchange": torch.load(_node_file(run, 2, 2), weights_only=True)["exchange"]}, path)
    with pytest.raises(CheckpointError, match="node 2's exchange state"):
        simulate(_opts(run, rounds=3), dataset=TINY, write_plots=False, resume=True, workers=2)
    _save(st, path)  # the file as written: the run continues
    assert simulate(_opts(run, rounds=3), dataset=TINY, write_plots=False, resume=True)["rounds"] == 3


def test_dense_stop_and_resume_is_bit_identical(tmp_path: Path) -> None:
    """dpsgd's exchange state goes through the same plain files: a resumed run's metrics are the
    uninterrupted run's (losses, accuracies and bytes; not the machine's timings)."""
    simulate(_opts(tmp_path / "whole", algorithm="dpsgd", rounds=4), dataset=TINY, write_plots=False)
    simulate(_opts(tmp_path / "cut", algorithm="dpsgd", rounds=2), dataset=TINY, write_plots=False)
    simulate(_opts(tmp_path / "cut", algorithm="dpsgd", rounds=4), dataset=TINY, write_plots=False, resume=True)

    def metrics(run: Path) -> list[list[dict[str, Any]]]:
        return [[{k: v for k, v in r.items() if not k.startswith(("t_", "peak_"))}
                 for r in read_metrics(run / f"node-{i}" / "metrics.jsonl")] for i in range(3)]

    whole = metrics(tmp_path / "whole")
    assert len(whole[0]) == 4 and whole[0][-1]["bytes_sent"] > 0
    assert metrics(tmp_path / "cut") == whole
