"""rANS over constriction's ``AnsCoder`` with exactly reproducible integer models.

The coder is constriction's default stack coder: range ANS with 32-bit words, a 64-bit
state and 24-bit probability precision (``docs/wire-format.md`` section 3 gives the
integer arithmetic, so a C decoder can reproduce it bit for bit).

A model is one integer ``k`` in ``[1, 2**24 - 1]``, the quantised probability of a 1
bit: symbol 0 owns the quantiles ``[0, 2**24 - k)``, symbol 1 ``[2**24 - k, 2**24)``.
For speed, whole bytes are coded as one symbol of a 256-letter alphabet whose
frequencies are the products of the bit model's, built in integer arithmetic (pairs,
then nibbles, then bytes: ``f = max(1, (fa * fb) >> 24)``, rounding slack given to the
most frequent letter). Eight times fewer coder steps make a 1M-bit layer cost ~1 ms to
encode and ~3 ms to decode, at no measurable cost in size. A run of ``L`` bits is coded
as ``L // 8`` byte symbols followed by ``L % 8`` bit symbols.

constriction builds models from float weights, so to make its model *equal* to an
integer table ``f`` (summing to ``2**24``) we pass the weights ``f - 1``: they sum to
``2**24 - len(f)``, its "fast" quantiser then scales by exactly 1.0 and adds back the
1 it reserves per letter, with no rounding anywhere (checked against a pure-Python
coder in the tests).

Symbols that share a model are coded in one vectorised call ("segments").
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import constriction
import numpy as np

from dslth_edge.wire.bitio import bytes_to_words, words_to_bytes
from dslth_edge.wire.errors import CodecError

__all__ = [
    "PRECISION",
    "model_k",
    "byte_tables",
    "encode_segments",
    "decode_segments",
    "ideal_bits",
    "entropy_bits",
]

PRECISION = 24
_ONE = 1 << PRECISION
_CACHE_MAX = 2048  # models kept per process; a byte model is ~2 KiB


def model_k(ones: int, n: int) -> int:
    """Quantised probability of a 1, ``round(ones * 2**24 / n)`` clamped to ``[1, 2**24-1]``.

    Only defined for ``0 < ones < n``; runs of all-0 or all-1 are never coded.
    """
    k = (ones * _ONE + n // 2) // n
    return min(max(k, 1), _ONE - 1)


def byte_tables(ks: np.ndarray) -> np.ndarray:
    """Frequencies of the 256 byte values (MSB = first bit) for each model ``k``: (m, 256).

    Three squarings of the bit model, each ``max(1, (fa * fb) >> 24)`` with the sum's
    shortfall (or excess) added to the first largest entry; products stay below 2**48.
    """
    ks = np.asarray(ks, dtype=np.int64).reshape(-1)
    f = np.stack([_ONE - ks, ks], axis=1)
    rows = np.arange(len(ks))
    for _ in range(3):
        g = (f[:, :, None] * f[:, None, :]).reshape(len(ks), -1) >> PRECISION
        np.maximum(g, 1, out=g)
        g[rows, np.argmax(g, axis=1)] += _ONE - g.sum(axis=1)
        f = g
    return f


_Model = constriction.stream.model.Categorical
_bit_models: dict[int, _Model] = {}
_byte_models: dict[int, _Model] = {}


def _categorical(freqs: np.ndarray) -> _Model:
    return constriction.stream.model.Categorical((freqs - 1).astype(np.float64), perfect=False)


def _models(ks: Sequence[int], need_bytes: bool) -> tuple[dict[int, _Model], dict[int, _Model]]:
    """The bit and (if needed) byte models of ``ks``, built in one batch and cached.

    Returns local dicts, so another thread clearing the cache cannot pull a model out
    from under a coder that is using it.
    """
    if len(_bit_models) > _CACHE_MAX:
        _bit_models.clear()
        _byte_models.clear()
    bits: dict[int, _Model] = {}
    for k in ks:
        model = _bit_models.get(k)
        if model is None:
            model = _bit_models[k] = _categorical(np.array([_ONE - k, k], dtype=np.int64))
        bits[k] = model
    byte: dict[int, _Model] = {}
    if need_bytes:
        for k in ks:
            model = _byte_models.get(k)
            if model is not None:
                byte[k] = model
        missing = sorted(set(ks) - set(byte))
        if missing:
            for k, table in zip(missing, byte_tables(np.array(missing))):
                byte[k] = _byte_models[k] = _categorical(table)
    return bits, byte


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

    ANS is a stack: the last segment is pushed first, and within a segment its tail
    bits before its bytes, each batch in reverse (``encode_reverse``).
    """
    bit_models, byte_models = _models([k for _, k in segments], any(len(b) >= 8 for b, _ in segments))
    coder = constriction.stream.stack.AnsCoder()
    for bits, k in reversed(segments):
        n_bytes = len(bits) // 8
        if len(bits) % 8:
            coder.encode_reverse(bits[8 * n_bytes :].astype(np.int32), bit_models[k])
        if n_bytes:
            coder.encode_reverse(np.packbits(bits[: 8 * n_bytes]).astype(np.int32), byte_models[k])
    return words_to_bytes(coder.get_compressed())


def decode_segments(payload: bytes | memoryview, segments: Sequence[tuple[int, int]]) -> list[np.ndarray]:
    """Decode ``(count, k)`` segments; the stream must be consumed exactly (no trailing data)."""
    words = bytes_to_words(payload)
    out: list[np.ndarray] = []
    with _coder_errors():
        bit_models, byte_models = _models([k for _, k in segments], any(c >= 8 for c, _ in segments))
        coder = constriction.stream.stack.AnsCoder(words)
        for count, k in segments:
            n_bytes, n_bits = divmod(count, 8)
            parts = []
            if n_bytes:
                letters = coder.decode(byte_models[k], n_bytes).astype(np.uint8)
                parts.append(np.unpackbits(letters).view(bool))
            if n_bits:
                parts.append(coder.decode(bit_models[k], n_bits) != 0)
            out.append(parts[0] if len(parts) == 1 else np.concatenate(parts) if parts else np.zeros(0, bool))
        # num_words() counts unread words plus the state: 0 means every word was used
        # and the state returned to the encoder's initial 0 (is_empty() checks only that).
        empty = coder.num_words() == 0
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


