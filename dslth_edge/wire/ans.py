"""Binary rANS over constriction's ``AnsCoder`` with exactly reproducible integer models.

The coder is constriction's default stack coder: range ANS with 32-bit words, a 64-bit
state and 24-bit probability precision (``docs/wire-format.md`` gives the integer
arithmetic, so a C decoder can reproduce it bit for bit). A model is one integer
``k`` in ``[1, 2**24 - 1]``: symbol 0 owns the quantiles ``[0, 2**24 - k)`` and symbol
1 owns ``[2**24 - k, 2**24)``.

constriction builds models from floats, so to make its model *equal* to ``k`` we pass
the weights ``[2**24 - 1 - k, k - 1]``: they sum to ``2**24 - 2``, constriction's
"fast" quantiser then scales by exactly 1.0 and adds the mandatory 1 to each symbol,
giving frequencies ``2**24 - k`` and ``k`` with no rounding anywhere (checked against
a pure-Python coder in the tests).

Symbols that share a model are coded in one vectorised call ("segments"), which is
what makes a 1M-element layer take a few milliseconds.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Sequence

import constriction
import numpy as np

from .bitio import bytes_to_words, words_to_bytes
from .errors import CodecError

__all__ = [
    "PRECISION",
    "model_k",
    "encode_segments",
    "decode_segments",
    "ideal_bits",
    "entropy_bits",
]

PRECISION = 24
_ONE = 1 << PRECISION


def model_k(ones: int, n: int) -> int:
    """Quantised probability of a 1, ``round(ones * 2**24 / n)`` clamped to ``[1, 2**24-1]``.

    Only defined for ``0 < ones < n``; runs of all-0 or all-1 are never coded.
    """
    k = (ones * _ONE + n // 2) // n
    return min(max(k, 1), _ONE - 1)


@functools.lru_cache(maxsize=4096)
def _model(k: int) -> constriction.stream.model.Categorical:
    weights = np.array([_ONE - 1 - k, k - 1], dtype=np.float64)
    return constriction.stream.model.Categorical(weights, perfect=False)


@contextlib.contextmanager
def _coder_errors() -> Iterator[None]:
    """Turn anything constriction raises into CodecError.

    pyo3 reports a Rust panic as ``PanicException``, a *BaseException*; catching only
    ``Exception`` would let it escape, so catch broadly but never swallow interrupts.
    """
    try:
        yield
    except (KeyboardInterrupt, SystemExit, GeneratorExit, CodecError):
        raise
    except BaseException as exc:  # noqa: BLE001 - see docstring
        raise CodecError(f"entropy decoder failed: {type(exc).__name__}") from exc


def encode_segments(segments: Sequence[tuple[np.ndarray, int]]) -> bytes:
    """Code ``(bits, k)`` segments so that a decoder reads segment 0 first.

    ANS is a stack: the last segment is pushed first, each one in reverse
    (``encode_reverse``), so decoding pops them in natural order.
    """
    coder = constriction.stream.stack.AnsCoder()
    for bits, k in reversed(segments):
        if len(bits):
            coder.encode_reverse(bits.astype(np.int32), _model(k))
    return words_to_bytes(coder.get_compressed())


def decode_segments(payload: bytes | memoryview, segments: Sequence[tuple[int, int]]) -> list[np.ndarray]:
    """Decode ``(count, k)`` segments; the stream must be consumed exactly (no trailing data)."""
    words = bytes_to_words(payload)
    out: list[np.ndarray] = []
    with _coder_errors():
        coder = constriction.stream.stack.AnsCoder(words)
        for count, k in segments:
            out.append(coder.decode(_model(k), count).astype(bool) if count else np.zeros(0, bool))
        empty = coder.is_empty()
    if not empty:
        raise CodecError("ANS stream has data left after the last symbol")
    return out


def ideal_bits(ones: np.ndarray, n: np.ndarray) -> float:
    """Ideal code length in bits of runs with the given counts under their quantised models.

    ANS lands within a few bits of this, so the encoder uses it to skip candidates that
    cannot win. Runs with 0 or ``n`` ones cost nothing.
    """
    ones = np.asarray(ones, dtype=np.int64)
    n = np.asarray(n, dtype=np.int64)
    mixed = (ones > 0) & (ones < n)
    if not mixed.any():
        return 0.0
    o, m = ones[mixed], n[mixed]
    k = np.clip((o * _ONE + m // 2) // m, 1, _ONE - 1).astype(np.float64)
    return float(np.sum(o * (PRECISION - np.log2(k)) + (m - o) * (PRECISION - np.log2(_ONE - k))))


def entropy_bits(ones: np.ndarray | int, n: np.ndarray | int) -> float:
    """Sum of ``n * H(ones / n)``: the order-0 entropy bound of runs with these counts."""
    ones = np.atleast_1d(np.asarray(ones, dtype=np.float64))
    n = np.atleast_1d(np.asarray(n, dtype=np.float64))
    mixed = (ones > 0) & (ones < n)
    if not mixed.any():
        return 0.0
    p = ones[mixed] / n[mixed]
    h = -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
    return float(np.sum(n[mixed] * h))


