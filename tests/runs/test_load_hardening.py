"""Every malformed checkpoint or mask file is one CheckpointError naming the file (exit 2),
never a traceback, an "Aborted!" (exit 130) or hundreds of MiB inflated before a check."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from dslth_edge.errors import EXIT_USAGE, CheckpointError
from dslth_edge.runs.rundir import MAX_MASK_FILE_BYTES, load_checkpoint, load_mask, save_checkpoint, save_mask
from dslth_edge.runs.runinfo import load_run

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _state() -> dict:
    shapes = [(4, 1, 3, 3), (10, 4)]
    return {"round": 3, "fingerprint": "ab" * 32,
            "model": {f"l{i}.scores": torch.zeros(s) for i, s in enumerate(shapes)}, "optimizer": {},
            "mbar": [torch.zeros(s, dtype=torch.bool) for s in shapes],
            "peer_masks": {"1": [torch.zeros(s, dtype=torch.bool) for s in shapes]}, "last_heard": {"1": 2}}


def _bad_states() -> dict[str, object]:
    good = _state()
    no_round = {k: v for k, v in good.items() if k != "round"}
    wrong_peer = {**good, "peer_masks": {"1": [torch.zeros(3, 3, dtype=torch.bool)]}}
    wrong_shape = {**good, "peer_masks": {"1": [torch.zeros(4, 1, 3, 3, dtype=torch.bool), torch.zeros(4, 10)]}}
    solo_wrong = {**good, "mbar": None, "peer_masks": {"0": [torch.zeros(2, dtype=torch.bool)]}}
    return {"list": [1, 2, 3], "no round": no_round, "round not int": {**good, "round": "3"},
            "negative round": {**good, "round": -1}, "peer_masks not dict": {**good, "peer_masks": [1]},
            "peer_masks wrong layers": wrong_peer, "peer_masks wrong shape": wrong_shape,
            "peer_masks wrong shape (no mbar)": solo_wrong, "last_heard bad": {**good, "last_heard": {"x": "y"}}}


def test_a_good_checkpoint_loads(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "c.pt", _state())
    assert load_checkpoint(tmp_path / "c.pt")["round"] == 3


@pytest.mark.parametrize("name", list(_bad_states()))
def test_malformed_checkpoints_are_one_error_naming_the_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, _bad_states()[name])  # type: ignore[arg-type]
    with pytest.raises(CheckpointError, match=str(path)):
        load_checkpoint(path)


@pytest.mark.parametrize("data", [b"", b"junk" * 10, b"PK\x03\x04" + bytes(40)], ids=["empty", "junk", "bad zip"])
def test_damaged_checkpoint_files(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(data)
    with pytest.raises(CheckpointError, match=str(path)):
        load_checkpoint(path)


def _mask_file(tmp_path: Path) -> Path:
    path = tmp_path / "mask.npz"
    save_mask(path, [np.ones((4, 3), bool), np.zeros((5,), bool)], ["a", "b"], bytes(32), {"round": 1})
    return path


def _zip_bomb(path: Path, inflated: int) -> None:
    """A mask.npz whose one member inflates to ``inflated`` zero bytes (deflate: ~1000:1)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open("bits_0.npy", "w", force_zip64=True) as fh:
            block = bytes(1 << 20)
            for _ in range(inflated >> 20):
                fh.write(block)


def _corruptions(tmp_path: Path) -> dict[str, Path]:
    good = _mask_file(tmp_path).read_bytes()
    out: dict[str, Path] = {}

    def put(name: str, data: bytes) -> None:
        p = tmp_path / f"{name}.npz"
        p.write_bytes(data)
        out[name] = p

    put("empty", b"")
    put("truncated", good[: len(good) // 2])
    put("flipped", good[:60] + bytes(b ^ 0xFF for b in good[60:200]) + good[200:])
    put("not a zip", b"hello world" * 10)
    buf = io.BytesIO()
    np.savez(buf, names=np.array("a"), fingerprint=np.zeros(32, np.uint8), meta=np.array("[1]"),
             shape_0=np.array([2]), bits_0=np.zeros(1, np.uint8))
    put("meta not an object", buf.getvalue())
    buf = io.BytesIO()
    np.savez(buf, names=np.array(["a"]), fingerprint=np.zeros(32, np.uint8), meta=np.array("{}"),
             shape_0=np.array([1 << 40, 1 << 40]), bits_0=np.zeros(1, np.uint8))
    put("impossible shape", buf.getvalue())
    bomb = tmp_path / "bomb.npz"
    _zip_bomb(bomb, MAX_MASK_FILE_BYTES + (1 << 20))
    out["zip bomb"] = bomb
    return out


def test_malformed_mask_files_are_one_error_naming_the_file(tmp_path: Path) -> None:
    assert load_mask(_mask_file(tmp_path)).meta == {"round": 1}
    for name, path in _corruptions(tmp_path).items():
        with pytest.raises(CheckpointError, match=str(path)):
            load_mask(path)
        if name == "zip bomb":
            assert path.stat().st_size < (1 << 20)  # a small file ...
            with pytest.raises(CheckpointError, match="would inflate"):  # ... refused before inflating
                load_mask(path)


def test_run_with_malformed_config_or_mismatched_masks(trained_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    node = run / "node-0"
    config = (node / "config.json").read_text()
    (node / "config.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="config.json is malformed"):
        load_run(run, load_data=False)
    (node / "config.json").write_text(config)
    info = load_run(run, load_data=False)
    masks = [np.ones((2, 2), bool) for _ in info.mask_file.masks]
    save_mask(node / "mask.npz", masks, info.mask_file.names, info.mask_file.fingerprint, info.mask_file.meta)
    with pytest.raises(CheckpointError, match="layer shapes"):
        load_run(run, load_data=False)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dslth_edge", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=ENV)


def test_cli_resume_and_export_of_damaged_files_exit_2_with_one_line(trained_run: Path, tmp_path: Path) -> None:
    """Through the CLI: a checkpoint that is a list (resume) and an empty mask.npz (export,
    which click would have turned into "Aborted!", exit 130) are each one line, exit 2."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    save_checkpoint(run / "node-0" / "checkpoint.pt", [1, 2, 3])  # type: ignore[arg-type]
    p = _cli("train", "--profile", "x86-host", "--dataset", "synthetic", "--model", "mcu-cnn", "--rounds", "30",
             "--keep", "0.3", "--granularity", "channel", "--out", str(run), "--resume", cwd=tmp_path)
    err = p.stderr.strip().splitlines()
    assert p.returncode == EXIT_USAGE and len(err) == 1 and "checkpoint.pt" in err[0], p.stderr
    (run / "node-0" / "mask.npz").write_bytes(b"")
    p = _cli("export", "--run", str(run), "--format", "onnx", "--out", str(tmp_path / "exp"), cwd=tmp_path)
    err = p.stderr.strip().splitlines()
    assert p.returncode == EXIT_USAGE and len(err) == 1 and "mask.npz" in err[0], p.stderr
