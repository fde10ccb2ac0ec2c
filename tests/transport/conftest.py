"""Fixtures: brokers (real Mosquitto on a free loopback port, and the embedded amqtt)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .brokers import MOSQUITTO, MOSQUITTO_MISSING, Embedded, Mosquitto

needs_mosquitto = pytest.mark.skipif(not os.path.exists(MOSQUITTO), reason=MOSQUITTO_MISSING)


def _amqtt_missing() -> bool:
    try:
        import amqtt  # noqa: F401
    except ImportError:
        return True
    return False


@pytest.fixture(params=["mosquitto", "embedded"])
def broker(request: pytest.FixtureRequest, tmp_path: Path):
    """A fresh broker of each kind, stopped afterwards."""
    if request.param == "mosquitto":
        if not os.path.exists(MOSQUITTO):
            pytest.skip(MOSQUITTO_MISSING)
        b = Mosquitto(tmp_path / "mosquitto").start()
    else:
        if _amqtt_missing():
            pytest.skip("amqtt not installed: pip install 'dslth-edge[broker]'")
        b = Embedded().start()
    b.kind = request.param
    yield b
    b.stop()
