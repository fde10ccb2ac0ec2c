"""Each decoder check fires with its own error class, before any decoding work."""

from __future__ import annotations

import struct

import numpy as np
import pyroaring
import pytest
import zstandard

from dslth_edge.wire import (
    ChecksumError,
    CodecError,
    FingerprintError,
    FleetError,
    FrameError,
    HeaderError,
    HmacError,
    LengthError,
    MagicError,
    MissingBaseError,
    ShapeError,
    UnknownCodecError,
    VersionError,
    decode_frame,
    default_max_frame_bytes,
    encode_frame,
)
from dslth_edge.wire import codecs as codec_registry

from .helpers import FLEET, FP, KEY, OTHER_FP, payload_span, replace_payload, reseal

SHAPES = [(8, 3, 3), (4, 100), (3, 70000)]
RNG = np.random.default_rng(7)
MASKS = [RNG.random(s) < 0.3 for s in SHAPES]


def frame(key: bytes | None = None, codecs: list[str] | None = None, **kw: object) -> bytes:
    args = dict(shapes=SHAPES, sender=4, round=10, fingerprint=FP, fleet=FLEET, key=key, codecs=codecs)
    args.update(kw)
    return encode_frame(MASKS, **args)  # type: ignore[arg-type]


def decode(data: bytes, key: bytes | None = None, **kw: object):  # noqa: ANN201
    args = dict(shapes=SHAPES, fingerprint=FP, fleet=FLEET, key=key)
    args.update(kw)
    return decode_frame(data, **args)  # type: ignore[arg-type]


_ORIGINAL_DECODERS = [c.decode for c in codec_registry.CODECS]


@pytest.fixture
def no_codecs() -> object:
    """Make any codec decode a test failure: checks must fire before decoding starts."""

    def boom(*_: object) -> None:
        raise AssertionError("a codec ran before the frame was verified")

    for c in codec_registry.CODECS:
        object.__setattr__(c, "decode", boom)  # Codec is a frozen dataclass
    yield
    for c, orig in zip(codec_registry.CODECS, _ORIGINAL_DECODERS):
        object.__setattr__(c, "decode", orig)


def test_hmac_wrong_key(no_codecs: None) -> None:
    with pytest.raises(HmacError):
        decode(frame(key=KEY), key=b"another key")


def test_hmac_tampered_frame_fails_before_decoding(no_codecs: None) -> None:
    data = bytearray(frame(key=KEY))
    data[200] ^= 0x01
    with pytest.raises(HmacError):
        decode(bytes(data), key=KEY)
    data = bytearray(frame(key=KEY))
    data[-1] ^= 0x80  # the tag itself
    with pytest.raises(HmacError):
        decode(bytes(data), key=KEY)


def test_hmac_mode_mismatches() -> None:
    with pytest.raises(HmacError):  # an attacker strips the MAC and sends a CRC frame
        decode(frame(), key=KEY)
    with pytest.raises(HmacError):  # we cannot verify without a key
        decode(frame(key=KEY))
    # Authentic bytes whose flags lie about the mode are refused too.
    data = bytearray(frame(key=KEY))
    data[5] = 0
    with pytest.raises(HmacError):
        decode(reseal(data, KEY), key=KEY)


def test_hmac_uses_compare_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    import hmac as hmac_module

    calls = []
    real = hmac_module.compare_digest
    monkeypatch.setattr(hmac_module, "compare_digest", lambda a, b: calls.append(1) or real(a, b))
    decode(frame(key=KEY), key=KEY)
    assert calls


def test_crc_detects_corruption(no_codecs: None) -> None:
    data = bytearray(frame())
    data[100] ^= 0x10
    with pytest.raises(ChecksumError):
        decode(bytes(data))


def test_magic_version_and_length() -> None:
    data = frame()
    with pytest.raises(MagicError):
        decode(reseal(b"XSLM" + data[4:]))
    with pytest.raises(VersionError):
        decode(reseal(data[:4] + b"\x03" + data[5:]))
    with pytest.raises(VersionError, match="older"):  # version 1: the layout before the base digest
        decode(reseal(data[:4] + b"\x01" + data[5:]))
    with pytest.raises(LengthError):
        decode(data[:30])
    with pytest.raises(LengthError):
        decode(b"")
    with pytest.raises(LengthError):  # refused by size before anything is read
        decode(data + b"\0" * default_max_frame_bytes(SHAPES))
    with pytest.raises(LengthError):
        decode(data, max_frame_bytes=len(data) - 1)
    with pytest.raises(LengthError):  # payload lengths no longer add up
        decode(reseal(data[:-4] + b"\0\0" + data[-4:]))


def test_header_fields() -> None:
    data = frame()
    for offset, value in [(5, 0x02), (6, 2), (7, 1), (54, 1)]:
        bad = bytearray(data)
        bad[offset] = value
        with pytest.raises(HeaderError):
            decode(reseal(bad))
    bad = bytearray(data)
    bad[24:28] = struct.pack("<I", 3)  # a key frame with a base round
    with pytest.raises(HeaderError):
        decode(reseal(bad))


def test_fleet_and_fingerprint(no_codecs: None) -> None:
    with pytest.raises(FingerprintError):
        decode(frame(), fingerprint=OTHER_FP)
    with pytest.raises(FingerprintError):
        decode(frame(fingerprint=OTHER_FP))
    with pytest.raises(FleetError):
        decode(frame(), fleet="another fleet")


def test_shape_mismatch(no_codecs: None) -> None:
    data = frame()
    with pytest.raises(ShapeError):
        decode(data, shapes=SHAPES[:2], max_frame_bytes=10**6)
    with pytest.raises(ShapeError):
        decode(data, shapes=[(8, 3, 3), (4, 101), (3, 70000)])
    # Same element count, different channel split: the table cannot tell, the count can.
    with pytest.raises(ShapeError):
        decode(data, shapes=[(8, 3, 3), (4, 100), (3, 70001)])


def test_unknown_codec_id() -> None:
    data = frame(codecs=["raw"])
    start = 56 + 12 * 0
    bad = bytearray(data)
    bad[start + 2] = 42
    with pytest.raises(UnknownCodecError):
        decode(reseal(bad))
    assert issubclass(UnknownCodecError, CodecError)


def test_declared_payload_over_bound_is_refused_before_decoding(no_codecs: None) -> None:
    data = bytearray(frame())
    struct.pack_into("<I", data, 56 + 8, 10**9)
    with pytest.raises(LengthError):
        decode(reseal(data))


def test_zstd_bomb_declaring_huge_output(monkeypatch: pytest.MonkeyPatch) -> None:
    data = frame(codecs=["zstd"])
    n = 3 * 70000
    # A real frame that decompresses to 64 MiB of zeros: small on the wire, a bomb in memory.
    bomb = zstandard.ZstdCompressor(level=19).compress(b"\0" * (64 << 20))
    assert len(bomb) < 20000
    decompressed = []
    real = zstandard.ZstdDecompressor.decompress
    monkeypatch.setattr(
        zstandard.ZstdDecompressor, "decompress", lambda self, src, **k: decompressed.append(src) or real(self, src, **k)
    )
    with pytest.raises(CodecError, match="declares"):
        decode(replace_payload(data, 2, bomb))
    assert bomb not in decompressed, "the bomb must be refused from its header, not by decompressing"
    # A streaming frame with no declared size is refused the same way.
    cobj = zstandard.ZstdCompressor(write_content_size=False).compressobj()
    stream = cobj.compress(b"\0" * ((n + 7) // 8)) + cobj.flush()
    with pytest.raises(CodecError):
        decode(replace_payload(data, 2, stream))


def test_zstd_lying_content_size() -> None:
    data = frame(codecs=["zstd"])
    raw_len = (3 * 70000 + 7) // 8
    payload = zstandard.ZstdCompressor().compress(b"\xff" * (raw_len + 100))
    with pytest.raises(CodecError):
        decode(replace_payload(data, 2, payload))


def test_roaring_positions_beyond_element_count() -> None:
    data = frame(codecs=["roaring"])
    n = 4 * 100
    for positions in ([5, n], [n + 10**6], list(range(n - 5, n + 5))):
        bm = pyroaring.BitMap(positions)
        bm.run_optimize()
        with pytest.raises(CodecError):
            decode(replace_payload(data, 1, bm.serialize()))


def test_roaring_run_container_beyond_layer() -> None:
    data = frame(codecs=["roaring"])
    bm = pyroaring.BitMap(range(300, 70000))  # one run crossing far past n = 400
    bm.run_optimize()
    with pytest.raises(CodecError):
        decode(replace_payload(data, 1, bm.serialize()))


def test_roaring_header_must_describe_the_payload() -> None:
    data = frame(codecs=["roaring"])
    good = pyroaring.BitMap([1, 2, 3]).serialize()
    for bad in (good + b"\0\0", good[:-2], b"\x3c\x30\x00\x00" + good[4:], struct.pack("<II", 12346, 10**6)):
        with pytest.raises(CodecError):
            decode(replace_payload(data, 1, bad))


def test_ans_trailing_and_truncated_data() -> None:
    data = frame(codecs=["ans-order0"])
    start, end = payload_span(data, 1)
    payload = data[start:end]
    for bad in (payload + b"\x01", payload[:-1], payload[:1], payload[:-1] + b"\0"):
        with pytest.raises(CodecError):
            decode(replace_payload(data, 1, bad))


def test_raw_padding_and_size() -> None:
    shapes = [(3, 3)]
    data = encode_frame([np.ones((3, 3), bool)], shapes=shapes, sender=0, round=0, fingerprint=FP, fleet=FLEET, codecs=["raw"])
    with pytest.raises(CodecError):
        decode_frame(replace_payload(data, 0, b"\xff\xff"), shapes=shapes, fingerprint=FP, fleet=FLEET)
    with pytest.raises(CodecError):
        decode_frame(replace_payload(data, 0, b"\xff"), shapes=shapes, fingerprint=FP, fleet=FLEET)


def test_delta_needs_its_base() -> None:
    base = [m.copy() for m in MASKS]
    data = encode_frame(MASKS, shapes=SHAPES, sender=4, round=10, fingerprint=FP, fleet=FLEET, base=(9, base))
    with pytest.raises(MissingBaseError) as err:
        decode(data)
    assert (err.value.sender, err.value.base_round) == (4, 9)
    with pytest.raises(MissingBaseError):
        decode(data, base_lookup=lambda s, r: None)
    with pytest.raises(ShapeError):
        decode(data, base_lookup=lambda s, r: base[:2])
    bad = bytearray(data)
    bad[24:28] = struct.pack("<I", 10)  # base round not before the round
    with pytest.raises(HeaderError):
        decode(reseal(bad), base_lookup=lambda s, r: base)


def test_missing_base_only_after_authentication() -> None:
    """A forged delta must not trigger key requests: HMAC is checked first."""
    data = bytearray(encode_frame(MASKS, shapes=SHAPES, sender=4, round=10, fingerprint=FP, fleet=FLEET, key=KEY, base=(9, MASKS)))
    data[60] ^= 1
    with pytest.raises(HmacError):
        decode(bytes(data), key=KEY)


def test_errors_are_frame_errors() -> None:
    for cls in (ChecksumError, CodecError, FingerprintError, FleetError, HeaderError, HmacError, LengthError,
                MagicError, MissingBaseError, ShapeError, UnknownCodecError, VersionError):  # fmt: skip
        assert issubclass(cls, FrameError)


def test_codec_crash_becomes_codec_error() -> None:
    """Even an unexpected exception inside a codec surfaces as CodecError."""
    data = frame(codecs=["raw"])
    original = codec_registry.CODECS[0].decode

    def explode(*_: object) -> None:
        raise IndexError("boom")

    object.__setattr__(codec_registry.CODECS[0], "decode", explode)
    try:
        with pytest.raises(CodecError):
            decode(data)
    finally:
        object.__setattr__(codec_registry.CODECS[0], "decode", original)
