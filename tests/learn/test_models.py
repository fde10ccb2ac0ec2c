"""The model zoo: shapes, dense twins, cost summaries."""

from __future__ import annotations

import pytest
import torch

from dslth_edge.errors import UsageError
from dslth_edge.learn.masking import masked_layers
from dslth_edge.learn.models import MODEL_NAMES, build_model, layer_costs

SHAPES = [(1, 28, 28), (3, 32, 32)]


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("granularity", ["unstructured", "channel"])
def test_models_adapt_to_input_and_classes(name: str, shape: tuple[int, int, int], granularity: str) -> None:
    model = build_model(name, shape, 7, granularity=granularity, keep=0.3)
    out = model(torch.randn(2, *shape))
    assert out.shape == (2, 7)
    out.sum().backward()
    assert all(layer.scores.grad is not None for _, layer in masked_layers(model))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_dense_twin_has_same_weights_and_outputs_at_keep_1(name: str) -> None:
    masked = build_model(name, (1, 28, 28), 10, keep=1.0)
    dense = build_model(name, (1, 28, 28), 10, dense=True)
    masked.eval(), dense.eval()
    x = torch.randn(3, 1, 28, 28)
    assert torch.allclose(masked(x), dense(x), atol=1e-5)
    assert not any(True for _ in masked_layers(dense))


def test_paper_cnn_matches_the_paper() -> None:
    costs = layer_costs(build_model("paper-cnn", (3, 32, 32), 10), (3, 32, 32))
    assert [c.out_channels for c in costs] == [64, 128, 256, 192, 10]
    assert [c.kind for c in costs] == ["conv", "conv", "conv", "linear", "linear"]
    assert costs[3].in_channels == 256 * 4 * 4
    assert costs[0].macs == 64 * 3 * 25 * 32 * 32
    assert [c.input_from for c in costs] == [None, "conv1", "conv2", "conv3", "fc1"]
    assert [c.prunable_out for c in costs] == [True, True, True, True, False]


def test_resnet8_links_residual_groups() -> None:
    costs = {c.name: c for c in layer_costs(build_model("resnet-8", (3, 32, 32), 10), (3, 32, 32))}
    assert costs["stack2.shortcut"].input_from == "stack1.body2.conv"
    assert costs["fc"].input_from == "stack3.body2.conv"


def test_per_layer_keep_ratios() -> None:
    model = build_model("paper-cnn", (1, 28, 28), 10, keep=[0.9, 0.5, 0.3, 0.2, 1.0])
    assert [layer.keep for _, layer in masked_layers(model)] == [0.9, 0.5, 0.3, 0.2, 1.0]
    with pytest.raises(UsageError, match="one keep ratio per masked layer"):
        build_model("paper-cnn", (1, 28, 28), 10, keep=[0.5, 0.5])
    with pytest.raises(UsageError, match=r"one keep ratio per masked layer \(5\), got 6"):
        build_model("paper-cnn", (1, 28, 28), 10, keep=[0.5] * 6)


def test_unknown_model_and_tiny_input() -> None:
    with pytest.raises(UsageError, match="unknown model"):
        build_model("vgg", (1, 28, 28), 10)
    with pytest.raises(UsageError, match="at least 8x8"):
        build_model("paper-cnn", (1, 4, 4), 10)


def test_width_variants_multiply_the_hidden_channels_only() -> None:
    base = layer_costs(build_model("mcu-cnn", (1, 28, 28), 10), (1, 28, 28))
    for name, width in (("mcu-cnn-x2", 2), ("mcu-cnn-x4", 4)):
        costs = layer_costs(build_model(name, (1, 28, 28), 10), (1, 28, 28))
        assert [c.out_channels for c in costs] == [b.out_channels * width for b in base[:-1]] + [10]
        assert costs[0].in_channels == 1  # the input keeps its channels
