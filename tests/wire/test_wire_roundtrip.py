"""Round trips: every codec, key and delta frames, CRC and HMAC, and the encoder's choice."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dslth_edge.wire import (
    CODEC_NAMES,
    decode_frame,
    default_max_frame_bytes,
    encode_frame,
    encode_frame_stats,
)

from . import spec_decoder
from .helpers import FLEET, FP, KEY, mask_st, model_and_masks, same

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)


@pytest.mark.parametrize("codec", CODEC_NAMES)
@FAST
@given(data=model_and_masks(), key=st.sampled_from([None, KEY]))
def test_each_codec_round_trips(codec: str, data: tuple, key: bytes | None) -> None:
    shapes, masks = data
    enc = encode_frame_stats(masks, shapes=shapes, sender=5, round=9, fingerprint=FP, fleet=FLEET, key=key, codecs=[codec])
    assert all(layer.codec == codec for layer in enc.layers)
    dec = decode_frame(enc.data, shapes=shapes, fingerprint=FP, fleet=FLEET, key=key)
    assert same(dec.masks, masks)
    assert (dec.sender, dec.round, dec.kind, dec.base_round) == (5, 9, "key", None)
    assert dec.codecs == (codec,) * len(shapes)
    assert dec.authenticated == (key is not None)


@settings(max_examples=150, deadline=None, database=None)
@given(data=model_and_masks())
def test_encoder_picks_the_smallest_codec(data: tuple) -> None:
    shapes, masks = data
    enc = encode_frame_stats(masks, shapes=shapes, sender=1, round=1, fingerprint=FP, fleet=FLEET)
    forced = {
        name: encode_frame_stats(masks, shapes=shapes, sender=1, round=1, fingerprint=FP, fleet=FLEET, codecs=[name])
        for name in CODEC_NAMES
    }
    for i, layer in enumerate(enc.layers):
        smallest = min(f.layers[i].payload_bytes for f in forced.values())
        assert layer.payload_bytes == smallest, (layer, [f.layers[i] for f in forced.values()])
        assert layer.candidates[layer.codec] == layer.payload_bytes
    assert len(enc.data) <= default_max_frame_bytes(shapes)


@settings(max_examples=150, deadline=None, database=None)
@given(data=model_and_masks(), flips=st.floats(0.0, 0.2), key=st.sampled_from([None, KEY]), seed=st.integers(0, 2**31))
def test_delta_frames_round_trip(data: tuple, flips: float, key: bytes | None, seed: int) -> None:
    shapes, base = data
    rng = np.random.default_rng(seed)
    masks = [b ^ (rng.random(b.shape) < flips) for b in base]
    enc = encode_frame_stats(
        masks, shapes=shapes, sender=2, round=8, fingerprint=FP, fleet=FLEET, key=key, base=(6, base)
    )
    assert (enc.kind, enc.base_round) == ("delta", 6)
    calls = []

    def lookup(sender: int, rnd: int) -> list[np.ndarray]:
        calls.append((sender, rnd))
        return base

    dec = decode_frame(enc.data, shapes=shapes, fingerprint=FP, fleet=FLEET, key=key, base_lookup=lookup)
    assert calls == [(2, 6)]
    assert (dec.kind, dec.base_round) == ("delta", 6)
    assert same(dec.masks, masks)


@settings(max_examples=120, deadline=None, database=None)
@given(data=model_and_masks(max_elems=300), codec=st.sampled_from(CODEC_NAMES + ("auto",)))
def test_spec_decoder_agrees(data: tuple, codec: str) -> None:
    """The document's decoder (tests/wire/spec_decoder.py) reads what the package writes."""
    shapes, masks = data
    codecs = None if codec == "auto" else [codec]
    frame = encode_frame(masks, shapes=shapes, sender=3, round=4, fingerprint=FP, fleet=FLEET, codecs=codecs)
    ref = spec_decoder.decode(frame, shapes=shapes, fleet=FLEET, fingerprint=FP)
    assert (ref["sender"], ref["round"], ref["kind"]) == (3, 4, 0)
    for bits, mask in zip(ref["layers"], masks):
        assert bits == mask.reshape(-1).astype(int).tolist()


@settings(max_examples=40, deadline=None, database=None)
@given(shape=st.sampled_from([(64, 3, 3, 3), (32, 200), (5, 70000)]), data=st.data())
def test_larger_layers_round_trip(shape: tuple, data: st.DataObject) -> None:
    """Layers spanning several roaring containers and many ANS words."""
    mask = data.draw(mask_st(shape))
    for codec in CODEC_NAMES:
        frame = encode_frame([mask], shapes=[shape], sender=0, round=0, fingerprint=FP, fleet=FLEET, codecs=[codec])
        assert same(decode_frame(frame, shapes=[shape], fingerprint=FP, fleet=FLEET).masks, [mask])


def test_structured_masks_beat_order0() -> None:
    """Per-channel and channel-sparse models code structured masks below the order-0 bound."""
    rng = np.random.default_rng(0)
    shape = (128, 64, 3, 3)
    probs = rng.choice([0.0, 0.1, 0.6, 0.95], size=128).reshape(128, 1, 1, 1)
    mask = rng.random(shape) < probs
    enc = encode_frame_stats([mask], shapes=[shape], sender=0, round=0, fingerprint=FP, fleet=FLEET)
    p = mask.mean()
    order0_bytes = mask.size * -(p * np.log2(p) + (1 - p) * np.log2(1 - p)) / 8
    assert enc.layers[0].codec in ("ans-channel", "channel-sparse")
    assert enc.layers[0].payload_bytes < 0.8 * order0_bytes


def test_key_frame_near_entropy() -> None:
    """A keep-0.3 i.i.d. mask codes within 0.5% of H(0.3) = 0.881 bits/param."""
    rng = np.random.default_rng(1)
    shapes = [(256, 128, 3, 3), (512, 256)]
    masks = [rng.random(s) < 0.3 for s in shapes]
    enc = encode_frame_stats(masks, shapes=shapes, sender=0, round=0, fingerprint=FP, fleet=FLEET)
    bound = sum(m.size * -(q * np.log2(q) + (1 - q) * np.log2(1 - q)) for m in masks for q in [m.mean()])
    assert 8 * enc.payload_bytes <= 1.005 * bound
    assert enc.bits_per_param < 0.89


def test_masks_are_validated_on_encode() -> None:
    from dslth_edge.wire import ShapeError

    shapes = [(4, 4)]
    with pytest.raises(ShapeError):
        encode_frame([np.zeros((4, 5), bool)], shapes=shapes, sender=0, round=0, fingerprint=FP, fleet=FLEET)
    with pytest.raises(ShapeError):
        encode_frame([np.zeros((4, 4), np.uint8)], shapes=shapes, sender=0, round=0, fingerprint=FP, fleet=FLEET)
    with pytest.raises(ValueError):
        encode_frame([np.zeros((4, 4), bool)], shapes=shapes, sender=0, round=0, fingerprint=FP[:8], fleet=FLEET)
    with pytest.raises(ValueError):
        encode_frame([np.zeros((4, 4), bool)], shapes=shapes, sender=0, round=0, fingerprint=FP, fleet=FLEET, codecs=["nope"])
    with pytest.raises(ValueError):  # a delta's base must precede the round
        base = (3, [np.zeros((4, 4), bool)])
        encode_frame([np.zeros((4, 4), bool)], shapes=shapes, sender=0, round=3, fingerprint=FP, fleet=FLEET, base=base)
