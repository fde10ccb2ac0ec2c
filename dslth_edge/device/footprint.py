"""The training process's measured footprint: peak and current resident set size.

Peak RSS is the kernel's high-water mark for this process (``VmHWM`` in
``/proc/self/status`` on Linux; ``getrusage(RUSAGE_SELF).ru_maxrss`` elsewhere, in KiB
on Linux and bytes on macOS). It counts file-backed pages of memory-mapped datasets
and of torch's shared libraries once they are touched, as a device's RAM would.
"""

from __future__ import annotations

import resource
import sys

__all__ = ["peak_rss_bytes", "current_rss_bytes", "return_freed_memory"]


def _status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def peak_rss_bytes() -> int:
    """The process's peak resident set size so far, in bytes."""
    kib = _status_kib("VmHWM")
    if kib is not None:
        return kib * 1024
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(ru) if sys.platform == "darwin" else int(ru) * 1024


def current_rss_bytes() -> int:
    """The process's resident set size now, in bytes (the peak where /proc is missing)."""
    kib = _status_kib("VmRSS")
    return kib * 1024 if kib is not None else peak_rss_bytes()


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
