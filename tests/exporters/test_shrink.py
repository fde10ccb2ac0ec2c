"""shrink: masked model ≡ shrunk model, coupled channels, zero-channel padding, save/load without pickles."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

pytest.importorskip("torch_pruning")

from dslth_edge.errors import ExportError  # noqa: E402
from dslth_edge.learn.masking import ChannelGate, MaskedConv2d, MaskedLinear, masked_layers, set_masks, topk_mask  # noqa: E402
from dslth_edge.learn.models import ModelSpec, build_model  # noqa: E402
from dslth_edge.cost.macs import count_macs  # noqa: E402
from dslth_edge.exporters.shrink import (  # noqa: E402
    SHRINK_JSON,
    SHRUNK_ARRAYS,
    count_params,
    fold_batchnorm,
    load_shrunk,
    padded_width,
    save_shrunk,
    shrink,
    shrunk_info,
    to_plain,
)

SHAPES = {"paper-cnn": (1, 28, 28), "mcu-cnn": (1, 28, 28), "resnet-8": (3, 32, 32)}
TOL = 1e-5


def _randomise_bn(model: nn.Module, seed: int) -> None:
    """Non-trivial running statistics: eval-mode equivalence must hold with real BN shifts."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.5)


@pytest.fixture(scope="module")
def zoo() -> dict[str, nn.Module]:
    models = {}
    for i, (name, shape) in enumerate(SHAPES.items()):
        m = build_model(ModelSpec(name, shape, 10, keep=1.0))
        _randomise_bn(m, i)
        models[name] = m.eval()
    return models


@pytest.fixture(scope="module")
def real_inputs() -> dict[tuple[int, int, int], torch.Tensor]:
    from dslth_edge.data import load_dataset

    out = {}
    for shape in set(SHAPES.values()):
        ds = load_dataset("synthetic", synthetic_shape=shape, synthetic_train_size=100, synthetic_test_size=64)
        out[shape] = torch.from_numpy(ds.x_test)
    return out


def _pin(model: nn.Module, keep: float, granularity: str) -> list[torch.Tensor]:
    masks = [topk_mask(layer.scores, keep, granularity) for _, layer in masked_layers(model)]
    set_masks(model, masks)
    return masks


def _max_diff(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float((a(x) - b(x)).abs().max())


def _alive(mask: torch.Tensor) -> set[int]:
    return {int(i) for i in torch.nonzero(mask.reshape(mask.shape[0], -1).any(1)).flatten()}


@pytest.mark.parametrize("granularity", ["unstructured", "channel"])
@pytest.mark.parametrize("name", list(SHAPES))
def test_shrunk_equals_masked(zoo, real_inputs, name: str, granularity: str) -> None:
    model, shape = zoo[name], SHAPES[name]
    x_rand = torch.randn(16, *shape, generator=torch.Generator().manual_seed(1))
    for keep in (0.1, 0.3, 0.5):
        _pin(model, keep, granularity)
        shrunk = shrink(model, shape)
        assert not any(isinstance(m, (MaskedConv2d, MaskedLinear, ChannelGate)) for m in shrunk.modules())
        for x in (x_rand, real_inputs[shape]):
            d = _max_diff(model, shrunk, x)
            assert d <= TOL, f"{name} {granularity} keep {keep}: max |masked - shrunk| = {d:.2e}"
        if granularity == "channel":
            assert count_macs(shrunk, shape) < count_macs(model, shape)
    set_masks(model, None)


def test_every_dead_channel_goes_and_residual_unions_survive(zoo) -> None:
    """Channel masks: widths are exactly the kept counts; an add keeps the union of its members."""
    for name in SHAPES:
        model = zoo[name]
        masks = dict(zip([n for n, _ in masked_layers(model)], _pin(model, 0.3, "channel")))
        widths = shrunk_info(shrink(model, SHAPES[name])).widths()
        last = list(masks)[-1]
        assert widths[last] == 10  # the classifier keeps every class
        if name != "resnet-8":
            for layer, m in masks.items():
                if layer != last:
                    assert widths[layer] == len(_alive(m)), layer
            continue
        union = lambda *ls: len(set().union(*(_alive(masks[n]) for n in ls)))  # noqa: E731
        assert widths["stem.conv"] == widths["stack1.body2.conv"] == union("stem.conv", "stack1.body2.conv")
        for s in ("stack2", "stack3"):
            assert widths[f"{s}.body2.conv"] == widths[f"{s}.shortcut"] == union(f"{s}.body2.conv", f"{s}.shortcut")
            assert widths[f"{s}.body1.conv"] == len(_alive(masks[f"{s}.body1.conv"]))
    for m in zoo.values():
        set_masks(m, None)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_channel_masks_resnet(zoo, data) -> None:
    """Any channel subsets (one channel at least per layer) shrink exactly, coupled through the adds."""
    model = zoo["resnet-8"]
    masks = _random_channel_masks(model, data)
    set_masks(model, masks)
    x = torch.randn(4, *SHAPES["resnet-8"], generator=torch.Generator().manual_seed(2))
    try:
        assert _max_diff(model, shrink(model, SHAPES["resnet-8"]), x) <= TOL
    finally:
        set_masks(model, None)


def test_gated_channel_kept_by_the_add_outputs_zero(zoo) -> None:
    """body2 drops channel 0, the shortcut keeps it: the channel stays, body2's part of it is exactly 0."""
    model = zoo["resnet-8"]
    masks = _pin(model, 1.0, "channel")
    names = [n for n, _ in masked_layers(model)]
    masks[names.index("stack2.body2.conv")][0] = False
    set_masks(model, masks)
    plain = to_plain(model)
    bn = plain.stack2.body2.bn
    assert float(bn.weight.detach()[0]) == 0.0 and float(bn.bias.detach()[0]) == 0.0
    shrunk = shrink(model, SHAPES["resnet-8"])
    assert shrunk_info(shrunk).widths()["stack2.body2.conv"] == 32
    assert _max_diff(model, shrunk, torch.randn(4, *SHAPES["resnet-8"])) <= TOL
    set_masks(model, None)


class _DepthwiseNet(nn.Module):
    """conv → BN → gate → depthwise → BN → gate → pointwise → GAP → fc (a DS-CNN block)."""

    def __init__(self) -> None:
        super().__init__()
        kw = {"keep": 1.0, "granularity": "channel"}
        self.conv = MaskedConv2d(1, 8, 3, padding=1, stream=0, **kw)
        self.bn = nn.BatchNorm2d(8, affine=False)
        self.gate = ChannelGate(self.conv)
        self.dw = _Block(MaskedConv2d(8, 8, 3, padding=1, groups=8, stream=1, **kw))
        self.pw = MaskedConv2d(8, 16, 1, stream=2, **kw)
        self.fc = MaskedLinear(16, 4, stream=3, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.gate(self.bn(self.conv(x))))
        x = torch.relu(self.dw(x))
        return self.fc(torch.relu(self.pw(x)).mean((2, 3)))


class _Block(nn.Module):
    def __init__(self, conv: MaskedConv2d) -> None:
        super().__init__()
        self.conv, self.bn, self.gate = conv, nn.BatchNorm2d(conv.out_channels, affine=False), ChannelGate(conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gate(self.bn(self.conv(x)))


def test_depthwise_coupling() -> None:
    net = _DepthwiseNet()
    _randomise_bn(net, 5)
    net.eval()
    masks = [layer.current_mask().clone() for _, layer in masked_layers(net)]
    masks[0][[1, 2]] = False  # conv drops 1, 2: the depthwise keeps them alive (BN shift) -> they stay
    masks[1][[2, 5, 6]] = False  # the depthwise drops 2, 5, 6: nothing reads them any more -> they go
    set_masks(net, masks)
    shrunk = shrink(net, (1, 8, 8))
    widths = shrunk_info(shrunk).widths()
    assert widths["conv"] == widths["dw.conv"] == 5
    assert shrunk.dw.conv.groups == 5
    assert shrunk_info(shrunk).arch is None
    assert _max_diff(net, shrunk, torch.randn(4, 1, 8, 8)) <= TOL
    with pytest.raises(ExportError, match="zoo"):
        save_shrunk(shrunk, "/nonexistent-not-written", {})


def test_shrink_couples_what_the_plan_couples(zoo, monkeypatch) -> None:
    """Shrink's pruning engine and the planner's residual analysis (cost.residual) name the same
    coupled layers on ResNet-8; when they differ, shrink refuses instead of missing the plan."""
    from dslth_edge.device.keep import residual_groups as planned_groups
    from dslth_edge.exporters import shrink as shrink_module

    model, shape = zoo["resnet-8"], SHAPES["resnet-8"]
    assert len(planned_groups(model, shape)) == 3
    shrink(model, shape)  # agrees: no error
    monkeypatch.setattr(shrink_module, "residual_groups", lambda plain, shape: (frozenset({"stem.conv", "stack2.shortcut"}),))
    with pytest.raises(ExportError, match="torch-pruning couples the layers .*stack1.body2.conv.* but the residual analysis"):
        shrink(model, shape)


def test_padded_width() -> None:
    assert padded_width(13, 64, 4) == 16
    assert padded_width(16, 64, 4) == 16
    assert padded_width(0, 64, 8) == 8  # a layer keeps one block even when nothing is read
    assert padded_width(0, 64, 1) == 1
    assert padded_width(61, 62, 8) == 62  # never past the dense width
    with pytest.raises(ExportError, match="multiple"):
        padded_width(3, 8, 0)


def _zero_rows(shrunk: nn.Module, x: torch.Tensor) -> dict[str, set[int]]:
    """Per conv/linear layer: output channels that are exactly 0 after the layer and its
    BatchNorm (a sibling named ``bn``) for every input in ``x``."""
    outs: dict[str, torch.Tensor] = {}
    hooks = []
    for name, mod in shrunk.named_modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            parent = shrunk.get_submodule(name.rpartition(".")[0]) if "." in name else shrunk
            bn = getattr(parent, "bn", None) if name.endswith(".conv") else None
            target = bn if isinstance(bn, nn.BatchNorm2d) else mod

            def hook(m: nn.Module, i: tuple[torch.Tensor, ...], o: torch.Tensor, name: str = name) -> None:
                outs[name] = o
            hooks.append(target.register_forward_hook(hook))
    with torch.no_grad():
        shrunk(x)
    for h in hooks:
        h.remove()
    return {n: {c for c in range(o.shape[1]) if bool((o[:, c] == 0).all())} for n, o in outs.items()}


def _check_padding(model: nn.Module, shape: tuple[int, int, int], multiple: int, x: torch.Tensor) -> nn.Module:
    """Shrink ``model`` padded to ``multiple`` and check everything padding promises."""
    # channels some consumer reads: the unpadded width less its one zero channel, if it needed one
    live = {w.name: w.out_channels - len(w.padded) for w in shrunk_info(shrink(model, shape, channel_multiple=1)).layers}
    shrunk = shrink(model, shape, channel_multiple=multiple)
    info = shrunk_info(shrunk)
    assert info.channel_multiple == multiple
    d = _max_diff(model, shrunk, x)
    assert d <= TOL, f"padded to {multiple}: max |masked - shrunk| = {d:.2e}"
    masks = {n: layer.current_mask() for n, layer in masked_layers(model)}
    zero = _zero_rows(shrunk, x)
    last = info.layers[-1].name
    for w in info.layers:
        if w.name == last:
            assert w.out_channels == w.dense_out and not w.padded  # the classes are never padded
            continue
        # the width is the live width rounded up to the multiple (never past the dense width)
        assert w.out_channels == padded_width(live[w.name], w.dense_out, multiple), w.name
        assert w.out_channels % multiple == 0 or w.out_channels == w.dense_out, w.name
        assert len(w.padded) == w.out_channels - live[w.name], w.name
        mod = shrunk.get_submodule(w.name)
        for c in w.padded:  # exactly zero: weights, and the value after BatchNorm
            assert bool((mod.weight[c] == 0).all()), (w.name, c)
            assert c in zero[w.name], (w.name, c)
        # no pruned channel came back: no more non-zero rows than the mask keeps alive
        rows = int(mod.weight.reshape(mod.weight.shape[0], -1).ne(0).any(1).sum())
        assert rows <= len(_alive(masks[w.name])), w.name
        assert w.nonzero <= int(masks[w.name].sum()), w.name
    return shrunk


@pytest.mark.parametrize("multiple", [4, 16])  # 8: the tests below
@pytest.mark.parametrize("granularity", ["channel", "unstructured"])
@pytest.mark.parametrize("name", list(SHAPES))
def test_padding_keeps_the_function(zoo, real_inputs, name: str, granularity: str, multiple: int) -> None:
    """Zero-channel padding: same outputs as the masked model, widths on the multiple, zero pads."""
    model, shape = zoo[name], SHAPES[name]
    _pin(model, 0.3 if granularity == "channel" else 0.1, granularity)
    try:
        _check_padding(model, shape, multiple, real_inputs[shape])
    finally:
        set_masks(model, None)


def test_padding_zeroes_the_consumers_columns(zoo) -> None:
    """paper-cnn: a padded conv3 channel c is zero in fc1's flattened columns c*9 … c*9+8
    (28 → 14 → 7 → 3 after three pools), a padded conv1 channel in conv2's input."""
    model, shape = zoo["paper-cnn"], SHAPES["paper-cnn"]
    _pin(model, 0.3, "channel")
    try:
        shrunk = shrink(model, shape, channel_multiple=8)
    finally:
        set_masks(model, None)
    pad = {w.name: w.padded for w in shrunk_info(shrunk).layers}
    assert pad["conv1"] and pad["conv3"], pad  # 19 and 77 kept channels: both padded
    for c in pad["conv1"]:
        assert bool((shrunk.conv2.weight[:, c] == 0).all())
    hw = 3 * 3
    assert shrunk.fc1.in_features == shrunk.conv3.out_channels * hw
    for c in pad["conv3"]:
        assert bool((shrunk.fc1.weight[:, c * hw:(c + 1) * hw] == 0).all())
    for c in pad["fc1"]:
        assert bool((shrunk.fc2.weight[:, c] == 0).all())


def test_padding_resnet_groups_pad_together(zoo) -> None:
    """Channels a residual add sums are padded in every member: the add adds zeros to zeros."""
    model, shape = zoo["resnet-8"], SHAPES["resnet-8"]
    _pin(model, 0.3, "channel")
    try:
        shrunk = _check_padding(model, shape, 8, torch.randn(4, *shape, generator=torch.Generator().manual_seed(3)))
    finally:
        set_masks(model, None)
    info = {w.name: w for w in shrunk_info(shrunk).layers}
    assert info["stem.conv"].out_channels == info["stack1.body2.conv"].out_channels
    assert info["stem.conv"].padded == info["stack1.body2.conv"].padded  # identity shortcut: same slots
    for s in ("stack2", "stack3"):
        assert info[f"{s}.body2.conv"].out_channels == info[f"{s}.shortcut"].out_channels
        assert len(info[f"{s}.body2.conv"].padded) == len(info[f"{s}.shortcut"].padded)


def _random_channel_masks(model: nn.Module, data: st.DataObject) -> list[torch.Tensor]:
    masks = []
    for _, layer in masked_layers(model):
        c = layer.weight.shape[0]
        keep = data.draw(st.sets(st.integers(0, c - 1), min_size=1, max_size=c))
        row = torch.zeros(c, dtype=torch.bool)
        row[list(keep)] = True
        masks.append(row.view(c, *([1] * (layer.weight.dim() - 1))).expand_as(layer.weight).clone())
    return masks


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), name=st.sampled_from(["mcu-cnn", "resnet-8"]), multiple=st.sampled_from([1, 2, 3, 4, 8, 16]))
def test_padding_property(zoo, data, name: str, multiple: int) -> None:
    """Any channel subsets, any multiple: exact function, widths on the multiple, zero pads, nothing re-admitted."""
    model, shape = zoo[name], SHAPES[name]
    set_masks(model, _random_channel_masks(model, data))
    try:
        _check_padding(model, shape, multiple, torch.randn(4, *shape, generator=torch.Generator().manual_seed(2)))
    finally:
        set_masks(model, None)


def test_save_load_roundtrip(zoo, tmp_path) -> None:
    model, shape = zoo["resnet-8"], SHAPES["resnet-8"]
    _pin(model, 0.3, "channel")
    shrunk = shrink(model, shape, channel_multiple=8)
    set_masks(model, None)
    path = save_shrunk(shrunk, tmp_path, {"node": 3, "profile": "x86-host", "keep": 0.3, "weights_fingerprint": "ab" * 32})
    doc = json.loads(path.read_text())
    assert doc["provenance"]["node"] == 3 and doc["arch"] == "resnet-8"
    assert doc["widths"] == shrunk_info(shrunk).widths() and doc["channel_multiple"] == 8
    with np.load(tmp_path / SHRUNK_ARRAYS, allow_pickle=False) as data:
        assert all(data[k].dtype != object for k in data.files)
    loaded = load_shrunk(tmp_path)
    x = torch.randn(4, *shape)
    with torch.no_grad():
        assert torch.equal(loaded(x), shrunk(x))
    assert count_params(loaded) == count_params(shrunk) == doc["params"]
    assert shrunk_info(loaded) == shrunk_info(shrunk) and shrunk_info(loaded).padding()
    # a shrink.json written before padding existed (no "padded", no "channel_multiple") still loads
    for w in doc["layers"]:
        del w["padded"]
    del doc["channel_multiple"]
    path.write_text(json.dumps(doc))
    old = shrunk_info(load_shrunk(tmp_path))
    assert old.channel_multiple == 1 and old.padding() == {} and old.widths() == shrunk_info(shrunk).widths()


def test_load_refuses_pickles_and_damage(tmp_path) -> None:
    model = build_model(ModelSpec("mcu-cnn", (1, 16, 16), 4, keep=0.5, granularity="channel"))
    shrunk = shrink(model.eval(), (1, 16, 16))
    save_shrunk(shrunk, tmp_path, {})
    np.savez(tmp_path / SHRUNK_ARRAYS, **{"fc.weight": np.array([{"x": 1}], dtype=object)})
    with pytest.raises(ExportError, match="unreadable"):
        load_shrunk(tmp_path / SHRINK_JSON)
    (tmp_path / SHRINK_JSON).write_text("{not json")
    with pytest.raises(ExportError):
        load_shrunk(tmp_path)
    with pytest.raises(ExportError, match="no shrunk model"):
        load_shrunk(tmp_path / "missing")


def test_costs() -> None:
    model = build_model(ModelSpec("paper-cnn", (1, 28, 28), 10, keep=0.5, granularity="channel")).eval()
    dense_macs = 64 * 25 * 28 * 28 + 128 * 64 * 25 * 14 * 14 + 256 * 128 * 25 * 7 * 7 + 2304 * 192 + 192 * 10
    assert count_macs(model, (1, 28, 28)) == dense_macs
    shrunk = shrink(model, (1, 28, 28))
    assert count_macs(shrunk, (1, 28, 28)) == 32 * 25 * 784 + 64 * 32 * 25 * 196 + 128 * 64 * 25 * 49 + 1152 * 96 + 96 * 10
    assert count_params(shrunk) == 32 * 25 + 64 * 32 * 25 + 128 * 64 * 25 + 1152 * 96 + 96 * 10


def test_fold_batchnorm(zoo) -> None:
    model, shape = zoo["mcu-cnn"], SHAPES["mcu-cnn"]
    _pin(model, 0.3, "channel")
    folded = fold_batchnorm(shrink(model, shape))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert shrunk_info(folded).arch == "mcu-cnn"
    assert _max_diff(model, folded, torch.randn(8, *shape)) <= TOL
    set_masks(model, None)


def test_authors_cnn_keeps_its_channels_and_biases(tmp_path) -> None:
    """authors-cnn: LRN mixes neighbouring conv channels and fc1's fixed bias keeps an
    empty row alive, so shrink removes nothing there (removing an interior channel would
    shift every LRN window after it); the result is exact and saves with its biases."""
    shape = (1, 28, 28)
    model = build_model(ModelSpec("authors-cnn", shape, 10, keep=0.3, weight_init="pytorch-default")).eval()
    masks = [layer.current_mask().clone() for _, layer in masked_layers(model)]
    masks[1][50:60] = False  # ten interior conv2 channels with no weight
    masks[3][100:110] = False  # ten fc1 rows with no weight: they still output ELU(bias)
    set_masks(model, masks)
    shrunk = shrink(model, shape)
    assert shrunk_info(shrunk).widths() == {"conv1": 64, "conv2": 128, "conv3": 256, "fc1": 192, "fc2": 10}
    assert torch.equal(shrunk.fc1.bias, model.fc1.bias) and torch.equal(shrunk.fc2.bias, model.fc2.bias)
    x = torch.randn(8, *shape, generator=torch.Generator().manual_seed(2))
    assert _max_diff(model, shrunk, x) == 0.0
    save_shrunk(shrunk, tmp_path, {"node": 0})
    with torch.no_grad():
        assert torch.equal(load_shrunk(tmp_path)(x), shrunk(x))
