"""The training process's measured footprint: peak and current resident set size.

The readers live in :mod:`dslth_edge.util.rss` (one implementation for every room); the
drivers and the node read them through this module, the device room's view of what the
training process costs.
"""

from __future__ import annotations

from dslth_edge.util.rss import current_rss_bytes, peak_rss_bytes, return_freed_memory

__all__ = ["peak_rss_bytes", "current_rss_bytes", "return_freed_memory"]
