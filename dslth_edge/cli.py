"""The ``dslth-edge`` command line: parse, call the library, print.

Every command is a library call; errors are :class:`~dslth_edge.errors.DslthError`
subclasses, printed as one line ``error: …`` with the class's exit code.
"""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Callable
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from . import __version__
from .errors import DslthError

__all__ = ["main", "cli"]

err_console = Console(stderr=True)
console = Console()


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="dslth-edge")
def cli() -> None:
    """Personalized structured-sparse models for edge fleets, learned as binary masks.

    Every device holds the same fixed random weights and learns only its own mask;
    masks (never weights) are gossiped to graph neighbours as compressed bitmaps.
    """


def _graceful_sigint() -> Callable[[], bool]:
    """First Ctrl-C: finish the round, checkpoint, stop. Second: abort at once."""
    state = {"stop": False}

    def handler(signum: int, frame: Any) -> None:
        if state["stop"]:
            raise KeyboardInterrupt
        state["stop"] = True
        err_console.print("[yellow]stopping after this round (checkpoint follows); Ctrl-C again to abort[/]")

    signal.signal(signal.SIGINT, handler)
    return lambda: state["stop"]


@cli.command()
@click.option("--profile", "profile", required=True, help="Hardware profile: a built-in name (see `profiles list`) or a path to a TOML file.")
@click.option("--dataset", default="fashion-mnist", show_default=True, type=click.Choice(["fashion-mnist", "cifar10", "synthetic"]), help="Training data.")
@click.option("--data-dir", default=None, help="Dataset directory (fashion-mnist default: /usr/share/datasets/fashion-mnist).")
@click.option("--model", default="paper-cnn", show_default=True, type=click.Choice(["paper-cnn", "mcu-cnn", "resnet-8"]), help="Model from the zoo.")
@click.option("--rounds", default=200, show_default=True, type=int, help="Rounds (one local mini-batch step each).")
@click.option("--keep", default=None, type=float, help="Fraction of weights each layer keeps; default: the profile's plan.")
@click.option("--granularity", default="unstructured", show_default=True, type=click.Choice(["unstructured", "channel"]), help="Mask granularity.")
@click.option("--out", default=None, help="Run directory (default runs/<profile>-<dataset>-<time>).")
@click.option("--resume", is_flag=True, help="Continue the run in --out exactly where its last checkpoint left it.")
@click.option("--seed", default=0, show_default=True, type=int, help="The node's seed (scores, batch order).")
@click.option("--weight-seed", default=0, show_default=True, type=int, help="Seed of the fleet's fixed weights.")
@click.option("--weights", "weights_file", default=None, help="Load fixed weights from an .npz instead of the seed.")
@click.option("--preset", default="default", show_default=True, type=click.Choice(["default", "reference"]), help="Algorithm constants.")
@click.option("--batch-size", default=None, type=int, help="Mini-batch size (preset's by default).")
@click.option("--lr", default=None, type=float, help="Learning rate on the scores (preset's by default).")
@click.option("--group-lasso", default=None, type=float, help="Group-lasso weight λ over output channels.")
@click.option("--eval-every", default=25, show_default=True, type=int, help="Evaluate every N rounds.")
@click.option("--checkpoint-every", default=25, show_default=True, type=int, help="Checkpoint every N rounds.")
@click.option("--json", "as_json", is_flag=True, help="Print the final result as JSON (no progress bar).")
def train(as_json: bool, **kw: Any) -> None:
    """Train this device's mask (alone, or with --fleet options, in a fleet).

    \b
    Example:
      dslth-edge train --profile jetson-nano --dataset fashion-mnist --rounds 200
    """
    from .train import TrainOptions, train as run_train

    opts = TrainOptions(**kw)
    stop = _graceful_sigint()
    progress = Progress(
        TextColumn("[bold]train[/]"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(), TimeRemainingColumn(), console=err_console, disable=as_json,
    )
    task = None
    figures = {"acc": "-", "loss": "-"}

    def on_start(node: Any, res: Any) -> None:
        nonlocal task
        if not as_json:
            err_console.print(
                f"node dir [bold]{res.node_dir}[/]  keep [bold]{res.keep:.3f}[/] ({res.keep_source})  "
                f"weights {node.fingerprint.hex()[:16]}…  train {len(node.split.train_indices)} / test {len(node.split.test_indices)}"
            )
        task = progress.add_task("train", total=opts.rounds, completed=node.round, status="")

    def on_round(r: Any) -> None:
        figures["loss"] = f"{r.loss:.3f}"
        if r.acc is not None:
            figures["acc"] = f"{100 * r.acc:.2f}%"
        progress.update(task, completed=r.round + 1, status=f"loss {figures['loss']}  acc {figures['acc']}")

    with progress:
        res = run_train(opts, on_start=on_start, on_round=on_round, stop_requested=stop)
    if as_json:
        click.echo(json.dumps(res.to_dict(), indent=2))
        return
    acc = f"{100 * res.accuracy:.2f}%" if res.accuracy is not None else "n/a"
    if res.stopped:
        console.print(f"stopped at round {res.rounds_done}/{res.rounds}; resume with: dslth-edge train ... --out {res.run_dir} --resume")
    else:
        console.print(f"done: {res.rounds_done} rounds in {res.seconds:.1f} s, test accuracy [bold]{acc}[/] at keep {res.keep:.3f}; mask in {res.node_dir}/mask.npz")


def _register_optional() -> None:
    """Command groups living in their own modules."""
    from .cli_profiles import profiles

    cli.add_command(profiles)


_register_optional()


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the CLI, mapping toolkit errors to one line + exit code."""
    try:
        cli.main(args=argv, prog_name="dslth-edge", standalone_mode=False)
    except DslthError as exc:
        err_console.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        err_console.print("aborted")
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err_console.print("interrupted; the last periodic checkpoint is kept")
        sys.exit(130)
