"""`dslth-edge fleet watch` against a real Mosquitto: JSON Lines, the live table without a TTY,
no torch, and reports that are unsigned, forged or malformed shown as such and never trusted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from dslth_edge.transport.identity import Identity
from dslth_edge.transport.messages import Hello, topic
from dslth_edge.transport.report import NodeReport

from tests.transport.brokers import MOSQUITTO, MOSQUITTO_MISSING, Mosquitto

pytestmark = pytest.mark.skipif(not os.path.exists(MOSQUITTO), reason=MOSQUITTO_MISSING)

KEY = b"watch-test-key"
PROBE = """
import sys
from dslth_edge.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code or 0
else:
    code = 0
print("LOADED", ",".join(sorted(m for m in ("torch", "torch_pruning", "onnxruntime") if m in sys.modules)))
sys.exit(code)
"""


@pytest.fixture(scope="module")
def fleet_broker(tmp_path_factory: pytest.TempPathFactory):
    """A Mosquitto holding the retained hello/status/report of a made-up 4-node fleet "w"."""
    b = Mosquitto(tmp_path_factory.mktemp("mosquitto")).start()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="watch-test-publisher")
    c.connect("127.0.0.1", b.port)
    c.loop_start()
    infos = []

    def put(node: int, kind: str, payload: bytes) -> None:
        infos.append(c.publish(topic("w", node, kind), payload, qos=1, retain=True))

    for i in range(4):
        ident = Identity.hmac(fleet="w", node_id=i, key=KEY)
        put(i, "hello", ident.seal("hello", 0, Hello(node=i, fleet="w", fingerprint="00", profile="esp32-s3").to_bytes()))
        put(i, "status", b"online" if i % 2 == 0 else b"offline")
    report = NodeReport(node=0, round=7, rounds=10, acc=0.8125, bytes_sent=123456, misses=2, profile="esp32-s3",
                        time=time.time())
    put(0, "report", Identity.hmac(fleet="w", node_id=0, key=KEY).seal("report", 7, report.to_bytes()))
    forged = NodeReport(node=1, round=10, rounds=10, state="done", acc=0.99, bytes_sent=1, misses=0)
    put(1, "report", forged.to_bytes())  # not sealed at all
    put(2, "report", Identity.hmac(fleet="w", node_id=2, key=b"another key").seal(
        "report", 10, NodeReport(node=2, round=10, rounds=10, acc=0.99).to_bytes()))  # sealed with the wrong key
    put(3, "report", Identity.hmac(fleet="w", node_id=3, key=KEY).seal("report", 1, b'{"type":"report","node":"x"}'))
    put(3, "status", b"\xff" * 40)
    for info in infos:
        info.wait_for_publish(5)
    c.disconnect()
    c.loop_stop()
    yield b
    b.stop()


def _watch(broker: Mosquitto, *args: str, key: bool = True, tmp: Path) -> subprocess.CompletedProcess[str]:
    extra: list[str] = []
    if key:
        (tmp / "key").write_bytes(KEY + b"\n")
        extra = ["--fleet-key-file", str(tmp / "key")]
    return subprocess.run([sys.executable, "-c", PROBE, "fleet", "watch", "--broker", broker.url, "--fleet", "w",
                           *extra, *args], capture_output=True, text=True, timeout=60)


def test_once_json_lines_verified_and_untrusted(fleet_broker: Mosquitto, tmp_path: Path) -> None:
    proc = _watch(fleet_broker, "--once", "--json", tmp=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if not ln.startswith("LOADED")]
    assert proc.stdout.splitlines()[-1] == "LOADED ", "fleet watch imported torch"
    views = {v["node"]: v for v in map(json.loads, lines)}
    assert sorted(views) == [0, 1, 2, 3]
    v0 = views[0]
    assert (v0["trust"], v0["hello"], v0["security"], v0["status"], v0["profile"]) == (
        "verified", "verified", "hmac", "online", "esp32-s3")
    assert (v0["round"], v0["rounds"], v0["acc"], v0["bytes_sent"], v0["misses"]) == (7, 10, 0.8125, 123456, 2)
    # unsigned, forged and malformed reports: shown as such, their figures not taken
    assert views[1]["trust"] == "unsigned" and views[1]["round"] is None and views[1]["claimed"]["acc"] == 0.99
    assert views[1]["status"] == "offline"
    assert views[2]["trust"] == "bad seal" and views[2]["round"] is None and views[2]["acc"] is None
    assert views[3]["trust"] == "malformed" and views[3]["round"] is None and views[3]["status"] == "malformed"


def test_without_the_key_nothing_is_trusted(fleet_broker: Mosquitto, tmp_path: Path) -> None:
    proc = _watch(fleet_broker, "--once", "--json", key=False, tmp=tmp_path)
    views = {v["node"]: v for v in map(json.loads, proc.stdout.splitlines()[:-1])}
    assert views[0]["trust"] == "unverified" and views[0]["round"] is None and views[0]["hello"] == "unverified"


def test_live_table_without_a_tty_fits_80_columns(fleet_broker: Mosquitto, tmp_path: Path) -> None:
    proc = _watch(fleet_broker, "--count", "2", "--interval", "0.2", tmp=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()[:-1]
    assert "\x1b" not in proc.stdout  # no cursor control on a pipe: each refresh printed after the last
    assert sum(ln.startswith("fleet w on ") for ln in lines) == 2
    assert all(len(ln) <= 80 for ln in lines)
    row0 = next(ln for ln in lines if ln.split()[:1] == ["0"])
    assert "7/10" in row0 and "81.2" in row0 and "online" in row0
    row2 = next(ln for ln in lines if ln.split()[:1] == ["2"])
    assert "bad seal" in row2 and "?" in row2
