"""Units every cost figure is stated in: bytes per stored value, and the binary MiB.

Defined once here; the profiles, the planner, the latency model, the training-memory
model, the export budget and the profiler's verdict all read them from this module.
"""

from __future__ import annotations

__all__ = ["BYTES_PER_VALUE", "MIB", "KIB"]

#: Bytes per weight / activation value for each export dtype.
BYTES_PER_VALUE: dict[str, int] = {"fp32": 4, "int8": 1}
#: Bytes in one KiB and one MiB (all memory sizes in profiles are binary MiB).
KIB = 1024
MIB = 1024 * 1024
