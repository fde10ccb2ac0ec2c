"""Native libraries' fd-2 chatter stays off the terminal; our own stderr lines do not."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from dslth_edge.cli.progress import ENV_DEBUG_LOG, native_stderr_captured


def test_fd2_lines_are_captured_and_python_stderr_still_prints(capfd: pytest.CaptureFixture[str], tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "debug.log"
    monkeypatch.setenv(ENV_DEBUG_LOG, str(log))
    with native_stderr_captured():
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n")
        print("exporting node 0", file=sys.stderr)
    print("after", file=sys.stderr)
    err = capfd.readouterr().err
    assert "exporting node 0" in err and "after" in err
    assert "absl" not in err
    assert "absl::InitializeLog" in log.read_text()  # kept for whoever debugs (no --debug-log set in tests)


def test_without_a_debug_log_the_chatter_is_dropped(capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_DEBUG_LOG, raising=False)
    with native_stderr_captured():
        os.write(2, b"I0000 port.cc:153] oneDNN custom operations are on\n")
    assert "oneDNN" not in capfd.readouterr().err


def test_a_failure_replays_what_was_captured(capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_DEBUG_LOG, raising=False)
    stderr_before = sys.stderr
    with pytest.raises(RuntimeError), native_stderr_captured():
        os.write(2, b"F0000 converter.cc:1] the converter's own reason\n")
        raise RuntimeError("conversion failed")
    assert sys.stderr is stderr_before
    assert "the converter's own reason" in capfd.readouterr().err
