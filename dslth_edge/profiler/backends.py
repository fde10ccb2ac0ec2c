"""Inference runners: onnxruntime, LiteRT (ai-edge-litert / tflite-runtime) and torch.

Each runner sets its thread count explicitly, because every runtime's default differs
(onnxruntime: one thread per physical core; LiteRT: 1 or "implementation defined";
torch: all cores) and a latency figure means nothing without it:

* onnxruntime: ``SessionOptions.intra_op_num_threads = N``, ``inter_op_num_threads = 1``
  with the sequential executor (one inference at a time has no inter-op parallelism);
* LiteRT: ``Interpreter(num_threads=N)``, which the default XNNPACK delegate inherits;
* torch: ``torch.set_num_threads(N)``.

A runtime is imported only when its runner is created, so a device with only
onnxruntime or only LiteRT installed can profile its own format without torch.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from dslth_edge.errors import UsageError

from dslth_edge.cost.analysis import (
    ModelInfo,
    analyze_onnx,
    analyze_tflite,
    analyze_torch_module,
    litert_ops_details,
    model_format,
)
from dslth_edge.util.tflite import open_interpreter, tflite_runtime

__all__ = [
    "BACKENDS",
    "BackendInfo",
    "OpTime",
    "PerOpProfile",
    "Runner",
    "OnnxRuntimeRunner",
    "LiteRtRunner",
    "TorchRunner",
    "resolve_backend",
    "make_runner",
]

BACKENDS: tuple[str, ...] = ("auto", "onnxruntime", "litert", "torch")
_FORMAT_BACKEND = {"onnx": "onnxruntime", "tflite": "litert", "torch": "torch"}


@dataclass(frozen=True)
class BackendInfo:
    """How the inferences were run: the ``backend`` object of docs/profile-json.md."""

    name: str  # "onnxruntime" | "litert" | "torch"
    package: str  # the distribution that ran it, e.g. "ai-edge-litert"
    version: str
    threads: int  # intra-op threads, set explicitly
    inter_op_threads: int | None
    delegate: str | None  # e.g. "XNNPACK"; None: plain CPU kernels
    providers: tuple[str, ...] = ()  # onnxruntime execution providers in priority order
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["providers"] = list(self.providers)
        d["notes"] = list(self.notes)
        return d


@dataclass(frozen=True)
class OpTime:
    """Mean time per inference spent in one operator (node) of the graph."""

    name: str
    op_type: str
    mean_us: float
    share: float  # of the summed operator time, 0..1


@dataclass(frozen=True)
class PerOpProfile:
    """A per-operator time table from the backend's own profiler, or why there is none."""

    available: bool
    source: str  # the profiler that produced it
    runs: int = 0  # profiled inferences averaged over
    ops: tuple[OpTime, ...] = ()
    total_op_us: float = 0.0  # mean summed operator time per inference
    run_us: float | None = None  # mean whole-inference time the profiler saw (None: not reported)
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "available": self.available,
            "source": self.source,
            "runs": self.runs,
            "total_op_us": self.total_op_us,
            "run_us": self.run_us,
            "note": self.note,
            "ops": [asdict(o) for o in self.ops],
        }


def _op_table(times: Mapping[tuple[str, str], float], runs: int) -> tuple[tuple[OpTime, ...], float]:
    """Per-run means and shares, largest first, from total microseconds per (name, op type)."""
    total = sum(times.values())
    rows = [
        OpTime(name, op_type, t / max(runs, 1), (t / total) if total > 0 else 0.0)
        for (name, op_type), t in times.items()
    ]
    rows.sort(key=lambda r: -r.mean_us)
    return tuple(rows), total / max(runs, 1)


def _check_threads(threads: int) -> int:
    if not isinstance(threads, int) or threads < 1:
        raise UsageError(f"--threads must be a positive integer, got {threads!r}")
    return threads


def _version(dist: str, module: Any = None) -> str:
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:  # noqa: BLE001 - a vendored runtime may have no metadata
        return str(getattr(module, "__version__", "unknown"))


def _random_input(shape: Sequence[int], dtype: Any, rng: Any) -> Any:
    """A deterministic input of the tensor's dtype (latency does not depend on the values)."""
    import numpy as np

    dt = np.dtype(dtype)
    if dt.kind == "f":
        return rng.standard_normal(tuple(shape)).astype(dt)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        lo, hi = max(int(info.min), -128), min(int(info.max), 127)
        return rng.integers(lo, hi + 1, size=tuple(shape)).astype(dt)
    if dt.kind == "b":
        return rng.integers(0, 2, size=tuple(shape)).astype(dt)
    raise UsageError(f"cannot make a profiling input of dtype {dt}")


class Runner(ABC):
    """Loads one model in one runtime and runs single inferences on a fixed input."""

    backend: str = ""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        threads: int = 1,
        batch: int = 1,
        input_shapes: Mapping[str, Sequence[int]] | None = None,
        xnnpack: bool = True,
    ) -> None:
        self.path = os.fspath(path)
        self.threads = _check_threads(threads)
        if batch < 1:
            raise UsageError(f"--batch must be a positive integer, got {batch}")
        self.batch = batch
        self.input_shapes = dict(input_shapes or {})
        self.xnnpack = xnnpack

    @abstractmethod
    def load(self) -> None:
        """Create the session / interpreter and allocate its tensors (the timed 'init')."""

    @abstractmethod
    def prepare_inputs(self, seed: int = 0) -> dict[str, tuple[int, ...]]:
        """Make and bind a fixed random input; returns the input shapes used."""

    @abstractmethod
    def run(self) -> None:
        """One inference on the prepared input."""

    @abstractmethod
    def info(self) -> BackendInfo:
        """Runtime, version, threads and delegate (valid after :meth:`load`)."""

    @abstractmethod
    def analyze(self) -> ModelInfo:
        """Static costs of the model (params, MACs, per-op costs)."""

    @abstractmethod
    def per_op(self, runs: int, warmup: int) -> PerOpProfile:
        """Per-operator times from the runtime's own profiler, in a separate session."""

    def close(self) -> None:
        """Release the runtime's objects."""

    def _shape_for(self, name: str, shape: Sequence[Any], index: int) -> tuple[int, ...]:
        """The full input shape: ``input_shapes`` (per sample, without batch; key "" is the
        first input) or the model's own shape with its leading axis set to the batch."""
        given = self.input_shapes.get(name, self.input_shapes.get("") if index == 0 else None)
        if given is not None:
            return (self.batch, *(int(d) for d in given))
        dims: list[int] = []
        for i, d in enumerate(shape):
            if i == 0:
                dims.append(self.batch)  # the leading axis is the batch, symbolic or not
            elif isinstance(d, int) and d > 0:
                dims.append(d)
            else:
                raise UsageError(
                    f"{self.path}: input {name!r} has a symbolic dimension {d!r} at axis {i}; "
                    "give the per-sample shape with --input-shape, e.g. 3x32x32"
                )
        return tuple(dims)


# --------------------------------------------------------------------------- onnxruntime


class OnnxRuntimeRunner(Runner):
    """onnxruntime's CPU execution provider, sequential executor, N intra-op threads."""

    backend = "onnxruntime"

    def __init__(self, path: str | os.PathLike[str], **kw: Any) -> None:
        super().__init__(path, **kw)
        try:
            import onnxruntime as ort
        except ImportError:
            raise UsageError("profiling an .onnx file needs onnxruntime: pip install onnxruntime") from None
        self._ort = ort
        self._session: Any = None
        self._feeds: dict[str, Any] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}

    def _options(self, profiling_dir: str | None = None) -> Any:
        so = self._ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.execution_mode = self._ort.ExecutionMode.ORT_SEQUENTIAL
        if profiling_dir is not None:
            so.enable_profiling = True
            so.profile_file_prefix = os.path.join(profiling_dir, "ort")
        return so

    def _new_session(self, profiling_dir: str | None = None) -> Any:
        try:
            return self._ort.InferenceSession(self.path, self._options(profiling_dir), providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise UsageError(f"{self.path}: onnxruntime cannot load the model: {exc}") from None

    def load(self) -> None:
        self._session = self._new_session()

    def prepare_inputs(self, seed: int = 0) -> dict[str, tuple[int, ...]]:
        import numpy as np

        rng = np.random.default_rng(seed)
        self._feeds, self._shapes = {}, {}
        for i, inp in enumerate(self._session.get_inputs()):
            shape = self._shape_for(inp.name, inp.shape, i)
            fixed = inp.shape[0] if inp.shape else None
            if isinstance(fixed, int) and fixed > 0 and fixed != shape[0]:
                raise UsageError(
                    f"{self.path}: input {inp.name!r} has a fixed batch of {fixed}; "
                    f"--batch {shape[0]} needs an export with a dynamic batch axis"
                )
            dtype = _ORT_DTYPES.get(inp.type)
            if dtype is None:
                raise UsageError(f"{self.path}: input {inp.name!r} has unsupported type {inp.type}")
            self._feeds[inp.name] = _random_input(shape, dtype, rng)
            self._shapes[inp.name] = shape
        return dict(self._shapes)

    def run(self) -> None:
        self._session.run(None, self._feeds)

    def info(self) -> BackendInfo:
        providers = tuple(self._session.get_providers()) if self._session is not None else ("CPUExecutionProvider",)
        delegate = next((p for p in providers if p != "CPUExecutionProvider"), None)
        return BackendInfo(
            name=self.backend,
            package="onnxruntime",
            version=_version("onnxruntime", self._ort),
            threads=self.threads,
            inter_op_threads=1,
            delegate=delegate,
            providers=providers,
            notes=("CPU execution provider (MLAS kernels), graph optimizations: all",),
        )

    def analyze(self) -> ModelInfo:
        return analyze_onnx(self.path, batch=self.batch, input_shapes=self._shapes or None)

    def per_op(self, runs: int, warmup: int) -> PerOpProfile:
        tmp = tempfile.mkdtemp(prefix="dslth-ortprof-")
        try:
            sess = self._new_session(tmp)
            for _ in range(warmup + runs):
                sess.run(None, self._feeds)
            with open(sess.end_profiling(), encoding="utf-8") as fh:
                events = json.load(fh)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return _parse_ort_profile(events, skip_runs=warmup)

    def close(self) -> None:
        self._session = None


_ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(bool)": "bool",
}


def _parse_ort_profile(events: list[dict[str, Any]], skip_runs: int) -> PerOpProfile:
    """Per-node means from onnxruntime's chrome-trace JSON, dropping the first ``skip_runs`` runs."""
    runs = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"), key=lambda e: e["ts"])
    kept = runs[skip_runs:]
    if not kept:
        return PerOpProfile(False, "onnxruntime SessionOptions.enable_profiling", note="the profiler recorded no runs")
    start = kept[0]["ts"]
    times: dict[tuple[str, str], float] = defaultdict(float)
    for e in events:
        if e.get("cat") != "Node" or e.get("ts", -1) < start or not e.get("name", "").endswith("_kernel_time"):
            continue
        name = e["name"][: -len("_kernel_time")]
        times[(name, str(e.get("args", {}).get("op_name", "?")))] += float(e.get("dur", 0))
    ops, total = _op_table(times, len(kept))
    run_us = sum(float(r["dur"]) for r in kept) / len(kept)
    return PerOpProfile(
        True,
        "onnxruntime SessionOptions.enable_profiling",
        runs=len(kept),
        ops=ops,
        total_op_us=total,
        run_us=run_us,
        note="node names are those of onnxruntime's optimized graph (fused Conv+Relu, NCHWc reorders)",
    )


# --------------------------------------------------------------------------- LiteRT


class LiteRtRunner(Runner):
    """LiteRT Interpreter (ai-edge-litert, or tflite-runtime), N threads, XNNPACK by default."""

    backend = "litert"

    def __init__(self, path: str | os.PathLike[str], **kw: Any) -> None:
        super().__init__(path, **kw)
        self._runtime = tflite_runtime()
        self._package = self._runtime.package
        self._it: Any = None
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._delegate: str | None = None

    def _new_interpreter(self) -> Any:
        # a runtime without OpResolverType always runs its default delegate
        bypass = not self.xnnpack and self._runtime.resolver is not None
        return open_interpreter(self.path, threads=self.threads, delegate=not bypass, runtime=self._runtime)

    def load(self) -> None:
        it = self._new_interpreter()
        resized = False
        for i, d in enumerate(it.get_input_details()):
            shape = self._shape_for(d["name"], [int(x) for x in d["shape_signature"]], i)
            if tuple(int(x) for x in d["shape"]) != shape:
                it.resize_tensor_input(d["index"], list(shape))
                resized = True
        try:
            it.allocate_tensors()
        except (RuntimeError, ValueError) as exc:
            if not resized:
                raise UsageError(f"{self.path}: LiteRT cannot allocate the model's tensors: {exc}") from None
            # a graph converted at batch 1 usually bakes that batch into its reshapes
            raise UsageError(
                f"{self.path}: the model does not run at batch {self.batch} (or the given --input-shape); "
                f"it was probably converted with a fixed batch of 1 ({exc})"
            ) from None
        self._it = it
        # the default delegate replaces the nodes it takes by one DELEGATE node
        try:
            names = [d["op_name"] for d in litert_ops_details(it) or []]
        except Exception:  # noqa: BLE001 - private API: unknown rather than wrong
            names = []
        delegated = "DELEGATE" in names
        self._delegate = "XNNPACK" if delegated and self.xnnpack else None

    def prepare_inputs(self, seed: int = 0) -> dict[str, tuple[int, ...]]:
        import numpy as np

        rng = np.random.default_rng(seed)
        self._shapes = {}
        for d in self._it.get_input_details():
            shape = tuple(int(x) for x in d["shape"])
            self._it.set_tensor(d["index"], _random_input(shape, d["dtype"], rng))
            self._shapes[d["name"]] = shape
        return dict(self._shapes)

    def run(self) -> None:
        self._it.invoke()

    def info(self) -> BackendInfo:
        notes = []
        if not self.xnnpack:
            notes.append("default delegates disabled (BUILTIN_WITHOUT_DEFAULT_DELEGATES): reference CPU kernels")
        elif self._delegate is None:
            notes.append("no delegate took any operator: builtin CPU kernels")
        return BackendInfo(
            name=self.backend,
            package=self._package,
            version=_version(self._package),
            threads=self.threads,
            inter_op_threads=None,
            delegate=self._delegate,
            notes=tuple(notes),
        )

    def analyze(self) -> ModelInfo:
        return analyze_tflite(self.path, batch=self.batch, interpreter=self._it)

    def per_op(self, runs: int, warmup: int) -> PerOpProfile:
        # ai-edge-litert 2.3's Python Interpreter has no op profiler: the only related
        # option, experimental_force_delegate_node_profiling, feeds the C++ profiler,
        # which is not exposed to Python; CompiledModel has none either.
        return PerOpProfile(
            False,
            f"{self._package} Interpreter",
            note=(
                "LiteRT's Python Interpreter exposes no per-operator profiler; run the C++ "
                "benchmark_model tool with --enable_op_profiling=true for per-op times "
                "(or profile the .onnx export with onnxruntime)"
            ),
        )

    def close(self) -> None:
        self._it = None


# --------------------------------------------------------------------------- torch


class TorchRunner(Runner):
    """A shrunk model built by :func:`dslth_edge.exporters.shrink.load_shrunk` (never an unpickled module)."""

    backend = "torch"

    def __init__(self, path: str | os.PathLike[str], **kw: Any) -> None:
        super().__init__(path, **kw)
        try:
            import torch
        except ImportError:
            raise UsageError("--backend torch needs torch installed") from None
        self._torch = torch
        self._module: Any = None
        self._x: Any = None
        self._saved_threads: int | None = None

    def load(self) -> None:
        try:
            from dslth_edge.exporters.shrink import load_shrunk  # type: ignore[attr-defined]
        except ImportError as exc:
            raise UsageError(f"--backend torch needs dslth_edge.exporters.shrink.load_shrunk ({exc})") from None
        self._saved_threads = self._torch.get_num_threads()  # process-wide: restored by close()
        self._torch.set_num_threads(self.threads)
        self._module = load_shrunk(self.path).eval()

    def _input_shape(self) -> tuple[int, ...]:
        if self.input_shapes:
            return tuple(int(d) for d in next(iter(self.input_shapes.values())))
        shape = getattr(self._module, "input_shape", None)
        if shape is None:
            meta = self.path if self.path.endswith(".json") else os.path.join(self.path, "shrink.json")
            if os.path.isfile(meta):
                with open(meta, encoding="utf-8") as fh:
                    shape = json.load(fh).get("input_shape")
        if shape is None:
            raise UsageError(f"{self.path}: input shape unknown; give it with --input-shape CxHxW")
        return (self.batch, *(int(d) for d in shape))

    def prepare_inputs(self, seed: int = 0) -> dict[str, tuple[int, ...]]:
        gen = self._torch.Generator().manual_seed(seed)
        shape = self._input_shape()
        self._x = self._torch.randn(shape, generator=gen)
        return {"input": shape}

    def run(self) -> None:
        with self._torch.inference_mode():
            self._module(self._x)

    def info(self) -> BackendInfo:
        torch = self._torch
        mkldnn = bool(getattr(torch.backends, "mkldnn", None) and torch.backends.mkldnn.is_available())
        return BackendInfo(
            name=self.backend,
            package="torch",
            version=str(torch.__version__),
            threads=torch.get_num_threads(),
            inter_op_threads=torch.get_num_interop_threads(),
            delegate=None,
            notes=(f"eager CPU, oneDNN {'available' if mkldnn else 'unavailable'}",),
        )

    def analyze(self) -> ModelInfo:
        return analyze_torch_module(self._module, self._x, path=self.path, batch=self.batch)

    def per_op(self, runs: int, warmup: int) -> PerOpProfile:
        from torch.profiler import ProfilerActivity, profile

        for _ in range(warmup):
            self.run()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(runs):
                self.run()
        times: dict[tuple[str, str], float] = {}
        for ev in prof.key_averages():
            if ev.self_cpu_time_total > 0:
                times[(ev.key, ev.key.split("::")[0])] = float(ev.self_cpu_time_total)  # type: the op namespace
        ops, total = _op_table(times, runs)
        return PerOpProfile(True, "torch.profiler (CPU, self time per aten op)", runs=runs, ops=ops, total_op_us=total)

    def close(self) -> None:
        self._module = None
        if self._saved_threads is not None:
            self._torch.set_num_threads(self._saved_threads)
            self._saved_threads = None


# --------------------------------------------------------------------------- selection

_RUNNERS: dict[str, type[Runner]] = {
    "onnxruntime": OnnxRuntimeRunner,
    "litert": LiteRtRunner,
    "torch": TorchRunner,
}


def resolve_backend(path: str | os.PathLike[str], backend: str = "auto") -> str:
    """The backend that runs ``path``: its format's own runtime for "auto", else checked."""
    if backend not in BACKENDS:
        raise UsageError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    fmt = model_format(path)
    if backend == "auto":
        return _FORMAT_BACKEND[fmt]
    if _FORMAT_BACKEND[fmt] != backend:
        raise UsageError(f"{os.fspath(path)}: a {fmt} model cannot run on --backend {backend} (use {_FORMAT_BACKEND[fmt]})")
    return backend


def make_runner(path: str | os.PathLike[str], backend: str = "auto", **kw: Any) -> Runner:
    """Create (not load) the runner for ``path``."""
    if not os.path.exists(os.fspath(path)):
        raise UsageError(f"{os.fspath(path)}: no such model file")
    return _RUNNERS[resolve_backend(path, backend)](path, **kw)
