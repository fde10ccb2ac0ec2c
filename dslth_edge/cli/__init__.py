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
from dslth_edge.errors import DslthError, UsageError

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


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="dslth-edge")
def cli() -> None:
    """Personalized structured-sparse models for edge fleets, learned as binary masks.

    Every device holds the same fixed random weights and learns only its own mask;
    masks (never weights) are gossiped to graph neighbours as compressed bitmaps.
    """


_LAZY_COMMANDS = {
    "train": "dslth_edge.cli.train:train",
    "profiles": "dslth_edge.cli.profiles:profiles",
    "simulate": "dslth_edge.cli.simulate:simulate",
    "broker": "dslth_edge.cli.fleet:broker",
    "fleet": "dslth_edge.cli.fleet:fleet",
    "export": "dslth_edge.cli.export:export",
    "profile": "dslth_edge.cli.profile:profile",
}
cli.lazy_commands.update(_LAZY_COMMANDS)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the CLI, mapping toolkit errors to one line + exit code."""
    try:
        cli.main(args=argv, prog_name="dslth-edge", standalone_mode=False)
    except DslthError as exc:
        err_console.print(f"[red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
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
