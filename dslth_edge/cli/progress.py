"""Progress and log lines that work with and without a terminal.

On a terminal a command shows a rich progress bar. Without one (systemd, nohup, CI, a
pipe) it prints one line every N rounds instead — round, loss, accuracy, bytes sent,
neighbours heard, seconds per round — as text or, with ``--log-format json``, as one
JSON object per line for log shippers. The toolkit's own warnings (logger
``dslth_edge``) go to stderr in the same format; third-party libraries' start-up chatter
(torchao's "Failed to load …_C_mxfp8…so", TensorFlow/absl lines) is kept out of sight,
or written to the file named by ``--debug-log`` / ``$DSLTH_DEBUG_LOG``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from dslth_edge.cli.console import err_console

__all__ = ["quiet_third_party", "native_stderr_captured", "setup_logging", "RoundReporter", "default_every", "ENV_DEBUG_LOG"]

ENV_DEBUG_LOG = "DSLTH_DEBUG_LOG"
_OURS = "dslth_edge"


def quiet_third_party() -> None:
    """Before any heavy import: TensorFlow/LiteRT C++ logging and torch's own log handlers below errors.

    Each is read at the library's import and only set when the user has not set it.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    os.environ.setdefault("TORCH_LOGS", "-all")  # torch's logger has its own stderr handler (e.g. _pytree notices)


@contextlib.contextmanager
def native_stderr_captured() -> Iterator[None]:
    """Keep native libraries' stderr lines (absl's "All log messages before
    absl::InitializeLog()", oneDNN and XNNPACK notices from TensorFlow/LiteRT) off the terminal.

    Those libraries write to file descriptor 2 from C++, below Python's logging, and
    ``TF_CPP_MIN_LOG_LEVEL`` does not reach absl. Inside the block fd 2 goes to a temporary
    file while ``sys.stderr`` (and so every rich console and our log lines) keeps writing to
    the real stderr. Afterwards the captured bytes go to the debug log when one is set; if
    the block raises, they are replayed on stderr, because then they may explain the failure.
    """
    sys.stderr.flush()
    real_fd = os.dup(2)
    python_stderr = sys.stderr
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        sys.stderr = open(os.dup(real_fd), "w", buffering=1, encoding=getattr(python_stderr, "encoding", None) or "utf-8",
                          errors="backslashreplace")
        failed = False
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            sys.stderr.flush()
            sys.stderr.close()
            sys.stderr = python_stderr
            os.dup2(real_fd, 2)
            os.close(real_fd)
            captured.seek(0)
            text = captured.read().decode("utf-8", "backslashreplace")
            path = _SETTINGS["debug_log"] or os.environ.get(ENV_DEBUG_LOG)
            if text and failed:
                python_stderr.write(text)
                python_stderr.flush()
            elif text and path:
                with open(path, "a", encoding="utf-8") as log:
                    log.write(text)


class _Ours(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.name == _OURS or record.name.startswith(_OURS + ".")


class _NotOursBelowError(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return _Ours().filter(record) or record.levelno >= logging.ERROR


class _ConsoleHandler(logging.Handler):
    """One line per record on stderr (through the rich console, so a live bar stays intact)."""

    def __init__(self, fmt: str, console: Console) -> None:
        super().__init__(logging.INFO)
        self.fmt, self.console = fmt, console

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage()
            if self.fmt == "json":
                line = json.dumps({"time": round(record.created, 3), "level": record.levelname.lower(),
                                   "logger": record.name, "message": msg})
                self.console.print(line, markup=False, highlight=False, soft_wrap=True)
                return
            level = "" if record.levelno == logging.INFO else f"{record.levelname.lower()}: "
            self.console.print(f"{level}{msg}", markup=False, highlight=False, soft_wrap=True)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


_SETTINGS: dict[str, Any] = {"fmt": "text", "debug_log": None}


def setup_logging(fmt: str | None = None, debug_log: str | None = None, console: Console | None = None) -> None:
    """Route log records: ours (INFO and up) to stderr, others only at ERROR; everything to ``debug_log``.

    Called again (a command's ``--log-format``), it keeps the settings not given.
    """
    fmt = _SETTINGS["fmt"] = fmt or _SETTINGS["fmt"]
    debug_log = _SETTINGS["debug_log"] = debug_log or _SETTINGS["debug_log"]
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_dslth", False):
            root.removeHandler(h)
    handler = _ConsoleHandler(fmt, console or err_console)
    handler.addFilter(_NotOursBelowError())
    handler._dslth = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger(_OURS).setLevel(logging.INFO)
    path = debug_log or os.environ.get(ENV_DEBUG_LOG)
    if path:
        fh = logging.FileHandler(path, encoding="utf-8")
        fh.setLevel(logging.DEBUG)
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        fh._dslth = True  # type: ignore[attr-defined]
        root.addHandler(fh)
        root.setLevel(logging.DEBUG)
        logging.getLogger(_OURS).setLevel(logging.DEBUG)
    logging.captureWarnings(True)
    # Python warnings (py.warnings) are third-party chatter unless they are ours: to the debug log only
    logging.getLogger("py.warnings").propagate = bool(path)


def default_every(total: int) -> int:
    """About twenty progress lines a run."""
    return max(1, round(total / 20))


class RoundReporter:
    """Round progress: a rich bar on a terminal, else one line every ``every`` rounds (text or JSON)."""

    def __init__(self, label: str, total: int, *, every: int | None = None, fmt: str = "text",
                 disabled: bool = False, console: Console | None = None) -> None:
        self.label, self.total, self.fmt, self.disabled = label, total, fmt, disabled
        self.console = console or err_console
        self.lines = fmt == "json" or not self.console.is_terminal
        self.every = every or default_every(total)
        self._progress: Progress | None = None
        self._task: Any = None
        self._last_t = time.perf_counter()
        self._last_round = 0
        self._acc: float | None = None
        self._bytes = 0

    def __enter__(self) -> "RoundReporter":
        return self  # the bar starts with the run (started()): an error before it leaves no empty bar behind

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def info(self, text: str, **fields: Any) -> None:
        """A start/end line: text, or a JSON object with ``fields`` when --log-format json."""
        if self.disabled:
            return
        if self.fmt == "json":
            self.console.print(json.dumps({"event": self.label, **fields}, default=str), markup=False,
                               highlight=False, soft_wrap=True)
        else:
            self.console.print(text, highlight=False, soft_wrap=True)

    def started(self, done: int) -> None:
        """The run starts (or resumes) with ``done`` rounds already done."""
        self._last_round, self._last_t = done, time.perf_counter()
        if not self.disabled and not self.lines and self._progress is None:
            self._progress = Progress(TextColumn(f"[bold]{self.label}[/]"), BarColumn(), MofNCompleteColumn(),
                                      TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                      console=self.console)
            self._progress.__enter__()
            self._task = self._progress.add_task(self.label, total=self.total, status="")
        if self._progress is not None:
            self._progress.update(self._task, completed=done)

    def round(self, done: int, *, loss: float | None, acc: float | None, bytes_sent: int,
              heard: str | int | None = None) -> None:
        """``done`` rounds are done now; the figures are the latest round's (``bytes_sent`` that round's)."""
        if acc is not None:
            self._acc = acc
        self._bytes += int(bytes_sent)
        if self.disabled:
            return
        acc_s = "-" if self._acc is None else f"{100 * self._acc:.2f}%"
        loss_s = "-" if loss is None else f"{loss:.3f}"
        if self._progress is not None:
            extra = "" if heard is None else f"  heard {heard}"
            self._progress.update(self._task, completed=done,
                                  status=f"loss {loss_s}  acc {acc_s}  sent {self._bytes / 1e3:.1f} kB{extra}")
            return
        if done % self.every and done < self.total:
            return
        now = time.perf_counter()
        spr = (now - self._last_t) / max(1, done - self._last_round)
        self._last_t, self._last_round = now, done
        if self.fmt == "json":
            self.console.print(json.dumps({"event": "round", "round": done, "rounds": self.total, "loss": loss,
                                           "acc": self._acc, "bytes_sent": self._bytes, "neighbours_heard": heard,
                                           "s_per_round": round(spr, 4)}), markup=False, highlight=False,
                               soft_wrap=True)
            return
        heard_s = "" if heard is None else f"  heard {heard}"
        self.console.print(f"{self.label} round {done}/{self.total}  loss {loss_s}  acc {acc_s}  "
                           f"sent {self._bytes / 1e3:.1f} kB{heard_s}  {spr:.2f} s/round",
                           markup=False, highlight=False, soft_wrap=True)
