"""Facts about the machine the measurements ran on, and whether a profile describes it.

A profile written by ``dslth-edge profile calibrate`` carries ``[host NAME]`` in its
``device`` string (the profile schema has no field for it); :func:`is_this_machine`
looks for that marker, so a verdict knows when measured figures are the device's own
and when it must add the predicted latency for another device.
"""

from __future__ import annotations

import os
import platform
import re
import socket
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from dslth_edge.device.profiles import Profile

__all__ = ["HostInfo", "host_info", "host_marker", "is_this_machine"]


@dataclass(frozen=True)
class HostInfo:
    """The measuring machine: the ``host`` object of docs/profile-json.md."""

    hostname: str
    system: str  # "Linux"
    machine: str  # "x86_64", "aarch64"
    cpu: str  # model name from /proc/cpuinfo, or platform.processor()
    cpu_count: int
    cpu_mhz: float | None
    ram_mib: float | None
    python: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """One line: "AMD EPYC, 2 CPUs, x86_64 Linux (host NAME)"."""
        return f"{self.cpu}, {self.cpu_count} CPUs, {self.machine} {self.system} (host {self.hostname})"


def _cpuinfo(key: str) -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                name, _, value = line.partition(":")
                if name.strip() == key and value.strip():
                    return value.strip()
    except OSError:
        pass
    return None


def _ram_mib() -> float | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            m = re.search(r"MemTotal:\s+(\d+)\s+kB", fh.read())
        return int(m.group(1)) / 1024 if m else None
    except OSError:
        return None


def host_info() -> HostInfo:
    """Describe this machine (cheap: reads /proc, no subprocesses)."""
    cpu = _cpuinfo("model name") or _cpuinfo("Hardware") or platform.processor() or platform.machine()
    mhz = _cpuinfo("cpu MHz")
    return HostInfo(
        hostname=socket.gethostname(),
        system=platform.system(),
        machine=platform.machine(),
        cpu=cpu,
        cpu_count=os.cpu_count() or 1,
        cpu_mhz=float(mhz) if mhz else None,
        ram_mib=_ram_mib(),
        python=platform.python_version(),
    )


def host_marker(hostname: str | None = None) -> str:
    """The marker calibrate writes into a host profile's ``device`` string."""
    return f"[host {hostname or socket.gethostname()}]"


def is_this_machine(profile: Profile) -> bool:
    """True when ``profile`` was calibrated on this machine."""
    return host_marker() in profile.device
