"""The update rules on tiny hand-checkable tensors, presets, and the dense payload."""

from __future__ import annotations

import pytest
import torch

from dslth_edge.learn.algorithm import (
    PRESETS,
    aggregated_scores,
    aggregation_shift,
    drop_sparse_channels,
    get_preset,
    neighbour_average,
    personalized_finetune_,
    reference_bytes,
    topk_mask,
)
from dslth_edge.fleet.dense_exchange import DENSE_OVERHEAD, decode_dense, encode_dense
from dslth_edge.errors import FrameError, UsageError


def test_aggregation_tensor_by_hand() -> None:
    # mean|z| = (1 + 2 + 0.5 + 0.5) / 4 = 1
    z = torch.tensor([[1.0, -2.0], [0.5, -0.5]])
    mbar = torch.tensor([[1.0, 0.0], [0.5, 1.0]])
    # (1): y = z + β · mean|z| · sign(z) ⊙ m̄
    assert torch.equal(aggregation_shift(z, mbar, 1.0), torch.tensor([[1.0, 0.0], [0.5, -1.0]]))
    assert torch.equal(aggregated_scores(z, mbar, 1.0), torch.tensor([[2.0, -2.0], [1.0, -1.5]]))
    assert torch.equal(aggregated_scores(z, mbar, 0.5), torch.tensor([[1.5, -2.0], [0.75, -1.0]]))
    # no neighbours: y = z
    assert torch.equal(aggregated_scores(z, None, 1.0), z)


def test_shift_carries_no_gradient() -> None:
    z = torch.tensor([1.0, -3.0], requires_grad=True)
    y = aggregated_scores(z, torch.tensor([1.0, 1.0]), 1.0)
    y.sum().backward()
    assert torch.equal(z.grad, torch.ones(2))  # straight: ∂y/∂z = 1


def test_topk_by_magnitude_and_ties() -> None:
    # (2): TopK(|y|); keep 0.5 of 4 -> 2 entries; sign does not matter
    assert topk_mask(torch.tensor([-3.0, 2.0, -2.5, 1.0]), 0.5).tolist() == [True, False, True, False]
    # a tie straddling the threshold goes to the lower indices
    assert topk_mask(torch.tensor([3.0, 2.0, 2.0, 2.0]), 0.5).tolist() == [True, True, False, False]
    assert topk_mask(torch.tensor([2.0, 2.0, 2.0, 2.0]), 0.25).tolist() == [True, False, False, False]
    # per layer count: round-half-up, at least one
    assert int(topk_mask(torch.zeros(10), 0.01).sum()) == 1
    assert int(topk_mask(torch.arange(10.0), 0.25).sum()) == 3  # 2.5 -> 3


def test_personalized_finetune_by_hand() -> None:
    # (5): z ← z − η_ft · g ⊙ m̄
    z = torch.tensor([1.0, 2.0, 3.0])
    personalized_finetune_(z, torch.tensor([0.1, -0.2, 5.0]), torch.tensor([1.0, 0.5, 0.0]), 10.0)
    assert torch.allclose(z, torch.tensor([0.0, 3.0, 3.0]))


def test_neighbour_average_mixed_keep_ratios() -> None:
    # masks of nodes with keep 0.5 and 0.25 are averaged as they are
    a = torch.tensor([True, True, False, False])
    b = torch.tensor([True, False, False, False])
    assert torch.equal(neighbour_average([a, b]), torch.tensor([1.0, 0.5, 0.0, 0.0]))
    assert neighbour_average([]) is None


def test_structured_drop_by_hand() -> None:
    mask = torch.tensor([[True, True, True, False], [True, False, False, False], [False] * 4])
    # relative to the layer's keep 0.5: channels keeping < 0.5 * 0.5 = 1/4 go; channel 1 keeps exactly 1/4
    assert torch.equal(drop_sparse_channels(mask, 0.5, keep=0.5), mask)
    out = drop_sparse_channels(mask, 0.6, keep=0.5)  # < 0.3: channel 1 (1/4) dropped whole
    assert out.tolist() == [[True, True, True, False], [False] * 4, [False] * 4]
    assert torch.equal(drop_sparse_channels(mask, 0.0, keep=0.5), mask)


def test_presets() -> None:
    ref = PRESETS["reference"]
    assert (ref.lr, ref.momentum, ref.weight_decay, ref.batch_size, ref.local_steps, ref.beta, ref.ft_lr) == (10.0, 0.0, 5e-4, 128, 1, 1.0, 10.0)
    assert not ref.ft_recompute
    cfg = get_preset("reference", "consensus", lr=None, batch_size=64)
    assert cfg.name == "consensus" and cfg.batch_size == 64 and cfg.lr == 10.0
    assert get_preset("default", "dpsgd").is_dense and not get_preset("default", "local").communicates
    with pytest.raises(UsageError):
        get_preset("nope")
    with pytest.raises(UsageError):
        get_preset("default", "fedavg")


def test_reference_bytes() -> None:
    assert reference_bytes(17, 3) == 9  # ceil(17 / 8) = 3 bytes x 3 neighbours
    assert reference_bytes(10, 2, bits_per_weight=32) == 80


def test_dense_payload_roundtrip_and_checks() -> None:
    v = torch.tensor([1.5, -2.0, 0.25])
    fp = bytes(range(32))
    data = encode_dense(v, sender=3, round=7, fingerprint=fp)
    assert len(data) == DENSE_OVERHEAD + 4 * 3
    sender, rnd, out = decode_dense(data, expected_len=3, fingerprint=fp)
    assert (sender, rnd) == (3, 7) and torch.equal(out, v)
    bad = bytearray(data)
    bad[30] ^= 1
    with pytest.raises(FrameError, match="CRC"):
        decode_dense(bytes(bad), expected_len=3, fingerprint=fp)
    with pytest.raises(FrameError):
        decode_dense(data[:-1], expected_len=3, fingerprint=fp)
    with pytest.raises(FrameError):
        decode_dense(data, expected_len=4, fingerprint=fp)
    with pytest.raises(FrameError, match="architecture"):
        decode_dense(data, expected_len=3, fingerprint=bytes(32))
    with pytest.raises(FrameError, match="magic"):
        decode_dense(b"XXXX" + data[4:], expected_len=3, fingerprint=fp)
