"""The worked example in docs/wire-format.md decodes, re-encodes identically, and matches the spec."""

from __future__ import annotations

import ast
import hashlib
import re
from pathlib import Path

import numpy as np

from dslth_edge.wire import decode_frame, encode_frame

from . import spec_decoder

DOC = Path(__file__).resolve().parents[2] / "docs" / "wire-format.md"


def _block_after(marker: str) -> tuple[str, str]:
    """The marker comment's text and the fenced block that follows it."""
    text = DOC.read_text(encoding="utf-8")
    m = re.search(r"<!-- " + re.escape(marker) + r"(.*?)-->\s*```\n(.*?)```", text, re.S)
    assert m, f"marker {marker!r} not found in {DOC}"
    return m.group(1), m.group(2)


def _golden() -> tuple[bytes, dict]:
    params_text, dump = _block_after("golden-frame:")
    params = dict(re.findall(r"(\w+)=(\S+)", params_text))
    data = bytearray()
    for line in dump.strip().splitlines():
        offset, _, hexbytes = line.partition("  ")
        assert int(offset, 16) == len(data), "hex dump offsets must be contiguous"
        data += bytes.fromhex(hexbytes)
    params["shapes"] = [tuple(s) for s in ast.literal_eval(params["shapes"])]
    return bytes(data), params


def _expected_masks() -> list[str]:
    _, block = _block_after("golden-masks")
    return [line.split()[1] for line in block.strip().splitlines()]


FINGERPRINT = hashlib.sha256(b"dslth-edge golden weights").digest()


def test_golden_frame_decodes() -> None:
    data, params = _golden()
    frame = decode_frame(data, shapes=params["shapes"], fingerprint=FINGERPRINT, fleet=params["fleet"])
    assert (frame.sender, frame.round, frame.kind) == (int(params["sender"]), int(params["round"]), "key")
    assert frame.codecs == ("ans-order0", "channel-sparse", "ans-channel", "raw")
    got = [np.packbits(m.reshape(-1)).tobytes().hex() for m in frame.masks]
    assert got == _expected_masks()


def test_golden_frame_is_what_the_encoder_writes() -> None:
    data, params = _golden()
    frame = decode_frame(data, shapes=params["shapes"], fingerprint=FINGERPRINT, fleet=params["fleet"])
    again = encode_frame(
        list(frame.masks),
        shapes=params["shapes"],
        sender=frame.sender,
        round=frame.round,
        fingerprint=FINGERPRINT,
        fleet=params["fleet"],
    )
    assert again == data


def test_golden_frame_with_the_spec_decoder() -> None:
    """An implementation written from the document alone reads the example."""
    data, params = _golden()
    ref = spec_decoder.decode(data, shapes=params["shapes"], fleet=params["fleet"], fingerprint=FINGERPRINT)
    got = [np.packbits(np.array(bits, dtype=np.uint8)).tobytes().hex() for bits in ref["layers"]]
    assert got == _expected_masks()
