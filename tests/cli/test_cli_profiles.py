"""`dslth-edge profiles` as a user sees it: every profile in one plan table, 80-column tables
that keep every cell whole, text in square brackets kept, one-line errors without a blank line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from dslth_edge.device.profiles import list_profiles
from dslth_edge.errors import EXIT_USAGE

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, columns: int = 80) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": str(columns)}
    return subprocess.run([sys.executable, "-m", "dslth_edge", *args], capture_output=True, text=True, timeout=300,
                          env=env)


NAMES = [p.name for p in list_profiles()]


def test_plan_without_a_profile_lists_every_profile() -> None:
    assert len(NAMES) == 9
    p = cli("profiles", "plan", "--model", "paper-cnn")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    for name in NAMES:
        rows = [ln for ln in lines if ln.split() and ln.split()[0].rstrip("*") == name]
        assert rows, (name, p.stdout)
        assert not rows[0].rstrip("*").endswith("…")
    assert all(len(ln.rstrip()) <= 80 for ln in lines), p.stdout
    assert "…" not in p.stdout
    # the cap is said in train's words
    assert "capped at 0.5, the densest mask that still learns" in " ".join(p.stdout.split())


def test_plan_all_json_agrees_with_what_train_uses() -> None:
    p = cli("profiles", "plan", "--all", "--model", "paper-cnn", "--json")
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    rows = {r["profile"]: r for r in data["profiles"]}
    assert sorted(rows) == sorted(NAMES)
    from dslth_edge.device.keep import plan_keep

    for name in ("jetson-nano", "esp32-s3"):
        keep, note = plan_keep("paper-cnn", (1, 28, 28), 10, name, "unstructured")
        assert rows[name]["fits"] and rows[name]["keep"] == keep and rows[name]["note"] == note
    for r in rows.values():
        assert {"latency", "ram", "storage"} <= set(r) or not r["fits"]
    assert rows["stm32h743"]["can_train"] is False


def test_list_fits_80_columns_without_truncation() -> None:
    p = cli("profiles", "list")
    assert p.returncode == 0, p.stderr
    assert "…" not in p.stdout
    assert all(len(ln.rstrip()) <= 80 for ln in p.stdout.splitlines())
    for name in NAMES:
        assert any(ln.startswith(name + " ") for ln in p.stdout.splitlines()), name


def test_show_keeps_square_brackets() -> None:
    p = cli("profiles", "show", "jetson-nano", columns=200)
    assert p.returncode == 0, p.stderr
    assert "the planner uses [compute]" in " ".join(p.stdout.split())


def test_errors_are_one_line_without_a_blank_line_before() -> None:
    for args in (("profiles", "plan", "nosuch", "--model", "paper-cnn"),
                 ("train", "--profile", "nosuch", "--dataset", "synthetic")):
        p = cli(*args)
        assert p.returncode == EXIT_USAGE
        assert p.stderr.startswith("error:") and p.stderr.count("\n") == 1, repr(p.stderr)
