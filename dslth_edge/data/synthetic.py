"""A seeded, learnable synthetic image dataset (any shape and class count)."""

from __future__ import annotations

import math

import numpy as np

from dslth_edge.data.dataset import Dataset, build_dataset
from dslth_edge.data.seeds import TAG_SYN_PROTO, TAG_SYN_TEST, TAG_SYN_TRAIN, check_seed, seeded_rng
from dslth_edge.errors import DatasetError

__all__ = ["make_synthetic"]


def make_synthetic(
    *,
    seed: int = 0,
    shape: tuple[int, int, int] = (1, 28, 28),
    num_classes: int = 10,
    train_size: int = 6000,
    test_size: int = 1000,
    noise: float = 6.0,
) -> Dataset:
    """A seeded, learnable image dataset: smooth class prototypes plus pixel noise.

    Each class has a prototype drawn at 1/4 resolution and upsampled (smooth blobs a
    small CNN picks up quickly); a sample is its class prototype plus Gaussian noise of
    standard deviation ``noise`` (prototype std is 1), quantised to uint8 like a real
    image and then normalised as the real datasets are. Labels are balanced.

    The default noise 6.0 keeps the task learnable but not saturated: a one-conv CNN
    reaches about 85% test accuracy after 40 SGD steps of 64 (noise 2: 100%; noise 8:
    about 70%), so algorithms still separate on it.
    """
    seed = check_seed(seed)
    try:
        c, h, w = (int(s) for s in shape)
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"synthetic shape must be (C, H, W), got {shape!r}") from exc
    if min(c, h, w) < 1:
        raise DatasetError(f"synthetic shape must be positive, got {shape!r}")
    if num_classes < 2:
        raise DatasetError(f"synthetic dataset needs at least 2 classes, got {num_classes}")
    if train_size < num_classes or test_size < 1:
        raise DatasetError(
            f"synthetic sizes too small: train {train_size} (need >= {num_classes} classes), test {test_size}"
        )
    if not (noise >= 0 and math.isfinite(noise)):
        raise DatasetError(f"synthetic noise must be a finite number >= 0, got {noise!r}")
    ch, cw = -(-h // 4), -(-w // 4)
    coarse = seeded_rng(seed, TAG_SYN_PROTO).standard_normal((num_classes, c, ch, cw))
    protos = np.repeat(np.repeat(coarse, 4, axis=2), 4, axis=3)[:, :, :h, :w]
    # Map roughly +-3 standard deviations of (prototype + noise) onto 0..255.
    scale = 127.5 / (3.0 * math.sqrt(1.0 + noise * noise))

    def draw(tag: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        rng = seeded_rng(seed, tag)
        y = rng.permutation(np.arange(n, dtype=np.int64) % num_classes)
        x = protos[y] + noise * rng.standard_normal((n, c, h, w))
        u8 = np.clip(np.rint(127.5 + scale * x), 0, 255).astype(np.uint8)
        return u8, y

    xtr, ytr = draw(TAG_SYN_TRAIN, train_size)
    xte, yte = draw(TAG_SYN_TEST, test_size)
    return build_dataset("synthetic", xtr, ytr, xte, yte, [f"class{i}" for i in range(num_classes)])
