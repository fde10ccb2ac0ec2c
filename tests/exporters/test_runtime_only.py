"""Exported files run where only a runtime is installed: no torch, no dslth_edge.

Each file runs in a fresh ``python -c`` process that imports numpy and one runtime
(onnxruntime, ai-edge-litert, or tflite-runtime on older devices) and asserts that
torch never got imported. tflite-runtime is not in the project's venv: the test uses
``DSLTH_TFLITE_RUNTIME_PYTHON`` (a python with tflite_runtime) or builds a throwaway
venv offline (pip ``--no-index``, from pip's configured find-links / cache); if neither
works it skips, saying why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dslth_edge.exporters.runtime import TfliteRunner
from dslth_edge.runs.runinfo import load_run

RUN = r"""
import sys
import numpy as np
runtime, path, xin, yout = sys.argv[1:5]
x = np.load(xin)
if runtime == "onnxruntime":
    import onnxruntime as ort
    s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    y = s.run(None, {s.get_inputs()[0].name: x})[0]
else:
    if runtime == "ai_edge_litert":
        from ai_edge_litert.interpreter import Interpreter
    else:
        from tflite_runtime.interpreter import Interpreter
    it = Interpreter(model_path=path)
    it.allocate_tensors()
    i, o = it.get_input_details()[0], it.get_output_details()[0]
    outs = []
    for k in range(len(x)):
        v = x[k:k + 1]
        if i["dtype"] != np.float32:
            sc, zp = i["quantization"]
            v = np.clip(np.round(v / sc + zp), -128, 127).astype(i["dtype"])
        it.set_tensor(i["index"], v)
        it.invoke()
        r = it.get_tensor(o["index"])
        if o["dtype"] != np.float32:
            sc, zp = o["quantization"]
            r = (r.astype(np.float32) - zp) * sc
        outs.append(r)
    y = np.concatenate(outs)
leaked = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.") or m.startswith("dslth_edge"))
assert not leaked, leaked
np.save(yout, y)
"""


def _run_isolated(python: str, runtime: str, model: Path, x: np.ndarray, tmp: Path) -> np.ndarray:
    xin, yout = tmp / "x.npy", tmp / f"y-{runtime}.npy"
    np.save(xin, x)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP")}
    proc = subprocess.run([python, "-I", "-c", RUN, runtime, str(model), str(xin), str(yout)], cwd=tmp, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return np.load(yout)


@pytest.fixture(scope="module")
def inputs(trained_run) -> tuple[np.ndarray, np.ndarray]:
    info = load_run(trained_run)
    x, _ = info.test_arrays(100)
    with torch.no_grad():
        return x, info.model(torch.from_numpy(x)).numpy()


def test_onnx_runs_without_torch(exported_onnx, inputs, tmp_path) -> None:
    x, ref = inputs
    y = _run_isolated(sys.executable, "onnxruntime", exported_onnx["onnx"][0], x, tmp_path)
    assert float(np.abs(y - ref).max()) <= 1e-4


def test_tflite_runs_without_torch(exported_tflite, inputs, tmp_path) -> None:
    x, ref = inputs
    y = _run_isolated(sys.executable, "ai_edge_litert", exported_tflite["tflite"][0], x, tmp_path)
    assert float(np.abs(y - ref).max()) <= 1e-4
    q = exported_tflite["tflite-int8"][0]
    assert np.array_equal(_run_isolated(sys.executable, "ai_edge_litert", q, x, tmp_path), TfliteRunner(q).run(x))


def _tflite_runtime_python(root: Path) -> tuple[str | None, str]:
    """A python that has tflite_runtime: $DSLTH_TFLITE_RUNTIME_PYTHON, or a venv built offline."""
    given = os.environ.get("DSLTH_TFLITE_RUNTIME_PYTHON")
    if given:
        return given, "from DSLTH_TFLITE_RUNTIME_PYTHON"
    if sys.version_info[:2] > (3, 11):
        return None, "tflite-runtime 2.14 has wheels up to cp311 only"
    probe = subprocess.run([sys.executable, "-m", "pip", "download", "--no-index", "--no-deps", "-q", "-d", str(root / "wheels"),
                            "tflite-runtime==2.14.0"], capture_output=True, text=True, timeout=120)
    if probe.returncode != 0:  # no wheel offline: do not spend time building a venv
        return None, ("tflite-runtime 2.14.0 is not installable offline (pip --no-index found no wheel in its "
                      "find-links/cache); set DSLTH_TFLITE_RUNTIME_PYTHON to a python with tflite_runtime to run this")
    venv = root / "tflite-runtime-venv"
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=120)
        py = str(venv / "bin" / "python")
        proc = subprocess.run([py, "-m", "pip", "install", "--no-index", "-q", "tflite-runtime==2.14.0", "numpy<2"],
                              capture_output=True, text=True, timeout=300)
    except (subprocess.SubprocessError, OSError) as exc:
        return None, f"could not create a venv: {exc}"
    if proc.returncode != 0:
        shutil.rmtree(venv, ignore_errors=True)
        return None, ("tflite-runtime 2.14.0 is not installable offline (pip --no-index found no wheel in its "
                      "find-links/cache); set DSLTH_TFLITE_RUNTIME_PYTHON to a python with tflite_runtime to run this")
    return py, "offline venv"


def test_files_run_on_tflite_runtime(exported_tflite, inputs, tmp_path) -> None:
    python, why = _tflite_runtime_python(tmp_path)
    if python is None:
        pytest.skip(why)
    x, ref = inputs
    y = _run_isolated(python, "tflite_runtime", exported_tflite["tflite"][0], x, tmp_path)
    assert float(np.abs(y - ref).max()) <= 1e-4
    q = exported_tflite["tflite-int8"][0]
    yq = _run_isolated(python, "tflite_runtime", q, x, tmp_path)
    # a different kernel build may round a few int8 steps differently: compare predictions
    assert float((yq.argmax(1) == TfliteRunner(q).run(x).argmax(1)).mean()) >= 0.98
