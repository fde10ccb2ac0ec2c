"""A device with only a runtime and numpy (no torch) profiles its own format.

Each case runs in a fresh interpreter whose import system refuses torch (and whatever
else the case leaves out), then calls the CLI command, exactly as a device would.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

_RUN = textwrap.dedent(
    """
    import importlib.abc, json, sys
    BLOCKED = set(sys.argv[2].split(","))

    class Refuse(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is not installed on this device")
            return None

    sys.meta_path.insert(0, Refuse())
    args = [sys.argv[1], "--runs", "5", "--warmup", "1", "--json"]
    if sys.argv[3] == "main":  # the console script's group, `profile` registered on it
        import dslth_edge.cli as cli
        from dslth_edge.cli.profile import profile
        if "profile" not in cli.cli.commands:
            cli.cli.add_command(profile)
        cli.cli.main(["profile", *args], prog_name="dslth-edge", standalone_mode=False)
    else:  # the profile command alone
        from dslth_edge.cli.profile import profile
        profile.main(args, prog_name="dslth-edge profile", standalone_mode=False)
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    print("LEAKED=" + json.dumps(leaked), file=sys.stderr)
    """
)


def _run(model: Path, blocked: str, entry: str = "profile") -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", _RUN, str(model), blocked, entry],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "LEAKED=[]" in proc.stderr
    return json.loads(proc.stdout)


TFLITE_DEVICE = "torch,litert_torch,onnx,onnxruntime,torchvision,tensorflow,matplotlib"


def test_tflite_without_torch(small_tflite: Path) -> None:
    doc = _run(small_tflite, TFLITE_DEVICE)
    (m,) = doc["models"]
    assert m["backend"]["name"] == "litert" and m["latency_ms"]["count"] == 5
    assert m["model"]["macs"] > 0 and m["model"]["params"] > 0


def test_onnx_without_torch_or_onnx(small_onnx: Path) -> None:
    pytest.importorskip("onnxruntime")
    doc = _run(small_onnx, "torch,litert_torch,onnx,ai_edge_litert,tflite_runtime,matplotlib")
    (m,) = doc["models"]
    assert m["backend"]["name"] == "onnxruntime" and m["latency_ms"]["count"] == 5
    # without the onnx package the static figures are n/a, and say why
    assert m["model"]["macs"] is None and "onnx package" in m["model"]["analysis_note"]


def test_main_console_group_without_torch(small_tflite: Path) -> None:
    doc = _run(small_tflite, TFLITE_DEVICE, entry="main")
    assert doc["models"][0]["backend"]["name"] == "litert"
