"""The one MAC counter: its formulas, and that the zoo, shrink's figures and the profiler's
torch analysis all count through it (so they cannot disagree)."""

from __future__ import annotations

import torch
from torch import nn

from dslth_edge.cost.analysis import analyze_torch_module
from dslth_edge.cost.macs import count_macs, trace_macs, weight_layer_kind
from dslth_edge.learn.models import MODEL_NAMES, ModelSpec, build_model, layer_costs


def test_formulas_per_layer_kind() -> None:
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),  # 8·16·16 outputs × 3·9
        nn.Conv2d(8, 8, 3, padding=1, groups=8),  # depthwise: 8·16·16 × 9
        nn.ConvTranspose2d(8, 4, 2, stride=2),  # 8·16·16 inputs × 4·2·2
        nn.Flatten(),
        nn.Linear(4 * 32 * 32, 10),
    )
    kinds = [weight_layer_kind(m) for m in net]
    assert kinds == ["conv", "depthwise", "transposed", None, "linear"]
    traced = trace_macs(net, torch.zeros(2, 3, 16, 16))
    per_sample = [t.macs // 2 for t in traced]
    assert per_sample == [8 * 256 * 27, 8 * 256 * 9, 8 * 256 * 16, 4096 * 10]
    assert [(t.out_channels, t.in_channels) for t in traced] == [(8, 3), (8, 1), (4, 8), (10, 4096)]
    assert [t.reads_input for t in traced] == [True, False, False, False]
    assert count_macs(net, (3, 16, 16)) == sum(per_sample)
    assert weight_layer_kind(nn.BatchNorm2d(4)) is None and weight_layer_kind(nn.Embedding(3, 4)) is None


def test_zoo_layer_costs_shrink_and_analysis_agree() -> None:
    """layer_costs (the planner's input), count_macs (shrink/export figures) and the torch
    analysis (the profiler) give one figure for every zoo model."""
    for name in MODEL_NAMES:
        shape = (3, 32, 32) if name == "resnet-8" else (1, 28, 28)
        model = build_model(ModelSpec(name, shape, 10, keep=0.5))
        from_costs = sum(c.macs for c in layer_costs(model, shape))
        assert from_costs == count_macs(model, shape) > 0, name
        assert analyze_torch_module(model, torch.zeros(1, *shape)).macs == from_costs, name
