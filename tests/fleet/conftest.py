"""Fixtures shared by the fleet tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Tiny models in lock-step: one torch thread (several only spin on a shared machine), and
    the same thread count as the simulator's worker processes, so their sums agree."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
