"""What every command prints through: the two consoles and the Ctrl-C policy."""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

from rich.console import Console

__all__ = ["console", "err_console", "graceful_sigint"]

err_console = Console(stderr=True)
console = Console()


def graceful_sigint() -> Callable[[], bool]:
    """First Ctrl-C: finish the round, checkpoint, stop. Second: abort at once."""
    state = {"stop": False}

    def handler(signum: int, frame: Any) -> None:
        if state["stop"]:
            raise KeyboardInterrupt
        state["stop"] = True
        err_console.print("[yellow]stopping after this round (checkpoint follows); Ctrl-C again to abort[/]")

    signal.signal(signal.SIGINT, handler)
    return lambda: state["stop"]
