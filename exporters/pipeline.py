"""``dslth-edge export`` as a library call: run directory → verified model file + report.

Steps: load the node (fingerprint-checked) → shrink, padded with exactly-zero channels to
the profile's channel multiple (checked against the masked model on real inputs) → shrink.json
→ convert (ONNX or TFLite) → parity of the fp32 file with its runtime → optional
quantization (calibrated on the node's own training inputs) → accuracy of every variant
on the node's test split, and whether the file is worth deploying (near chance, or far
below the masked model: :mod:`dslth_edge.exporters.worth`) → metadata into the file →
atomic write → report.json.
Nothing is written under the output name unless every check passed.

Format ``tflm`` is a TFLite file plus the TensorFlow Lite Micro bundle beside it
(:mod:`dslth_edge.exporters.tflm`); its int8 file must be integer-only, and it is run in
the TFLite Micro interpreter and LiteRT on the node's test samples (1 LSB, 99 % argmax
agreement) before anything is written. After writing, the file is judged against the
node's profile (:mod:`dslth_edge.exporters.budget`) and the verdict goes into the report.
"""

from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dslth_edge.errors import ExportError, UsageError
from dslth_edge.runs.rundir import atomic_write_bytes
from dslth_edge.runs.runinfo import RunInfo, accuracy, load_run
from dslth_edge.cost.macs import count_macs
from dslth_edge.exporters.shrink import (
    count_nonzero_params,
    count_params,
    fold_batchnorm,
    save_shrunk,
    shrink,
    shrunk_info,
    to_plain,
)
from dslth_edge.exporters.metadata import add_onnx_metadata, add_tflite_metadata
from dslth_edge.exporters.report import ExportReport, VariantRow, write_report
from dslth_edge.exporters.runtime import Runner, open_runner, to_layout
from dslth_edge.exporters.deploy_step import DEFAULT_DEPLOY_STEP, DEFAULT_STEPS, DEPLOY_STEPS, DeployStepOptions, plan_shrinks, run_deploy_step
from dslth_edge.exporters.worth import judge_worth

__all__ = ["FORMATS", "QUANTIZE_MODES", "TFLM_MAX_LSB", "TFLM_MIN_AGREEMENT", "ExportOptions", "check_extra",
           "default_output", "export_node"]

FORMATS = ("onnx", "tflite", "tflm")
QUANTIZE_MODES = ("none", "dynamic", "int8")
_NEEDS = {
    "onnx": ("onnx", "onnxruntime"),
    "tflite": ("litert_torch", "ai_edge_litert"),
    "tflm": ("litert_torch", "ai_edge_litert", "tflite_micro"),
}
TFLM_MAX_LSB = 1  # TFLite Micro vs LiteRT, int8 outputs
TFLM_MAX_ABS_FP32 = 1e-4  # TFLite Micro vs LiteRT, float outputs
TFLM_MIN_AGREEMENT = 0.99  # argmax agreement, TFLite Micro vs LiteRT
PARITY_TOL = 1e-4  # fp32 file vs torch, max abs logit difference
SHRINK_TOL = 1e-5  # shrunk vs masked torch model
INT8_ROUTES = ("auto", "aeq", "pt2e")
AUTO_AGREEMENT = 0.99  # "auto": keep ai-edge-quantizer's file when it agrees this often with fp32
SELECT_SAMPLES = 500  # training inputs (disjoint from calibration) that judge the int8 routes


@dataclass(frozen=True)
class ExportOptions:
    """The options of ``dslth-edge export``."""

    run: str
    node: int | None = None
    format: str = "onnx"
    quantize: str = "none"
    calibration: int = 200  # training inputs for static int8 calibration
    out: str | None = None
    channel_multiple: int | None = None  # zero-pad shrunk widths to this (None: the profile's; 1: no padding)
    parity_samples: int = 100
    eval_samples: int | None = None  # None: the node's whole test split
    int8_route: str = "auto"  # TFLite static int8: "auto", "aeq" (ai-edge-quantizer) or "pt2e" (litert-torch)
    compare_dense: bool = True  # also convert the masked-dense model for the size column
    judge: bool = True  # check the written file against the node's profile budgets
    # the personal deploy-time step of a node whose plan shrinks (exporters/deploy_step.py):
    # None: the default preset's (DEFAULT_DEPLOY_STEP); "none" | "finetune" | "distill"
    deploy_step: str | None = None
    deploy_steps: int = DEFAULT_STEPS
    teacher: str | None = None  # distill: the node's unstructured masked model (a node directory)
    for_device: bool = False  # the profile cannot train: this host (its gateway) runs the step on its behalf


def check_extra(fmt: str, quantize: str) -> None:
    """Fail fast, with the install line, when the export extra (or a part of it) is missing."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if quantize not in QUANTIZE_MODES:
        raise ExportError(f"unknown quantization {quantize!r}: choose one of {', '.join(QUANTIZE_MODES)}")
    needed = ["torch_pruning", *_NEEDS[fmt]]
    if fmt in ("tflite", "tflm") and quantize != "none":
        needed.append("ai_edge_quantizer")
    missing = [m for m in needed if importlib.util.find_spec(m) is None]
    if missing:
        raise ExportError(f"export to {fmt} needs {', '.join(missing)} (missing): pip install 'dslth-edge[export]'")


def default_output(node_dir: Path, fmt: str, quantize: str) -> Path:
    """DIR/node-I/exports/model[-int8|-dynamic].onnx|tflite; tflm: DIR/node-I/exports/tflm[-int8]/model.tflite."""
    suffix = "" if quantize == "none" else f"-{quantize}"
    if fmt == "tflm":
        return node_dir / "exports" / f"tflm{suffix}" / "model.tflite"
    return node_dir / "exports" / f"model{suffix}.{fmt}"


def _file_format(fmt: str) -> str:
    """The model file's format: a TFLM bundle holds a .tflite file."""
    return "tflite" if fmt == "tflm" else fmt


def _channel_multiple(opts: ExportOptions, profile: Any) -> int:
    """The multiple shrunk widths are zero-padded to: ``--channel-multiple``, else the node's
    profile's ``compute.channel_multiple`` (what its plan and the latency predictor assume),
    else 1 (no padding) for a node without a profile."""
    if opts.channel_multiple is not None:
        if opts.channel_multiple < 1:
            raise UsageError(f"--channel-multiple must be >= 1, got {opts.channel_multiple}")
        return int(opts.channel_multiple)
    return 1 if profile is None else int(profile.compute.channel_multiple)


def _convert(module: torch.nn.Module, shape: tuple[int, int, int], fmt: str, layout: str = "NCHW") -> bytes:
    if fmt == "onnx":
        from dslth_edge.exporters.onnx import check_onnx, onnx_bytes

        data = onnx_bytes(module, shape)
        check_onnx(data)
        return data
    from dslth_edge.exporters.tflite import tflite_bytes

    return tflite_bytes(module, shape, layout=layout)


def _agreement(runner: Runner, ref_top1: np.ndarray, x: np.ndarray) -> float:
    """Share of inputs on which ``runner`` predicts the fp32 model's class (label-free fidelity)."""
    return float((runner.run(x).argmax(1) == ref_top1).mean()) if len(x) else 1.0


def _quantize(fmt: str, mode: str, float_bytes: bytes, shrunk: torch.nn.Module, shape: tuple[int, int, int],
              calib: np.ndarray, select: np.ndarray, route: str,
              integer_only: bool = False, layout: str = "NCHW") -> tuple[bytes, str, dict[str, Any]]:
    """(quantized file, route that made it, agreement with fp32 per route tried, or why one failed).

    TFLite static int8, route "auto": ai-edge-quantizer first (integer-only graph, about a
    second); if its top-1 agreement with the fp32 model on ``select`` (training inputs
    not used for calibration: no test data is looked at) is below :data:`AUTO_AGREEMENT`,
    PT2E (histogram ranges) is tried too and the more faithful file is kept.
    ``integer_only`` (TFLite Micro int8): a PT2E file that keeps float operators is
    never kept (PT2E may leave DEQUANTIZE → float op → QUANTIZE islands). ``calib`` and
    ``select`` are NCHW; ``layout`` is the TFLite file's input layout.
    """
    if fmt == "onnx":
        from dslth_edge.exporters.onnx import quantize_onnx

        return quantize_onnx(float_bytes, mode, calib), "onnxruntime", {}
    from dslth_edge.exporters.tflite import quantize_tflite, tflite_int8_pt2e

    if mode != "int8":
        return quantize_tflite(float_bytes, mode, to_layout(calib, layout)), "aeq", {}
    if route == "pt2e":
        return tflite_int8_pt2e(shrunk, shape, calib, layout=layout), "pt2e", {}
    try:
        aeq = quantize_tflite(float_bytes, mode, to_layout(calib, layout))
    except ExportError as exc:
        # ai-edge-quantizer cannot calibrate some lowered ops (authors-cnn's LocalResponseNorm
        # becomes STABLEHLO_REDUCE_WINDOW); PT2E can, but leaves float islands around them
        if route == "aeq" or integer_only:
            raise ExportError(f"{exc}{' (TFLite Micro needs an integer-only graph: none can be made)' if integer_only else ''}") from exc
        return tflite_int8_pt2e(shrunk, shape, calib, layout=layout), "pt2e", {"aeq_failed": str(exc)[:300]}
    if route == "aeq":
        return aeq, "aeq", {}
    with torch.no_grad():
        ref = shrunk(torch.from_numpy(np.ascontiguousarray(select))).numpy().argmax(1)
    tried = {"aeq": _agreement(open_runner(aeq, "tflite", layout=layout), ref, select)}
    if tried["aeq"] >= AUTO_AGREEMENT:
        return aeq, "aeq", tried
    try:
        pt2e = tflite_int8_pt2e(shrunk, shape, calib, layout=layout)
    except ExportError as exc:  # PT2E does not annotate every graph (e.g. conv-BN-ReLU-maxpool): keep aeq
        tried["pt2e_failed"] = str(exc)[:300]
        return aeq, "aeq", tried
    tried["pt2e"] = _agreement(open_runner(pt2e, "tflite", layout=layout), ref, select)
    if integer_only:
        from dslth_edge.exporters.tflm import float_ops

        if float_ops(pt2e):
            tried["pt2e_rejected"] = "not integer-only"
            return aeq, "aeq", tried
    return (pt2e, "pt2e", tried) if tried["pt2e"] > tried["aeq"] else (aeq, "aeq", tried)


def _with_metadata(fmt: str, data: bytes, meta: dict[str, Any]) -> bytes:
    if fmt == "onnx":
        import onnx

        model = onnx.load_from_string(data)
        add_onnx_metadata(model, meta)
        return model.SerializeToString()
    return add_tflite_metadata(data, meta)


def _io_quantization(runner: Runner) -> dict[str, Any] | None:
    qi = getattr(runner, "input_quantization", None)
    qo = getattr(runner, "output_quantization", None)
    if qi is None and qo is None:
        return None
    fmt = lambda q: None if q is None else {"scale": q[0], "zero_point": q[1], "dtype": "int8"}  # noqa: E731
    return {"input": fmt(qi), "output": fmt(qo)}


def _file_metadata(info: RunInfo, provenance: dict[str, Any], quant: dict[str, Any] | None, quantize: str,
                   widths: dict[str, int], acc: dict[str, Any], layout: str = "NCHW") -> dict[str, Any]:
    """The document stored inside the exported file (see exporters/metadata.py)."""
    io = (quant or {}).get("io") or {}
    c, h, w = info.input_shape
    return {
        **{k: provenance[k] for k in ("node", "profile", "keep", "weights_fingerprint", "model", "round", "channel_multiple")},
        "class_names": info.class_names,
        "normalisation": {**info.normalisation(), "formula": f"x = (pixel / 255 - mean) / std, {layout}"},
        "input": {"shape": [1, c, h, w] if layout == "NCHW" else [1, h, w, c], "layout": layout,
                  "dtype": "int8" if io.get("input") else "float32",
                  "quantization": io.get("input")},
        "output": {"shape": [1, info.spec.num_classes], "kind": "logits", "dtype": "int8" if io.get("output") else "float32",
                   "quantization": io.get("output")},
        "accuracy": acc,
        "quantize": quantize,
        "widths": widths,
        "deploy_step": provenance["deploy_step"],  # trained on the node after mask learning, and for how many steps
    }


def export_node(opts: ExportOptions) -> ExportReport:
    """Export one node's final model; returns the report (also merged into report.json)."""
    check_extra(opts.format, opts.quantize)
    if opts.int8_route not in INT8_ROUTES:
        raise UsageError(f"unknown int8 route {opts.int8_route!r}: choose one of {', '.join(INT8_ROUTES)}")
    if opts.deploy_step is not None and opts.deploy_step not in DEPLOY_STEPS:
        raise UsageError(f"unknown deploy-time step {opts.deploy_step!r}: choose one of {', '.join(DEPLOY_STEPS)}")
    if opts.calibration < 1 and opts.quantize == "int8":
        raise UsageError(f"--calibration must be positive, got {opts.calibration}")
    t0 = time.perf_counter()
    seconds: dict[str, float] = {}
    info = load_run(opts.run, opts.node)
    model, shape = info.model, info.input_shape
    fmt = _file_format(opts.format)
    if opts.format == "tflm":  # --out names the bundle's folder
        out = Path(opts.out) / "model.tflite" if opts.out else default_output(info.node_dir, "tflm", opts.quantize)
    else:
        out = Path(opts.out) if opts.out else default_output(info.node_dir, opts.format, opts.quantize)
        if out.suffix.lstrip(".") != opts.format:
            raise UsageError(f"--out {out} does not end in .{opts.format}")
    hw = _node_profile(info)
    tflm_target = opts.format == "tflm" or (hw is not None and fmt == "tflite" and _runs_tflm(hw))
    integer_only = tflm_target and fmt == "tflite"  # int8 for TFLite Micro: int8 in/out, no float op
    layout = "NHWC" if opts.format == "tflm" else "NCHW"  # the TFLM bundle takes channels-last input
    x_test, y_test = info.test_arrays(opts.eval_samples)
    x_par, _ = info.test_arrays(opts.parity_samples)
    seconds["load"] = time.perf_counter() - t0

    # ---- shrink (zero-padded to the channel multiple: the same function), checked on real inputs
    acc_masked = accuracy(model, x_test, y_test)
    multiple = _channel_multiple(opts, hw)
    t = time.perf_counter()
    shrunk = shrink(model, shape, channel_multiple=multiple)
    with torch.no_grad():
        xt = torch.from_numpy(np.ascontiguousarray(x_par))
        ref = model(xt).numpy()
        diff = float(np.abs(ref - shrunk(xt).numpy()).max()) if len(x_par) else 0.0
    if diff > SHRINK_TOL:
        raise ExportError(f"shrunk model differs from the masked model by {diff:.2e} (> {SHRINK_TOL:g}): not exporting")
    seconds["shrink"] = time.perf_counter() - t
    notes = list(info.notes)
    # ---- the personal deploy-time step (nodes whose plan shrinks): trains the surviving weights
    shrunk, step = _deploy_step(opts, info, shrunk, hw, notes)
    if step.get("steps"):
        seconds["deploy_step"] = step["seconds_here"]
        with torch.no_grad():
            ref = shrunk(xt).numpy()  # the file must now match the trained shrunk model
    provenance = {**info.provenance(), "channel_multiple": multiple,
                  "deploy_step": {"kind": step["kind"], "steps": int(step.get("steps", 0))}}
    shrink_json = save_shrunk(shrunk, info.node_dir / "exports", provenance)

    # ---- fp32 file and its parity (BatchNorm folded into the convs: the deployed form)
    t = time.perf_counter()
    deploy = fold_batchnorm(shrunk)
    float_bytes = _convert(deploy, shape, fmt, layout)
    float_runner = open_runner(float_bytes, fmt, layout=layout)
    parity = float(np.abs(float_runner.run(x_par) - ref).max()) if len(x_par) else 0.0
    if parity > PARITY_TOL:
        raise ExportError(f"{fmt} file differs from the torch model by {parity:.2e} (> {PARITY_TOL:g}): not exporting")
    acc_float = float((float_runner.run(x_test).argmax(1) == y_test).mean()) if len(y_test) else float("nan")
    seconds["convert"] = time.perf_counter() - t

    params = count_params(shrunk)
    nonzero = count_nonzero_params(shrunk)
    macs = count_macs(shrunk, shape)
    rows = [VariantRow("shrunk" if not step.get("steps") else f"shrunk+{step['kind']}", params, nonzero, macs,
                       len(float_bytes), acc_float, float_runner.backend)]
    if opts.compare_dense:
        t = time.perf_counter()
        dense_bytes = _convert(fold_batchnorm(to_plain(model)), shape, fmt)
        seconds["convert_dense"] = time.perf_counter() - t
        dense_size: int | None = len(dense_bytes)
    else:
        dense_size = None
    rows.insert(0, VariantRow("masked-dense", count_params(model), count_nonzero_params(model), count_macs(model, shape),
                              dense_size, acc_masked, "torch"))

    # ---- quantized variants (the requested one is the file; int8 is always in the table)
    final_bytes, final_runner, quant = float_bytes, float_runner, None
    q_modes = [opts.quantize] if opts.quantize != "none" else []
    if "int8" not in q_modes:
        q_modes.append("int8")
    pool = info.train_sample(opts.calibration + SELECT_SAMPLES, seed=info.node_id)
    order = np.random.default_rng(info.node_id).permutation(len(pool))
    calib, select = pool[order[: opts.calibration]], pool[order[opts.calibration :]]
    for mode in q_modes:
        t = time.perf_counter()
        # the int8 row of an fp32 export goes the same route as --quantize int8 would
        q_bytes, used, tried = _quantize(fmt, mode, float_bytes, deploy, shape, calib, select, opts.int8_route,
                                         integer_only=integer_only and mode == "int8", layout=layout)
        q_runner = open_runner(q_bytes, fmt, layout=layout)
        acc_q = float((q_runner.run(x_test).argmax(1) == y_test).mean()) if len(y_test) else float("nan")
        seconds[f"quantize_{mode}"] = time.perf_counter() - t
        rows.append(VariantRow(f"shrunk+{mode}", params, nonzero, macs, len(q_bytes), acc_q,
                               f"{q_runner.backend} ({used})", bytes_per_param=1.0))
        if mode == opts.quantize:
            final_bytes, final_runner = q_bytes, q_runner
            quant = {"mode": mode, "route": used, "route_agreement": tried, "selection_samples": int(len(select)) if tried else 0,
                     "calibration_samples": int(len(calib)) if mode == "int8" else 0,
                     "io": _io_quantization(q_runner), "accuracy_fp32": acc_float, "accuracy": acc_q,
                     "drop_points": 100 * (acc_float - acc_q)}

    # ---- metadata, then the one write under the final name
    final_acc = rows[1].accuracy if opts.quantize == "none" else next(r.accuracy for r in rows if r.variant == f"shrunk+{opts.quantize}")
    # is it worth deploying: the file's own accuracy against chance and the masked model (same samples)
    worth = judge_worth(final_acc, acc_masked, y_test, file=str(out.parent if opts.format == "tflm" else out))
    meta = _file_metadata(info, provenance, quant, opts.quantize, shrunk_info(shrunk).widths(),
                          {"this_file": final_acc, "masked_model": acc_masked, "recorded_by_run": info.recorded_accuracy,
                           "test_samples": int(len(y_test)), "chance": worth.chance, "worth_deploying": worth.worth},
                          layout)
    data = _with_metadata(fmt, final_bytes, meta)
    if fmt == "tflite":  # the metadata rewrite must leave a runnable, identical model
        check = open_runner(data, "tflite", layout=layout).run(x_par[:4])
        if len(check) and float(np.abs(check - final_runner.run(x_par[:4])).max()) > 0:
            raise ExportError("adding TFLite metadata changed the model's outputs: not exporting")
    if integer_only and opts.quantize == "int8":  # an MCU's int8 file: int8 in, int8 out, no float op
        from dslth_edge.exporters.tflm import require_integer_only

        require_integer_only(data)
    tflm: dict[str, Any] | None = None
    if opts.format == "tflm":
        t = time.perf_counter()
        tflm_check = _tflm_check(data, x_test, layout)
        from dslth_edge.exporters.tflm import write_bundle

        tflm = {**write_bundle(out.parent, data, meta=meta, io=(quant or {}).get("io"), profile=hw,
                               integer_only=integer_only and opts.quantize == "int8"),
                "check": tflm_check}
        seconds["tflm"] = time.perf_counter() - t
    else:
        atomic_write_bytes(out, data)
    rows[1 if opts.quantize == "none" else [r.variant for r in rows].index(f"shrunk+{opts.quantize}")].file_bytes = len(data)
    report = ExportReport(
        file=str(out), format=opts.format, quantize=opts.quantize, provenance=provenance, rows=rows,
        parity={"max_abs_diff": parity, "samples": int(len(x_par)), "tolerance": PARITY_TOL, "runtime": float_runner.backend},
        shrink={"max_abs_diff_vs_masked": diff, "tolerance": SHRINK_TOL, "widths": shrunk_info(shrunk).widths(),
                "channel_multiple": multiple, "padding": shrunk_info(shrunk).padding(),
                "shrink_json": str(shrink_json)},
        quantization=quant, seconds=seconds, notes=notes, tflm=tflm, worth=worth.to_dict(), deploy_step=step,
    )
    if opts.judge:
        if hw is None:
            notes.append("no profile recorded for this node: the file was not checked against a device budget")
        else:
            from dslth_edge.exporters.budget import judge_export

            t = time.perf_counter()
            arena = (tflm or {}).get("arena")
            if arena is None and tflm_target:
                from dslth_edge.exporters.tflm import measure_arena

                arena = measure_arena(data).to_dict()
            report.budget = judge_export(out, hw, arena=arena).to_dict()
            seconds["judge"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - t0
    write_report(report)
    return report


def _deploy_step(opts: ExportOptions, info: RunInfo, shrunk: torch.nn.Module, hw: Any,
                 notes: list[str]) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The deploy-time step where it applies: (model to export, its record; kind "none" when skipped)."""
    kind = opts.deploy_step or DEFAULT_DEPLOY_STEP
    if kind == "none" or opts.deploy_steps == 0:
        return shrunk, {"kind": "none", "steps": 0}
    if not plan_shrinks(info.config):
        if opts.deploy_step is not None:
            notes.append("deploy-time step not run: the node's plan does not remove channels")
        return shrunk, {"kind": "none", "steps": 0, "skipped": "plan does not shrink"}
    gateway = bool((info.config.get("extra") or {}).get("for_device")) or opts.for_device
    if hw is not None and not hw.can_train and not gateway:
        notes.append(f"deploy-time step not run: {hw.name} cannot train; pass --for-device to run it on this host")
        return shrunk, {"kind": "none", "steps": 0, "skipped": "device cannot train (no --for-device)"}
    teacher = None
    if kind == "distill":
        if not opts.teacher:
            raise UsageError("--deploy-step distill needs --teacher: the node's unstructured masked model (its node directory)")
        teacher = load_run(opts.teacher, load_data=False).model
    return run_deploy_step(shrunk, info, DeployStepOptions(kind=kind, steps=opts.deploy_steps), hw, teacher)


def _node_profile(info: RunInfo) -> Any:
    """The node's hardware profile, or None when the run recorded none or it cannot be loaded (noted)."""
    if not info.profile:
        return None
    from dslth_edge.device.profiles import load_profile
    from dslth_edge.errors import ProfileError

    try:
        return load_profile(info.profile)
    except ProfileError as exc:
        info.notes.append(f"the node's profile {info.profile!r} cannot be loaded here ({exc}): no budget verdict")
        return None


def _runs_tflm(profile: Any) -> bool:
    from dslth_edge.exporters.tflm import runs_tflm

    return runs_tflm(profile)


def _tflm_check(data: bytes, x: np.ndarray, layout: str) -> dict[str, Any]:
    """Run the file in TFLite Micro and LiteRT (builtin kernels) on ``x``: max output difference, argmax agreement.

    int8 outputs must agree within :data:`TFLM_MAX_LSB`, float outputs within
    :data:`TFLM_MAX_ABS_FP32`, and the top-1 classes on :data:`TFLM_MIN_AGREEMENT` of
    the inputs; otherwise :class:`ExportError` (nothing is written).
    """
    from dslth_edge.exporters.runtime import TfliteRunner
    from dslth_edge.exporters.tflm import TflmRunner

    micro = TflmRunner(data, layout=layout)
    litert = TfliteRunner(data, delegate=False, layout=layout)
    a, b = micro.run(x), litert.run(x)
    q = litert.output_quantization
    if len(x) == 0:
        return {"samples": 0}
    diff = float(np.abs(a - b).max())
    agreement = float((a.argmax(1) == b.argmax(1)).mean())
    check: dict[str, Any] = {"samples": int(len(x)), "argmax_agreement": agreement, "runtimes": ["tflite_micro", litert.backend]}
    if q is not None:
        lsb = int(round(diff / q[0]))
        check["max_lsb_diff"] = lsb
        if lsb > TFLM_MAX_LSB:
            raise ExportError(f"TFLite Micro and LiteRT outputs differ by {lsb} LSB (> {TFLM_MAX_LSB}): not exporting")
    else:
        check["max_abs_diff"] = diff
        if diff > TFLM_MAX_ABS_FP32:
            raise ExportError(f"TFLite Micro and LiteRT outputs differ by {diff:.2e} (> {TFLM_MAX_ABS_FP32:g}): not exporting")
    if agreement < TFLM_MIN_AGREEMENT:
        raise ExportError(f"TFLite Micro and LiteRT agree on the class of only {100 * agreement:.1f}% of the "
                          f"test samples (< {100 * TFLM_MIN_AGREEMENT:.0f}%): not exporting")
    return check
