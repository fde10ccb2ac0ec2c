"""Peak RSS: growth over a baseline sees an allocation, and the reset isolates models."""

from __future__ import annotations

import sys

import pytest

from dslth_edge.util.rss import RssTracker, current_rss_bytes, peak_rss_bytes

MIB = 1 << 20


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM is Linux's")
def test_growth_sees_an_allocation_and_resets() -> None:
    assert current_rss_bytes() and peak_rss_bytes()
    rss = RssTracker()
    assert rss.method in ("vmhwm-reset", "ru_maxrss")
    block = bytearray(64 * MIB)  # zero-filled: every page is touched
    growth = rss.growth_bytes()
    del block
    assert growth is not None and growth >= 60 * MIB
    after = RssTracker()  # a new baseline after the block is freed
    if after.method == "vmhwm-reset":
        assert (after.growth_bytes() or 0) < 32 * MIB  # the old 64 MiB peak does not leak in
