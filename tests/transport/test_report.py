"""The node's progress report: bounded, strict parsing; sealed and verified by an observer without a node key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dslth_edge.transport.identity import AuthError, Identity, generate_keys, key_file, roster_file
from dslth_edge.transport.report import MAX_REPORT_BYTES, NodeReport, ReportThrottle, parse_report


def test_report_round_trip_and_bounds() -> None:
    rep = NodeReport(node=3, round=7, rounds=10, acc=0.5, bytes_sent=1234, misses=1, profile="esp32-s3", time=1.5)
    assert parse_report(rep.to_bytes()) == rep
    with pytest.raises(ValueError):
        NodeReport(node=3, round=7, rounds=10, profile="x" * 600).to_bytes()
    bad = [b"", b"[]", b"{" * 3, b'{"type":"report"}', b"\xff" * 10, b"x" * (MAX_REPORT_BYTES + 1),
           json.dumps({**json.loads(rep.to_bytes()), "acc": 2.0}).encode(),
           json.dumps({**json.loads(rep.to_bytes()), "round": True}).encode(),
           json.dumps({**json.loads(rep.to_bytes()), "state": "hacked"}).encode(),
           json.dumps({**json.loads(rep.to_bytes()), "profile": {"a": 1}}).encode()]
    for payload in bad:
        with pytest.raises(ValueError):
            parse_report(payload)


def test_throttle() -> None:
    t = [0.0]
    th = ReportThrottle(2.0, clock=lambda: t[0])
    assert th.due() and not th.due()
    assert th.due(force=True)
    t[0] = 2.5
    assert th.due()


def test_observer_verifies_ed25519_reports_without_a_node_key(tmp_path: Path) -> None:
    generate_keys("f", 2, tmp_path)
    node = Identity.ed25519(fleet="f", node_id=1, roster_path=roster_file(tmp_path), key_path=key_file(tmp_path, 1))
    sealed = node.seal("report", 4, NodeReport(node=1, round=4, rounds=9).to_bytes())
    watcher = Identity.verifier(mode="ed25519", fleet="f", epoch=node.epoch, roster_path=roster_file(tmp_path))
    assert parse_report(watcher.open(sealed, sender=1, kind="report").payload).round == 4
    with pytest.raises(AuthError):  # node 1's report on node 0's topic
        watcher.open(sealed, sender=0, kind="report")
    with pytest.raises(AuthError):  # a report is not a hello
        watcher.open(sealed, sender=1, kind="hello")
    tampered = bytearray(sealed)
    tampered[40] ^= 1
    with pytest.raises(AuthError):
        watcher.open(bytes(tampered), sender=1, kind="report")
