"""TensorFlow Lite Micro bundles: default export of an MCU fleet, integer-only op list,
TFLite Micro vs LiteRT on the node's own test samples, the measured arena, the op
resolver, and model_data.cc compiled for a Cortex-M7 within the flash budget."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from dslth_edge.exporters import tflm
from dslth_edge.exporters.runtime import TfliteRunner

from dslth_edge.device.profiles import load_profile
from dslth_edge.runs.runinfo import load_run

pytest.importorskip("tflite_micro")

NODES = {0: "nrf52840", 1: "esp32-s3"}
#: mcu-cnn (depthwise stem, two convs, global mean, classifier) in integer-only int8 with NHWC input:
#: no RESHAPE / TRANSPOSE at the input (the one TRANSPOSE sits before the global MEAN)
MCU_CNN_INT8_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "MAX_POOL_2D", "MEAN", "TRANSPOSE")


def _bundle(run: Path, node: int) -> Path:
    return run / f"node-{node}" / "exports" / "tflm-int8"


def test_export_without_options_exports_every_node_of_the_latest_run(mcu_fleet) -> None:
    assert mcu_fleet["exit_code"] == 0, (mcu_fleet["output"], mcu_fleet["exception"])
    out = mcu_fleet["output"]
    for node, profile in NODES.items():
        d = _bundle(mcu_fleet["run"], node)
        assert sorted(p.name for p in d.iterdir()) == sorted([*tflm.BUNDLE_FILES, "report.json"])
        assert f"node {node}: tflm int8 → {Path('runs/fleet') / f'node-{node}/exports/tflm-int8'}/" in out
        report = json.loads((d / "report.json").read_text())["exports"]["model.tflite"]
        assert report["format"] == "tflm" and report["quantize"] == "int8"
        budget = report["budget"]
        assert budget["profile"] == profile and budget["verdict"] == "fits"
        checks = {c["name"]: c for c in budget["checks"]}
        assert checks["storage"]["value"] == (d / "model.tflite").stat().st_size
        assert checks["ram"]["value"] == report["tflm"]["arena"]["recommended_bytes"]
        assert "TFLite Micro arena" in checks["ram"]["basis"]
        assert checks["latency"]["value"] > 0 and "predicted for " + profile in checks["latency"]["basis"]


@pytest.mark.parametrize("node", sorted(NODES))
def test_int8_bundle_is_integer_only(mcu_fleet, node: int) -> None:
    model = (_bundle(mcu_fleet["run"], node) / "model.tflite").read_bytes()
    s = tflm.model_ops(model)
    assert s.unique == MCU_CNN_INT8_OPS
    assert s.float_ops == () and s.input_dtype == "int8" and s.output_dtype == "int8" and s.integer_only
    assert "QUANTIZE" not in s.ops and "DEQUANTIZE" not in s.ops
    assert s.ops[0] == "DEPTHWISE_CONV_2D"  # NHWC input: the first operator is the model's own
    assert s.input_shape == (1, 28, 28, 1)


@pytest.mark.parametrize("node", sorted(NODES))
def test_tflite_micro_and_litert_agree_on_the_nodes_test_samples(mcu_fleet, node: int) -> None:
    model = (_bundle(mcu_fleet["run"], node) / "model.tflite").read_bytes()
    x, _ = load_run(mcu_fleet["run"], node).test_arrays()
    micro = tflm.TflmRunner(model, layout="NHWC").run_raw(x).astype(np.int32)
    litert = TfliteRunner(model, delegate=False, layout="NHWC")
    q = litert.output_quantization
    assert q is not None
    ref = np.rint(litert.run(x) / q[0] + q[1]).astype(np.int32)  # back to the int8 the interpreter wrote
    assert micro.shape == ref.shape == (len(x), 10)
    assert int(np.abs(micro - ref).max()) <= 1
    assert float((micro.argmax(1) == ref.argmax(1)).mean()) >= 0.99


def test_arena_is_the_smallest_that_runs(mcu_fleet) -> None:
    from tflite_micro import runtime

    d = _bundle(mcu_fleet["run"], 0)
    model = (d / "model.tflite").read_bytes()
    arena = json.loads((d / "report.json").read_text())["exports"]["model.tflite"]["tflm"]["arena"]
    sample = np.zeros(tflm.model_ops(model).input_shape, dtype=np.int8)
    it = runtime.Interpreter.from_bytes(model, arena_size=arena["measured_bytes"])
    it.set_input(sample, 0)
    it.invoke()
    with pytest.raises(RuntimeError):
        runtime.Interpreter.from_bytes(model, arena_size=arena["measured_bytes"] - 16)
    assert arena["recommended_bytes"] >= arena["measured_bytes"] + tflm.ARENA_MARGIN_MIN_BYTES
    header = (d / "model_data.h").read_text()
    assert f"constexpr int kTensorArenaSize = {arena['recommended_bytes']};" in header


def test_op_resolver_registers_exactly_the_models_ops(mcu_fleet) -> None:
    d = _bundle(mcu_fleet["run"], 1)
    text = (d / "op_resolver.h").read_text()
    methods = re.findall(r"resolver\.(Add\w+)\(\)", text)
    assert methods == [tflm.RESOLVER_METHODS[op] for op in MCU_CNN_INT8_OPS]
    assert f"constexpr int kModelOpCount = {len(MCU_CNN_INT8_OPS)};" in text
    assert "tflite::MicroMutableOpResolver<kModelOpCount>" in text


@pytest.mark.parametrize("node", sorted(NODES))
def test_model_data_compiles_for_cortex_m7_within_the_flash_budget(mcu_fleet, node: int, tmp_path: Path) -> None:
    gcc, size, objcopy = (shutil.which(f"arm-none-eabi-{t}") for t in ("gcc", "size", "objcopy"))
    if not (gcc and size and objcopy):  # a failure in CI (tests/conftest.py): the Makefile installs it
        pytest.skip("arm-none-eabi toolchain missing: `make system-packages` installs gcc-arm-none-eabi")
    d = _bundle(mcu_fleet["run"], node)
    model = (d / "model.tflite").read_bytes()
    obj = tmp_path / "model_data.o"
    subprocess.run([gcc, "-mcpu=cortex-m7", "-mthumb", "-std=c++17", "-Os", "-c", str(d / "model_data.cc"), "-o", str(obj)],
                   check=True, capture_output=True, text=True)
    line = subprocess.run([size, str(obj)], check=True, capture_output=True, text=True).stdout.splitlines()[1].split()
    text, data, bss = int(line[0]), int(line[1]), int(line[2])
    assert data == 0 and bss == 0  # nothing of the model in RAM
    assert 0 <= text - len(model) <= 16 + 4  # g_model (16-byte aligned) + g_model_len
    assert text <= load_profile(NODES[node]).budget.model_storage_mib * 2**20
    raw = tmp_path / "rodata.bin"
    subprocess.run([objcopy, "-O", "binary", "--only-section=.rodata", str(obj), str(raw)], check=True)
    blob = raw.read_bytes()
    offset = blob.find(model)  # the array is the file, byte for byte, 16-byte aligned in the section
    assert offset >= 0 and offset % 16 == 0


def test_bundle_refuses_a_float_model() -> None:
    from dslth_edge.errors import ExportError

    pytest.importorskip("litert_torch")
    import torch
    from dslth_edge.exporters.tflite import tflite_bytes

    data = tflite_bytes(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)), (1, 3, 4))
    s = tflm.model_ops(data)
    assert s.input_dtype == "float32" and s.float_ops and not s.integer_only
    with pytest.raises(ExportError, match="not integer-only"):
        tflm.require_integer_only(data)
    assert tflm.TflmRunner(data).run(np.ones((2, 1, 3, 4), np.float32)).shape == (2, 3)


def test_runs_tflm_follows_the_profiles_runtime() -> None:
    assert tflm.runs_tflm(load_profile("nrf52840")) and tflm.runs_tflm(load_profile("esp32-s3"))
    assert not tflm.runs_tflm(load_profile("jetson-nano")) and not tflm.runs_tflm(load_profile("raspberry-pi-4"))


def test_nhwc_input_has_no_transpose_for_three_channels() -> None:
    """A 3-channel conv net converted with NHWC input starts with its own CONV_2D and computes the same."""
    pytest.importorskip("litert_torch")
    import torch
    from dslth_edge.exporters.tflite import tflite_bytes

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                              torch.nn.Flatten(), torch.nn.Linear(8 * 4 * 4, 5)).eval()
    nchw = tflite_bytes(net, (3, 8, 8))
    nhwc = tflite_bytes(net, (3, 8, 8), layout="NHWC")
    assert "TRANSPOSE" in tflm.model_ops(nchw).ops[:2]  # the torch layout needs a transpose at the input
    s = tflm.model_ops(nhwc)
    assert s.ops[0] == "CONV_2D" and s.input_shape == (1, 8, 8, 3)
    x = np.random.default_rng(0).normal(size=(4, 3, 8, 8)).astype(np.float32)
    ref = net(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(TfliteRunner(nhwc, layout="NHWC").run(x), ref, atol=1e-5)
    np.testing.assert_allclose(tflm.TflmRunner(nhwc, layout="NHWC").run(x), ref, atol=1e-5)
