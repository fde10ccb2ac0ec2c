"""Whitespace-separated integer matrices in text files (partition counts, adjacency)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["read_int_matrix"]


def read_int_matrix(path: str | Path, what: str, error: type[Exception]) -> np.ndarray:
    """Rows of integers, '#' comments and blank lines ignored; ``error`` names ``what`` and the file."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise error(f"{what} {p}: cannot read: {exc.strerror or exc}") from exc
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            rows.append([int(tok) for tok in line.split()])
        except ValueError:
            raise error(f"{what} {p}: line {lineno} holds a non-integer entry") from None
    if not rows:
        raise error(f"{what} {p}: empty")
    widths = {len(r) for r in rows}
    if len(widths) != 1:
        raise error(f"{what} {p}: rows have different lengths {sorted(widths)}")
    return np.array(rows, dtype=np.int64)
