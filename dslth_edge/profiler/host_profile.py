"""Write a calibration as a hardware-profile TOML that ``--profile PATH`` loads.

The file copies the structure (and budgets, network, export) of the template profile
``x86-host.toml`` and replaces what was measured: ``[compute]`` from the fit, ``[cpu]``
and ``[memory]`` from /proc. Its ``device`` string carries ``[host NAME]`` so verdicts
know the figures are this machine's own (:func:`~dslth_edge.profiler.host.is_this_machine`).

The measured latency model of every runtime (onnxruntime, LiteRT fp32 / int8, torch
training) goes into a calibration file beside the profile (``host-calibration.json`` for
``host.toml``), which the profile names (``calibration = "host-calibration.json"``): the
planner and the verdict predict from it. ``[compute]`` keeps the schema's cited form for
readers of the figures: the schema form of the onnxruntime fit, the full form in a
comment; its int8 rate is the fp32 rate times the template's int8/fp32 ratio (the
calibration file has the measured int8 runtime), and the file says so.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

from dslth_edge.profiler.calibrate import Calibration
from dslth_edge.profiler.host import host_info, host_marker
from dslth_edge.util.atomic import atomic_write_text

__all__ = ["TEMPLATE_PROFILE", "default_host_profile_path", "calibration_path_for", "host_profile_toml",
           "write_host_profile", "write_calibration"]

TEMPLATE_PROFILE = "x86-host"


def default_host_profile_path() -> Path:
    """``$XDG_CONFIG_HOME/dslth-edge/profiles/host.toml`` (``~/.config`` by default)."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "dslth-edge" / "profiles" / "host.toml"


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(round(v, 6)) if math.isfinite(v) else "1e308"
    return json.dumps(str(v), ensure_ascii=False)  # a JSON string is a valid TOML basic string


def calibration_path_for(profile_path: str | os.PathLike[str]) -> Path:
    """The calibration file written beside a host profile: ``host.toml`` -> ``host-calibration.json``."""
    p = Path(profile_path)
    return p.with_name(f"{p.stem}-calibration.json")


def host_profile_toml(cal: Calibration, *, template: str = TEMPLATE_PROFILE, calibration_file: str | None = None) -> str:
    """The text of a host profile: the template's structure with this machine's measured fields."""
    from dslth_edge.device.profiles import SCHEMA, load_profile

    base = load_profile(template).to_dict()
    host = host_info()
    today = _dt.date.today().isoformat()
    schema_keys = {f.key for f in SCHEMA["compute"]}
    # the full form only when the schema can hold all of it; a half-written model predicts worse
    use_full = {"mem_bandwidth_gbps", "per_inference_overhead_us"} <= schema_keys
    fit = cal.full if use_full else cal.schema
    int8_ratio = base["compute"]["effective_int8_gmacs"] / base["compute"]["effective_fp32_gmacs"]
    gmacs = fit.macs_per_s / 1e9
    ram_mib = float(round(host.ram_mib)) if host.ram_mib else base["memory"]["ram_mib"]
    try:
        storage_mib = float(shutil.disk_usage(os.path.expanduser("~")).total // (1024 * 1024))
    except OSError:
        storage_mib = base["memory"]["storage_mib"]

    compute: dict[str, Any] = {
        "backend": f"{cal.backend}, {cal.threads} thread(s), measured by dslth-edge profile calibrate",
        "effective_fp32_gmacs": gmacs,
        "effective_int8_gmacs": gmacs * int8_ratio,
        # the schema wants positive numbers: a zero fit becomes a negligible 0.001 us
        "per_op_overhead_us": max(fit.per_op_overhead_s * 1e6, 1e-3),
        "channel_multiple": fit.channel_multiple,
    }
    if use_full:
        compute["mem_bandwidth_gbps"] = fit.mem_bytes_per_s / 1e9 if fit.mem_bytes_per_s else 1e9
        compute["per_inference_overhead_us"] = max(fit.per_inference_s * 1e6, 1e-3)
    data: dict[str, Any] = {
        "device": f"This machine: {host.cpu}, {host.cpu_count} CPUs {host_marker(host.hostname)}, calibrated {today}",
        "can_train": base["can_train"],
        "cpu": {
            "arch": host.machine or base["cpu"]["arch"],
            "core": host.cpu,
            "cores": host.cpu_count,
            "clock_mhz": float(round(host.cpu_mhz)) if host.cpu_mhz else base["cpu"]["clock_mhz"],
        },
        "memory": {"ram_mib": ram_mib, "storage_mib": storage_mib, "storage_kind": "this machine's disk"},
        "compute": compute,
        "budget": {
            "latency_ms": base["budget"]["latency_ms"],
            "model_ram_mib": min(base["budget"]["model_ram_mib"], ram_mib),
            "model_storage_mib": min(base["budget"]["model_storage_mib"], storage_mib),
        },
        "network": base["network"],
        "export": base["export"],
    }
    full = cal.full
    comments = {
        "compute": [
            f"{fit.form} fit over {len(cal.points)} networks ({cal.passes} passes), "
            f"median |error| {100 * fit.median_rel_error:.1f}%",
            f"effective_int8_gmacs: fp32 x {int8_ratio:g} as in {template}.toml (cited form only; "
            "the calibration file holds every measured runtime)",
        ]
    }
    if not use_full:
        comments["compute"].append(
            "full fit (the schema has no bandwidth / per-inference keys yet): "
            f"{full.macs_per_s / 1e9:.3f} GMAC/s, "
            + (f"{full.mem_bytes_per_s / 1e9:.3f} GB/s, " if full.mem_bytes_per_s else "no bandwidth term, ")
            + f"{full.per_op_overhead_s * 1e6:.2f} us/op, {full.per_inference_s * 1e6:.2f} us/inference, "
            f"median |error| {100 * full.median_rel_error:.1f}%"
        )

    lines = [
        "# This machine, measured by `dslth-edge profile calibrate`. Units are in the key names;",
        f"# schema: docs/profiles.md. Structure and budgets from {template}.toml; [compute], [cpu]",
        "# and [memory] are this machine's.",
    ]
    for key in ("device", "can_train"):
        lines.append(f"{key} = {_toml_value(data[key])}")
    if calibration_file is not None:
        lines.append("# the measured latency model per runtime (planner and verdict predict from it)")
        lines.append(f"calibration = {_toml_value(calibration_file)}")
    for table in ("cpu", "memory", "compute", "budget", "network", "export"):
        lines += ["", f"[{table}]"]
        lines += [f"# {c}" for c in comments.get(table, [])]
        lines += [f"{k} = {_toml_value(v)}" for k, v in data[table].items()]
    src_supports = (
        f"compute.effective_fp32_gmacs, per_op_overhead_us and channel_multiple: non-negative least squares "
        f"(relative error) over the best-of-{cal.passes}-passes median latencies of {len(cal.points)} networks "
        f"run with {cal.backend}, {cal.threads} thread(s); cpu and memory read from /proc"
    )
    lines += [
        "",
        "[[sources]]",
        f"title = {_toml_value('dslth-edge profile calibrate on ' + host.hostname + ', ' + today)}",
        f"url = {_toml_value('local measurement: dslth-edge profile calibrate --json prints every point')}",
        f"supports = {_toml_value(src_supports)}",
        "",
    ]
    return "\n".join(lines)


def write_calibration(cal: Calibration, path: str | os.PathLike[str]) -> Path:
    """Write the calibration file (validated by its parser before it replaces anything)."""
    from dslth_edge.cost.calibration import load_calibration

    if cal.file is None:
        raise ValueError("this calibration has no calibration file (built without calibrate())")
    return atomic_write_text(Path(path).expanduser(), cal.file.to_json(), check=load_calibration)


def write_host_profile(cal: Calibration, path: str | os.PathLike[str] | None = None) -> Path:
    """Write the host profile, and its calibration file beside it, atomically; returns the profile's path.

    Both are validated with their loaders before they replace anything.
    """
    from dslth_edge.device.profiles import load_profile

    target = Path(path) if path is not None else default_host_profile_path()
    target = target.expanduser()
    cal_name = None
    if cal.file is not None:
        cal_name = write_calibration(cal, calibration_path_for(target)).name
    text = host_profile_toml(cal, calibration_file=cal_name)
    # a profile that does not load is never installed: the loader checks the temporary file
    # (a relative calibration name resolves against the temp file's folder: the same folder)
    return atomic_write_text(target, text, check=load_profile)
