"""``dslth-edge export``: a node's final mask → shrunk, verified ONNX or TFLite file.

Registered by the lead with ``cli.add_command(export)``. Parsing and printing only;
the work is :func:`dslth_edge.exporters.pipeline.export_node`.
"""

from __future__ import annotations

import json
from typing import Any

import click
from rich.console import Console
from rich.table import Table

__all__ = ["export"]


@click.command()
@click.option("--run", "run", required=True, help="Run directory (runs/<id>) or one node's directory (runs/<id>/node-<i>).")
@click.option("--node", default=None, type=int, help="Node id inside --run (default 0).")
@click.option("--format", "fmt", default="onnx", show_default=True, help="onnx | tflite")
@click.option("--quantize", default="none", show_default=True, help="none | dynamic (int8 weights) | int8 (static, calibrated)")
@click.option("--calibration", default=200, show_default=True, type=int, help="Training inputs of the node used to calibrate int8.")
@click.option("--out", default=None, help="Output file (default DIR/node-I/exports/model[-int8|-dynamic].FORMAT).")
@click.option("--round-channels", is_flag=True, help="Round kept channels up to the profile's channel multiple (re-admits the best pruned channels).")
@click.option("--channel-multiple", default=None, type=int, help="Round kept channels up to this multiple (implies --round-channels).")
@click.option("--eval-samples", default=None, type=int, help="Evaluate on N test samples of the node, evenly spread over its classes (default: all).")
@click.option("--int8-route", default="auto", show_default=True,
              help="TFLite int8: auto (ai-edge-quantizer, or PT2E when that is more faithful) | aeq | pt2e.")
@click.option("--no-dense", "no_dense", is_flag=True, help="Skip converting the masked-dense model (its file size column stays empty).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def export(run: str, node: int | None, fmt: str, quantize: str, calibration: int, out: str | None, round_channels: bool,
           channel_multiple: int | None, eval_samples: int | None, int8_route: str, no_dense: bool, as_json: bool) -> None:
    """Shrink a node's final model and export it as a verified ONNX or TFLite file.

    Removes pruned channels (same outputs), converts, checks the file against the torch
    model with its own runtime, optionally quantizes with the node's training data, and
    writes the file atomically with its provenance inside, plus report.json beside it.

    \b
    Examples:
      dslth-edge export --run runs/demo --format onnx
      dslth-edge export --run runs/demo/node-3 --format tflite --quantize int8 --round-channels
    """
    from dslth_edge.exporters.pipeline import ExportOptions, check_extra, export_node

    check_extra(fmt, quantize)  # bad names and a missing extra fail before any loading
    opts = ExportOptions(run=run, node=node, format=fmt, quantize=quantize, calibration=calibration, out=out,
                         round_channels=round_channels, channel_multiple=channel_multiple, eval_samples=eval_samples,
                         int8_route=int8_route, compare_dense=not no_dense)
    err = Console(stderr=True)
    if as_json:
        report = export_node(opts)
        click.echo(json.dumps(report.to_dict(), indent=2, sort_keys=True))
        return
    with err.status(f"exporting {fmt}{'' if quantize == 'none' else ' ' + quantize} …"):
        report = export_node(opts)
    _print(report)


def _print(report: Any) -> None:
    console = Console()
    header, rows = report.table()
    table = Table(title=f"{report.file}", title_justify="left")
    for i, h in enumerate(header):
        table.add_column(h, justify="left" if i in (0, len(header) - 1) else "right")
    for r in rows:
        table.add_row(*r)
    console.print(table)
    p = report.parity
    console.print(f"fp32 parity ({p['runtime']}, {p['samples']} test inputs): max |Δ| = {p['max_abs_diff']:.2e} (≤ {p['tolerance']:g})")
    s = report.shrink
    console.print(f"shrunk widths {s['widths']}; max |masked − shrunk| = {s['max_abs_diff_vs_masked']:.2e}")
    if report.rounding:
        r = report.rounding
        console.print(f"channels rounded to ×{r['multiple']}: {len(r['readmitted'])} re-admitted; accuracy "
                      f"{100 * r['accuracy_before']:.2f}% → {100 * r['accuracy_after']:.2f}%")
    q = report.quantization
    if q:
        io = q.get("io") or {}
        io_txt = ""
        if io.get("input"):
            io_txt = (f"; int8 input scale {io['input']['scale']:.4g} zp {io['input']['zero_point']}, "
                      f"output scale {io['output']['scale']:.4g} zp {io['output']['zero_point']}")
        console.print(f"{q['mode']} ({q['route']}): accuracy {100 * q['accuracy_fp32']:.2f}% → {100 * q['accuracy']:.2f}% "
                      f"(drop {q['drop_points']:.2f} points){io_txt}")
    for n in report.notes:
        console.print(f"note: {n}")
    console.print(f"wrote [bold]{report.file}[/] and report.json beside it; shrunk model in {s['shrink_json']}")
