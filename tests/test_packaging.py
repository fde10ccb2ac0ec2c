"""The distribution: one import name, profiles as package data, a console script that runs."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
                   check=True, capture_output=True, text=True, timeout=300)
    (whl,) = out.glob("dslth_edge-*.whl")
    return whl


def test_wheel_has_one_import_name_and_the_profiles(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"dslth_edge"}
    assert "dslth_edge/exporters/__init__.py" in names
    assert "dslth_edge/firmware_profiles/jetson-nano.toml" in names
    for pkg in ("wire", "transport", "profiler"):
        assert f"dslth_edge/{pkg}/__init__.py" in names


def test_installed_console_script_lists_profiles(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    # only what `profiles list` needs, from the local cache: the listing must not need torch
    subprocess.run([*pip, "--no-deps", str(wheel), "click", "rich", "markdown-it-py", "mdurl", "pygments"],
                   check=True, capture_output=True, text=True, timeout=300)
    p = subprocess.run([str(venv / "bin" / "dslth-edge"), "profiles", "list", "--json"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    names = {row["name"] for row in json.loads(p.stdout)}
    assert {"jetson-nano", "raspberry-pi-4", "esp32-s3", "nrf52840", "x86-host"} <= names
