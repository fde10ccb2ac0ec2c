"""Run directories, resume, exit codes and non-terminal progress, through the real CLI.

Every test starts ``python -m dslth_edge`` as a subprocess (no terminal: stdout and
stderr are pipes), on synthetic data with the MCU CNN and a handful of rounds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dslth_edge.errors import EXIT_INTERRUPTED, EXIT_ISOLATED, EXIT_USAGE
from dslth_edge.runs.rundir import load_mask, read_metrics

from ..transport.brokers import MOSQUITTO, MOSQUITTO_MISSING, Mosquitto

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
BASE = ("--profile", "raspberry-pi-4", "--dataset", "synthetic", "--model", "mcu-cnn", "--keep", "0.3",
        "--eval-every", "0", "--checkpoint-every", "2")


def cli(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dslth_edge", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=ENV)


def train(out: Path, *args: str, rounds: int = 4) -> subprocess.CompletedProcess[str]:
    return cli("train", *BASE, "--rounds", str(rounds), "--out", str(out), *args, cwd=out.parent)


def masks_equal(a: Path, b: Path) -> bool:
    ma, mb = load_mask(a / "node-0" / "mask.npz"), load_mask(b / "node-0" / "mask.npz")
    return all(np.array_equal(x, y) for x, y in zip(ma.masks, mb.masks))


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 4-round solo run (left untouched: tests copy what they change)."""
    out = tmp_path_factory.mktemp("runs") / "done"
    p = train(out)
    assert p.returncode == 0, p.stderr
    return out


def test_rerun_into_a_run_dir_is_refused_and_overwrite_replaces_it(finished: Path, tmp_path: Path) -> None:
    p = train(finished)
    assert p.returncode == EXIT_USAGE
    err = p.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "already holds a run" in err[0] and "--overwrite" in err[0]
    assert [r["round"] for r in read_metrics(finished / "node-0" / "metrics.jsonl")] == [0, 1, 2, 3]
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(finished, copy)
    (copy / "node-0" / ".checkpoint.pt.x1y2.tmp").write_bytes(b"half")  # a kill's leftover
    p = train(copy, "--overwrite", rounds=3)
    assert p.returncode == 0, p.stderr
    assert [r["round"] for r in read_metrics(copy / "node-0" / "metrics.jsonl")] == [0, 1, 2]
    assert not list((copy / "node-0").glob(".*.tmp"))
    for f in (copy / "node-0").iterdir():
        assert f.stat().st_mode & 0o777 == 0o644, f


@pytest.mark.parametrize("change, setting", [
    (("--dataset", "fashion-mnist"), "dataset"),
    (("--model", "paper-cnn"), "model"),
    (("--keep", "0.5"), "model"),
    (("--profile", "jetson-nano"), "profile"),
    (("--preset", "paper"), "algorithm"),
    (("--lr", "0.5"), "algorithm"),
    (("--seed", "7"), "seeds"),
    (("--weight-seed", "7"), "seeds"),
])
def test_resume_refuses_each_changed_setting(finished: Path, change: tuple[str, ...], setting: str) -> None:
    args = list(BASE)
    for flag, value in zip(change[::2], change[1::2]):
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    p = cli("train", *args, "--rounds", "6", "--out", str(finished), "--resume", cwd=finished.parent)
    assert p.returncode == EXIT_USAGE, p.stderr
    assert "settings differ" in p.stderr, p.stderr
    # the changed setting is named (a preset may change several: `--preset paper` also
    # changes the model's initialisation, issue 26)
    named = p.stderr.split("settings differ from the saved run in ", 1)[-1]
    assert named.startswith(f"{setting} (") or f"; {setting} (" in named, p.stderr
    assert "Traceback" not in p.stderr


def test_resume_with_fewer_rounds_than_done_is_an_error(finished: Path) -> None:
    p = train(finished, "--resume", rounds=2)
    assert p.returncode == EXIT_USAGE
    assert "already done 4 rounds" in p.stderr


def test_resume_without_a_checkpoint_is_an_error(tmp_path: Path) -> None:
    p = train(tmp_path / "none", "--resume")
    assert p.returncode == EXIT_USAGE and "nothing to resume" in p.stderr and "--resume-or-start" in p.stderr


def test_resume_or_start(finished: Path, tmp_path: Path) -> None:
    import shutil

    # no directory at all: starts fresh
    fresh = tmp_path / "fresh"
    p = train(fresh, "--resume-or-start")
    assert p.returncode == 0, p.stderr
    assert masks_equal(fresh, finished)
    # killed before its first checkpoint (config and a metrics line, no checkpoint): starts over
    partial = tmp_path / "partial"
    shutil.copytree(finished, partial)
    (partial / "node-0" / "checkpoint.pt").unlink()
    (partial / "node-0" / "mask.npz").unlink()
    p = train(partial, "--resume-or-start")
    assert p.returncode == 0, p.stderr
    assert [r["round"] for r in read_metrics(partial / "node-0" / "metrics.jsonl")] == [0, 1, 2, 3]
    assert masks_equal(partial, finished)
    # with a checkpoint: resumes (more rounds than before) and gets the same masks as a straight run
    grown = tmp_path / "grown"
    shutil.copytree(finished, grown)
    p = train(grown, "--resume-or-start", rounds=6)
    assert p.returncode == 0, p.stderr
    assert [r["round"] for r in read_metrics(grown / "node-0" / "metrics.jsonl")] == list(range(6))
    straight = tmp_path / "straight"
    assert train(straight, rounds=6).returncode == 0
    assert masks_equal(grown, straight)


def test_kill_between_final_checkpoint_and_mask_is_recoverable(finished: Path, tmp_path: Path) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished, run)
    (run / "node-0" / "mask.npz").unlink()  # the final checkpoint is there, the mask never was
    p = train(run, "--resume-or-start")
    assert p.returncode == 0, p.stderr
    assert masks_equal(run, finished)


def test_progress_lines_without_a_terminal(tmp_path: Path) -> None:
    p = train(tmp_path / "text", "--log-every", "2", rounds=6)
    assert p.returncode == 0, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("train round ")]
    assert [ln.split()[2] for ln in lines] == ["2/6", "4/6", "6/6"], p.stderr
    assert all("loss" in ln and "acc" in ln and "kB" in ln and "s/round" in ln for ln in lines)
    assert "\x1b[" not in p.stderr  # no terminal control codes
    p = train(tmp_path / "json", "--log-every", "3", "--log-format", "json", rounds=6)
    assert p.returncode == 0, p.stderr
    events = [json.loads(ln) for ln in p.stderr.splitlines() if ln.startswith("{")]
    rounds = [e["round"] for e in events if e.get("event") == "round"]
    assert rounds == [3, 6]
    assert {"loss", "acc", "bytes_sent", "neighbours_heard", "s_per_round"} <= set(events[1])


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_with_a_checkpoint_and_exit_130(tmp_path: Path, sig: signal.Signals) -> None:
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "dslth_edge", "train", *BASE, "--rounds", "400", "--log-every", "1",
                             "--out", str(out)], cwd=tmp_path, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        end = time.monotonic() + 240
        while time.monotonic() < end:
            line = proc.stderr.readline()
            if not line or line.startswith("train round 2/"):
                break
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == EXIT_INTERRUPTED, err
    assert "stopped at round" in err
    rows = read_metrics(out / "node-0" / "metrics.jsonl")
    assert 2 <= len(rows) < 400
    assert (out / "node-0" / "checkpoint.pt").is_file()


@pytest.fixture
def mosquitto(tmp_path: Path):
    if not os.path.exists(MOSQUITTO):
        pytest.skip(MOSQUITTO_MISSING)
    b = Mosquitto(tmp_path / "mosquitto").start()
    yield b
    b.stop()


def _lonely(out: Path, url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return cli("train", *BASE, "--rounds", "4", "--out", str(out), "--fleet", "typo-fleet", "--id", "0", "--nodes", "3",
               "--broker", url, "--start-timeout", "1", "--round-deadline", "0.3", "--stale-after", "2", *extra,
               cwd=out.parent)


def test_isolated_fleet_node_exits_with_the_isolation_code(mosquitto: Mosquitto, tmp_path: Path) -> None:
    p = _lonely(tmp_path / "alone", mosquitto.url)
    assert p.returncode == EXIT_ISOLATED, p.stderr
    warnings = [ln for ln in p.stderr.splitlines() if "heard no neighbour for" in ln]
    assert len(warnings) == 1 and warnings[0].startswith("warning:"), p.stderr
    err = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert len(err) == 1, p.stderr
    assert "typo-fleet" in err[0] and mosquitto.url in err[0] and "neighbour(s) 1, 2" in err[0]
    # the run itself is complete: its mask is there
    assert (tmp_path / "alone" / "node-0" / "mask.npz").is_file()
    p = _lonely(tmp_path / "allowed", mosquitto.url, "--allow-solo")
    assert p.returncode == 0, p.stderr
    # a fleet node's resume is checked like a solo one's (before it touches the network)
    for change, setting in ((("--partition", "classes:2"), "partition"), (("--topology", "full"), "topology"),
                            (("--nodes", "4"), "partition")):
        p = _lonely(tmp_path / "allowed", mosquitto.url, "--allow-solo", "--resume", *change)
        assert p.returncode == EXIT_USAGE and f"in {setting} (" in p.stderr, (change, p.stderr)


def test_train_for_a_device_that_cannot_train(tmp_path: Path) -> None:
    p = cli("train", "--profile", "stm32h743", "--dataset", "synthetic", "--model", "mcu-cnn", "--keep", "0.3",
            "--rounds", "1", "--out", str(tmp_path / "mcu"), cwd=tmp_path)
    assert p.returncode == EXIT_USAGE and "can_train = false" in p.stderr and "--for-device" in p.stderr
    p = cli("train", "--profile", "stm32h743", "--dataset", "synthetic", "--model", "mcu-cnn", "--keep", "0.3",
            "--rounds", "1", "--for-device", "--out", str(tmp_path / "mcu"), cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "trained on this host for stm32h743" in p.stdout + p.stderr
    cfg = json.loads((tmp_path / "mcu" / "node-0" / "config.json").read_text())
    assert cfg["extra"]["for_device"] is True and "stm32h743" in cfg["extra"]["trained_by"]


def test_fleet_run_follows_the_same_run_directory_rule(tmp_path: Path, mosquitto: Mosquitto) -> None:
    # on Mosquitto, as deployed fleets run (the embedded broker is covered by the [embedded] fleet tests)
    out = tmp_path / "fleet"
    args = ("fleet", "run", "--nodes", "2", "--dataset", "synthetic", "--model", "mcu-cnn", "--keep", "0.3",
            "--rounds", "2", "--eval-every", "0", "--workers", "1", "--no-plots", "--log-every", "1",
            "--round-deadline", "30", "--broker", mosquitto.url, "--out", str(out))
    p = cli(*args, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("fleet round ")]
    # a line whenever the slowest node passes the next round (the table polls: two rounds may
    # finish between two polls), always ending with the last one
    seen = [ln.split()[2] for ln in lines]
    assert seen and seen[-1] == "2/2" and len(seen) == len(set(seen)) and set(seen) <= {"1/2", "2/2"}, p.stderr
    assert "security: CRC-32C only" in p.stderr and "INSECURE" in p.stderr  # the mode is stated, not only logged
    assert (out / "summary.json").is_file()
    p = cli(*args, cwd=tmp_path)
    assert p.returncode == EXIT_USAGE and "already holds a run" in p.stderr
    # resuming a finished fleet: nothing to redo, the same summary again
    p = cli(*args, "--resume", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert json.loads((out / "summary.json").read_text())["rounds"] == 2
    for i in range(2):
        assert [r["round"] for r in read_metrics(out / f"node-{i}" / "metrics.jsonl")] == [0, 1]
