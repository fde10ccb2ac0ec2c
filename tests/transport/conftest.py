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


#: Why the multi-node fleet tests do not run on the embedded broker (allow-listed in
#: tests/conftest.py). amqtt 0.12.1's Broker._handle_client_session loops
#: `for topic in self._subscriptions` with an `await` inside; a client subscribing at that
#: moment raises "dictionary changed size during iteration" and the connecting client's
#: session is never served, so a node loses frames by luck (seen in 1 of 5 to 2 of 11
#: embedded fleet tests). Making amqtt iterate a copy exposed its second bug (every
#: filter's retained messages go to every connecting client) and failed every time. The
#: same tests run on Mosquitto; the embedded broker still carries `fleet run` in
#: tests/cli/test_cli_runs.py and `make demo`.
AMQTT_RACE = ("amqtt 0.12.1 subscription-table race: multi-node fleets on the embedded broker lose "
              "frames by luck (tests/transport/conftest.py); these tests run on Mosquitto")


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
        pytest.skip(AMQTT_RACE)
        b = Embedded().start()
    b.kind = request.param
    yield b
    b.stop()
