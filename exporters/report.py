"""The report of one export: params, MACs, file size, accuracy per model variant.

Written as an entry of ``report.json`` next to the exported file (one entry per file
name, so model.onnx and model-int8.tflite in the same folder keep their own) and
printed as a table by the CLI.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dslth_edge.runs.rundir import write_json

__all__ = ["REPORT_JSON", "VariantRow", "ExportReport", "write_report", "size_bound"]

REPORT_JSON = "report.json"
SIZE_SLACK_BYTES = 64 * 1024


def size_bound(params: int, bytes_per_param: float) -> int:
    """The file-size acceptance bound: params × bytes/param × 1.1 + 64 KiB."""
    return int(params * bytes_per_param * 1.1 + SIZE_SLACK_BYTES)


@dataclass
class VariantRow:
    """One model variant of the export."""

    variant: str  # "masked-dense" | "shrunk" | "shrunk+int8" | "shrunk+dynamic"
    params: int  # stored values (zeros inside kept channels included)
    nonzero_params: int
    macs: int  # per sample
    file_bytes: int | None  # the exported file (or, for masked-dense, what it would be)
    accuracy: float | None  # top-1 on the node's test split
    measured_with: str  # "torch" | "onnxruntime" | "ai_edge_litert" | "tflite_runtime"
    bytes_per_param: float = 4.0

    @property
    def size_bound(self) -> int:
        return size_bound(self.params, self.bytes_per_param)


@dataclass
class ExportReport:
    """Everything one ``dslth-edge export`` measured."""

    file: str
    format: str
    quantize: str
    provenance: dict[str, Any]
    rows: list[VariantRow]
    parity: dict[str, Any]  # fp32 file vs torch: max_abs_diff, samples, tolerance
    shrink: dict[str, Any]  # widths, zero padding per layer, channel multiple, max |masked - shrunk|, shrink.json path
    quantization: dict[str, Any] | None = None  # int8 input/output (scale, zero point), route, drop
    seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    tflm: dict[str, Any] | None = None  # TFLite Micro bundle: files, arena, ops, TFLM-vs-LiteRT check
    budget: dict[str, Any] | None = None  # the verdict against the node's profile (exporters/budget.py)
    worth: dict[str, Any] | None = None  # is the file worth deploying: its accuracy vs chance and the masked model (exporters/worth.py)
    deploy_step: dict[str, Any] | None = None  # the personal deploy-time step applied to a shrunk model (exporters/deploy_step.py)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for row, obj in zip(d["rows"], self.rows):
            row["size_bound"] = obj.size_bound
        return d

    def table(self) -> tuple[list[str], list[list[str]]]:
        """(header, rows) of strings for printing; narrow enough for an 80-column terminal
        (which runtime measured each accuracy is :meth:`measured_with`)."""
        header = ["model", "params", "non-zero", "MACs", "file", "fits", "accuracy"]
        rows = []
        for r in self.rows:
            size = "-" if r.file_bytes is None else _kib(r.file_bytes)
            ok = "-" if r.file_bytes is None or r.variant == "masked-dense" else ("yes" if r.file_bytes <= r.size_bound else "NO")
            acc = "-" if r.accuracy is None else f"{100 * r.accuracy:.2f}%"
            rows.append([r.variant, f"{r.params:,}", f"{r.nonzero_params:,}", f"{r.macs / 1e6:.2f} M", size, ok, acc])
        return header, rows

    def measured_with(self) -> str:
        """One line: the runtime that measured each variant's accuracy."""
        return "accuracy measured with: " + "; ".join(f"{r.variant} {r.measured_with}" for r in self.rows)


def _kib(n: int) -> str:
    return f"{n / 1024:.1f} KiB" if n < 1024 * 1024 else f"{n / 2**20:.2f} MiB"


def write_report(report: ExportReport, directory: str | Path | None = None) -> Path:
    """Merge ``report`` into ``report.json`` beside the exported file (atomically); returns its path."""
    path = Path(directory) if directory is not None else Path(report.file).parent
    path = path / REPORT_JSON
    doc: dict[str, Any] = {}
    if path.is_file():
        try:
            doc = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            doc = {}  # a damaged report is replaced, not fatal
    exports = doc.get("exports") if isinstance(doc.get("exports"), dict) else {}
    exports[Path(report.file).name] = report.to_dict()
    write_json(path, {"exports": exports})
    return path
