"""Resident-set-size measurement: current RSS, peak RSS, and growth over a baseline.

On Linux the peak is ``VmHWM`` from ``/proc/self/status``, and it can be reset by
writing ``5`` to ``/proc/self/clear_refs`` (Linux >= 4.0), so several models profiled
in one process each get their own peak. Where that is impossible the peak falls back
to ``getrusage(RUSAGE_SELF).ru_maxrss``, a lifetime maximum that cannot be reset: the
growth it gives is then a lower bound, and :attr:`RssTracker.method` says so.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field

__all__ = ["current_rss_bytes", "peak_rss_bytes", "reset_peak_rss", "RssTracker"]

_STATUS = "/proc/self/status"
_CLEAR_REFS = "/proc/self/clear_refs"


def _status_kib(key: str) -> int | None:
    try:
        with open(_STATUS, encoding="ascii") as fh:
            text = fh.read()
    except OSError:
        return None
    m = re.search(rf"^{key}:\s+(\d+)\s+kB", text, re.MULTILINE)
    return int(m.group(1)) if m else None


def _ru_maxrss_bytes() -> int | None:
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def current_rss_bytes() -> int | None:
    """Resident set size of this process now, or None where it cannot be read."""
    kib = _status_kib("VmRSS")
    if kib is not None:
        return kib * 1024
    try:  # psutil is optional: use it when a non-Linux device has it
        import psutil  # type: ignore[import-not-found]

        return int(psutil.Process().memory_info().rss)
    except Exception:  # noqa: BLE001 - best effort on exotic platforms
        return None


def peak_rss_bytes() -> int | None:
    """Peak resident set size since the last reset (or process start)."""
    kib = _status_kib("VmHWM")
    if kib is not None:
        return kib * 1024
    return _ru_maxrss_bytes()


def reset_peak_rss() -> bool:
    """Reset the peak to the current RSS; False where the kernel does not allow it."""
    try:
        with open(_CLEAR_REFS, "w", encoding="ascii") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


@dataclass
class RssTracker:
    """Peak RSS growth over a baseline taken at construction.

    ``method`` is ``"vmhwm-reset"`` when the peak was reset at the baseline (exact
    growth), ``"ru_maxrss"`` when only a lifetime maximum exists (a lower bound: an
    earlier, higher peak hides growth), ``"unavailable"`` when nothing can be read.
    """

    baseline_bytes: int | None = field(init=False)
    method: str = field(init=False)

    def __post_init__(self) -> None:
        resettable = reset_peak_rss() and _status_kib("VmHWM") is not None
        self.baseline_bytes = current_rss_bytes()
        if self.baseline_bytes is None:
            self.method = "unavailable"
        elif resettable:
            self.method = "vmhwm-reset"
        else:
            self.method = "ru_maxrss"

    def growth_bytes(self) -> int | None:
        """Peak RSS since the baseline minus the baseline (never negative)."""
        peak = peak_rss_bytes()
        if peak is None or self.baseline_bytes is None:
            return None
        return max(0, peak - self.baseline_bytes)
