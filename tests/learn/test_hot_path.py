"""The training step's fast paths compute bit for bit what the plain formulations do: the
fused masked-weight node against autograd through w * ST(|z + shift|), the numpy top-k
against torch's comparisons, integer neighbour counts against float sums, the in-place
aggregation shift against the expression of (1)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dslth_edge.learn.algorithm import aggregation_shift, neighbour_average
from dslth_edge.learn.masking import MaskedConv2d, MaskedLinear, topk_mask


class _StraightThroughMask(torch.autograd.Function):
    """The unfused reference: m = TopK(|y|) forward; ∂L/∂|y| = ∂L/∂m backward."""

    @staticmethod
    def forward(ctx, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return mask.to(y.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad, None


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32)


def _reference_grad(layer, x: torch.Tensor, gout: torch.Tensor) -> torch.Tensor:
    """The gradient of the scores through the unfused graph (the formulation before the fused node)."""
    layer.scores.grad = None
    mask = layer.current_mask()
    m = _StraightThroughMask.apply((layer.scores + layer.score_shift).abs(), mask)
    w = layer.weight * m
    out = F.conv2d(x, w, None, layer.stride, layer.padding) if isinstance(layer, MaskedConv2d) else F.linear(x, w)
    out.backward(gout)
    g = layer.scores.grad.clone()
    layer.scores.grad = None
    return g


@pytest.mark.parametrize("make", [
    lambda: MaskedConv2d(6, 10, 3, padding=1, keep=0.3, seed=1, score_seed=2),
    lambda: MaskedLinear(50, 20, keep=0.7, seed=3, score_seed=4),
])
def test_fused_masked_weight_gives_the_unfused_gradient(make) -> None:
    torch.manual_seed(0)
    layer = make()
    with torch.no_grad():
        layer.score_shift.copy_(torch.randn_like(layer.scores) * 0.01)
        layer.scores.view(-1)[:3] = 0.0  # sgn(0) = 0 in both
        layer.score_shift.view(-1)[:3] = 0.0
    x = torch.randn(4, 6, 5, 5) if isinstance(layer, MaskedConv2d) else torch.randn(4, 50)
    out = layer(x)
    gout = torch.randn_like(out)
    out.backward(gout)
    fused = layer.scores.grad.clone()
    ref = _reference_grad(layer, x, gout)
    assert torch.equal(_bits(fused), _bits(ref))
    with torch.no_grad():  # the forward value too: w * m
        assert torch.equal(_bits(layer.effective_weight()), _bits(layer.weight * layer.current_mask()))


def test_topk_ties_go_to_lower_indices() -> None:
    y = torch.tensor([0.5, -1.0, 1.0, 0.2, 1.0, -1.0, 0.0, 1.0])
    assert topk_mask(y, 0.5).tolist() == [False, True, True, False, True, True, False, False]
    assert topk_mask(y, 0.25).tolist() == [False, True, True, False, False, False, False, False]
    g = torch.Generator().manual_seed(5)
    z = torch.randint(-3, 4, (1000,), generator=g).float()  # many ties
    for keep in (0.1, 0.33, 0.5, 0.9):
        k = int(np.floor(keep * 1000 + 0.5))
        order = sorted(range(1000), key=lambda i: (-abs(float(z[i])), i))  # by |z|, ties: lower index
        expect = torch.zeros(1000, dtype=torch.bool)
        expect[order[:k]] = True
        assert torch.equal(topk_mask(z, keep), expect)


@pytest.mark.parametrize("n", [1, 2, 7, 255, 256, 300])
def test_neighbour_average_counts_like_float_sums(n: int) -> None:
    g = torch.Generator().manual_seed(n)
    ms = [torch.rand(3, 7, generator=g) < 0.4 for _ in range(n)]
    acc = torch.zeros(3, 7)
    for m in ms:
        acc += m.to(torch.float32)
    assert torch.equal(_bits(neighbour_average(ms)), _bits(acc / n))


def test_aggregation_shift_in_place_is_the_expression() -> None:
    g = torch.Generator().manual_seed(1)
    z = torch.randn(5, 9, generator=g)
    z[0, 0] = 0.0
    mbar = (torch.randint(0, 4, (5, 9), generator=g).float() / 3)
    out = torch.full_like(z, 7.0)
    aggregation_shift(z, mbar, 0.7, out=out)
    assert torch.equal(_bits(out), _bits(0.7 * z.abs().mean() * torch.sign(z) * mbar))
    assert torch.equal(_bits(aggregation_shift(z, mbar, 0.7)), _bits(out))
