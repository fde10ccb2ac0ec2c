"""``dslth-edge profile``: measure exported models; ``dslth-edge profile --calibrate``.

``profile`` is a click group whose default command profiles models, so all of

    dslth-edge profile MODEL [OPTIONS]
    dslth-edge profile --calibrate [--threads N] [--out FILE] [--runtimes ...]
    dslth-edge profile calibrate [...]          (the same as --calibrate)

work: an argument list whose first word is not a subcommand name goes to the hidden
default command ``run`` (``dslth-edge profile run MODEL`` is the same thing; it is also
the way to profile a file literally named "calibrate").

Thin, like every command: parse, call :mod:`dslth_edge.profiler`, print. Nothing here
imports torch, so a device with only a runtime installed can profile .tflite / .onnx.
"""

from __future__ import annotations

import json
import re
from typing import Any

import click

from dslth_edge.errors import UsageError

__all__ = ["profile", "parse_input_shape"]

_SHAPE_RE = re.compile(r"^\s*\d+(\s*[xX×,]\s*\d+)*\s*$")


def parse_input_shape(text: str) -> dict[str, tuple[int, ...]]:
    """``"3x32x32"`` (first input) or ``"name=3x32x32"`` -> {name or "": per-sample shape}."""
    name, _, dims = text.rpartition("=")
    if not _SHAPE_RE.match(dims):
        raise UsageError(f"--input-shape: expected per-sample dims like 3x32x32 or NAME=3x32x32, got {text!r}")
    shape = tuple(int(d) for d in re.split(r"[xX×,]", dims.replace(" ", "")))
    if any(d <= 0 for d in shape):
        raise UsageError(f"--input-shape: dimensions must be positive, got {text!r}")
    return {name.strip(): shape}


def _console() -> Any:
    from rich.console import Console

    console = Console(highlight=False)
    if not console.is_terminal:  # piped / captured: wide enough for the comparison table
        console = Console(highlight=False, width=140)
    return console


def _version() -> str:
    from dslth_edge import __version__

    return __version__


class _DefaultGroup(click.Group):
    """A group that runs its default command when the first word is not a subcommand."""

    default_command = "run"

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] == "--calibrate":
            args = ["calibrate", *args[1:]]
        elif args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)

    def format_usage(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        formatter.write_usage(ctx.command_path, "MODEL [OTHER ...] [OPTIONS]  |  --calibrate [OPTIONS]")

    def format_help_text(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_help_text(ctx, formatter)
        run = self.commands[self.default_command]
        records = [
            rec for p in run.params  # run's own options, not its argument or --help
            if isinstance(p, click.Option) and (rec := p.get_help_record(ctx)) is not None
        ]
        with formatter.section("Options of `profile MODEL [OTHER ...]`"):
            formatter.write_dl(records)


@click.group(name="profile", cls=_DefaultGroup, context_settings={"help_option_names": ["-h", "--help"]})
def profile() -> None:
    """Measure exported models on this machine: latency percentiles, memory, size.

    \b
    Examples:
      dslth-edge profile model.tflite --threads 4 --runs 200
      dslth-edge profile model.onnx --per-op --profile jetson-nano
      dslth-edge profile model.onnx --compare model.tflite model-int8.tflite --json
      dslth-edge profile calibrate --out host.toml     # then: --profile host.toml
    """


@profile.command("run", hidden=True)
@click.argument("models", nargs=-1, required=True, metavar="MODEL [OTHER ...]")
@click.option("--backend", type=click.Choice(["auto", "onnxruntime", "litert", "torch"]), default="auto",
              show_default=True, help="Runtime; auto: the file format's own (.onnx onnxruntime, .tflite LiteRT, shrunk dir torch).")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="Intra-op threads, set explicitly in every backend.")
@click.option("--runs", type=click.IntRange(min=1), default=None, help="Measured inferences [default: 50].")
@click.option("--duration", "duration_s", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Measure for this many seconds instead of a run count.")
@click.option("--warmup", type=click.IntRange(min=0), default=5, show_default=True, help="Warm-up inferences after the first.")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True, help="Batch size of each inference.")
@click.option("--input-shape", "input_shape", multiple=True,
              help="Per-sample input shape, e.g. 3x32x32 or NAME=3x32x32 (for symbolic dims / torch).")
@click.option("--profile", "profile_name", default=None,
              help="Hardware profile (name or .toml path): verdict against its latency / RAM / storage budgets.")
@click.option("--per-op", "per_op", is_flag=True, help="Per-operator time table from the backend's own profiler.")
@click.option("--compare", "compare", multiple=True, metavar="OTHER",
              help="Another model to compare with the first (repeatable; extra MODEL arguments count too).")
@click.option("--histogram", "histogram", default=None, metavar="FILE", help="Write a PNG histogram of the latencies.")
@click.option("--no-xnnpack", "no_xnnpack", is_flag=True, help="LiteRT: disable the default XNNPACK delegate.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON (docs/profile-json.md).")
def run_command(
    models: tuple[str, ...],
    backend: str,
    threads: int,
    runs: int | None,
    duration_s: float | None,
    warmup: int,
    batch: int,
    input_shape: tuple[str, ...],
    profile_name: str | None,
    per_op: bool,
    compare: tuple[str, ...],
    histogram: str | None,
    no_xnnpack: bool,
    as_json: bool,
) -> None:
    """Profile MODEL (and compare OTHER models with it)."""
    from dslth_edge.profiler.measure import ProfileOptions, profile_model
    from dslth_edge.profiler.verdict import judge

    shapes: dict[str, tuple[int, ...]] = {}
    for text in input_shape:
        shapes.update(parse_input_shape(text))
    opts = ProfileOptions(
        backend=backend, threads=threads, runs=runs, duration_s=duration_s, warmup=warmup, batch=batch,
        per_op=per_op, input_shapes=shapes or None, xnnpack=not no_xnnpack,
    ).checked()
    paths = [models[0], *compare, *models[1:]]
    hw = None
    if profile_name is not None:
        from dslth_edge.device.profiles import load_profile

        hw = load_profile(profile_name)  # before measuring: a typo fails fast
    # --backend applies to the reference model; compared files run on their own format's runtime
    results = [profile_model(p, opts if i == 0 else _other_opts(opts)) for i, p in enumerate(paths)]
    verdicts = [judge(r, hw) for r in results] if hw is not None else [None] * len(results)
    if histogram:
        from dslth_edge.profiler.report import write_histogram

        write_histogram(results, histogram)

    if as_json:
        from dslth_edge.profiler.report import report_to_dict

        click.echo(json.dumps(report_to_dict(results, verdicts, version=_version()), indent=2, allow_nan=False, default=str))
        return

    from dslth_edge.profiler.report import render_comparison, render_per_op, render_result, render_verdict

    console = _console()
    for r in results:
        render_result(r, console)
        render_per_op(r, console)
    if len(results) > 1:
        render_comparison(results, console)
    for r, v in zip(results, verdicts):
        if v is not None:
            render_verdict(v, r, console)
    if histogram:
        console.print(f"histogram written to {histogram}", markup=False)


def _other_opts(opts: Any) -> Any:
    from dataclasses import replace

    return replace(opts, backend="auto")


@profile.command("calibrate")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True, help="Runtime intra-op threads.")
@click.option("--out", "out", default=None, metavar="FILE",
              help="Profile file to write [default: ~/.config/dslth-edge/profiles/host.toml]; the calibration "
                   "file goes beside it (host-calibration.json).")
@click.option("--passes", type=click.IntRange(min=1), default=5, show_default=True,
              help="Round-robin passes; each network keeps its best per-pass median.")
@click.option("--runtimes", default=None, metavar="LIST",
              help="Comma-separated runtime/dtype keys to measure (onnxruntime/fp32, litert-xnnpack/fp32, "
                   "litert-xnnpack/int8) [default: every one installed].")
@click.option("--training/--no-training", default=True, show_default=True,
              help="Also measure torch training steps (the time per round).")
@click.option("--json", "as_json", is_flag=True, help="Print the calibration (fits and every point) as JSON.")
def calibrate_command(threads: int, out: str | None, passes: int, runtimes: str | None, training: bool,
                      as_json: bool) -> None:
    """Measure this machine per runtime and write a calibration file and a host profile naming it.

    For each runtime the device can run (onnxruntime fp32, LiteRT with XNNPACK fp32 and
    int8) the latency model is fitted per op class (convolution MACs and windows,
    fully-connected MACs, per weight layer, per other op and its bytes, per inference) at
    the channel multiple that fits best, over 49 small networks; torch training
    steps give the time per round. The planner and the verdict read the file through
    the profile.
    """
    from dslth_edge.profiler.calibrate import calibrate
    from dslth_edge.profiler.host_profile import calibration_path_for, write_host_profile

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    keys = [k.strip() for k in runtimes.split(",") if k.strip()] if runtimes else None
    err = Console(stderr=True)
    with Progress(TextColumn("[bold]calibrate[/]"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
                  console=err, disable=as_json or not err.is_terminal) as bar:
        task = bar.add_task("", total=None)

        def progress(done: int, total: int, what: str) -> None:
            bar.update(task, completed=done, total=total, description=what)

        cal = calibrate(threads=threads, passes=passes, progress=progress, runtimes=keys, training=training)
    path = write_host_profile(cal, out)
    if as_json:
        data = cal.to_dict()
        data["profile_path"] = str(path)
        data["calibration_path"] = str(calibration_path_for(path))
        click.echo(json.dumps(data, indent=2))
        return
    from dslth_edge.profiler.report import render_calibration

    console = _console()
    render_calibration(cal, str(path), console)
    for r in cal.results:
        f = r.fit
        console.print(f"{f.key} ({f.runtime} {f.version}, {f.threads} thread(s)): {f.points} networks, channel multiple "
                      f"{f.channel_multiple}, median |error| {100 * f.median_rel_error:.1f}%", markup=False)
    if cal.training is not None:
        t = cal.training.fit
        console.print(f"training (torch {t.version}, {t.threads} thread(s)): {t.points} steps, median |error| "
                      f"{100 * t.median_rel_error:.1f}%", markup=False)
    for s in cal.skipped:
        console.print(f"not measured: {s}", markup=False)
    console.print(f"calibration file: {calibration_path_for(path)}", markup=False)
