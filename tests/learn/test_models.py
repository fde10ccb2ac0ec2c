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


def test_authors_cnn_is_their_network() -> None:
    """ZhuoJTian/MCE-PL models/alex_cifar_att2.py: 5×5 convs with padding 1, fc1 of 1024
    inputs on CIFAR-10, fixed FC biases, LRN, 3×3/2 pooling, ELU on the logits."""
    from torch import nn

    from dslth_edge.learn.masking import fixed_bias

    model = build_model("authors-cnn", (3, 32, 32), 10, weight_init="pytorch-default", score_init="pytorch-default")
    costs = layer_costs(model, (3, 32, 32))
    assert [(c.in_channels, c.out_channels) for c in costs] == [(3, 64), (64, 128), (128, 256), (1024, 192), (192, 10)]
    assert costs[0].macs == 64 * 3 * 25 * 30 * 30  # padding 1: 32 → 30
    assert [c.prunable_out for c in costs] == [False] * 5  # LRN mixes conv channels; fc1's fixed bias keeps rows alive
    assert [(m.size, m.alpha, m.beta, m.k) for m in model.modules() if isinstance(m, nn.LocalResponseNorm)] == [
        (4, 2e-5, 0.75, 1.0), (4, 1e-4, 0.75, 1.0), (4, 1e-4, 0.75, 1.0)]
    assert [(m.kernel_size, m.stride, m.padding) for m in model.modules() if isinstance(m, nn.MaxPool2d)] == [
        (3, 2, 0), (3, 2, 0), (3, 2, 1)]
    fc1, fc2 = model.fc1, model.fc2
    assert fc1.bias is not None and not fc1.bias.requires_grad and "bias" in dict(fc1.named_buffers())
    assert torch.equal(fc1.bias, fixed_bias(192, 1024, 0, 3))
    assert model.conv1.padding == 1 and all(not p.requires_grad for n, p in model.named_parameters() if "score" not in n)
    x = torch.randn(5, 3, 32, 32)
    out = model(x)
    assert float(out.min()) > -1.0  # ELU on the logits
    # the same arithmetic as torch's own layers (weights w ⊙ m, biases as they are)
    with torch.no_grad():
        ref = x
        for conv, norm, pool in ((model.conv1, model.norm1, model.pool1), (model.conv2, model.norm2, model.pool2),
                                 (model.conv3, model.norm3, model.pool3)):
            w = conv.weight * conv.current_mask()
            ref = pool(norm(nn.functional.elu(nn.functional.conv2d(ref, w, None, 1, 1))))
        ref = nn.functional.elu(nn.functional.linear(ref.flatten(1), fc1.weight * fc1.current_mask(), fc1.bias))
        ref = nn.functional.elu(nn.functional.linear(ref, fc2.weight * fc2.current_mask(), fc2.bias))
    assert torch.allclose(out, ref, atol=1e-6)


def test_authors_cnn_on_fashion_mnist_keeps_its_layers() -> None:
    """1×28×28: one input channel and the same layers, so fc1 sees 256 · 1 · 1."""
    costs = layer_costs(build_model("authors-cnn", (1, 28, 28), 10), (1, 28, 28))
    assert [(c.in_channels, c.out_channels) for c in costs] == [(1, 64), (64, 128), (128, 256), (256, 192), (192, 10)]
    with pytest.raises(UsageError, match="at least 21x21"):
        build_model("authors-cnn", (1, 20, 20), 10)


def test_init_schemes_are_part_of_the_spec() -> None:
    """ModelSpec names both schemes (config.json records them); an unknown one is refused."""
    from dataclasses import asdict

    from dslth_edge.learn.models import ModelSpec

    spec = ModelSpec("paper-cnn", (1, 28, 28), 10, weight_init="pytorch-default", score_init="pytorch-default")
    assert {"weight_init": "pytorch-default", "score_init": "pytorch-default"}.items() <= asdict(spec).items()
    a, b = build_model(spec), build_model("paper-cnn", (1, 28, 28), 10)
    assert float(a.conv2.weight.std()) * 6**0.5 == pytest.approx(float(b.conv2.weight.std()), rel=0.02)
    assert float(b.conv2.scores.abs().max()) / float(a.conv2.scores.abs().max()) == pytest.approx(6**0.5, rel=0.01)
    with pytest.raises(UsageError, match="unknown score init"):
        ModelSpec("paper-cnn", (1, 28, 28), 10, score_init="xavier")
