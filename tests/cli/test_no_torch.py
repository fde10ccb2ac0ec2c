"""Commands that do not train start without torch (~250 MB RSS and seconds on a small board)."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import sys
from dslth_edge.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code or 0
else:
    code = 0
loaded = sorted(m for m in ("torch", "torch_pruning", "onnxruntime", "litert_torch") if m in sys.modules)
print("LOADED", ",".join(loaded))
sys.exit(code)
"""


@pytest.mark.parametrize("args", [
    ["--help"],
    ["train", "--help"],
    ["simulate", "--help"],
    ["fleet", "run", "--help"],
    ["export", "--help"],
    ["broker", "--help"],
    ["profiles", "list"],
    ["profiles", "show", "esp32-s3"],
])
def test_command_does_not_import_torch(args: list[str]) -> None:
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    loaded = [ln for ln in proc.stdout.splitlines() if ln.startswith("LOADED")][-1]
    assert loaded == "LOADED ", f"`dslth-edge {' '.join(args)}` imported {loaded[7:]}"
