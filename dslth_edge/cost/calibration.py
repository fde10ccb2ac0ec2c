"""The calibration file: what ``dslth-edge profile --calibrate`` measured on a device.

One JSON document (schema in docs/profiles.md, "Calibration file"), versioned::

    {
      "schema": "dslth-edge/calibration",
      "version": 1,
      "created": "2026-12-07T21:00:00Z",
      "host": {"hostname": "...", "cpu": "...", "machine": "x86_64", "cpu_count": 2},
      "runtimes": {
        "onnxruntime/fp32": {
          "runtime": "onnxruntime", "version": "1.20.1", "dtype": "fp32", "threads": 1,
          "channel_multiple": 8,
          "coefficients": {"conv_mac_s": 1.1e-11, "conv_window_s": 2e-10, "fc_mac_s": 3e-11,
                           "weight_op_s": 2e-6, "other_op_s": 1e-6, "other_byte_s": 1e-10,
                           "inference_s": 5e-6},
          "points": 40, "passes": 3, "median_rel_error": 0.04
        },
        "litert-xnnpack/int8": {...}
      },
      "training": {
        "runtime": "torch", "version": "2.13.0", "threads": 1,
        "coefficients": {"train_mac_s": 2e-10, "layer_pass_s": 3e-5, "step_s": 1e-4,
                         "sample_s": 1e-5},
        "points": 8, "passes": 3, "median_rel_error": 0.05
      }
    }

Every coefficient is in seconds per unit of its feature (:data:`LATENCY_COEFFICIENTS`,
:data:`TRAINING_COEFFICIENTS`); what the features are is the latency model's business
(:mod:`dslth_edge.cost.latency`). This module only parses, validates and writes the text;
a file that does not validate is refused whole, naming the key and what was expected.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dslth_edge.errors import ProfileError

__all__ = [
    "SCHEMA_NAME",
    "SCHEMA_VERSION",
    "RUNTIMES",
    "DTYPES",
    "LATENCY_COEFFICIENTS",
    "TRAINING_COEFFICIENTS",
    "CalibrationError",
    "RuntimeFit",
    "TrainingFit",
    "LatencyCalibration",
    "runtime_key",
    "parse_calibration",
    "calibration_from_json",
    "load_calibration",
]

SCHEMA_NAME = "dslth-edge/calibration"
SCHEMA_VERSION = 1
#: Runtimes a calibration can describe: onnxruntime (CPU EP) and LiteRT with XNNPACK.
RUNTIMES: tuple[str, ...] = ("onnxruntime", "litert-xnnpack")
DTYPES: tuple[str, ...] = ("fp32", "int8")
#: Seconds per unit of each latency feature (cost.latency.latency_features).
LATENCY_COEFFICIENTS: tuple[str, ...] = (
    "conv_mac_s",  # per padded MAC of a convolution
    "conv_window_s",  # per output element x kernel window of a convolution (im2col / gather)
    "fc_mac_s",  # per padded MAC of a fully-connected / matmul (weights streamed once at batch 1)
    "weight_op_s",  # per weight layer (dispatch, fused activation)
    "other_op_s",  # per operator without MACs (pool, add, reshape, (de)quantize)
    "other_byte_s",  # per byte an operator without MACs moves
    "inference_s",  # per inference call
)
#: Seconds per unit of each training feature (cost.latency.training_features).
TRAINING_COEFFICIENTS: tuple[str, ...] = (
    "train_mac_s",  # per training MAC (3 x forward MACs x samples)
    "layer_pass_s",  # per weight layer per micro-batch pass (forward + backward)
    "step_s",  # per optimizer step (top-k, score update)
    "sample_s",  # per sample (batch assembly, loss)
)


class CalibrationError(ProfileError):
    """A calibration file that does not parse or validate."""


def runtime_key(runtime: str, dtype: str) -> str:
    """``"onnxruntime/fp32"``: the key of one runtime and dtype in :attr:`LatencyCalibration.runtimes`."""
    return f"{runtime}/{dtype}"


@dataclass(frozen=True)
class RuntimeFit:
    """The fitted latency model of one runtime at one dtype."""

    runtime: str
    version: str
    dtype: str
    threads: int
    channel_multiple: int
    coefficients: Mapping[str, float]
    points: int  # networks measured
    passes: int  # round-robin passes (each network keeps its best per-pass median)
    median_rel_error: float  # of the fit over its own points

    @property
    def key(self) -> str:
        return runtime_key(self.runtime, self.dtype)

    def to_dict(self) -> dict[str, Any]:
        return {
            "runtime": self.runtime, "version": self.version, "dtype": self.dtype, "threads": self.threads,
            "channel_multiple": self.channel_multiple,
            "coefficients": {k: float(self.coefficients[k]) for k in LATENCY_COEFFICIENTS},
            "points": self.points, "passes": self.passes, "median_rel_error": self.median_rel_error,
        }


@dataclass(frozen=True)
class TrainingFit:
    """The fitted training-time model (torch, fp32) of the device."""

    runtime: str
    version: str
    threads: int
    coefficients: Mapping[str, float]
    points: int
    passes: int
    median_rel_error: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "runtime": self.runtime, "version": self.version, "threads": self.threads,
            "coefficients": {k: float(self.coefficients[k]) for k in TRAINING_COEFFICIENTS},
            "points": self.points, "passes": self.passes, "median_rel_error": self.median_rel_error,
        }


@dataclass(frozen=True, eq=False)  # identity hash: a profile carrying one stays hashable
class LatencyCalibration:
    """A parsed, validated calibration file."""

    created: str
    host: Mapping[str, Any]
    runtimes: Mapping[str, RuntimeFit]
    training: TrainingFit | None = None
    source_path: str = field(default="<memory>", compare=False)

    def runtime(self, runtime: str, dtype: str) -> RuntimeFit | None:
        """The fit of ``runtime`` at ``dtype``, or None when it was not measured."""
        return self.runtimes.get(runtime_key(runtime, dtype))

    def describe(self) -> str:
        """One line: where and when it was measured, and what."""
        host = self.host.get("hostname", "?")
        what = ", ".join(sorted(self.runtimes)) + (", torch training" if self.training else "")
        return f"measured on host {host} ({self.host.get('cpu', '?')}) {self.created}: {what}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_NAME,
            "version": SCHEMA_VERSION,
            "created": self.created,
            "host": dict(self.host),
            "runtimes": {k: self.runtimes[k].to_dict() for k in sorted(self.runtimes)},
            "training": None if self.training is None else self.training.to_dict(),
        }

    def to_json(self) -> str:
        """The file's text (parses back to an equal calibration)."""
        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"


# --------------------------------------------------------------------------- validation


def _fail(where: str, key: str, expected: str, value: Any) -> CalibrationError:
    shown = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return CalibrationError(f"{where}: {key} must be {expected}, got {shown}")


def _obj(where: str, key: str, value: Any, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _fail(where, key or "the document", "an object", value)
    prefix = f"{key}." if key else ""
    for k in value:
        if k not in required and k not in optional:
            raise CalibrationError(f"{where}: unknown key '{prefix}{k}' (expected {', '.join(required + optional)})")
    for k in required:
        if k not in value:
            raise CalibrationError(f"{where}: missing key '{prefix}{k}'")
    return value


def _str(where: str, key: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise _fail(where, key, "a non-empty string", value)
    return value


def _int(where: str, key: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise _fail(where, key, f"an integer >= {low}", value)
    return value


def _num(where: str, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise _fail(where, key, "a finite number >= 0", value)
    return float(value)


def _coefficients(where: str, key: str, value: Any, names: tuple[str, ...]) -> dict[str, float]:
    obj = _obj(where, key, value, names)
    coef = {k: _num(where, f"{key}.{k}", obj[k]) for k in names}
    if not any(coef.values()):
        raise _fail(where, key, "coefficients not all zero", value)
    return coef


_FIT_KEYS = ("points", "passes", "median_rel_error")


def _runtime_fit(where: str, key: str, value: Any) -> RuntimeFit:
    obj = _obj(where, f"runtimes.{key}", value,
               ("runtime", "version", "dtype", "threads", "channel_multiple", "coefficients") + _FIT_KEYS)
    p = f"runtimes.{key}"
    runtime = _str(where, f"{p}.runtime", obj["runtime"])
    if runtime not in RUNTIMES:
        raise _fail(where, f"{p}.runtime", f"one of {', '.join(RUNTIMES)}", runtime)
    dtype = _str(where, f"{p}.dtype", obj["dtype"])
    if dtype not in DTYPES:
        raise _fail(where, f"{p}.dtype", f"one of {', '.join(DTYPES)}", dtype)
    if key != runtime_key(runtime, dtype):
        raise _fail(where, f"runtimes.{key}", f"keyed {runtime_key(runtime, dtype)!r} (its runtime/dtype)", key)
    return RuntimeFit(
        runtime=runtime, version=_str(where, f"{p}.version", obj["version"]), dtype=dtype,
        threads=_int(where, f"{p}.threads", obj["threads"], 1),
        channel_multiple=_int(where, f"{p}.channel_multiple", obj["channel_multiple"], 1),
        coefficients=_coefficients(where, f"{p}.coefficients", obj["coefficients"], LATENCY_COEFFICIENTS),
        points=_int(where, f"{p}.points", obj["points"], 1), passes=_int(where, f"{p}.passes", obj["passes"], 1),
        median_rel_error=_num(where, f"{p}.median_rel_error", obj["median_rel_error"]),
    )


def _training_fit(where: str, value: Any) -> TrainingFit:
    obj = _obj(where, "training", value, ("runtime", "version", "threads", "coefficients") + _FIT_KEYS)
    return TrainingFit(
        runtime=_str(where, "training.runtime", obj["runtime"]), version=_str(where, "training.version", obj["version"]),
        threads=_int(where, "training.threads", obj["threads"], 1),
        coefficients=_coefficients(where, "training.coefficients", obj["coefficients"], TRAINING_COEFFICIENTS),
        points=_int(where, "training.points", obj["points"], 1), passes=_int(where, "training.passes", obj["passes"], 1),
        median_rel_error=_num(where, "training.median_rel_error", obj["median_rel_error"]),
    )


def parse_calibration(data: Any, *, source_path: str = "<memory>") -> LatencyCalibration:
    """Validate parsed JSON ``data`` and build a :class:`LatencyCalibration`.

    Raises :class:`CalibrationError` naming ``source_path``, the offending key and what
    was expected; a file of another schema version is refused (not guessed at).
    """
    where = source_path
    obj = _obj(where, "", data, ("schema", "version", "created", "host", "runtimes"), ("training",))
    if obj["schema"] != SCHEMA_NAME:
        raise _fail(where, "schema", repr(SCHEMA_NAME), obj["schema"])
    version = obj["version"]
    if isinstance(version, bool) or not isinstance(version, int):
        raise _fail(where, "version", "an integer", version)
    if version != SCHEMA_VERSION:
        raise CalibrationError(
            f"{where}: calibration schema version {version} is not supported (this dslth-edge reads "
            f"version {SCHEMA_VERSION}); run `dslth-edge profile --calibrate` again")
    host = obj["host"]
    if not isinstance(host, Mapping):
        raise _fail(where, "host", "an object", host)
    try:  # a description only, but it must write back: plain JSON, finite numbers
        json.dumps(host, allow_nan=False)
    except (TypeError, ValueError):
        raise _fail(where, "host", "an object of plain JSON values (finite numbers)", host) from None
    raw_runtimes = obj["runtimes"]
    if not isinstance(raw_runtimes, Mapping) or not raw_runtimes:
        raise _fail(where, "runtimes", "a non-empty object keyed runtime/dtype", raw_runtimes)
    runtimes = {str(k): _runtime_fit(where, str(k), v) for k, v in raw_runtimes.items()}
    raw_training = obj.get("training")
    return LatencyCalibration(
        created=_str(where, "created", obj["created"]),
        host=dict(host),
        runtimes=runtimes,
        training=None if raw_training is None else _training_fit(where, raw_training),
        source_path=source_path,
    )


def calibration_from_json(text: str, *, source_path: str = "<memory>") -> LatencyCalibration:
    """Parse the text of a calibration file."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CalibrationError(f"{source_path}: not JSON: {exc.msg} (line {exc.lineno})") from None
    return parse_calibration(data, source_path=source_path)


def load_calibration(path: str | os.PathLike[str]) -> LatencyCalibration:
    """Read and validate a calibration file."""
    p = os.fspath(path)
    try:
        with open(p, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise CalibrationError(f"{p}: cannot read calibration file: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CalibrationError(f"{p}: calibration file is not UTF-8 text") from None
    return calibration_from_json(text, source_path=p)
