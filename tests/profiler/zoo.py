"""Plain-torch, width-scaled twins of the model zoo: stand-ins for shrunk models.

A channel-shrunk model at keep ``k`` keeps ``round(k * C)`` channels of every prunable
layer (the classifier keeps its outputs); these builders make exactly that architecture
with ordinary layers, so the profiler tests do not depend on dslth_edge.exporters.shrink. When
``dslth_edge.exporters.shrink`` exists, :func:`shrunk_or_scaled` uses it instead.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ZOO", "scaled_model", "shrunk_or_scaled", "export_onnx"]

#: (model name, input shape (C, H, W), classes) of the predictor test grid
ZOO: tuple[tuple[str, tuple[int, int, int], int], ...] = (
    ("paper-cnn", (1, 28, 28), 10),
    ("mcu-cnn", (3, 32, 32), 10),
    ("resnet-8", (3, 32, 32), 10),
)


def _w(c: int, keep: float) -> int:
    return max(1, round(c * keep))


class _ConvBN(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int, stride: int = 1) -> None:
        super().__init__(nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False), nn.BatchNorm2d(cout, affine=False))


class _PaperCNN(nn.Module):
    def __init__(self, shape: tuple[int, int, int], classes: int, keep: float) -> None:
        super().__init__()
        c, h, w = shape
        a, b, d, f = _w(64, keep), _w(128, keep), _w(256, keep), _w(192, keep)
        self.convs = nn.ModuleList([
            nn.Conv2d(c, a, 5, padding=2, bias=False), nn.Conv2d(a, b, 5, padding=2, bias=False),
            nn.Conv2d(b, d, 5, padding=2, bias=False),
        ])
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(d * (h // 8) * (w // 8), f, bias=False)
        self.fc2 = nn.Linear(f, classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = self.pool(torch.relu(conv(x)))
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


class _McuCNN(nn.Module):
    def __init__(self, shape: tuple[int, int, int], classes: int, keep: float) -> None:
        super().__init__()
        a, b, d = _w(16, keep), _w(32, keep), _w(64, keep)
        self.b1, self.b2, self.b3 = _ConvBN(shape[0], a, 3), _ConvBN(a, b, 3), _ConvBN(b, d, 3)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(d, classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.b1(x)))
        x = self.pool(torch.relu(self.b2(x)))
        x = torch.relu(self.b3(x))
        return self.fc(x.mean((2, 3)))


class _Stack(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body1, self.body2 = _ConvBN(cin, cout, 3, stride), _ConvBN(cout, cout, 3)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride=stride, bias=False) if (stride != 1 or cin != cout) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body2(torch.relu(self.body1(x)))
        return torch.relu(y + (x if self.shortcut is None else self.shortcut(x)))


class _ResNet8(nn.Module):
    def __init__(self, shape: tuple[int, int, int], classes: int, keep: float) -> None:
        super().__init__()
        a, b, d = _w(16, keep), _w(32, keep), _w(64, keep)
        self.stem = _ConvBN(shape[0], a, 3)
        self.stacks = nn.Sequential(_Stack(a, a, 1), _Stack(a, b, 2), _Stack(b, d, 2))
        self.fc = nn.Linear(d, classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stacks(torch.relu(self.stem(x)))
        return self.fc(x.mean((2, 3)))


_BUILDERS = {"paper-cnn": _PaperCNN, "mcu-cnn": _McuCNN, "resnet-8": _ResNet8}


def scaled_model(name: str, shape: tuple[int, int, int], classes: int, keep: float, seed: int = 0) -> nn.Module:
    """The zoo model ``name`` with every prunable layer's width scaled by ``keep`` (eval mode)."""
    torch.manual_seed(seed)
    model = _BUILDERS[name](shape, classes, keep).eval()
    with torch.no_grad():  # non-trivial BN statistics, as after training
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model


def shrunk_or_scaled(name: str, shape: tuple[int, int, int], classes: int, keep: float) -> tuple[nn.Module, str]:
    """(module, how): the real shrink of a channel-masked zoo model at ``keep`` when
    dslth_edge.exporters.shrink (and torch-pruning) is available, else :func:`scaled_model`."""
    try:
        from dslth_edge.learn.models import build_model
        from dslth_edge.exporters.shrink import shrink
    except ImportError:
        return scaled_model(name, shape, classes, keep), "width-scaled stand-in"
    masked = build_model(name, shape, classes, keep=keep, granularity="channel").eval()
    return shrink(masked, shape), "dslth_edge.exporters.shrink"


def export_onnx(model: nn.Module, shape: tuple[int, int, int], path: str) -> str:
    """Export with a batch-1 float input (legacy exporter: fast, no onnxscript needed)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, *shape),), path, dynamo=False, input_names=["input"], output_names=["logits"])
    return path
