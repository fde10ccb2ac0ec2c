"""The process's resident set size: now, its peak, resetting the peak, and giving freed memory back.

On Linux the figures come from ``/proc/self/status`` (``VmRSS``, ``VmHWM``), and the
peak can be reset by writing ``5`` to ``/proc/self/clear_refs`` (Linux >= 4.0). Elsewhere
the peak is ``getrusage(RUSAGE_SELF).ru_maxrss`` (KiB on Linux, bytes on macOS), a
lifetime maximum that cannot be reset (then :class:`RssTracker` gives a lower bound and
says so), and the current size comes from psutil when a device has it. Peak RSS counts file-backed pages of memory-mapped datasets and shared
libraries once they are touched, as a device's RAM would.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field

__all__ = ["current_rss_bytes", "peak_rss_bytes", "reset_peak_rss", "peak_is_resettable", "RssTracker", "return_freed_memory"]

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
    """Peak resident set size since the last reset (or process start), None where unreadable."""
    kib = _status_kib("VmHWM")
    if kib is not None:
        return kib * 1024
    return _ru_maxrss_bytes()


def peak_is_resettable() -> bool:
    """True where :func:`reset_peak_rss` works and the peak is read from ``VmHWM``."""
    return _status_kib("VmHWM") is not None


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
        resettable = reset_peak_rss() and peak_is_resettable()
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


#: glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def return_freed_memory(threshold_bytes: int = 1 << 17) -> bool:
    """Make glibc give large freed blocks back to the OS at once; True when it took effect.

    glibc raises its mmap threshold each time a large mmapped block is freed (up to
    32 MiB on 64-bit), after which tensors of a training step come from the heap and
    the heap's high-water mark stays resident: on the paper CNN that is about 65 MiB of
    RSS the process no longer uses. Fixing the threshold (``mallopt(M_MMAP_THRESHOLD)``,
    which also turns the dynamic adjustment off) and the trim threshold keeps blocks of
    ``threshold_bytes`` or more in their own mappings, unmapped when freed. The same as
    ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` in the environment. A no-op
    (False) on other C libraries.
    """
    import ctypes
    import platform

    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return mallopt(_M_MMAP_THRESHOLD, int(threshold_bytes)) == 1 and mallopt(_M_TRIM_THRESHOLD, int(threshold_bytes)) == 1
