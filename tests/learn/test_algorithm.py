"""The update rules on tiny hand-checkable tensors, presets, and the dense payload."""

from __future__ import annotations

import pytest
import torch

from dslth_edge.learn.algorithm import (
    PRESETS,
    PRESET_RUNS,
    aggregated_scores,
    aggregation_shift,
    drop_sparse_channels,
    get_preset,
    in_personal_phase,
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


def test_the_paper_preset_uses_the_authors_initialisation(tmp_path) -> None:
    """paper: weights and scores U(±1/√fan_in) (ZhuoJTian/MCE-PL layers_att3.py); default and
    reference keep the earlier schemes; config.json names both for every node."""
    import json

    from dslth_edge.fleet.plan import FleetOptions, make_node, plan_fleet

    assert (PRESET_RUNS["paper"].weight_init, PRESET_RUNS["paper"].score_init) == ("pytorch-default", "pytorch-default")
    for name in ("default", "reference"):
        assert (PRESET_RUNS[name].weight_init, PRESET_RUNS[name].score_init) == ("kaiming-normal", "kaiming-uniform")
    base = dict(nodes=2, topology="ring", dataset="synthetic", model="mcu-cnn", rounds=1, eval_every=0, keep=0.5)
    assert (FleetOptions(preset="paper", **base).weight_init, FleetOptions(preset="paper", **base).score_init) == (
        "pytorch-default", "pytorch-default")
    opts = FleetOptions(preset="paper", score_init="kaiming-uniform", **base)  # a given scheme wins over the preset's
    node = make_node(plan_fleet(opts), 1, None, tmp_path)
    node.start()
    model = json.loads((tmp_path / "node-1" / "config.json").read_text())["model"]
    assert (model["weight_init"], model["score_init"]) == ("pytorch-default", "kaiming-uniform")
    bound = float(node.layers[0].weight[0].numel()) ** -0.5
    assert float(node.layers[0].weight.abs().max()) <= bound < float(node.layers[0].scores.detach().abs().max())


def test_personal_phase() -> None:
    """dpsgd-ft's last ft_rounds rounds are local; mce-pl gets the same phase only when asked."""
    assert [in_personal_phase(get_preset("default", "dpsgd-ft", ft_rounds=2), k, 10) for k in (7, 8, 9)] == [False, True, True]
    assert not any(in_personal_phase(get_preset("default", "mce-pl"), k, 10) for k in range(10))
    assert [in_personal_phase(get_preset("default", "mce-pl", ft_rounds=3), k, 10) for k in (6, 7)] == [False, True]
    assert not in_personal_phase(get_preset("default", "local", ft_rounds=3), 9, 10)


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
