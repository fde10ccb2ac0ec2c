"""Masked layers over fixed random weights: the strong-lottery-ticket building block.

Every device holds the same fixed weights ``w`` (from a seed, bit-identical on every
platform) and learns only real-valued scores ``z``; the layer's binary mask is the
top-k of ``|y|`` where ``y = z + shift`` (``shift`` is the MCE-PL aggregation term set
by :mod:`dslth_edge.learn.algorithm`, zero for solo training). The forward pass uses
``w ⊙ m`` and the gradient flows to ``z`` straight through the top-k (edge-popup).
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dslth_edge.errors import UsageError, WeightsError
from dslth_edge.learn.names import INIT_SCHEMES

__all__ = [
    "GRANULARITIES",
    "CHANNEL_ORDERS",
    "INIT_SCHEMES",
    "DEFAULT_WEIGHT_INIT",
    "DEFAULT_SCORE_INIT",
    "MaskedLayer",
    "MaskedConv2d",
    "MaskedLinear",
    "ChannelGate",
    "seeded_uniform",
    "init_weights",
    "init_scores",
    "fixed_bias",
    "topk_mask",
    "keep_count",
    "drop_sparse_channels",
    "check_drop_threshold",
    "configure_structure",
    "link_inputs",
    "drop_channels_",
    "masked_layers",
    "weights_fingerprint",
    "group_lasso",
    "save_weights",
    "load_weights",
    "get_masks",
    "set_masks",
]

GRANULARITIES = ("unstructured", "channel")
#: Which live channels a structured layer drops first when the schedule's cap binds
#: (:func:`drop_channels_`): "score", the node's sparsest (progressive route); "index", the
#: highest-indexed, an order every node shares, so the fleet's shrunk models are nested
#: prefixes of the same channels (aligned route).
CHANNEL_ORDERS = ("score", "index")
#: What a model uses when nothing else is asked (docs/algorithm.md, "Initialisation").
DEFAULT_WEIGHT_INIT = "kaiming-normal"
DEFAULT_SCORE_INIT = "kaiming-uniform"
_FINGERPRINT_TAG = b"dslth-weights-v1"


# --------------------------------------------------------------------------------------
# Platform-independent fixed weights
# --------------------------------------------------------------------------------------
def seeded_uniform(seed: int, stream: int, n: int) -> np.ndarray:
    """``n`` float64 uniforms in [0, 1) from PCG64 raw bits, identical on every platform.

    NumPy guarantees the raw bit stream of PCG64 and SeedSequence across versions (NEP
    19) but not its distribution methods, so the bits are mapped to floats here: the
    top 53 bits of each 64-bit word, times 2**-53 (exact in IEEE double).
    """
    if seed < 0 or stream < 0:
        raise UsageError(f"seeds must be non-negative, got seed={seed} stream={stream}")
    bits = np.random.PCG64(np.random.SeedSequence([seed, stream])).random_raw(n)
    return (np.asarray(bits, dtype=np.uint64) >> np.uint64(11)).astype(np.float64) * 2.0**-53


def init_weights(shape: tuple[int, ...], seed: int, stream: int, scheme: str = DEFAULT_WEIGHT_INIT,
                 *, fan_in: int | None = None, entropy: tuple[int, ...] = ()) -> torch.Tensor:
    """Fixed weights of one layer, scaled by the fan-in (``prod(shape[1:])`` unless given).

    Every operation is a correctly rounded IEEE operation in a fixed order (no libm
    calls), so the float32 result is the same bit for bit everywhere:
    - kaiming-uniform: U(-b, b), b = √(6 / fan_in) (He, gain √2: ReLU networks)
    - kaiming-normal:  std · (Σ_{j<12} u_j − 6), an Irwin–Hall approximation of N(0, 1)
      (variance exactly 1, tails cut at ±6σ), std = √(2 / fan_in)
    - signed-constant: ±std (edge-popup's best-performing choice)
    - pytorch-default: U(-b, b), b = √(1 / fan_in), PyTorch's default Conv2d/Linear
      weight (and bias) init, ``kaiming_uniform_(a=√5)``; √6× narrower than kaiming-uniform
    ``entropy`` extends the (seed, stream) pair of the bit generator (a layer's bias).
    """
    if scheme not in INIT_SCHEMES:
        raise UsageError(f"unknown weight init {scheme!r}; choose one of {', '.join(INIT_SCHEMES)}")
    n = math.prod(shape)
    fan_in = math.prod(shape[1:]) if fan_in is None else int(fan_in)
    std = math.sqrt(2.0 / fan_in)
    if seed < 0 or stream < 0:
        raise UsageError(f"seeds must be non-negative, got seed={seed} stream={stream}")
    # Drawn in blocks of weights from one bit generator: the same raw stream (and so the
    # same values) as seeded_uniform(seed, stream, per * n) in one call, without its
    # float64 temporaries (12 uniforms per weight: 940 MB for the paper CNN's conv3).
    bitgen = np.random.PCG64(np.random.SeedSequence([seed, stream, *entropy]))
    per = 12 if scheme == "kaiming-normal" else 1
    out = np.empty(n, dtype=np.float32)
    for start in range(0, n, _INIT_BLOCK):
        m = min(_INIT_BLOCK, n - start)
        u = (np.asarray(bitgen.random_raw(per * m), dtype=np.uint64) >> np.uint64(11)).astype(np.float64) * 2.0**-53
        if scheme == "kaiming-uniform":
            w = (2.0 * u - 1.0) * math.sqrt(6.0 / fan_in)
        elif scheme == "pytorch-default":
            w = (2.0 * u - 1.0) * math.sqrt(1.0 / fan_in)
        elif scheme == "kaiming-normal":
            u = u.reshape(m, 12)
            acc = u[:, 0].copy()
            for j in range(1, 12):  # fixed summation order: bit-exact
                acc += u[:, j]
            w = (acc - 6.0) * std
        else:
            w = np.where(u < 0.5, -std, std)
        out[start : start + m] = w
    return torch.from_numpy(out.reshape(shape))


#: Weights drawn per block by init_weights (bounds its temporaries to a few MiB).
_INIT_BLOCK = 1 << 15


def init_scores(shape: tuple[int, ...], seed: int, stream: int, scheme: str = DEFAULT_SCORE_INIT) -> torch.Tensor:
    """Initial scores of one layer from a node's own seed: any of :data:`INIT_SCHEMES`.

    kaiming-uniform (U(±√(6/fan_in))) is edge-popup's; the authors' code uses
    pytorch-default (U(±1/√fan_in)). The scale matters under the paper's constant lr 10:
    the step relative to the scores is √6× larger with kaiming-uniform scores.
    """
    return init_weights(shape, seed, stream, scheme)


#: Extra entropy word of a layer's fixed bias (distinct from its weight stream).
_BIAS_ENTROPY = (1,)


def fixed_bias(out_features: int, fan_in: int, seed: int, stream: int) -> torch.Tensor:
    """A layer's fixed bias, PyTorch's default U(±1/√fan_in), from the fleet's weight seed.

    Same bit-exact generator as :func:`init_weights`, on the layer's stream extended
    by one entropy word, so the weights stay what they are without a bias.
    """
    return init_weights((out_features,), seed, stream, "pytorch-default", fan_in=fan_in, entropy=_BIAS_ENTROPY)


# --------------------------------------------------------------------------------------
# Top-k with a straight-through gradient
# --------------------------------------------------------------------------------------
def _kth_largest_mask(a: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask of exactly ``k`` largest entries of 1-D ``a``; ties go to lower indices.

    The threshold comes from a selection (introselect, O(n); measured 2x faster than
    torch.kthvalue and 1.5x faster than torch.topk on 0.8M scores), not a sort. The tie
    rule makes the mask a pure function of ``a``, whatever order a selection visits.
    """
    n = a.numel()
    if k >= n:
        return torch.ones(n, dtype=torch.bool)
    if k <= 0:
        return torch.zeros(n, dtype=torch.bool)
    # compared and counted in numpy: torch's bool kernels (compare, sum) take ~8x longer here
    an = a.contiguous().numpy()
    t = np.partition(an, n - k)[n - k]  # the k-th largest value
    at_least = an >= t
    if np.count_nonzero(at_least) == k:  # no tie straddles the threshold: the common case
        return torch.from_numpy(at_least)
    above = an > t
    need = k - int(np.count_nonzero(above))
    tie = an == t
    return torch.from_numpy(above | (tie & (np.cumsum(tie) <= need)))


def keep_count(n: int, keep: float) -> int:
    """Number of entries (or channels) a layer keeps: round-half-up, at least one."""
    return max(1, min(n, int(math.floor(keep * n + 0.5))))


def topk_mask(
    y: torch.Tensor, keep: float, granularity: str = "unstructured", eligible: torch.Tensor | None = None
) -> torch.Tensor:
    """TopK(|y|) per layer: bool mask with the shape of ``y`` (dim 0 = output channels).

    unstructured: the ``keep_count(numel)`` largest |y|.
    channel: the ``keep_count(C_out)`` channels with the largest mean |y|, whole.
    ``eligible`` (bool, shape of ``y``; None: everything) restricts the choice to the
    weights between live channels: unstructured keeps ``keep_count(eligible)`` of them;
    channel picks among channels with an eligible weight.
    """
    a = y.detach().abs()
    if granularity == "unstructured":
        if eligible is None:
            return _kth_largest_mask(a.flatten(), keep_count(a.numel(), keep)).view_as(a)
        n = int(eligible.sum())
        picked = _kth_largest_mask(torch.where(eligible, a, torch.full_like(a, -1.0)).flatten(), keep_count(n, keep))
        return (picked.view_as(a) & eligible) if n else torch.zeros_like(eligible)
    if granularity == "channel":
        c = a.shape[0]
        per = a.reshape(c, -1).mean(1)
        if eligible is not None:
            live = eligible.reshape(c, -1).any(1)
            per = torch.where(live, per, torch.full_like(per, -1.0))
        chan = _kth_largest_mask(per, keep_count(c, keep))
        return chan.view(c, *([1] * (a.dim() - 1))).expand_as(a).contiguous()
    raise UsageError(f"unknown granularity {granularity!r}; choose one of {', '.join(GRANULARITIES)}")


def check_drop_threshold(threshold: float) -> float:
    """Validate a relative drop threshold τ: a channel goes when it keeps < τ · keep of its weights.

    The channels of a layer keep on average exactly the layer's keep ratio, so some
    channel always keeps at least that much: τ ≤ 1 can never empty a layer, τ > 1 can
    drop every channel (each is below its own layer's average times τ).
    """
    if not 0.0 <= threshold <= 1.0:
        raise UsageError(
            f"drop threshold {threshold} would empty layers: it is relative to each layer's keep ratio "
            "(a channel is dropped when it keeps less than threshold × keep of its weights; the average "
            "channel keeps exactly keep), so it must be in [0, 1]"
        )
    return float(threshold)


def drop_sparse_channels(mask: torch.Tensor, threshold: float, keep: float) -> torch.Tensor:
    """``mask`` without the output channels keeping less than ``threshold · keep`` of their weights.

    A channel with a few scattered weights costs a whole channel of compute once shrunk;
    dropping it lets the final mask physically shrink. The threshold is relative to the
    layer's keep ratio (see :func:`check_drop_threshold`); 0 leaves the mask as is.
    Never apply it to a classifier: its output channels are the classes.
    """
    check_drop_threshold(threshold)
    if threshold <= 0.0:
        return mask
    c = mask.shape[0]
    frac = mask.reshape(c, -1).float().mean(1)  # (C_out,) kept fraction per channel
    keep_rows = (frac >= threshold * keep - 1e-9).view(c, *([1] * (mask.dim() - 1)))
    return mask & keep_rows


def _every_row_kept(mask: torch.Tensor, y: torch.Tensor, eligible: torch.Tensor) -> torch.Tensor:
    """Once channels are dropped, every live row keeps at least its best live weight.

    A classifier's rows are the classes (an empty row is a class never predicted); a
    live channel of another layer with an empty row would be one the plan pays for and
    the shrinker removes. The row's weight with the largest |y| among live inputs
    replaces the layer's weakest kept weight, so the count stays ``keep_count``
    (nothing changes when every live row already keeps one).
    """
    c = mask.shape[0]
    rows = mask.reshape(c, -1)
    empty = [r for r in range(c) if not bool(rows[r].any()) and bool(eligible.reshape(c, -1)[r].any())]
    if not empty:
        return mask
    a = y.detach().abs().reshape(c, -1)
    out = rows.clone()
    el = eligible.reshape(c, -1)
    for r in empty:
        best = int(torch.where(el[r], a[r], torch.full_like(a[r], -1.0)).argmax())
        # the weakest kept weight in a row that keeps more than one
        donors = out & (out.sum(1, keepdim=True) > 1)
        if bool(donors.any()):
            flat = torch.where(donors, a, torch.full_like(a, float("inf"))).flatten()
            out.view(-1)[int(flat.argmin())] = False
        out[r, best] = True
    return out.view_as(mask)


class _MaskedWeight(torch.autograd.Function):
    """``w ⊙ m`` forward; ``∂L/∂z = (∂L/∂(w ⊙ m) · w) · sgn(y)`` backward.

    The autograd graph of ``w * ST(|z + shift|, m)`` (ST: edge-popup's straight-through,
    forward m, backward the identity) fused into one
    node: the same float operations in the same order (MulBackward ``grad · w``, the
    straight-through, AbsBackward ``· sgn(y)``, AddBackward to ``z``), so the gradient
    is bit-identical, without the second ``z + shift``, ``|y|`` and their graph nodes.
    """

    @staticmethod
    def forward(ctx, scores: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(y, weight)
        return weight * _as_float(mask, weight.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:  # type: ignore[override]
        y, weight = ctx.saved_tensors
        return (grad * weight).mul_(y.sgn()), None, None, None


def _as_float(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A bool mask as 0/1 of ``dtype`` (through uint8: torch's bool-to-float cast is ~5x slower)."""
    return mask.view(torch.uint8).to(dtype) if mask.dtype == torch.bool else mask.to(dtype)


def _rows_alive(mask: torch.Tensor) -> torch.Tensor:
    """Bool (C_out,): whether each output channel of ``mask`` keeps any weight."""
    rows = mask.reshape(mask.shape[0], -1)
    if rows.dtype == torch.bool and rows.device.type == "cpu":  # numpy's any: ~50x faster than torch's on bools
        return torch.from_numpy(rows.numpy().any(1))
    return rows.any(1)


# --------------------------------------------------------------------------------------
# Masked layers
# --------------------------------------------------------------------------------------
class MaskedLayer(nn.Module):
    """Shared machinery of masked conv/linear layers.

    Buffers: ``weight`` (fixed w), ``score_shift`` (aggregation term, zero by default).
    Parameter: ``scores`` (z). ``mask_override`` pins a given mask (evaluation, export).
    ``input_from`` names the masked layer whose output channels are this layer's inputs
    (None for the network input); the planner and shrink read it.
    """

    weight: torch.Tensor
    score_shift: torch.Tensor

    def __init__(self, weight: torch.Tensor, scores: torch.Tensor, keep: float, granularity: str) -> None:
        super().__init__()
        if not 0.0 < keep <= 1.0:
            raise UsageError(f"keep ratio must be in (0, 1], got {keep}")
        if granularity not in GRANULARITIES:
            raise UsageError(f"unknown granularity {granularity!r}; choose one of {', '.join(GRANULARITIES)}")
        self.register_buffer("weight", weight)
        self.register_buffer("score_shift", torch.zeros_like(weight))
        # channels still in play (progressive drop, see drop_channels_); checkpointed with the model
        self.register_buffer("channel_alive", torch.ones(weight.shape[0], dtype=torch.bool))
        self.scores = nn.Parameter(scores)
        self.keep = float(keep)
        self.granularity = granularity
        self.mask_override: torch.Tensor | None = None
        self.drop_threshold = 0.0  # relative drop threshold τ, see drop_channels_
        self.target_channels: int | None = None  # output channels the plan ends with (None: all)
        self.channel_order = "score"  # which live channels the cap drops first (CHANNEL_ORDERS)
        self.prunable_out = True  # False for the classifier: its output channels are the classes
        # True where the model needs every output channel whatever the mask (a following
        # LocalResponseNorm mixes neighbouring channels; a fixed bias keeps an empty row
        # alive): never planned away, dropped or removed by shrink
        self.keeps_channels = False
        self._input_layer: list[MaskedLayer] = []  # the producer of this layer's inputs (configure_structure)
        self.input_from: str | None = None
        # alive[c] = 1.0 iff output channel c keeps any weight; read by ChannelGate
        self.alive: torch.Tensor = torch.ones(weight.shape[0])

    def aggregated_scores(self) -> torch.Tensor:
        """y = z + shift; the shift is a constant of the round (no gradient through it)."""
        return self.scores + self.score_shift

    def eligible(self) -> torch.Tensor | None:
        """Bool, weight-shaped: the weights between live output and live input channels (None: all)."""
        out_alive = self.channel_alive
        in_alive = self._input_layer[0].channel_alive if self._input_layer else None
        out_all = bool(out_alive.all())
        in_all = in_alive is None or bool(in_alive.all())
        if out_all and in_all:
            return None
        shape = self.weight.shape
        elig = out_alive.view(shape[0], *([1] * (len(shape) - 1))).expand(shape)
        if not in_all:
            assert in_alive is not None
            per_in = shape[1] // in_alive.numel() if shape[1] >= in_alive.numel() else 1
            cols = in_alive.repeat_interleave(per_in) if per_in > 1 else in_alive  # flatten: channel-major
            if cols.numel() == shape[1]:  # grouped/depthwise convs: no input coupling assumed
                elig = elig & cols.view(1, shape[1], *([1] * (len(shape) - 2))).expand(shape)
        return elig.contiguous()

    def current_mask(self) -> torch.Tensor:
        """The bool mask the next forward pass uses: ``mask_override``, else TopK(|z + score_shift|)
        within the eligible weights.

        The shift is whatever the node's algorithm set last. MCE-PL and consensus set it
        from the current scores and m̄ before and after the local step and again after
        step (5) (:meth:`~dslth_edge.learn.algorithms.masked.MaskAlgorithm.personal_step`),
        so after a round this is the evaluation mask: TopK of the final scores shifted by
        the current m̄, what evaluation, mask.npz and the next round's forward pass use.
        """
        if self.mask_override is not None:
            return self.mask_override
        return self._mask_of(self.aggregated_scores())

    def _mask_of(self, y: torch.Tensor) -> torch.Tensor:
        """TopK(|y|) within the eligible weights (``y``: this layer's aggregated scores)."""
        elig = self.eligible()
        mask = topk_mask(y, self.keep, self.granularity, elig)
        if elig is not None and self.granularity == "unstructured":
            mask = _every_row_kept(mask, y, elig)
        return mask

    def input_gain(self) -> float:
        """√(input channels / live input channels): 1.0 unless the producer dropped channels.

        The fixed weights are scaled for the full fan-in (Kaiming); once the producer of
        this layer's inputs has dropped channels, each output sums fewer terms and its
        scale falls by √(live / all). Without normalisation (the paper CNN) the losses
        multiply layer by layer: a shrunk node's logits end ~10× smaller than a
        full-width node's, its score gradients with them, and its masks barely move
        (issue 23: the nRF52840 demo node stayed at chance). The gain restores each
        layer's output scale; shrink bakes it into the exported weights.
        """
        if not self._input_layer:
            return 1.0
        alive = self._input_layer[0].channel_alive
        live, total = int(alive.sum()), int(alive.numel())
        return 1.0 if live in (0, total) else math.sqrt(total / live)

    def effective_weight(self) -> torch.Tensor:
        """w ⊙ m (times :meth:`input_gain` once input channels are dropped), m straight-through to the scores."""
        gain = self.input_gain()
        if self.mask_override is not None or not self.scores.requires_grad:
            mask = self.current_mask()
            self.alive = _rows_alive(mask).to(self.weight.dtype)
            w = self.weight * _as_float(mask, self.weight.dtype)
            return w if gain == 1.0 else w * gain
        with torch.no_grad():
            y = self.aggregated_scores()
        mask = self._mask_of(y)
        self.alive = _rows_alive(mask).to(self.weight.dtype)
        # TopK ranks |y|: the gradient reaches z through |·|, i.e. times sign(y), so a
        # negative score that should enter the mask grows more negative (edge-popup)
        w = _MaskedWeight.apply(self.scores, y, self.weight, mask)
        return w if gain == 1.0 else w * gain


class MaskedConv2d(MaskedLayer):
    """Conv2d (no bias) whose weight is fixed and whose mask is learned."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
        keep: float = 0.5,
        granularity: str = "unstructured",
        seed: int = 0,
        stream: int = 0,
        score_seed: int = 0,
        weight_init: str = DEFAULT_WEIGHT_INIT,
        score_init: str = DEFAULT_SCORE_INIT,
    ) -> None:
        shape = (out_channels, in_channels // groups, kernel_size, kernel_size)
        super().__init__(init_weights(shape, seed, stream, weight_init), init_scores(shape, score_seed, stream, score_init),
                         keep, granularity)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding, self.groups = kernel_size, stride, padding, groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, Cin, H, W) -> (B, Cout, H', W')
        return F.conv2d(x, self.effective_weight(), None, self.stride, self.padding, 1, self.groups)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, k={self.kernel_size}, s={self.stride}, "
            f"p={self.padding}, g={self.groups}, keep={self.keep}, {self.granularity}"
        )


class MaskedLinear(MaskedLayer):
    """Linear whose weight is fixed and whose mask is learned; no bias unless ``bias``.

    ``bias=True`` adds a fixed, unmasked bias (:func:`fixed_bias`, from the weight seed):
    the authors' network keeps its FC biases at their initial values. A fully pruned
    row then still outputs its bias, so such a layer's rows are never removed by shrink.
    """

    bias: torch.Tensor | None

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        keep: float = 0.5,
        granularity: str = "unstructured",
        seed: int = 0,
        stream: int = 0,
        score_seed: int = 0,
        weight_init: str = DEFAULT_WEIGHT_INIT,
        score_init: str = DEFAULT_SCORE_INIT,
        bias: bool = False,
    ) -> None:
        shape = (out_features, in_features)
        super().__init__(init_weights(shape, seed, stream, weight_init), init_scores(shape, score_seed, stream, score_init),
                         keep, granularity)
        self.register_buffer("bias", fixed_bias(out_features, in_features, seed, stream) if bias else None)
        self.in_features, self.out_features = in_features, out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, in) -> (B, out)
        return F.linear(x, self.effective_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, keep={self.keep}, {self.granularity}, bias={self.bias is not None}"


class ChannelGate(nn.Module):
    """Zeroes the output channels its layer has pruned entirely, after normalisation.

    A channel with all-zero weights still leaves BatchNorm as -mean/σ (its bias); the
    gate makes a pruned channel exactly zero downstream, so the shrunk model (channel
    removed) computes the same outputs as the masked one.
    """

    def __init__(self, layer: MaskedLayer) -> None:
        super().__init__()
        self._layer = [layer]  # a list: not registered as a submodule (no double counting)

    @property
    def layer(self) -> MaskedLayer:
        """The masked layer whose pruned channels this gate zeroes."""
        return self._layer[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alive = self._layer[0].alive.to(x.dtype)
        return x * alive.view(1, -1, *([1] * (x.dim() - 2)))


# --------------------------------------------------------------------------------------
# Whole-model helpers
# --------------------------------------------------------------------------------------
def masked_layers(model: nn.Module) -> Iterator[tuple[str, MaskedLayer]]:
    """(name, layer) of every masked layer, in the model's canonical order."""
    for name, module in model.named_modules():
        if isinstance(module, MaskedLayer):
            yield name, module


def weights_fingerprint(model: nn.Module) -> bytes:
    """SHA-256 of the canonical bytes of all fixed weights (names, shapes, float32 LE)."""
    h = hashlib.sha256(_FINGERPRINT_TAG)
    for name, layer in masked_layers(model):
        w = layer.weight.detach().cpu().contiguous().numpy().astype("<f4", copy=False)
        encoded = name.encode()
        h.update(struct.pack("<I", len(encoded)) + encoded)
        h.update(struct.pack("<I", w.ndim) + struct.pack(f"<{w.ndim}I", *w.shape))
        h.update(w.tobytes())
        bias = getattr(layer, "bias", None)
        if isinstance(bias, torch.Tensor):  # a fixed bias is part of w (absent: the hash is as before)
            b = bias.detach().cpu().contiguous().numpy().astype("<f4", copy=False)
            h.update(b"bias" + struct.pack("<I", b.size) + b.tobytes())
    return h.digest()


def group_lasso(model: nn.Module) -> torch.Tensor:
    """Σ_layers Σ_c √|g_c| · ‖z_c‖₂ over output-channel groups of the scores.

    Pushes whole channels' scores towards zero together, so the kept weights concentrate
    in few channels and the others can be dropped (:func:`drop_channels_`). The
    classifier is left out: its output channels are the classes.
    """
    total = torch.zeros(())
    for _, layer in masked_layers(model):
        if not layer.prunable_out:
            continue
        z = layer.scores.reshape(layer.scores.shape[0], -1)  # (C_out, group size)
        total = total + math.sqrt(z.shape[1]) * z.norm(dim=1).sum()
    return total


def link_inputs(model: nn.Module) -> None:
    """Each masked layer learns the masked layer that produces its inputs (by ``input_from``):
    its mask stays within that layer's live channels, and :meth:`MaskedLayer.input_gain`
    follows them (build_model links every zoo model, so a loaded model has the gain it trained with)."""
    by_name = dict(masked_layers(model))
    for layer in by_name.values():
        layer._input_layer = [by_name[layer.input_from]] if layer.input_from in by_name else []


def configure_structure(model: nn.Module, channels: Sequence[int | None] | None = None, drop_threshold: float = 0.0,
                        channel_order: str = "score") -> None:
    """Prepare ``model``'s masked layers for channel removal.

    The last masked layer is the classifier: never structured. ``channels`` gives, per
    masked layer, the output channels the plan ends with (None or the full count: no
    removal); the classifier must keep all of its. ``drop_threshold`` is the relative
    threshold τ of :func:`drop_channels_`, ``channel_order`` which channels its cap drops
    first (:data:`CHANNEL_ORDERS`). Each layer learns its input producer, so its mask
    stays within live input channels.
    """
    check_drop_threshold(drop_threshold)
    if channel_order not in CHANNEL_ORDERS:
        raise UsageError(f"unknown channel order {channel_order!r}; choose one of {', '.join(CHANNEL_ORDERS)}")
    layers = list(masked_layers(model))
    if channels is not None and len(channels) != len(layers):
        raise UsageError(f"model has {len(layers)} masked layers, got {len(channels)} channel counts")
    link_inputs(model)
    for i, (name, layer) in enumerate(layers):
        layer.prunable_out = i != len(layers) - 1 and not layer.keeps_channels
        layer.drop_threshold = float(drop_threshold)
        layer.channel_order = channel_order
        full = int(layer.weight.shape[0])
        target = None if channels is None else channels[i]
        if target is not None and not 1 <= int(target) <= full:
            raise UsageError(f"layer {name!r} has {full} output channels, cannot end with {target}")
        if target is not None and not layer.prunable_out and int(target) != full:
            what = "keeps all its output channels (LRN or a fixed bias)" if layer.keeps_channels else "is the classifier"
            raise UsageError(f"layer {name!r} {what}: its {full} output rows stay")
        layer.target_channels = int(target) if target is not None and int(target) < full else None


def drop_channels_(layer: MaskedLayer, cap: int | None = None, threshold: float | None = None) -> int:
    """Progressive channel drop, in place; returns how many channels went.

    Channels whose kept fraction (of their live weights) falls below ``threshold ·
    layer.keep`` go; then, if more than ``cap`` channels are still alive, more go until
    ``cap`` remain: the sparsest (``layer.channel_order`` "score"), or the highest-indexed
    ("index": every node drops in the same order, so with no threshold a node keeps
    exactly the first ``target_channels`` and nodes with other plans keep nested
    prefixes). Never below ``layer.target_channels`` (or one channel), never a classifier
    row, never a pinned or channel-granular mask. Dropped channels stay dropped: the
    layer's mask only chooses among live channels afterwards.
    """
    if not layer.prunable_out or layer.mask_override is not None or layer.granularity != "unstructured":
        return 0
    tau = layer.drop_threshold if threshold is None else check_drop_threshold(threshold)
    alive = layer.channel_alive
    n_alive = int(alive.sum())
    floor = max(1, layer.target_channels or 1)
    if n_alive <= floor:
        return 0
    with torch.no_grad():
        mask = layer.current_mask()
        elig = layer.eligible()
        c = mask.shape[0]
        kept = mask.reshape(c, -1).sum(1).float()
        live = elig.reshape(c, -1).sum(1).float() if elig is not None else torch.full((c,), float(mask[0].numel()))
        frac = kept / live.clamp_min(1.0)
        score = layer.aggregated_scores().detach().abs().reshape(c, -1).mean(1)
    n_thr = int((alive & (frac < tau * layer.keep - 1e-9)).sum()) if tau > 0 else 0
    n_cap = max(0, n_alive - cap) if cap is not None else 0
    n = min(max(n_thr, n_cap), n_alive - floor)
    if n <= 0:
        return 0
    live_idx = [i for i in range(c) if bool(alive[i])]
    if layer.channel_order == "index":  # below the threshold first, then the fleet's shared order
        below = {i for i in live_idx if tau > 0 and float(frac[i]) < tau * layer.keep - 1e-9}
        order = sorted(live_idx, key=lambda i: (i not in below, -i))
    else:
        order = sorted(live_idx, key=lambda i: (float(frac[i]), float(score[i]), i))
    for i in order[:n]:
        alive[i] = False
    return n


def get_masks(model: nn.Module) -> list[torch.Tensor]:
    """Current bool mask of every masked layer, in canonical order."""
    with torch.no_grad():
        return [layer.current_mask().clone() for _, layer in masked_layers(model)]


def set_masks(model: nn.Module, masks: list[torch.Tensor] | None) -> None:
    """Pin masks (evaluation, export) or, with None, return to masks from the scores."""
    layers = [layer for _, layer in masked_layers(model)]
    if masks is None:
        for layer in layers:
            layer.mask_override = None
        return
    if len(masks) != len(layers):
        raise UsageError(f"model has {len(layers)} masked layers, got {len(masks)} masks")
    for layer, m in zip(layers, masks):
        m = torch.as_tensor(m, dtype=torch.bool)
        if tuple(m.shape) != tuple(layer.weight.shape):
            raise UsageError(f"mask shape {tuple(m.shape)} does not match layer shape {tuple(layer.weight.shape)}")
        layer.mask_override = m


def save_weights(model: nn.Module, path: str | Path) -> None:
    """Write the fixed weights as an .npz (plain arrays, no pickled code)."""
    arrays = {name: layer.weight.numpy() for name, layer in masked_layers(model)}
    arrays.update({f"{name}.bias": layer.bias.numpy() for name, layer in masked_layers(model)
                   if isinstance(getattr(layer, "bias", None), torch.Tensor)})  # fixed biases are part of w
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Replace the model's fixed weights with those of an .npz file from :func:`save_weights`."""
    p = Path(path)
    if not p.is_file():
        raise WeightsError(f"weights file {p} does not exist")
    try:
        with np.load(p, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as exc:
        raise WeightsError(f"weights file {p} is not a readable .npz: {exc}") from exc
    for name, layer in masked_layers(model):
        if name not in arrays:
            raise WeightsError(f"weights file {p} has no array for layer {name!r}")
        w = arrays[name]
        if tuple(w.shape) != tuple(layer.weight.shape):
            raise WeightsError(f"weights file {p}: layer {name!r} has shape {w.shape}, model expects {tuple(layer.weight.shape)}")
        layer.weight.copy_(torch.from_numpy(w.astype(np.float32)))
        bias = getattr(layer, "bias", None)
        if isinstance(bias, torch.Tensor):
            b = arrays.get(f"{name}.bias")
            if b is None or tuple(b.shape) != tuple(bias.shape):
                raise WeightsError(f"weights file {p} has no fixed bias of shape {tuple(bias.shape)} for layer {name!r}")
            bias.copy_(torch.from_numpy(b.astype(np.float32)))
