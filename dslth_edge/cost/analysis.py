"""Static analysis of a model file: per-operator MACs, bytes moved and parameters.

Part of the one cost model (this room): the exporters' budget, the profiler and the
latency model all read a file's operators here.

These per-operator costs are what the latency predictor consumes and what the profile
report shows as "params" and "MACs". Each format is read with what a device already has:

``.onnx``
    the ONNX graph with onnx's shape inference (needs the ``onnx`` package; without it
    the figures are n/a). MACs of Conv / ConvTranspose / Gemm / MatMul and their
    quantized forms (QLinearConv, ConvInteger, QLinearMatMul, MatMulInteger).
``.tflite``
    best effort from the interpreter's own op and tensor details (ai-edge-litert or
    tflite-runtime; no TensorFlow, no flatbuffer schema). MACs of CONV_2D,
    DEPTHWISE_CONV_2D, FULLY_CONNECTED, TRANSPOSE_CONV and BATCH_MATMUL. Constants are
    recognised as tensors no op produces and that are not model inputs.
torch module
    forward hooks on every weight layer during one forward pass
    (:mod:`dslth_edge.cost.macs`; torch is imported only then, lazily).

``params`` counts stored numbers: the weight and bias inputs of the MAC operators plus
every other floating-point / int8 constant (BatchNorm statistics, for instance);
integer shape constants are not parameters. ``bytes`` of an operator is every input
(activations and weights) plus every output, in the tensors' own dtypes: the traffic a
kernel moves at least once.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dslth_edge.cost.macs import trace_macs
from dslth_edge.cost.ops import OpCost
from dslth_edge.errors import UsageError
from dslth_edge.util.tflite import open_interpreter, tflite_runtime

__all__ = [
    "OpCost",
    "ModelInfo",
    "model_format",
    "file_size",
    "analyze_onnx",
    "analyze_tflite",
    "analyze_torch_module",
    "litert_ops_details",
]


@dataclass(frozen=True)
class ModelInfo:
    """What static analysis learned about one model file."""

    path: str
    format: str  # "onnx" | "tflite" | "torch"
    size_bytes: int  # the file's size (a directory: every file in it)
    params: int | None  # None: n/a (see note)
    macs: int | None  # per inference at ``batch``; None: n/a
    dtype: str | None  # "fp32" | "int8" | None (unknown)
    batch: int
    ops: tuple[OpCost, ...] = ()
    note: str = ""  # how the figures were obtained, or why they are n/a

    def to_dict(self) -> dict[str, Any]:
        """The ``model`` object of docs/profile-json.md (without the per-op list)."""
        return {
            "path": self.path,
            "format": self.format,
            "size_bytes": self.size_bytes,
            "params": self.params,
            "macs": self.macs,
            "dtype": self.dtype,
            "batch": self.batch,
            "weight_layers": sum(1 for op in self.ops if op.weight_layer) if self.ops else None,
            "analysis_note": self.note,
        }


def model_format(path: str | os.PathLike[str]) -> str:
    """"onnx", "tflite" or "torch" (a shrunk-model directory or its shrink.json)."""
    p = os.fspath(path)
    low = p.lower()
    if low.endswith(".onnx"):
        return "onnx"
    if low.endswith(".tflite"):
        return "tflite"
    if os.path.isdir(p) or low.endswith(".json"):
        return "torch"
    if low.endswith((".pt", ".pth")):
        # a pickled module can run code when loaded: shrunk models travel as shrink.json + arrays
        raise UsageError(f"{p}: pickled torch files are never loaded; profile the shrunk-model directory (shrink.json)")
    raise UsageError(f"{p}: unknown model format (expected .onnx, .tflite, or a shrunk model directory / shrink.json)")


def file_size(path: str | os.PathLike[str]) -> int:
    """Size of a file, or the total size of the files under a directory."""
    p = os.fspath(path)
    if os.path.isdir(p):
        return sum(
            os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(p) for f in files
        )
    return os.path.getsize(p)


def _prod(xs: Iterable[int]) -> int:
    return math.prod(int(x) for x in xs)


def _summarize(path: str, fmt: str, batch: int, ops: list[OpCost], extra_params: int, note: str) -> ModelInfo:
    dtypes = {op.dtype for op in ops if op.weight_layer}
    dtype = "int8" if "int8" in dtypes else ("fp32" if dtypes else None)
    return ModelInfo(
        path=path,
        format=fmt,
        size_bytes=file_size(path),
        params=sum(op.params for op in ops) + extra_params,
        macs=sum(op.macs for op in ops),
        dtype=dtype,
        batch=batch,
        ops=tuple(ops),
        note=note,
    )


# --------------------------------------------------------------------------- ONNX

_ONNX_INT8_OPS = {"QLinearConv", "ConvInteger", "QLinearMatMul", "MatMulInteger"}
_ONNX_PASSTHROUGH = {"Transpose", "Cast", "QuantizeLinear", "DequantizeLinear", "Identity", "Pad", "Reshape"}
# op type -> (index of the data input, index of the weight input, index of the bias input or None)
_ONNX_WEIGHT_SLOTS: dict[str, tuple[int, int, int | None]] = {
    "Conv": (0, 1, 2),
    "ConvTranspose": (0, 1, 2),
    "Gemm": (0, 1, 2),
    "MatMul": (0, 1, None),
    "QLinearConv": (0, 3, 8),
    "ConvInteger": (0, 1, None),
    "QLinearMatMul": (0, 3, None),
    "MatMulInteger": (0, 1, None),
}


def _onnx_macs(op_type: str, node: Any, shapes: Mapping[str, list[int | None]]) -> tuple[int, int, int] | None:
    """(MACs, output channels, reduction channels per group) of one node; None when a shape is unknown."""
    slots = _ONNX_WEIGHT_SLOTS.get(op_type)
    if slots is None:
        return 0, 0, 0
    xi, wi, _ = slots
    inputs = list(node.input)
    if len(inputs) <= wi or not node.output:
        return None
    x, w, y = shapes.get(inputs[xi]), shapes.get(inputs[wi]), shapes.get(node.output[0])
    if x is None or w is None or y is None or any(d is None for d in (*x, *w, *y)):
        return None
    if op_type in ("Conv", "QLinearConv", "ConvInteger"):
        # W: (Cout, Cin/groups, k...) ; every output element costs Cin/groups * prod(k)
        return _prod(y) * _prod(w[1:]), int(w[0]), int(w[1])  # type: ignore[arg-type]
    if op_type == "ConvTranspose":
        # W: (Cin, Cout/groups, k...) ; every input element scatters into Cout/groups * prod(k)
        groups = next((a.i for a in node.attribute if a.name == "group"), 1)
        return _prod(x) * _prod(w[1:]), int(w[1]) * groups, int(w[0]) // groups  # type: ignore[arg-type]
    if op_type == "Gemm":
        trans_a = next((a.i for a in node.attribute if a.name == "transA"), 0)
        k = int(x[0] if trans_a else x[1])  # type: ignore[arg-type]
        return _prod(y) * k, int(y[-1]), k  # type: ignore[arg-type]
    k = int(x[-1])  # type: ignore[arg-type]  # MatMul family: contraction over x's last axis
    return _prod(y) * k, int(y[-1]), k  # type: ignore[arg-type]


def analyze_onnx(
    path: str | os.PathLike[str], *, batch: int = 1, input_shapes: Mapping[str, Sequence[int]] | None = None
) -> ModelInfo:
    """Per-node costs of an ONNX model, its first (symbolic) input dimension set to ``batch``.

    Without the ``onnx`` package the result has ``params``/``macs`` None and a note.
    """
    p = os.fspath(path)
    try:
        import onnx
        from onnx import helper, numpy_helper, shape_inference
    except ImportError:
        return ModelInfo(p, "onnx", file_size(p), None, None, None, batch, (), "n/a: the onnx package is not installed")
    model = onnx.load(p)
    graph = model.graph
    init_names = {t.name for t in graph.initializer}
    for inp in graph.input:
        if inp.name in init_names:
            continue
        dims = inp.type.tensor_type.shape.dim
        override = (input_shapes or {}).get(inp.name)
        if override is not None:
            if len(override) != len(dims):
                raise UsageError(f"{p}: input {inp.name!r} has rank {len(dims)}, --input-shape gave {list(override)}")
            for d, v in zip(dims, override):
                d.Clear()
                d.dim_value = int(v)
        elif dims and not dims[0].dim_value:
            dims[0].Clear()
            dims[0].dim_value = batch  # a symbolic batch axis becomes the profiled batch
    try:
        inferred = shape_inference.infer_shapes(model)
    except Exception as exc:  # noqa: BLE001 - inference failures leave shapes unknown, reported below
        inferred = model
        note_extra = f"; shape inference failed: {exc}"
    else:
        note_extra = ""

    shapes: dict[str, list[int | None]] = {}
    itemsize: dict[str, int] = {}

    def _elem_size(elem_type: int) -> int:
        try:
            import numpy as np

            return int(np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).itemsize)
        except Exception:  # noqa: BLE001 - unusual dtypes count as 4 bytes
            return 4

    for vi in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
        tt = vi.type.tensor_type
        if not tt.HasField("shape"):
            continue
        shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        itemsize[vi.name] = _elem_size(tt.elem_type)
    const_elems: dict[str, int] = {}
    const_float: dict[str, bool] = {}
    for t in graph.initializer:
        shapes[t.name] = list(t.dims)
        itemsize[t.name] = _elem_size(t.data_type)
        const_elems[t.name] = _prod(t.dims)
        const_float[t.name] = t.data_type not in (onnx.TensorProto.INT32, onnx.TensorProto.INT64)
    for node in graph.node:  # Constant nodes are constants too
        if node.op_type == "Constant" and node.output:
            for a in node.attribute:
                if a.name == "value":
                    arr = numpy_helper.to_array(a.t)
                    shapes[node.output[0]] = list(arr.shape)
                    itemsize[node.output[0]] = int(arr.dtype.itemsize)
                    const_elems[node.output[0]] = int(arr.size)
                    const_float[node.output[0]] = arr.dtype.kind in "fc" or arr.dtype.itemsize == 1

    ops: list[OpCost] = []
    counted: set[str] = set()
    unknown = 0
    graph_inputs = {inp.name for inp in graph.input if inp.name not in init_names}
    for node in graph.node:  # layout / dtype changes of the input still carry its unblocked channels
        if node.op_type in _ONNX_PASSTHROUGH and node.input and node.input[0] in graph_inputs:
            graph_inputs.update(o for o in node.output if o)
    for i, node in enumerate(graph.node):
        if node.op_type == "Constant":
            continue
        found = _onnx_macs(node.op_type, node, shapes)
        if found is None:
            unknown += 1
            found = (0, 0, 0)
        macs, cout, cin = found
        nbytes = 0
        for name in (*node.input, *node.output):
            if name and shapes.get(name) is not None and None not in shapes[name]:
                nbytes += _prod(shapes[name]) * itemsize.get(name, 4)  # type: ignore[arg-type]
        params = 0
        slots = _ONNX_WEIGHT_SLOTS.get(node.op_type)
        for j, name in enumerate(node.input):
            if name not in const_elems or name in counted:
                continue
            is_weight_slot = slots is not None and j in (slots[1], slots[2])
            if is_weight_slot or const_float[name]:
                params += const_elems[name]
                counted.add(name)
        dtype = "int8" if node.op_type in _ONNX_INT8_OPS else "fp32"
        reads_input = bool(node.input) and node.input[0] in graph_inputs
        ops.append(OpCost(
            node.name or f"{node.op_type}_{i}", node.op_type, int(macs), int(nbytes), params, dtype,
            cout, cin, reads_input and macs > 0,
        ))
    note = "onnx graph + shape inference"
    if unknown:
        note += f"; {unknown} MAC operator(s) with unknown shapes counted as 0 (give --input-shape)"
    return _summarize(p, "onnx", batch, ops, 0, note + note_extra)


# --------------------------------------------------------------------------- TFLite


_TFL_PASSTHROUGH = {"TRANSPOSE", "RESHAPE", "QUANTIZE", "DEQUANTIZE", "CAST", "PAD"}
_TFL_WEIGHT_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV", "BATCH_MATMUL"}


def _tfl_macs(op: str, ins: list[int], outs: list[int], shape: Mapping[int, list[int]]) -> tuple[int, int, int]:
    """(MACs, output channels, reduction channels per group) of one op (zeros: not a MAC op)."""
    def s(i: int) -> list[int]:
        return list(shape.get(i, []))

    if not outs or op not in _TFL_WEIGHT_OPS:
        return 0, 0, 0
    y = s(outs[0])
    if op == "CONV_2D" and len(ins) >= 2:
        w = s(ins[1])  # (O, kh, kw, I)
        if len(w) == 4:
            return _prod(y) * _prod(w[1:]), w[0], w[3]
    elif op == "DEPTHWISE_CONV_2D" and len(ins) >= 2:
        w = s(ins[1])  # (1, kh, kw, O): one input channel per output channel (multiplier folded into O)
        if len(w) == 4:
            return _prod(y) * w[1] * w[2], w[3], 1
    elif op == "FULLY_CONNECTED" and len(ins) >= 2:
        w = s(ins[1])  # (O, I)
        if w:
            return _prod(y) * w[-1], w[0], w[-1]
    elif op == "TRANSPOSE_CONV" and len(ins) >= 3:
        w, x = s(ins[1]), s(ins[2])  # weights (O, kh, kw, I), input (N, H, W, I)
        if len(w) == 4:
            return _prod(x) * w[0] * w[1] * w[2], w[0], w[3]
    elif op == "BATCH_MATMUL" and ins:
        x = s(ins[0])
        if x and y:
            return _prod(y) * x[-1], y[-1], x[-1]
    return 0, 0, 0


def litert_ops_details(interpreter: Any) -> list[dict[str, Any]] | None:
    """The per-operator details of an allocated LiteRT / tflite-runtime interpreter, None when it has none.

    The one use of the interpreter's private ``_get_ops_details()`` (each entry: ``index``,
    ``op_name``, ``inputs``, ``outputs``, ...), checked against ai-edge-litert 2.3.0 and
    tflite-runtime 2.14.0; tests/profiler/test_formats.py fails if it disappears.
    """
    method = getattr(interpreter, "_get_ops_details", None)
    if method is None:
        return None
    return list(method())


def analyze_tflite(path: str | os.PathLike[str], *, batch: int = 1, interpreter: Any = None) -> ModelInfo:
    """Per-op costs of a .tflite model from the interpreter's op and tensor details (best effort).

    ``interpreter``: an allocated interpreter for this file (reused so its resized input
    shapes count); by default one is created without delegates.
    """
    p = os.fspath(path)
    if interpreter is None:
        rt = tflite_runtime()
        # without delegates where the runtime can say so: the delegate node would hide the graph
        can_bypass = rt.resolver is not None and hasattr(rt.resolver, "BUILTIN_WITHOUT_DEFAULT_DELEGATES")
        interpreter = open_interpreter(p, threads=1, delegate=not can_bypass, runtime=rt)
        inp = interpreter.get_input_details()
        if batch != 1 and inp and len(inp[0]["shape"]) and int(inp[0]["shape"][0]) != batch:
            for d in inp:
                interpreter.resize_tensor_input(d["index"], [batch, *list(d["shape"][1:])])
        interpreter.allocate_tensors()
    try:
        details = litert_ops_details(interpreter)
        if details is None:
            return ModelInfo(p, "tflite", file_size(p), None, None, None, batch, (), "n/a: this runtime exposes no op details")
        tensors = {int(t["index"]): t for t in interpreter.get_tensor_details()}
    except Exception as exc:  # noqa: BLE001 - private API: report n/a instead of failing the profile
        return ModelInfo(p, "tflite", file_size(p), None, None, None, batch, (), f"n/a: op details unavailable ({exc})")

    import numpy as np

    shape = {i: [int(d) for d in t["shape"]] for i, t in tensors.items()}
    nbytes = {i: _prod(s) * np.dtype(tensors[i]["dtype"]).itemsize for i, s in shape.items()}
    details = [d for d in details if d["op_name"] != "DELEGATE"]  # the delegate node repeats the graph
    produced = {int(o) for d in details for o in d["outputs"]}
    graph_inputs = {int(d["index"]) for d in interpreter.get_input_details()}
    consts = {i for d in details for i in map(int, d["inputs"]) if i >= 0 and i not in produced and i not in graph_inputs}
    from_input = set(graph_inputs)  # the input, and its layout / dtype changes (NCHW -> NHWC transpose)
    for d in details:
        if d["op_name"] in _TFL_PASSTHROUGH and len(d["inputs"]) and int(d["inputs"][0]) in from_input:
            from_input.update(int(o) for o in d["outputs"])

    ops: list[OpCost] = []
    counted: set[int] = set()
    for d in details:
        op = str(d["op_name"])
        ins = [int(i) for i in d["inputs"] if int(i) >= 0]
        outs = [int(i) for i in d["outputs"] if int(i) >= 0]
        macs, cout, cin = _tfl_macs(op, ins, outs, shape)
        params = 0
        for j, i in enumerate(ins):
            if i not in consts or i in counted:
                continue
            dt = np.dtype(tensors[i]["dtype"])
            weight_slot = op in _TFL_WEIGHT_OPS and j in (1, 2)
            if weight_slot or dt.kind == "f" or dt.itemsize == 1:
                params += _prod(shape[i])
                counted.add(i)
        # a MAC op computes in its weights' dtype, any other op in its output's
        key = ins[1] if op in _TFL_WEIGHT_OPS and len(ins) > 1 else (outs[0] if outs else None)
        dtype = "int8" if key is not None and np.dtype(tensors[key]["dtype"]).itemsize == 1 else "fp32"
        ops.append(OpCost(
            f"{op}_{d['index']}", op, int(macs), int(sum(nbytes.get(i, 0) for i in ins + outs)), params, dtype,
            int(cout), int(cin), bool(ins) and ins[0] in from_input and macs > 0,
        ))
    return _summarize(p, "tflite", batch, ops, 0, "tflite op/tensor details (best effort)")


# --------------------------------------------------------------------------- torch


def analyze_torch_module(module: Any, sample: Any, *, path: str = "<module>", batch: int = 1) -> ModelInfo:
    """Costs of a torch module's weight layers, traced by one forward pass on ``sample``
    (:func:`dslth_edge.cost.macs.trace_macs`, the one MAC counter)."""
    import torch

    ops: list[OpCost] = []
    for t in trace_macs(module, sample):
        nbytes = (math.prod(t.in_shape) * t.in_itemsize + math.prod(t.out_shape) * t.out_itemsize
                  + t.params * t.weight_itemsize)
        op_type = type(module.get_submodule(t.name)).__name__
        ops.append(OpCost(t.name, op_type, t.macs, int(nbytes), t.params, "fp32", t.out_channels, t.in_channels,
                          t.reads_input))
    counted = sum(op.params for op in ops)
    total = sum(p.numel() for p in module.parameters())
    size = file_size(path) if os.path.exists(path) else 0
    dtypes = {"int8"} if any(p.dtype == torch.qint8 for p in module.parameters()) else {"fp32"}
    return ModelInfo(
        path=path,
        format="torch",
        size_bytes=size,
        params=max(total, counted),
        macs=sum(op.macs for op in ops),
        dtype=next(iter(dtypes)),
        batch=batch,
        ops=tuple(ops),
        note="torch forward hooks on the weight layers",
    )
