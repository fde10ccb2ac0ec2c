"""Provenance inside exported files: ONNX ``metadata_props`` and a TFLite metadata entry.

Both carry the same JSON document under the name :data:`METADATA_KEY` (node id,
profile, keep ratio, weights fingerprint, class names, input normalisation, accuracy,
quantization). ONNX also gets the main fields as flat string properties, which tools
such as Netron show directly. The TFLite entry is a named buffer in the model's
``metadata`` table (the standard place for it); LiteRT ignores entries it does not
know, so the file runs unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dslth_edge.errors import ExportError

__all__ = ["METADATA_KEY", "METADATA_FORMAT", "add_onnx_metadata", "read_onnx_metadata", "add_tflite_metadata", "read_tflite_metadata"]

METADATA_KEY = "dslth_edge"
METADATA_FORMAT = "dslth-edge-export-v1"
_FLAT_KEYS = ("node", "profile", "keep", "weights_fingerprint", "class_names", "normalisation", "accuracy", "quantize")


def _flat(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def add_onnx_metadata(model: Any, meta: dict[str, Any]) -> None:
    """Set ``metadata_props`` of an ``onnx.ModelProto`` in place (replacing earlier dslth entries)."""
    keep = [p for p in model.metadata_props if p.key != METADATA_KEY and p.key not in _FLAT_KEYS]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    doc = {"format": METADATA_FORMAT, **meta}
    for key, value in [(METADATA_KEY, doc), *((k, meta[k]) for k in _FLAT_KEYS if k in meta)]:
        prop = model.metadata_props.add()
        prop.key, prop.value = key, _flat(value)


def read_onnx_metadata(path: str | Path) -> dict[str, Any] | None:
    """The dslth-edge metadata document of an ONNX file (None if it has none)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    for p in model.metadata_props:
        if p.key == METADATA_KEY:
            return json.loads(p.value)
    return None


def add_tflite_metadata(model_bytes: bytes, meta: dict[str, Any]) -> bytes:
    """The TFLite flatbuffer with a ``dslth_edge`` metadata entry (JSON) added or replaced."""
    try:
        import numpy as np
        from ai_edge_litert import schema_py_generated as schema
        from ai_edge_litert.tools import flatbuffer_utils
    except ImportError as exc:
        raise ExportError("writing TFLite metadata needs ai-edge-litert: pip install 'dslth-edge[export]'") from exc
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(model_bytes))
    payload = json.dumps({"format": METADATA_FORMAT, **meta}, sort_keys=True).encode()
    buf = schema.BufferT()
    buf.data = np.frombuffer(payload, dtype=np.uint8)
    entries = [m for m in (model.metadata or []) if _name(m.name) != METADATA_KEY]
    model.buffers.append(buf)
    entry = schema.MetadataT()
    entry.name = METADATA_KEY
    entry.buffer = len(model.buffers) - 1
    model.metadata = [*entries, entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _name(n: bytes | str | None) -> str:
    return n.decode() if isinstance(n, bytes) else str(n)


def read_tflite_metadata(model: str | Path | bytes) -> dict[str, Any] | None:
    """The dslth-edge metadata document of a TFLite file (None if it has none)."""
    from ai_edge_litert import schema_py_generated as schema

    data = model if isinstance(model, bytes) else Path(model).read_bytes()
    root = schema.Model.GetRootAs(bytearray(data), 0)
    for i in range(root.MetadataLength()):
        entry = root.Metadata(i)
        if _name(entry.Name()) == METADATA_KEY:
            return json.loads(bytes(root.Buffers(entry.Buffer()).DataAsNumpy()).decode())
    return None
