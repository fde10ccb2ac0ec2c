"""Loading a TFLite interpreter: ai-edge-litert first, then tflite-runtime (older device images).

The one loader the exporters (checking a file before it is written), the device runner
and the profiler (measuring, reading op details) share: one return shape
(:class:`TfliteRuntime`) and one error (:class:`~dslth_edge.errors.UsageError`, exit 2)
when no runtime is installed or a file does not load. Imports neither torch nor
TensorFlow.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from dslth_edge.errors import UsageError

__all__ = ["TfliteRuntime", "tflite_runtime", "open_interpreter"]


@dataclass(frozen=True)
class TfliteRuntime:
    """The LiteRT runtime this process can use."""

    interpreter: Any  # the Interpreter class
    resolver: Any  # the OpResolverType enum, None where the runtime has none
    module: str  # the import name: "ai_edge_litert" | "tflite_runtime"
    package: str  # the distribution: "ai-edge-litert" | "tflite-runtime"


def tflite_runtime() -> TfliteRuntime:
    """The installed LiteRT runtime: ai-edge-litert, else tflite-runtime; UsageError when neither."""
    try:
        from ai_edge_litert import interpreter as lit

        return TfliteRuntime(lit.Interpreter, getattr(lit, "OpResolverType", None), "ai_edge_litert", "ai-edge-litert")
    except ImportError:
        pass
    try:
        from tflite_runtime import interpreter as tfl  # type: ignore[import-not-found]

        return TfliteRuntime(tfl.Interpreter, getattr(tfl, "OpResolverType", None), "tflite_runtime", "tflite-runtime")
    except ImportError:
        raise UsageError(
            "running a .tflite file needs a LiteRT runtime: pip install ai-edge-litert (or tflite-runtime)"
        ) from None


def open_interpreter(model: str | os.PathLike[str] | bytes, *, threads: int | None = None, delegate: bool = True,
                     runtime: TfliteRuntime | None = None) -> Any:
    """A new (not yet allocated) interpreter for a .tflite path or flatbuffer bytes.

    ``delegate=False``: the builtin kernels without the default XNNPACK delegate (the
    kernels whose int8 rounding TFLite Micro's reference kernels share); a runtime
    without ``OpResolverType`` cannot do that and is refused. ``threads``: the
    interpreter's thread count (its default when None). A file the runtime cannot
    load raises UsageError naming it.
    """
    rt = runtime or tflite_runtime()
    kw: dict[str, Any] = {"num_threads": int(threads)} if threads else {}
    if not delegate:
        if rt.resolver is None or not hasattr(rt.resolver, "BUILTIN_WITHOUT_DEFAULT_DELEGATES"):
            raise UsageError(f"{rt.package} cannot run without its default delegate (no OpResolverType)")
        kw["experimental_op_resolver_type"] = rt.resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    source = "model bytes" if isinstance(model, bytes) else os.fspath(model)
    try:
        if isinstance(model, bytes):
            return rt.interpreter(model_content=model, **kw)
        return rt.interpreter(model_path=os.fspath(model), **kw)
    except Exception as exc:  # noqa: BLE001 - the runtime raises ValueError / RuntimeError
        raise UsageError(f"{source}: LiteRT cannot load the model: {exc}") from None
