"""TensorFlow Lite Micro deliverable: a .tflite file → what a firmware project compiles in.

:func:`write_bundle` writes, into one folder:

``model.tflite``
    the exported flatbuffer (the same bytes as ``g_model``);
``model_data.cc`` / ``model_data.h``
    ``alignas(16) const unsigned char g_model[]`` and ``g_model_len`` (``const``: the
    linker places the model in flash, ``.rodata``), plus ``kTensorArenaSize``;
``op_resolver.h``
    a ``tflite::MicroMutableOpResolver<N>`` registering exactly the model's operators,
    read from the file's operator codes;
``README.md``
    the arena size, the operators, the input/output quantization and the minimum
    TFLM / esp-tflite-micro versions.

The arena size is measured with the real TFLite Micro interpreter (the ``tflite-micro``
package, reference kernels): the smallest arena with which it allocates the model and
runs one inference (a bisection over arena sizes; see :func:`measure_arena`). The
recommended arena adds :data:`ARENA_MARGIN_FRACTION` of that, at least
:data:`ARENA_MARGIN_MIN_BYTES`: optimized kernels (CMSIS-NN, ESP-NN) request scratch
buffers (e.g. an im2col buffer of ``2 * in_ch * kh * kw`` int16 values per 3x3 s8
convolution on DSP cores) that the reference kernels do not. The host build has 64-bit
pointers, so the persistent part of the arena measured here is larger than on a 32-bit
MCU: the figure errs on the safe side.

Nothing here imports torch.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dslth_edge.errors import ExportError

if TYPE_CHECKING:  # pragma: no cover
    from dslth_edge.device.profiles import Profile

__all__ = [
    "ARENA_MARGIN_FRACTION",
    "ARENA_MARGIN_MIN_BYTES",
    "MIN_VERSIONS",
    "RESOLVER_METHODS",
    "BUNDLE_FILES",
    "OpSummary",
    "ArenaSize",
    "TflmRunner",
    "runs_tflm",
    "model_ops",
    "float_ops",
    "require_integer_only",
    "measure_arena",
    "model_data_cc",
    "model_data_h",
    "op_resolver_h",
    "write_bundle",
]

ARENA_MARGIN_FRACTION = 0.25  # optimized-kernel scratch on top of the reference-kernel arena
ARENA_MARGIN_MIN_BYTES = 2048
ARENA_ALIGN = 16
#: Minimum runtime versions for what the exports use (per-channel int8 FULLY_CONNECTED).
MIN_VERSIONS = {
    "tflite-micro": "a checkout from September 2024 or later (per-channel int8 FULLY_CONNECTED)",
    "esp-tflite-micro": "1.3.4 (ESP-IDF component espressif/esp-tflite-micro)",
}
BUNDLE_FILES = ("model.tflite", "model_data.cc", "model_data.h", "op_resolver.h", "README.md")

#: TFLite builtin operator → MicroMutableOpResolver method (tensorflow/lite/micro/micro_mutable_op_resolver.h).
RESOLVER_METHODS: dict[str, str] = {
    "ABS": "AddAbs",
    "ADD": "AddAdd",
    "ARG_MAX": "AddArgMax",
    "ARG_MIN": "AddArgMin",
    "AVERAGE_POOL_2D": "AddAveragePool2D",
    "BATCH_MATMUL": "AddBatchMatMul",
    "CONCATENATION": "AddConcatenation",
    "CONV_2D": "AddConv2D",
    "DEPTHWISE_CONV_2D": "AddDepthwiseConv2D",
    "DEQUANTIZE": "AddDequantize",
    "EXPAND_DIMS": "AddExpandDims",
    "FULLY_CONNECTED": "AddFullyConnected",
    "HARD_SWISH": "AddHardSwish",
    "LEAKY_RELU": "AddLeakyRelu",
    "LOGISTIC": "AddLogistic",
    "MAXIMUM": "AddMaximum",
    "MAX_POOL_2D": "AddMaxPool2D",
    "MEAN": "AddMean",
    "MINIMUM": "AddMinimum",
    "MUL": "AddMul",
    "PACK": "AddPack",
    "PAD": "AddPad",
    "PADV2": "AddPadV2",
    "QUANTIZE": "AddQuantize",
    "REDUCE_MAX": "AddReduceMax",
    "RELU": "AddRelu",
    "RELU6": "AddRelu6",
    "RESHAPE": "AddReshape",
    "SHAPE": "AddShape",
    "SOFTMAX": "AddSoftmax",
    "SQUEEZE": "AddSqueeze",
    "STRIDED_SLICE": "AddStridedSlice",
    "SUB": "AddSub",
    "SUM": "AddSum",
    "TANH": "AddTanh",
    "TRANSPOSE": "AddTranspose",
    "UNPACK": "AddUnpack",
}


def runs_tflm(profile: Profile) -> bool:
    """Whether the profile's runtime is TensorFlow Lite Micro (its ``[compute] backend`` says so)."""
    return "tflite micro" in profile.compute.backend.lower()


def _schema() -> Any:
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError as exc:
        raise ExportError("reading TFLite files needs ai-edge-litert: pip install 'dslth-edge[export]'") from exc
    return schema


def _names(enum_cls: Any) -> dict[int, str]:
    return {v: k for k, v in vars(enum_cls).items() if not k.startswith("_") and isinstance(v, int)}


@dataclass(frozen=True)
class OpSummary:
    """The operators of a model's main subgraph, in graph order, and its tensor types."""

    ops: tuple[str, ...]  # one entry per operator, e.g. ("RESHAPE", "CONV_2D", ...)
    float_ops: tuple[str, ...]  # "INDEX:NAME" of operators with a float32 input or output tensor
    input_dtype: str  # "int8" | "float32" | ...
    output_dtype: str
    input_shape: tuple[int, ...]

    @property
    def unique(self) -> tuple[str, ...]:
        """Distinct operators, sorted (what the op resolver registers)."""
        return tuple(sorted(set(self.ops)))

    @property
    def integer_only(self) -> bool:
        return not self.float_ops and self.input_dtype == "int8" and self.output_dtype == "int8"


def model_ops(model: bytes) -> OpSummary:
    """Parse the flatbuffer: operator names, float operators, input/output dtypes."""
    schema = _schema()
    m = schema.Model.GetRootAs(bytearray(model), 0)
    if m.SubgraphsLength() < 1:
        raise ExportError("the TFLite model has no subgraph")
    ops_names, ttypes = _names(schema.BuiltinOperator), _names(schema.TensorType)
    sg = m.Subgraphs(0)

    def ttype(i: int) -> str:
        return ttypes.get(sg.Tensors(i).Type(), "UNKNOWN").lower()

    ops: list[str] = []
    floats: list[str] = []
    for j in range(sg.OperatorsLength()):
        op = sg.Operators(j)
        code = m.OperatorCodes(op.OpcodeIndex())
        builtin = max(int(code.BuiltinCode()), int(code.DeprecatedBuiltinCode()))
        name = ops_names.get(builtin, f"BUILTIN_{builtin}")
        if name == "CUSTOM":
            name = f"CUSTOM:{(code.CustomCode() or b'').decode()}"
        ops.append(name)
        tensors = [int(t) for t in [*op.InputsAsNumpy(), *op.OutputsAsNumpy()] if int(t) >= 0] if op.InputsLength() else []
        if any(ttype(t) in ("float32", "float16") for t in tensors):
            floats.append(f"{j}:{name}")
    i0, o0 = int(sg.Inputs(0)), int(sg.Outputs(0))
    shape = tuple(int(d) for d in sg.Tensors(i0).ShapeAsNumpy())
    return OpSummary(tuple(ops), tuple(floats), ttype(i0), ttype(o0), shape)


def float_ops(model: bytes) -> tuple[str, ...]:
    """Operators ("INDEX:NAME") that read or write a float tensor: empty for an integer-only model."""
    return model_ops(model).float_ops


def require_integer_only(model: bytes, what: str = "the int8 export") -> OpSummary:
    """Raise :class:`ExportError` unless the model is integer-only (int8 in/out, no float operator)."""
    s = model_ops(model)
    if not s.integer_only:
        raise ExportError(
            f"{what} is not integer-only (input {s.input_dtype}, output {s.output_dtype}, "
            f"float operators {list(s.float_ops) or 'none'}): TFLite Micro int8 targets need int8 in, int8 out, no float op"
        )
    return s


# --------------------------------------------------------------------------- the TFLM interpreter


def _tflm_runtime() -> Any:
    try:
        from tflite_micro import runtime
    except ImportError as exc:
        raise ExportError("TFLite Micro checks need the tflite-micro package: pip install 'dslth-edge[export]'") from exc
    return runtime


@contextlib.contextmanager
def _stderr_silenced() -> Iterator[None]:
    """TFLM prints each failed allocation with MicroPrintf on fd 2: silence it while probing."""
    try:
        saved = os.dup(2)
    except OSError:  # no fd 2: nothing to silence
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _fits(runtime: Any, model: bytes, arena: int, sample: np.ndarray) -> bool:
    try:
        it = runtime.Interpreter.from_bytes(model, arena_size=int(arena))
        it.set_input(sample, 0)
        it.invoke()
    except RuntimeError:
        return False
    return True


@dataclass(frozen=True)
class ArenaSize:
    """Tensor arena of one model in TFLite Micro."""

    measured_bytes: int  # the smallest arena (16-byte steps) in which it allocates and runs
    margin_bytes: int  # optimized-kernel scratch allowance (documented above)
    recommended_bytes: int  # measured + margin, 16-byte aligned: kTensorArenaSize
    tflm_version: str

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "margin_rule": f"max({ARENA_MARGIN_MIN_BYTES} B, {ARENA_MARGIN_FRACTION:.0%} of measured)",
                "measured_with": "tflite-micro Python interpreter (reference kernels, 64-bit host)"}


def _align(n: int, a: int = ARENA_ALIGN) -> int:
    return -(-int(n) // a) * a


def measure_arena(model: bytes) -> ArenaSize:
    """The smallest tensor arena in which TFLite Micro allocates ``model`` and runs one inference.

    Bisection over 16-byte steps between a failing and a working size; each probe builds
    a fresh interpreter (allocation happens in its constructor) and invokes it on zeros.
    """
    runtime = _tflm_runtime()
    sample = _zeros_input(runtime, model)
    lo, hi = 0, max(4096, _align(len(model)))
    with _stderr_silenced():
        while not _fits(runtime, model, hi, sample):
            lo, hi = hi, hi * 2
            if hi > 1 << 30:
                raise ExportError("TFLite Micro could not allocate the model with a 1 GiB arena")
        while hi - lo > ARENA_ALIGN:
            mid = _align((lo + hi) // 2)
            if mid >= hi:
                break
            if _fits(runtime, model, mid, sample):
                hi = mid
            else:
                lo = mid
    margin = _align(max(ARENA_MARGIN_MIN_BYTES, ARENA_MARGIN_FRACTION * hi))
    from tflite_micro import __version__ as version

    return ArenaSize(int(hi), int(margin), int(_align(hi + margin)), str(version))


def _zeros_input(runtime: Any, model: bytes) -> np.ndarray:
    with _stderr_silenced():
        it = runtime.Interpreter.from_bytes(model)  # default arena: 10x the model
    d = it.get_input_details(0)
    return np.zeros([int(s) for s in d["shape"]], dtype=d["dtype"])


class TflmRunner:
    """Runs a .tflite model in the TFLite Micro interpreter on float32 inputs (quantizing int8 I/O)."""

    backend = "tflite_micro"

    def __init__(self, model: bytes | str | Path, *, arena_size: int | None = None, layout: str = "NCHW") -> None:
        """``layout``: the file's input layout; :meth:`run` always takes NCHW samples."""
        runtime = _tflm_runtime()
        self.layout = layout
        data = model if isinstance(model, bytes) else Path(model).read_bytes()
        try:
            self.interpreter = runtime.Interpreter.from_bytes(data, arena_size=arena_size)
        except RuntimeError as exc:
            raise ExportError(f"TFLite Micro cannot allocate the model: {exc}") from exc
        self.inp = self.interpreter.get_input_details(0)
        self.out = self.interpreter.get_output_details(0)
        self.input_shape = tuple(int(s) for s in self.inp["shape"])

    @staticmethod
    def _q(detail: dict[str, Any]) -> tuple[float, int] | None:
        if np.dtype(detail["dtype"]).kind == "f":
            return None
        qp = detail["quantization_parameters"]
        return float(qp["scales"][0]), int(qp["zero_points"][0])

    def run_raw(self, x: np.ndarray) -> np.ndarray:
        """Outputs in the model's own output dtype (int8 for an integer-only model), one sample at a time."""
        from dslth_edge.exporters.runtime import to_layout

        x = to_layout(np.ascontiguousarray(x, dtype=np.float32), self.layout)
        q = self._q(self.inp)
        outs = []
        for i in range(len(x)):
            xi = x[i : i + 1].reshape(self.input_shape)
            if q is not None:
                info = np.iinfo(self.inp["dtype"])
                xi = np.clip(np.round(xi / q[0] + q[1]), info.min, info.max).astype(self.inp["dtype"])
            self.interpreter.set_input(xi.astype(self.inp["dtype"], copy=False), 0)
            self.interpreter.invoke()
            outs.append(np.array(self.interpreter.get_output(0)).reshape(1, -1))
        return np.concatenate(outs) if outs else np.zeros((0, 0))

    def run(self, x: np.ndarray) -> np.ndarray:
        """float32 logits (dequantized)."""
        y = self.run_raw(x)
        q = self._q(self.out)
        return y.astype(np.float32) if q is None else (y.astype(np.float32) - q[1]) * q[0]


# --------------------------------------------------------------------------- the C/C++ files


def _c_ident_comment(meta: dict[str, Any]) -> str:
    keys = ("node", "profile", "model", "keep", "weights_fingerprint", "quantize")
    return json.dumps({k: meta.get(k) for k in keys if k in meta}, sort_keys=True)


def model_data_cc(model: bytes, meta: dict[str, Any] | None = None) -> str:
    """``model_data.cc``: the flatbuffer as ``alignas(16) const unsigned char g_model[]``."""
    lines = ["// Generated by dslth-edge export: the TFLite model as a C array (placed in flash: const).",
             f"// {_c_ident_comment(meta or {})}",
             '#include "model_data.h"',
             "",
             "alignas(16) const unsigned char g_model[] = {"]
    for s in range(0, len(model), 12):
        lines.append("    " + ", ".join(f"0x{b:02x}" for b in model[s : s + 12]) + ",")
    lines += ["};", f"const unsigned int g_model_len = {len(model)};", ""]
    return "\n".join(lines)


def _q_consts(prefix: str, q: dict[str, Any] | None) -> list[str]:
    if not q:
        return [f"// {prefix.lower()}: float32 (no quantization)"]
    return [f"constexpr float k{prefix}Scale = {q['scale']!r}f;", f"constexpr int k{prefix}ZeroPoint = {int(q['zero_point'])};"]


def model_data_h(model_len: int, arena: ArenaSize, io: dict[str, Any] | None, summary: OpSummary) -> str:
    """``model_data.h``: declarations, the tensor arena size, input shape and I/O quantization."""
    shape = ", ".join(str(d) for d in summary.input_shape)
    lines = [
        "// Generated by dslth-edge export. See README.md beside this file.",
        "#ifndef DSLTH_MODEL_DATA_H_",
        "#define DSLTH_MODEL_DATA_H_",
        "",
        f"extern const unsigned char g_model[];  // {model_len} bytes, 16-byte aligned, in flash",
        "extern const unsigned int g_model_len;",
        "",
        f"// measured with the TFLite Micro interpreter: {arena.measured_bytes} B, plus {arena.margin_bytes} B for",
        "// optimized-kernel (CMSIS-NN / ESP-NN) scratch buffers",
        f"constexpr int kTensorArenaSize = {arena.recommended_bytes};",
        "",
        f"// input tensor: {summary.input_dtype} [{shape}]; output: {summary.output_dtype}",
        *_q_consts("Input", (io or {}).get("input")),
        *_q_consts("Output", (io or {}).get("output")),
        "",
        "#endif  // DSLTH_MODEL_DATA_H_",
        "",
    ]
    return "\n".join(lines)


def op_resolver_h(summary: OpSummary) -> str:
    """``op_resolver.h``: a ``MicroMutableOpResolver<N>`` with exactly the model's operators."""
    unknown = [op for op in summary.unique if op not in RESOLVER_METHODS]
    if unknown:
        raise ExportError(f"no TFLite Micro resolver entry known for operator(s) {unknown}: cannot write op_resolver.h")
    n = len(summary.unique)
    lines = [
        "// Generated by dslth-edge export from the model's operator codes: exactly the operators it uses.",
        "#ifndef DSLTH_OP_RESOLVER_H_",
        "#define DSLTH_OP_RESOLVER_H_",
        "",
        '#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"',
        "",
        f"constexpr int kModelOpCount = {n};",
        "using ModelOpResolver = tflite::MicroMutableOpResolver<kModelOpCount>;",
        "",
        "// Registers every operator of g_model; returns kTfLiteError if one cannot be added.",
        "inline TfLiteStatus RegisterModelOps(ModelOpResolver& resolver) {",
    ]
    for op in summary.unique:
        lines.append(f"  if (resolver.{RESOLVER_METHODS[op]}() != kTfLiteOk) return kTfLiteError;")
    lines += ["  return kTfLiteOk;", "}", "", "#endif  // DSLTH_OP_RESOLVER_H_", ""]
    return "\n".join(lines)


def _readme(model_len: int, arena: ArenaSize, summary: OpSummary, io: dict[str, Any] | None, meta: dict[str, Any],
            profile: Profile | None) -> str:
    target = f"{profile.name} ({profile.device})" if profile is not None else "a TFLite Micro target"
    iq, oq = (io or {}).get("input"), (io or {}).get("output")
    ops = ", ".join(summary.unique)
    norm = meta.get("normalisation") or {}
    return "\n".join([
        f"# dslth-edge TFLite Micro bundle for {target}",
        "",
        (f"Node {meta.get('node')} of its run, model `{meta.get('model')}` at keep {meta.get('keep')}, "
         f"{meta.get('quantize')} ({'integer-only' if summary.integer_only else 'has float tensors'})."),
        "",
        "| file | what |",
        "| --- | --- |",
        f"| model.tflite | the model ({model_len} bytes) |",
        "| model_data.cc / .h | `g_model[]` (alignas(16), const: in flash), `g_model_len`, `kTensorArenaSize`, I/O scales |",
        f"| op_resolver.h | `ModelOpResolver` = `MicroMutableOpResolver<{len(summary.unique)}>`, `RegisterModelOps()` |",
        "",
        f"Operators: {ops}.",
        f"Input: {summary.input_dtype} {list(summary.input_shape)} ({(meta.get('input') or {}).get('layout', 'NCHW')})"
        + (f", x_q = round(x / {iq['scale']:.6g}) + {iq['zero_point']}" if iq else "")
        + f", where x = (pixel / 255 - mean) / std with mean {norm.get('mean')} and std {norm.get('std')}.",
        f"Output: {summary.output_dtype} logits" + (f", logit = (y_q - {oq['zero_point']}) * {oq['scale']:.6g}" if oq else "") + ".",
        "",
        (f"Tensor arena: measured {arena.measured_bytes} B with the TFLite Micro interpreter "
         f"(tflite-micro {arena.tflm_version}, reference kernels); `kTensorArenaSize` = {arena.recommended_bytes} B "
         f"adds max({ARENA_MARGIN_MIN_BYTES} B, {ARENA_MARGIN_FRACTION:.0%}) for optimized-kernel scratch."),
        "",
        "Minimum runtime versions:",
        f"- TensorFlow Lite Micro: {MIN_VERSIONS['tflite-micro']}",
        f"- esp-tflite-micro (ESP32): {MIN_VERSIONS['esp-tflite-micro']}",
        "",
        "```cpp",
        '#include "model_data.h"',
        '#include "op_resolver.h"',
        '#include "tensorflow/lite/micro/micro_interpreter.h"',
        "",
        "alignas(16) static uint8_t tensor_arena[kTensorArenaSize];",
        "",
        "ModelOpResolver resolver;",
        "RegisterModelOps(resolver);",
        "const tflite::Model* model = tflite::GetModel(g_model);",
        "tflite::MicroInterpreter interpreter(model, resolver, tensor_arena, kTensorArenaSize);",
        "interpreter.AllocateTensors();",
        "// fill interpreter.input(0)->data.int8, then interpreter.Invoke(); read interpreter.output(0)->data.int8",
        "```",
        "",
    ])


def write_bundle(directory: str | Path, model: bytes, *, meta: dict[str, Any], io: dict[str, Any] | None = None,
                 profile: Profile | None = None, integer_only: bool = False) -> dict[str, Any]:
    """Write the TFLM bundle (:data:`BUNDLE_FILES`) into ``directory``; returns what it measured.

    ``integer_only``: refuse (ExportError, nothing written) a model with float tensors.
    """
    from dslth_edge.runs.rundir import (
        atomic_write_bytes,  # imports torch: not at module level (devices)
    )

    summary = require_integer_only(model) if integer_only else model_ops(model)
    arena = measure_arena(model)
    files = {
        "model.tflite": model,
        "model_data.cc": model_data_cc(model, meta).encode(),
        "model_data.h": model_data_h(len(model), arena, io, summary).encode(),
        "op_resolver.h": op_resolver_h(summary).encode(),
        "README.md": _readme(len(model), arena, summary, io, meta, profile).encode(),
    }
    d = Path(directory)
    for name, data in files.items():
        atomic_write_bytes(d / name, data)
    return {
        "directory": str(d),
        "files": [str(d / n) for n in BUNDLE_FILES],
        "arena": arena.to_dict(),
        "ops": list(summary.ops),
        "resolver_ops": list(summary.unique),
        "integer_only": summary.integer_only,
        "float_ops": list(summary.float_ops),
        "input": {"dtype": summary.input_dtype, "shape": list(summary.input_shape)},
        "output_dtype": summary.output_dtype,
        "min_versions": dict(MIN_VERSIONS),
    }
