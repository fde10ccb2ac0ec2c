"""Plain SGD (momentum, weight decay) without torch.optim's import cost.

Creating any :mod:`torch.optim` optimizer imports ``torch._dynamo`` and with it sympy
and ``torch.distributed``: about 70 MiB of resident memory on x86_64 (torch 2.13),
more than the paper CNN's whole training state, on a 512 MiB Raspberry Pi Zero 2 W.
:class:`SGD` performs the same update as ``torch.optim.SGD`` on CPU (its single-tensor
path, bit for bit; ``tests/device/test_training_sgd.py`` pins it) and reads and writes
the same ``state_dict`` layout, so checkpoints written with either load into the other.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

__all__ = ["SGD"]


class SGD:
    """``torch.optim.SGD(params, lr, momentum, weight_decay)`` for one parameter group (no dampening, no Nesterov)."""

    def __init__(self, params: Iterable[torch.nn.Parameter], *, lr: float, momentum: float = 0.0,
                 weight_decay: float = 0.0) -> None:
        self.params = list(params)
        if not self.params:
            raise ValueError("optimizer got an empty parameter list")
        self.lr = float(lr)
        self.momentum = float(momentum)
        self.weight_decay = float(weight_decay)
        self.buffers: list[torch.Tensor | None] = [None] * len(self.params)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop (or zero) every parameter's gradient."""
        for p in self.params:
            if p.grad is None:
                continue
            if set_to_none:
                p.grad = None
            else:
                p.grad.detach_()
                p.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        """``p ← p − lr · b`` with ``b ← momentum · b + (∇ + weight_decay · p)`` (b = the first gradient at first)."""
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            grad = p.grad
            if self.weight_decay != 0:
                grad = grad.add(p, alpha=self.weight_decay)
            if self.momentum != 0:
                buf = self.buffers[i]
                if buf is None:
                    buf = grad.detach().clone()
                    self.buffers[i] = buf
                else:
                    buf.mul_(self.momentum).add_(grad, alpha=1.0)
                grad = buf
            p.add_(grad, alpha=-self.lr)

    def state_dict(self) -> dict[str, Any]:
        """torch.optim.SGD's layout: per-parameter momentum buffers and one parameter group."""
        state = {i: {"momentum_buffer": b} for i, b in enumerate(self.buffers) if b is not None}
        group = {"lr": self.lr, "momentum": self.momentum, "dampening": 0, "weight_decay": self.weight_decay,
                 "nesterov": False, "maximize": False, "foreach": None, "differentiable": False, "fused": None,
                 "params": list(range(len(self.params)))}
        return {"state": state, "param_groups": [group]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore momentum buffers (and lr, momentum, weight decay) from either optimizer's state_dict."""
        groups = state_dict["param_groups"]
        if len(groups) != 1 or len(groups[0]["params"]) != len(self.params):
            raise ValueError("loaded state dict has a different number of parameters or groups")
        g = groups[0]
        if g.get("nesterov") or g.get("dampening", 0) != 0 or g.get("maximize"):
            raise ValueError("loaded state dict uses SGD options this optimizer does not implement")
        self.lr, self.momentum, self.weight_decay = float(g["lr"]), float(g["momentum"]), float(g["weight_decay"])
        buffers: list[torch.Tensor | None] = [None] * len(self.params)
        for key, entry in state_dict["state"].items():
            i = g["params"].index(int(key))
            buf = entry.get("momentum_buffer")
            if buf is not None:
                if buf.shape != self.params[i].shape:
                    raise ValueError(f"momentum buffer {i} has shape {tuple(buf.shape)}, the parameter "
                                     f"{tuple(self.params[i].shape)}")
                buffers[i] = buf.detach().clone().to(self.params[i].dtype)
        self.buffers = buffers
