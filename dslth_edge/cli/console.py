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
    """First Ctrl-C (or SIGTERM, as systemd stops a service): finish the round, checkpoint, stop.

    A second signal aborts at once. The command then exits 130 (interrupted), never 0.
    """
    state = {"stop": False}

    def handler(signum: int, frame: Any) -> None:
        if state["stop"]:
            raise KeyboardInterrupt
        state["stop"] = True
        name = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"
        err_console.print(f"{name}: stopping after this round (a checkpoint follows); signal again to abort",
                          markup=False, highlight=False)

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return lambda: state["stop"]
