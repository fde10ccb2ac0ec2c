"""Judge whether an exported file is worth deploying: does it learn, and does it keep what the node learned?

Fitting a device is half of a verdict (:mod:`dslth_edge.exporters.budget`); this is the
other half. Every export measures the file itself on the node's held-out test split;
the file is *not worth deploying* when

``chance``
    its accuracy is within :data:`CHANCE_MARGIN` (5 points) of chance for the node's
    classes: what a model that always predicts the node's most frequent test class
    scores (1/k for a node with k balanced classes) — a file that predicts one class;
``masked``
    or it is more than :data:`MASKED_MARGIN` (10 points) below the node's masked model
    (the model the fleet trained, measured on the same samples): shrinking, a
    deploy-time step or quantization lost what the node learned.

The verdict goes into report.json (``worth``); the export CLI then exits with
:class:`~dslth_edge.errors.WeakModelError` (code 6) unless ``--allow-weak``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from dslth_edge.errors import WeakModelError

__all__ = ["CHANCE_MARGIN", "MASKED_MARGIN", "WorthVerdict", "chance_accuracy", "judge_worth", "raise_if_weak_dicts"]

CHANCE_MARGIN = 0.05  # a file within this of chance predicts (nearly) one class
MASKED_MARGIN = 0.10  # a file this far below the masked model lost what the node learned


@dataclass(frozen=True)
class WorthVerdict:
    """The accuracy half of an export's verdict."""

    worth: bool | None  # None: nothing to measure on (empty test split)
    accuracy: float | None  # the exported file's, on the node's test split
    chance: float  # a constant predictor's accuracy on the same samples
    masked: float | None  # the node's masked model on the same samples
    classes: int  # classes present in the node's test split
    samples: int
    reasons: tuple[str, ...]  # "chance" and/or "masked"; empty when worth deploying
    file: str = ""

    @property
    def line(self) -> str:
        """One plain line: the judgement and the figures behind it."""
        if self.worth is None or self.accuracy is None:
            return "accuracy not judged: the node has no test samples"
        acc = f"{100 * self.accuracy:.1f}% on its {self.classes} classes ({self.samples} test samples)"
        if self.worth:
            masked = "" if self.masked is None else f", masked model {100 * self.masked:.1f}%"
            return f"worth deploying: {acc}; chance {100 * self.chance:.1f}%{masked}"
        why = []
        if "chance" in self.reasons:
            why.append(f"within {100 * CHANCE_MARGIN:.0f} points of chance ({100 * self.chance:.1f}%)")
        if "masked" in self.reasons and self.masked is not None:
            why.append(f"{100 * (self.masked - self.accuracy):.1f} points below the node's masked model "
                       f"({100 * self.masked:.1f}%, more than {100 * MASKED_MARGIN:.0f} allowed)")
        return f"not worth deploying: {acc}, " + " and ".join(why)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["reasons"] = list(self.reasons)
        d["line"] = self.line
        return d


def chance_accuracy(labels: np.ndarray) -> tuple[float, int]:
    """(accuracy of always predicting the most frequent label, number of classes present)."""
    labels = np.asarray(labels)
    if labels.size == 0:
        return float("nan"), 0
    counts = np.unique(labels, return_counts=True)[1]
    return float(counts.max() / labels.size), int(counts.size)


def judge_worth(file_accuracy: float | None, masked_accuracy: float | None, labels: np.ndarray,
                file: str = "") -> WorthVerdict:
    """Judge a file that scored ``file_accuracy`` on the test samples labelled ``labels``
    (the same samples ``masked_accuracy`` was measured on)."""
    chance, classes = chance_accuracy(labels)
    n = int(np.asarray(labels).size)
    if n == 0 or file_accuracy is None or not np.isfinite(file_accuracy):
        return WorthVerdict(None, None, chance, masked_accuracy, classes, n, (), file)
    reasons = []
    # a node whose test split holds one class cannot tell a model from a constant: no chance test
    if classes > 1 and file_accuracy < chance + CHANCE_MARGIN - 1e-12:
        reasons.append("chance")
    if masked_accuracy is not None and np.isfinite(masked_accuracy) and file_accuracy < masked_accuracy - MASKED_MARGIN - 1e-12:
        reasons.append("masked")
    return WorthVerdict(not reasons, float(file_accuracy), chance, masked_accuracy, classes, n, tuple(reasons), file)


def raise_if_weak_dicts(verdicts: list[dict[str, Any]]) -> None:
    """:class:`WeakModelError` naming every file judged not worth deploying (report.json form)."""
    lines = [f"{v['file']}: {v['line']}" for v in verdicts if v.get("worth") is False]
    if lines:
        raise WeakModelError(f"{len(lines)} file(s) not worth deploying (pass --allow-weak to accept):\n" + "\n".join(lines))
