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
    assert residual_groups(_Block()) == (frozenset({"a", "b"}),)
    assert residual_groups(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2, 2))) == ()


def test_untraceable_models_are_a_usage_error() -> None:
    class Branchy(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x if x.sum() > 0 else -x

    with pytest.raises(UsageError, match="cannot trace Branchy"):
        residual_groups(Branchy())
