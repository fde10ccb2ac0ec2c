"""Masked layers: seeded weights, top-k with ties, straight-through gradients, gates."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dslth_edge.errors import UsageError, WeightsError
from dslth_edge.learn.masking import (
    MaskedConv2d,
    MaskedLinear,
    DEFAULT_SCORE_INIT,
    DEFAULT_WEIGHT_INIT,
    drop_sparse_channels,
    fixed_bias,
    group_lasso,
    init_scores,
    init_weights,
    keep_count,
    load_weights,
    save_weights,
    seeded_uniform,
    set_masks,
    get_masks,
    topk_mask,
    weights_fingerprint,
)
from dslth_edge.learn.models import build_model

# Golden hashes: the fixed weights must be the same bytes on every platform and version.
GOLDEN = {
    "kaiming-normal": "437994a60c6cf1c6f5c9e5f56b78060315c067f11f8f1884a0caee470fa86e40",
    "kaiming-uniform": "4067af9497e529cd8f38afccde12cf89cf43be42d906bdd1b046c9d581e724c0",
    "signed-constant": "3348188ef57971daaf36ed7cc37492fe19f120303f0ca471e8acefe3960b53d6",
    # the authors' scale, U(±1/√fan_in) (issue 26): a new scheme, a new hash
    "pytorch-default": "549f3dc28fa86e69e1662956e59b45fd11a2708c571e8b4094f98c6ed24d1d8d",
}
#: fixed_bias(192, 1024, 7, 3): authors-cnn's fixed FC biases
BIAS_GOLDEN = "3df640519bf83dd71647d78930084ab8bf56b66ec8b0e706f4da965151fb2772"
AUTHORS_CNN_FINGERPRINT = "740e0f3295bce702a6095c4f561eb5db9d268a6a9e11f8df513fb77288ab24b3"
PAPER_CNN_FINGERPRINT = "2b171921ac32f8f81a0bd0f74a234b9b45ea518b7584d2ce775fab974930d639"


@pytest.mark.parametrize("scheme", sorted(GOLDEN))
def test_fixed_weights_golden_hash(scheme: str) -> None:
    w = init_weights((64, 1, 5, 5), 7, 3, scheme)
    assert hashlib.sha256(w.numpy().astype("<f4").tobytes()).hexdigest() == GOLDEN[scheme]


def test_paper_cnn_fingerprint_is_pinned() -> None:
    assert weights_fingerprint(build_model("paper-cnn", (1, 28, 28), 10)).hex() == PAPER_CNN_FINGERPRINT


def test_fixed_bias_and_authors_cnn_fingerprint_are_pinned() -> None:
    b = fixed_bias(192, 1024, 7, 3)
    assert hashlib.sha256(b.numpy().astype("<f4").tobytes()).hexdigest() == BIAS_GOLDEN
    model = build_model("authors-cnn", (3, 32, 32), 10, weight_init="pytorch-default")
    assert weights_fingerprint(model).hex() == AUTHORS_CNN_FINGERPRINT
    # the bias has its own stream: a layer's weights are the same with or without one
    with_bias, without = MaskedLinear(1024, 192, seed=7, stream=3, bias=True), MaskedLinear(1024, 192, seed=7, stream=3)
    assert torch.equal(with_bias.weight, without.weight) and not torch.equal(with_bias.bias[:8], with_bias.weight[0, :8])
    assert weights_fingerprint(with_bias) != weights_fingerprint(without)  # a fixed bias is part of w


def test_pytorch_default_is_the_authors_scale() -> None:
    """U(±1/√fan_in): torch.nn.Conv2d's own init range (kaiming_uniform_(a=√5)), √6× narrower than kaiming-uniform."""
    shape = (256, 128, 5, 5)
    bound = (1 / (128 * 25)) ** 0.5
    w = init_weights(shape, 0, 0, "pytorch-default")
    ref = torch.nn.Conv2d(128, 256, 5).weight.detach()  # PyTorch's default, its own random draw
    assert float(w.abs().max()) <= bound and float(ref.abs().max()) <= bound * (1 + 1e-6)
    assert float(w.std()) == pytest.approx(float(ref.std()), rel=0.01)
    assert float(w.std()) == pytest.approx(bound / 3**0.5, rel=0.01)
    ku = init_weights(shape, 0, 0, "kaiming-uniform")
    assert float(ku.std()) / float(w.std()) == pytest.approx(6**0.5, rel=1e-6)  # same bits, another scale
    b = fixed_bias(192, 1024, 0, 0)
    assert float(b.abs().max()) <= 1 / 32 and float(b.std()) == pytest.approx(1 / 32 / 3**0.5, rel=0.15)


def test_score_init_is_selectable_and_the_default_is_unchanged() -> None:
    """The default scores are kaiming-uniform, bit for bit what every earlier run drew; the
    authors' scores are pytorch-default; the weights do not depend on the score scheme."""
    assert (DEFAULT_WEIGHT_INIT, DEFAULT_SCORE_INIT) == ("kaiming-normal", "kaiming-uniform")
    old = MaskedLinear(30, 20, seed=1, stream=2, score_seed=9)
    assert torch.equal(old.scores.detach(), init_weights((20, 30), 9, 2, "kaiming-uniform"))
    authors = MaskedLinear(30, 20, seed=1, stream=2, score_seed=9, score_init="pytorch-default",
                           weight_init="pytorch-default")
    assert torch.equal(authors.scores.detach(), init_scores((20, 30), 9, 2, "pytorch-default"))
    assert float(authors.scores.abs().max()) <= 30**-0.5
    assert torch.equal(authors.weight, init_weights((20, 30), 1, 2, "pytorch-default"))
    assert torch.equal(MaskedLinear(30, 20, seed=1, stream=2, score_init="pytorch-default").weight, old.weight)
    with pytest.raises(UsageError, match="unknown weight init"):
        init_scores((2, 2), 0, 0, "xavier")


def test_uniform_bits_are_pcg64_raw_bits() -> None:
    bits = np.random.PCG64(np.random.SeedSequence([5, 2])).random_raw(4)
    assert seeded_uniform(5, 2, 4).tolist() == [float(b >> 11) * 2.0**-53 for b in bits.tolist()]


def test_weight_statistics_follow_kaiming() -> None:
    std = (2 / (128 * 9)) ** 0.5
    w = init_weights((256, 128, 3, 3), 0, 0, "kaiming-normal")
    assert float(w.std()) == pytest.approx(std, rel=0.01)
    assert abs(float(w.mean())) < 0.01 * std
    sc = init_weights((8, 4), 0, 0, "signed-constant")
    assert sc.abs().unique().tolist() == [pytest.approx((2 / 4) ** 0.5)]
    assert 0 < int((sc > 0).sum()) < 32


def test_topk_ties_go_to_lower_indices() -> None:
    y = torch.tensor([1.0, -3.0, 2.0, 2.0, -2.0, 0.5])
    # keep 3 of 6: |y| = 1, 3, 2, 2, 2, .5 -> 3 plus the first two of the three tied 2s
    assert topk_mask(y, 0.5).tolist() == [False, True, True, True, False, False]


@given(st.lists(st.integers(-3, 3), min_size=1, max_size=60), st.floats(0.01, 1.0))
@settings(max_examples=200, deadline=None)
def test_topk_keeps_exactly_k_largest(values: list[int], keep: float) -> None:
    y = torch.tensor(values, dtype=torch.float32)
    m = topk_mask(y, keep)
    k = keep_count(len(values), keep)
    assert int(m.sum()) == k
    a = y.abs()
    if k < len(values):
        assert float(a[m].min()) >= float(a[~m].max())


def test_channel_granularity_keeps_whole_channels() -> None:
    y = torch.tensor([[0.1, 0.1], [5.0, 0.0], [1.0, 1.0], [0.0, 0.2]])
    m = topk_mask(y, 0.5, "channel")
    assert m.tolist() == [[False, False], [True, True], [True, True], [False, False]]


def test_straight_through_gradient_reaches_scores() -> None:
    layer = MaskedLinear(4, 3, keep=0.5, seed=1, score_seed=2)
    x = torch.randn(5, 4)
    layer(x).sum().backward()
    # d/dz of sum(x @ (w*m)^T) is x.sum(0) * w * sign(z) for every entry, masked or not:
    # the mask ranks |z|, so the gradient passes through the absolute value
    expected = x.sum(0).unsqueeze(0).expand(3, 4) * layer.weight * torch.sign(layer.scores.detach())
    assert torch.allclose(layer.scores.grad, expected, atol=1e-6)


def test_score_shift_changes_the_mask_not_the_gradient_path() -> None:
    layer = MaskedLinear(10, 1, keep=0.2, seed=0, score_seed=0)
    base = layer.current_mask().clone()
    shift = torch.zeros_like(layer.scores)
    shift[0, ~base[0]] = 100.0  # push two unkept entries far up
    layer.score_shift.copy_(shift)
    assert not torch.equal(layer.current_mask(), base)


def test_gate_zeroes_pruned_channels_after_batchnorm() -> None:
    model = build_model("mcu-cnn", (1, 12, 12), 3, granularity="channel", keep=0.25)
    model.train()
    x = torch.randn(8, 1, 12, 12)
    block = model.block1
    out = block(x)
    dead = block.conv.alive == 0
    assert dead.any()
    assert torch.count_nonzero(out[:, dead]) == 0


def test_drop_sparse_channels() -> None:
    m = torch.tensor([[1, 0, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)
    # keep 0.5: τ = 0.6 drops channels keeping < 0.3 of their weights (channel 0 keeps 1/4)
    assert drop_sparse_channels(m, 0.6, keep=0.5).tolist() == [[False] * 4, [True, True, True, False]]
    assert torch.equal(drop_sparse_channels(m, 0.4, keep=0.5), m)  # < 0.2: nothing goes
    assert torch.equal(drop_sparse_channels(m, 0.0, keep=0.5), m)


def test_group_lasso_is_channel_norm_sum() -> None:
    layer = MaskedConv2d(1, 2, 1, keep=1.0)
    with torch.no_grad():
        layer.scores.copy_(torch.tensor([3.0, 4.0]).view(2, 1, 1, 1))
    assert float(group_lasso(layer).detach()) == pytest.approx(7.0)


def test_masks_pin_and_release() -> None:
    model = build_model("mcu-cnn", (1, 8, 8), 2)
    masks = get_masks(model)
    flipped = [~m for m in masks]
    set_masks(model, flipped)
    assert all(torch.equal(a, b) for a, b in zip(get_masks(model), flipped))
    set_masks(model, None)
    assert all(torch.equal(a, b) for a, b in zip(get_masks(model), masks))
    with pytest.raises(UsageError):
        set_masks(model, masks[:1])


def test_weights_file_round_trip(tmp_path) -> None:
    a = build_model("mcu-cnn", (1, 8, 8), 2, weight_seed=1)
    b = build_model("mcu-cnn", (1, 8, 8), 2, weight_seed=2)
    assert weights_fingerprint(a) != weights_fingerprint(b)
    save_weights(a, tmp_path / "w.npz")
    load_weights(b, tmp_path / "w.npz")
    assert weights_fingerprint(a) == weights_fingerprint(b)
    other = build_model("paper-cnn", (1, 8, 8), 2)
    with pytest.raises(WeightsError, match="has no array|shape"):
        load_weights(other, tmp_path / "w.npz")
    with pytest.raises(WeightsError, match="does not exist"):
        load_weights(b, tmp_path / "missing.npz")
    # fixed biases travel with the weights (authors-cnn's FC layers)
    c = build_model("authors-cnn", (1, 24, 24), 3, weight_seed=1)
    d = build_model("authors-cnn", (1, 24, 24), 3, weight_seed=2)
    save_weights(c, tmp_path / "c.npz")
    load_weights(d, tmp_path / "c.npz")
    assert weights_fingerprint(c) == weights_fingerprint(d)
    with pytest.raises(WeightsError, match="no fixed bias"):
        load_weights(d, _without_biases(tmp_path / "c.npz"))


def _without_biases(path):
    """A copy of a weights file without its fixed biases."""
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files if not k.endswith(".bias")}
    out = path.with_name("nobias.npz")
    np.savez(out, **arrays)
    return out


def test_bad_keep_and_granularity_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="keep ratio"):
        MaskedLinear(2, 2, keep=0.0)
    with pytest.raises(UsageError, match="granularity"):
        MaskedLinear(2, 2, granularity="rows")
