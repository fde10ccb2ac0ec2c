"""Latency / memory / size profiling of exported models, and calibrating the latency model.

The latency model itself (and the calibration file's data model) is the cost room's:
:mod:`dslth_edge.cost.latency`, :mod:`dslth_edge.cost.calibration`.

Nothing here imports torch at import time: a device with only onnxruntime, or only
ai-edge-litert / tflite-runtime, and numpy profiles its own .onnx / .tflite files.
torch is imported lazily for ``backend="torch"`` (shrunk-model directories) only.

Modules, one job each:

========== ============================================================================
stats      percentiles (numpy's 'linear'), LatencyStats
host       the measuring machine; whether a profile describes it
backends   onnxruntime, LiteRT and torch runners (explicit thread counts), per-op profilers
measure    profile_model(): init, first inference, warm-up, timed runs, memory
calibrate  measure this machine per runtime (onnxruntime, LiteRT fp32 / int8, torch
           training), fit the latency model, write the calibration file
host_profile  write a calibration as a profile TOML that names its calibration file
verdict    measured / predicted figures against a profile's budgets
report     rich tables, the --json document, the PNG histogram
========== ============================================================================

Static analysis of a file (per-op MACs, bytes, params) is the cost room's
(:mod:`dslth_edge.cost.analysis`); RSS readers are :mod:`dslth_edge.util.rss`. Both are
re-exported here for the profiler's callers.
"""

from __future__ import annotations

from dslth_edge.cost.analysis import ModelInfo, OpCost, analyze_onnx, analyze_tflite, analyze_torch_module, model_format
from dslth_edge.profiler.backends import BACKENDS, BackendInfo, OpTime, PerOpProfile, make_runner, resolve_backend
from dslth_edge.profiler.calibrate import Calibration, calibrate
from dslth_edge.profiler.host_profile import default_host_profile_path, write_host_profile
from dslth_edge.profiler.host import HostInfo, host_info, is_this_machine
from dslth_edge.profiler.measure import MemoryFigures, ProfileOptions, ProfileResult, profile_model
from dslth_edge.util.rss import RssTracker, current_rss_bytes, peak_rss_bytes, reset_peak_rss
from dslth_edge.profiler.report import SCHEMA_ID, report_to_dict, result_to_dict, write_histogram
from dslth_edge.profiler.stats import PERCENTILES, LatencyStats, percentile, summarize
from dslth_edge.profiler.verdict import Verdict, judge

__all__ = [
    # measuring
    "ProfileOptions",
    "ProfileResult",
    "MemoryFigures",
    "profile_model",
    "BACKENDS",
    "BackendInfo",
    "PerOpProfile",
    "OpTime",
    "make_runner",
    "resolve_backend",
    # statistics and memory
    "PERCENTILES",
    "LatencyStats",
    "percentile",
    "summarize",
    "RssTracker",
    "current_rss_bytes",
    "peak_rss_bytes",
    "reset_peak_rss",
    # static analysis
    "ModelInfo",
    "OpCost",
    "analyze_onnx",
    "analyze_tflite",
    "analyze_torch_module",
    "model_format",
    # calibration
    "Calibration",
    "calibrate",
    "write_host_profile",
    "default_host_profile_path",
    # verdict and output
    "Verdict",
    "judge",
    "HostInfo",
    "host_info",
    "is_this_machine",
    "SCHEMA_ID",
    "result_to_dict",
    "report_to_dict",
    "write_histogram",
]
