"""Dense models as one flat vector: what the dense baselines train, send and average."""

from __future__ import annotations

import hashlib
import struct

import torch
from torch import nn

__all__ = ["dense_fingerprint", "flat_parameters", "set_flat_parameters"]


def dense_fingerprint(model: nn.Module) -> bytes:
    """SHA-256 of the dense model's initial parameters (names, shapes, float32 LE)."""
    h = hashlib.sha256(b"dslth-dense-v1")
    for name, p in model.named_parameters():
        arr = p.detach().cpu().contiguous().numpy().astype("<f4", copy=False)
        h.update(name.encode() + b"\0" + struct.pack(f"<{arr.ndim}I", *arr.shape) + arr.tobytes())
    return h.digest()


def flat_parameters(model: nn.Module) -> torch.Tensor:
    """All trainable parameters as one float32 vector, in ``named_parameters`` order."""
    return torch.cat([p.detach().reshape(-1) for p in model.parameters() if p.requires_grad]).to(torch.float32)


def set_flat_parameters(model: nn.Module, flat: torch.Tensor) -> None:
    """Inverse of :func:`flat_parameters` (in place, no gradient)."""
    offset = 0
    with torch.no_grad():
        for p in model.parameters():
            if not p.requires_grad:
                continue
            n = p.numel()
            p.copy_(flat[offset : offset + n].view_as(p))
            offset += n
