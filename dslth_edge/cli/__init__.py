"""The ``dslth-edge`` command line: parse, call the library, print.

Every command is a library call; errors are :class:`~dslth_edge.errors.DslthError`
subclasses, printed as one line ``error: …`` with the class's exit code.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click
from rich.markup import escape

from dslth_edge import __version__
from dslth_edge.cli.console import err_console
from dslth_edge.cli.progress import quiet_third_party, setup_logging
from dslth_edge.errors import EXIT_CODES, EXIT_INTERRUPTED, DslthError, UsageError

__all__ = ["main", "cli"]



class LazyGroup(click.Group):
    """Imports a command's module only when that command runs (or help lists it).

    A device with only a runtime (ai-edge-litert or onnxruntime, no torch) can then run
    ``dslth-edge profile model.tflite``: nothing else is imported.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_commands: dict[str, str] = {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self.lazy_commands))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy_commands:
            module, attr = self.lazy_commands[name].split(":")
            try:
                return getattr(importlib.import_module(module), attr)
            except ImportError as exc:
                missing = exc.name or str(exc)
                return _unavailable(name, f"needs the Python package {missing!r}, which is not installed here")
        return super().get_command(ctx, name)


def _unavailable(name: str, why: str) -> click.Command:
    """A stand-in for a command whose dependencies are missing: says so, exits 2."""

    @click.command(name=name, help=f"(unavailable: {why})", context_settings={"ignore_unknown_options": True})
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def stub(args: tuple[str, ...]) -> None:
        raise UsageError(f"`dslth-edge {name}` {why}")

    return stub


_EXIT_EPILOG = "Exit codes: " + "; ".join(f"{code} {what.split(':')[0].split(' (')[0]}" for code, what in EXIT_CODES.items()) + " (docs/cli.md)."


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
             epilog=_EXIT_EPILOG)
@click.version_option(__version__, prog_name="dslth-edge")
@click.option("--debug-log", default=None, metavar="FILE",
              help="Also write every log record, third-party ones included, to FILE (default $DSLTH_DEBUG_LOG).")
def cli(debug_log: str | None) -> None:
    """Personalized structured-sparse models for edge fleets, learned as binary masks.

    Every device holds the same fixed random weights and learns only its own mask;
    masks (never weights) are gossiped to graph neighbours as compressed bitmaps.
    """
    if debug_log:
        setup_logging(debug_log=debug_log)


_LAZY_COMMANDS = {
    "train": "dslth_edge.cli.train:train",
    "profiles": "dslth_edge.cli.profiles:profiles",
    "simulate": "dslth_edge.cli.simulate:simulate",
    "broker": "dslth_edge.cli.fleet:broker",
    "fleet": "dslth_edge.cli.fleet:fleet",
    "export": "dslth_edge.cli.export:export",
    "profile": "dslth_edge.cli.profile:profile",
    "keys": "dslth_edge.cli.keys:keys",
}
cli.lazy_commands.update(_LAZY_COMMANDS)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the CLI, mapping toolkit errors to one line + exit code."""
    quiet_third_party()
    setup_logging()
    try:
        cli.main(args=argv, prog_name="dslth-edge", standalone_mode=False)
    except DslthError as exc:
        err_console.print(f"[red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        err_console.print("aborted")
        sys.exit(EXIT_INTERRUPTED)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err_console.print("interrupted; the last periodic checkpoint is kept")
        sys.exit(EXIT_INTERRUPTED)
