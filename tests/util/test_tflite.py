"""The one TFLite loader: ai-edge-litert first, tflite-runtime as the fallback, one error."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from dslth_edge.errors import UsageError
from dslth_edge.util.tflite import open_interpreter, tflite_runtime


def test_falls_back_to_tflite_runtime(monkeypatch) -> None:
    """With only tflite_runtime importable, the loader picks its Interpreter."""
    fake = types.ModuleType("tflite_runtime.interpreter")
    fake.Interpreter = type("Interpreter", (), {})
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)  # import fails
    monkeypatch.setitem(sys.modules, "tflite_runtime", types.ModuleType("tflite_runtime"))
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", fake)
    rt = tflite_runtime()
    assert (rt.module, rt.package, rt.resolver) == ("tflite_runtime", "tflite-runtime", None)
    assert rt.interpreter is fake.Interpreter
    with pytest.raises(UsageError, match="without its default delegate"):
        open_interpreter(b"x", delegate=False, runtime=rt)


def test_no_runtime_and_a_bad_file_are_usage_errors(monkeypatch, tmp_path: Path) -> None:
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"not a flatbuffer")
    if tflite_runtime().module == "ai_edge_litert":
        with pytest.raises(UsageError, match="bad.tflite: LiteRT cannot load the model"):
            open_interpreter(bad)
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)
    monkeypatch.setitem(sys.modules, "tflite_runtime", None)
    with pytest.raises(UsageError, match="pip install ai-edge-litert") as info:
        tflite_runtime()
    assert info.value.exit_code == 2
