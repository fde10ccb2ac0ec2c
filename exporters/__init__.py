"""Exporters: shrunk torch module → verified ONNX / TFLite files (installed as ``dslth_edge.exporters``).

Modules (import the one you need; none is imported here, so that a device importing
:mod:`~dslth_edge.exporters.runtime` pulls in neither torch nor the converters):

- ``pipeline``: ``dslth-edge export`` as a library call (``export_node``)
- ``onnx`` / ``tflite``: conversion and quantization
- ``runtime``: running exported files with onnxruntime / LiteRT / tflite-runtime (no torch)
- ``metadata``: provenance inside the files
- ``report``: the per-export report (report.json)
"""

__all__: list[str] = []
