"""`dslth-edge train` as a user runs it: a real subprocess, real exit codes, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dslth_edge", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_train_json_end_to_end(tmp_path: Path) -> None:
    p = run("train", "--profile", "raspberry-pi-4", "--dataset", "synthetic", "--model", "mcu-cnn",
            "--rounds", "6", "--keep", "0.3", "--eval-every", "3", "--out", str(tmp_path / "r"), "--json", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    assert res["rounds_done"] == 6 and 0.0 <= res["accuracy"] <= 1.0
    assert (tmp_path / "r" / "node-0" / "mask.npz").is_file()


def test_unknown_profile_lists_the_available_ones(tmp_path: Path) -> None:
    p = run("train", "--profile", "nosuch", "--dataset", "synthetic", cwd=tmp_path)
    assert p.returncode == 2
    assert "nosuch" in p.stderr and "jetson-nano" in p.stderr and "esp32-s3" in p.stderr
    assert "Traceback" not in p.stderr


def test_missing_dataset_says_how_to_get_it(tmp_path: Path) -> None:
    p = run("train", "--profile", "jetson-nano", "--dataset", "fashion-mnist", "--data-dir", str(tmp_path / "none"), cwd=tmp_path)
    assert p.returncode == 2
    assert "train-images-idx3-ubyte" in p.stderr and "dataset-fashion-mnist" in p.stderr
    assert "Traceback" not in p.stderr


def test_bad_profile_file_names_file_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "mine.toml"
    bad.write_text('name = "x"\n')
    p = run("train", "--profile", str(bad), "--dataset", "synthetic", cwd=tmp_path)
    assert p.returncode == 2 and "mine.toml" in p.stderr and "Traceback" not in p.stderr
