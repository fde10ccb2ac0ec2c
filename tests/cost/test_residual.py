"""The one residual-group analysis: the planner's coupling is shrink's, and shrink refuses to
deliver a plan when its pruning engine couples other layers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dslth_edge.cost.residual import residual_groups
from dslth_edge.errors import UsageError


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 3, padding=1)
        self.c = nn.Conv2d(4, 4, 1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.a(x))
        z = self.bn(self.b(y)) + y  # couples a and b
        z = self.c(z)  # c starts new channels
        return self.head(z.mean((2, 3)))


def test_an_add_couples_its_producers_through_norm_and_activation() -> None:
    assert residual_groups(_Block(), (3, 8, 8)) == (frozenset({"a", "b"}),)
    assert residual_groups(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2, 2)), (1, 3, 3)) == ()


def test_untraceable_models_are_a_usage_error() -> None:
    class Branchy(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x if x.sum() > 0 else -x

    with pytest.raises(UsageError, match="cannot trace Branchy"):
        residual_groups(Branchy(), (1, 4, 4))


def test_the_analysis_leaves_other_threads_forwards_alone() -> None:
    """Node threads re-plan while others train: the analysis must not reach into their
    forwards (a torch.fx trace patches nn.Module.__call__ for the whole process)."""
    import threading

    other = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())
    x = torch.ones(1, 1, 4, 4)
    expected = other(x)
    seen: list[object] = []

    class Spy(_Block):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            def train_elsewhere() -> None:
                try:
                    seen.append(other(torch.ones(1, 1, 4, 4)))
                except Exception as exc:  # noqa: BLE001 - asserted below
                    seen.append(exc)

            t = threading.Thread(target=train_elsewhere)
            t.start()
            t.join()
            return super().forward(x)

    assert residual_groups(Spy(), (3, 8, 8)) == (frozenset({"a", "b"}),)
    assert len(seen) == 1 and isinstance(seen[0], torch.Tensor) and torch.equal(seen[0], expected)
