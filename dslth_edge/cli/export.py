"""``dslth-edge export``: a node's final mask → shrunk, verified ONNX / TFLite file or TFLite Micro bundle.

Registered by the lead with ``cli.add_command(export)``. Parsing and printing only;
which nodes and formats: :func:`dslth_edge.exporters.targets.resolve_targets`; the work:
:func:`dslth_edge.exporters.pipeline.export_node`; the budget verdict:
:mod:`dslth_edge.exporters.budget` (exit 3 when over budget).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich import box
from rich.table import Table

__all__ = ["export"]


@click.command()
@click.option("--run", "run", default=None,
              help="Run directory (runs/<id>) or one node's directory (runs/<id>/node-<i>) [default: the latest run under runs/].")
@click.option("--node", default=None, type=int, help="Only this node of the run [default: every node].")
@click.option("--format", "fmt", default=None,
              help="onnx | tflite | tflm (TFLite Micro bundle) [default: each node's profile: tflm for TFLite Micro devices, else its [export] format].")
@click.option("--quantize", default=None,
              help="none | dynamic (int8 weights) | int8 (static, calibrated) [default: each node's profile [export] dtype].")
@click.option("--calibration", default=200, show_default=True, type=int, help="Training inputs of the node used to calibrate int8.")
@click.option("--out", default=None,
              help="Output file (tflm: folder) of a single node; with several nodes a folder holding node-I/ "
                   "[default: DIR/node-I/exports/model[-int8|-dynamic].FORMAT, tflm: DIR/node-I/exports/tflm[-int8]/].")
@click.option("--channel-multiple", default=None, type=click.IntRange(min=1),
              help="Pad shrunk layers with exactly-zero channels to multiples of N (same outputs) "
                   "[default: the node's profile's compute.channel_multiple; 1 without a profile]. 1: no padding.")
@click.option("--eval-samples", default=None, type=int, help="Evaluate on N test samples of the node, evenly spread over its classes (default: all).")
@click.option("--int8-route", default="auto", show_default=True,
              help="TFLite int8: auto (ai-edge-quantizer, or PT2E when that is more faithful) | aeq | pt2e.")
@click.option("--no-dense", "no_dense", is_flag=True, help="Skip converting the masked-dense model (its file size column stays empty).")
@click.option("--allow-over-budget", "allow_over", is_flag=True,
              help="Keep going (exit 0) when an export violates its device's storage, RAM or latency budget.")
@click.option("--deploy-step", "deploy_step", default=None,
              help="Nodes whose plan shrinks: none | finetune (train the surviving weights on the node's own data) | "
                   "distill (finetune + distillation from --teacher) [default: finetune, the default preset's].")
@click.option("--deploy-steps", "deploy_steps", default=100, show_default=True, type=click.IntRange(min=0),
              help="Optimizer steps of the deploy-time step, at the run's batch size.")
@click.option("--teacher", default=None, help="--deploy-step distill: the node's unstructured masked model (its node directory).")
@click.option("--for-device", "for_device", is_flag=True,
              help="A node whose device cannot train: run its deploy-time step on this host (its gateway).")
@click.option("--allow-weak", "allow_weak", is_flag=True,
              help="Keep going (exit 0) when an exported file is not worth deploying: within 5 points of chance "
                   "on the node's test split, or more than 10 points below its masked model.")
@click.option("--json", "as_json", is_flag=True, help="Print the reports as JSON (a list, one per node).")
def export(run: str | None, node: int | None, fmt: str | None, quantize: str | None, calibration: int, out: str | None,
           channel_multiple: int | None, eval_samples: int | None, int8_route: str, no_dense: bool,
           deploy_step: str | None, deploy_steps: int, teacher: str | None, for_device: bool,
           allow_over: bool, allow_weak: bool, as_json: bool) -> None:
    """Shrink each node's final model, export it, and check it against the node's device.

    Without options: every node of the latest run under runs/, each in its profile's
    format and dtype. Removes pruned channels (same outputs), converts, checks the file
    against the torch model with its own runtime; a node whose plan removes channels
    first trains the surviving weights of its shrunk model on its own data (the
    deploy-time step, nothing on the wire; --deploy-step none skips it); optionally quantizes with the node's
    training data, writes the file atomically with its provenance inside plus
    report.json, then judges it against the node's profile (storage, RAM, predicted
    latency): a violated budget exits 3 unless --allow-over-budget. It also judges the
    file's accuracy: within 5 points of chance for the node's classes, or more than 10
    points below the node's masked model, it is not worth deploying: exit 6 unless
    --allow-weak.

    \b
    Examples:
      dslth-edge export --format tflite
      dslth-edge export --run runs/demo --format onnx
      dslth-edge export --run runs/demo/node-3 --format tflm --quantize int8
    """
    from dslth_edge.exporters.budget import raise_if_over_dicts
    from dslth_edge.exporters.pipeline import ExportOptions, check_extra, default_output, export_node
    from dslth_edge.exporters.targets import resolve_targets
    from dslth_edge.exporters.worth import raise_if_weak_dicts
    from dslth_edge.cli.progress import native_stderr_captured

    targets = resolve_targets(run, node, fmt, quantize)
    for t in targets:
        check_extra(t.format, t.quantize)  # bad names and a missing extra fail before any loading
    err = Console(stderr=True)
    reports = []
    for t in targets:
        node_out = out
        if out is not None and len(targets) > 1:
            rel = default_output(Path(t.node_dir.name), t.format, t.quantize)
            node_out = str(Path(out) / (rel.parent if t.format == "tflm" else rel))
        opts = ExportOptions(run=str(t.node_dir), node=None, format=t.format, quantize=t.quantize, calibration=calibration,
                             out=node_out, channel_multiple=channel_multiple,
                             eval_samples=eval_samples, int8_route=int8_route, compare_dense=not no_dense,
                             deploy_step=deploy_step, deploy_steps=deploy_steps, teacher=teacher, for_device=for_device)
        what = f"{t.node_dir} ({t.profile or 'no profile'}): {t.format}{'' if t.quantize == 'none' else ' ' + t.quantize}"
        if as_json:
            with native_stderr_captured():
                reports.append(export_node(opts))
            continue
        with err.status(f"exporting {what} …"), native_stderr_captured():
            report = export_node(opts)
        reports.append(report)
        _print(report)
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in reports], indent=2, sort_keys=True))
    else:
        console = Console()
        for r in reports:
            where = r.tflm["directory"] + "/ (TFLite Micro bundle)" if r.tflm else r.file
            verdict = "" if r.budget is None else f" [{r.budget['verdict']} on {r.budget['profile']}]"
            console.print(f"node {r.provenance['node']}: {r.format} {r.quantize} → {where}{verdict}", markup=False)
            if r.worth is not None:
                console.print(f"node {r.provenance['node']}: {r.worth['line']}", markup=False)
    if not allow_over:
        raise_if_over_dicts([r.budget for r in reports if r.budget is not None])
    if not allow_weak:
        raise_if_weak_dicts([r.worth for r in reports if r.worth is not None])


def _print(report: Any) -> None:
    console = Console()
    header, rows = report.table()
    table = Table(title=f"{report.file}", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for i, h in enumerate(header):
        table.add_column(h, justify="left" if i == 0 else "right", no_wrap=True)
    for r in rows:
        table.add_row(*r)
    console.print(table)
    console.print(report.measured_with(), markup=False)
    p = report.parity
    console.print(f"fp32 parity ({p['runtime']}, {p['samples']} test inputs): max |Δ| = {p['max_abs_diff']:.2e} (≤ {p['tolerance']:g})")
    d = report.deploy_step or {}
    if d.get("steps"):
        mem = d.get("memory") or {}
        budget = "" if mem.get("budget_bytes") is None else f" of {mem['budget_bytes'] / 2**20:.0f} MiB training RAM"
        dev = d.get("seconds_device_predicted")
        console.print(f"deploy-time step ({d['where']}): {d['kind']}, {d['steps']} steps of {d['batch_size']}, "
                      f"{d['seconds_here']:.1f} s here" + ("" if dev is None else f", ~{dev:.0f} s predicted on the device")
                      + f"; memory {mem.get('predicted_bytes', 0) / 2**20:.1f} MiB predicted{budget}", markup=False)
    s = report.shrink
    console.print(f"shrunk widths {s['widths']}; max |masked − shrunk| = {s['max_abs_diff_vs_masked']:.2e}")
    if s.get("padding"):
        console.print(f"zero channels added for multiples of {s['channel_multiple']}: {s['padding']}")
    q = report.quantization
    if q:
        io = q.get("io") or {}
        io_txt = ""
        if io.get("input"):
            io_txt = (f"; int8 input scale {io['input']['scale']:.4g} zp {io['input']['zero_point']}, "
                      f"output scale {io['output']['scale']:.4g} zp {io['output']['zero_point']}")
        console.print(f"{q['mode']} ({q['route']}): accuracy {100 * q['accuracy_fp32']:.2f}% → {100 * q['accuracy']:.2f}% "
                      f"(drop {q['drop_points']:.2f} points){io_txt}")
    if report.tflm:
        tf = report.tflm
        a, c = tf["arena"], tf.get("check") or {}
        console.print(f"TFLite Micro: arena {a['measured_bytes']:,} B measured, kTensorArenaSize {a['recommended_bytes']:,} B; "
                      f"ops {', '.join(tf['resolver_ops'])}; {'integer-only' if tf['integer_only'] else 'float tensors'}",
                      markup=False)
        if c.get("samples"):
            diff = f"{c['max_lsb_diff']} LSB" if "max_lsb_diff" in c else f"{c['max_abs_diff']:.2e}"
            console.print(f"TFLite Micro vs {c['runtimes'][1]} on {c['samples']} test samples: max |Δ| {diff}, "
                          f"argmax agreement {100 * c['argmax_agreement']:.2f}%", markup=False)
    if report.budget:
        from dslth_edge.exporters.budget import check_lines

        for line in check_lines(report.budget):
            console.print(line, markup=False)
    for n in report.notes:
        console.print(f"note: {n}")
    console.print(f"wrote [bold]{report.file}[/] and report.json beside it; shrunk model in {s['shrink_json']}")
    if report.tflm:
        console.print(f"TFLite Micro bundle: {', '.join(Path(f).name for f in report.tflm['files'])} in {report.tflm['directory']}",
                      markup=False)
