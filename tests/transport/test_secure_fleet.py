"""A fleet secured at every layer, on real parts: Mosquitto with a TLS listener (its own CA,
certificates made here with openssl), a password file and an ACL pinning each node's user
to its own topics, Ed25519 node identities; one member floods its own mask and ctl topics
(5,000 tiny messages, 2 MiB messages) while its neighbours sit between two rounds.

Pass: the broker refuses a member publishing on another's topic; the flood is dropped on
arrival (sizes and seals checked in paho's network thread, before anything is queued) and
counted; every node's final masks equal the simulator's bit for bit; the security mode is
recorded and no password reaches a file. And `fleet run --json` with a password in the
broker URL: the security mode in its output and summary.json, the password in no file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from dslth_edge.fleet.device_node import NodeRunOptions, run_fleet_node
from dslth_edge.fleet.plan import FleetOptions, plan_fleet
from dslth_edge.fleet.simulator import simulate
from dslth_edge.runs.rundir import load_mask, read_metrics
from dslth_edge.transport.identity import generate_keys
from dslth_edge.transport.messages import topic
from dslth_edge.transport.mqtt import MqttTransport
from dslth_edge.transport.mqtt_options import MqttOptions

from .brokers import MOSQUITTO, MOSQUITTO_MISSING, Mosquitto, mosquitto_passwd

pytestmark = [pytest.mark.skipif(not os.path.exists(MOSQUITTO), reason=MOSQUITTO_MISSING),
              pytest.mark.usefixtures("one_torch_thread")]

ROOT = Path(__file__).resolve().parents[2]
FLEET = "sec"
BASE = dict(nodes=4, topology="ring", dataset="synthetic", model="mcu-cnn", keep=0.5, partition="classes:2",
            eval_every=0, eval_samples=200, fleet_id=FLEET)
ROUNDS = 4
HOSTILE = 3  # floods its own topics with its own (valid) credentials; its honest thread runs too
TINY, BIG_CTL, BIG_MASK = 5000, 20, 5




def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_certificates(d: Path) -> dict[str, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it (EC P-256, valid 2 days)."""
    d.mkdir(parents=True, exist_ok=True)
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=dslth test CA", cwd=d)
    _openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1", cwd=d)
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "server.crt", "-days", "2", "-extfile", "san.ext", cwd=d)
    return {"ca": d / "ca.crt", "cert": d / "server.crt", "key": d / "server.key"}


def tls_mosquitto(tmp: Path, users: dict[str, str], acl: str) -> tuple[Mosquitto, Path]:
    certs = make_certificates(tmp / "pki")
    pw = tmp / "passwd"
    mosquitto_passwd(pw, users)
    acl_file = tmp / "acl"
    acl_file.write_text(acl)
    broker = Mosquitto(tmp / "mq", password_file=pw, acl_file=acl_file)
    with open(broker.conf, "a") as fh:  # the one listener becomes a TLS listener
        fh.write(f"cafile {certs['ca']}\ncertfile {certs['cert']}\nkeyfile {certs['key']}\n")
    return broker.start(), certs["ca"]


def raw_client(port: int, ca: Path, user: str, password: str, name: str) -> mqtt.Client:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name, protocol=mqtt.MQTTv311)
    c.username_pw_set(user, password)
    c.tls_set(ca_certs=str(ca))
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c


def masks(run_dir: Path, nodes: int) -> list[list[np.ndarray]]:
    return [load_mask(run_dir / f"node-{i}" / "mask.npz").masks for i in range(nodes)]


def all_text(directory: Path) -> str:
    return "\n".join(p.read_bytes().decode("latin-1") for p in directory.rglob("*") if p.is_file())


def test_tls_acl_fleet_with_a_flooding_member(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    users = {f"node-{i}": f"pw-{i}-Zq9" for i in range(BASE["nodes"])}
    users["observer"] = "pw-obs-Zq9"
    acl = "".join(f"user node-{i}\ntopic write dslth/{FLEET}/{i}/#\ntopic read dslth/{FLEET}/#\n\n"
                  for i in range(BASE["nodes"])) + f"user observer\ntopic read dslth/{FLEET}/#\n"
    broker, ca = tls_mosquitto(tmp_path, users, acl)
    keys = tmp_path / "keys"
    generate_keys(FLEET, BASE["nodes"], keys)
    sim = FleetOptions(out=str(tmp_path / "sim"), rounds=ROUNDS, **BASE)  # type: ignore[arg-type]
    simulate(sim, write_plots=False)
    clean = masks(Path(sim.out), BASE["nodes"])

    opts = FleetOptions(out=str(tmp_path / "mqtt"), rounds=ROUNDS, **BASE)  # type: ignore[arg-type]
    plan = plan_fleet(opts)
    run_dir = Path(opts.out)
    transports: dict[int, MqttTransport] = {}
    errors: list[str] = []
    gated: dict[int, threading.Event] = {0: threading.Event(), 2: threading.Event()}  # the flooder's neighbours
    release = threading.Event()

    def pause(i: int, result: Any) -> None:  # between rounds 1 and 2: the round loop polls nothing meanwhile
        if i in gated and result.round == 1:
            gated[i].set()
            release.wait(120)

    def run(i: int) -> None:
        nopts = NodeRunOptions(mqtt=MqttOptions(url=f"mqtts://node-{i}:{users[f'node-{i}']}@127.0.0.1:{broker.port}",
                                                ca_file=str(ca)),
                               round_deadline_s=60.0, checkpoint_every=1, roster=str(keys / "roster.json"))
        try:
            run_fleet_node(plan, i, opts.out, nopts, on_start=lambda node: transports.__setitem__(i, node.transport),
                           on_round=lambda r: pause(i, r))
        except Exception as exc:  # noqa: BLE001 - the test reports it
            errors.append(f"node {i}: {type(exc).__name__}: {exc}")

    seen: list[tuple[str, bytes]] = []
    observer = raw_client(broker.port, ca, "observer", users["observer"], "observer")
    observer.on_message = lambda c, u, m: seen.append((m.topic, bytes(m.payload)))
    observer.subscribe([(topic(FLEET, 0, "mask"), 1), (topic(FLEET, HOSTILE, "status"), 1)])
    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(BASE["nodes"])]
    for t in threads:
        t.start()
    attacker = None
    try:
        assert all(e.wait(180) for e in gated.values()), f"the fleet did not reach round 2: {errors}"
        attacker = raw_client(broker.port, ca, f"node-{HOSTILE}", users[f"node-{HOSTILE}"], "attacker")
        # the ACL: node 3's credentials cannot publish on node 0's topic (the broker drops it)
        attacker.publish(topic(FLEET, 0, "mask"), b"DSLM forged by node 3", qos=1).wait_for_publish(10)
        attacker.publish(topic(FLEET, HOSTILE, "status"), b"marker", qos=1).wait_for_publish(10)
        # the flood, on its own topics only (its ACL allows it)
        for k in range(TINY):
            info = attacker.publish(topic(FLEET, HOSTILE, "mask"), b"DSLM" + k.to_bytes(2, "little"), qos=1)
        info.wait_for_publish(60)
        for _ in range(BIG_CTL):
            attacker.publish(topic(FLEET, HOSTILE, "ctl"), bytes(2 << 20), qos=1).wait_for_publish(60)
        for _ in range(BIG_MASK):
            attacker.publish(topic(FLEET, HOSTILE, "mask"), b"DSLM" + bytes(2 << 20), qos=1).wait_for_publish(60)
        # the gated neighbours' network threads take it all in while their round loops poll nothing
        end = time.monotonic() + 60
        while time.monotonic() < end and any(transports[i].drop_counts().get("oversized mask message", 0) < BIG_MASK
                                             for i in gated):  # the last of the flood (one publisher: in order)
            time.sleep(0.1)
        for i in gated:
            t = transports[i]
            # sizes and seals were checked on arrival, before anything was queued
            assert t.stats.dropped["oversized control message"] == BIG_CTL, (i, t.stats.dropped)
            assert t.stats.dropped["oversized mask message"] == BIG_MASK, (i, t.stats.dropped)
            assert t.stats.dropped["unsealed message"] == TINY, (i, t.stats.dropped)
            assert t._inbox.total_bytes <= t._inbox.limits.total_bytes
        release.set()
        for t in threads:
            t.join(180)
        assert not any(t.is_alive() for t in threads), "nodes did not finish"
    finally:
        release.set()
        for c in (attacker, observer):
            if c is not None:
                c.disconnect()
                c.loop_stop()
        broker.stop()
    assert not errors, errors
    assert (topic(FLEET, HOSTILE, "status"), b"marker") in seen
    assert not any(payload == b"DSLM forged by node 3" for _, payload in seen), "the ACL let node 3 publish as node 0"
    for i in range(BASE["nodes"]):
        assert [r["round"] for r in read_metrics(run_dir / f"node-{i}" / "metrics.jsonl")] == list(range(ROUNDS))
    assert all(np.array_equal(a, b) for ma, mb in zip(clean, masks(run_dir, BASE["nodes"])) for a, b in zip(ma, mb)), \
        "the flood changed a mask"
    for i in gated:  # the attack is counted: in the metrics (rejected) and per cause in transport.json
        assert sum(r["rejected"] for r in read_metrics(run_dir / f"node-{i}" / "metrics.jsonl")) >= TINY
        dropped = json.loads((run_dir / f"node-{i}" / "transport.json").read_text())["dropped"]
        assert dropped["oversized control message"] == BIG_CTL and dropped["unsealed message"] == TINY
    config = json.loads((run_dir / "node-0" / "config.json").read_text())
    assert config["extra"]["security"]["mode"] == "ed25519"
    assert config["extra"]["security"]["broker_tls"] is True and config["extra"]["security"]["broker_password"] is True
    assert "pw-" not in all_text(run_dir) and "-Zq9" not in caplog.text


def test_fleet_run_records_security_and_keeps_the_url_password_out_of_files(tmp_path: Path) -> None:
    """`fleet run --json --broker mqtt://fleet:PASSWORD@…`: the security mode in the output and
    summary.json; the password in no file of the run (worker specs, logs, summary) nor the output."""
    secret = "S3cretPW-q7"
    pw = tmp_path / "passwd"
    mosquitto_passwd(pw, {"fleet": secret})
    broker = Mosquitto(tmp_path / "mq", password_file=pw).start()
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    try:
        p = subprocess.run([sys.executable, "-m", "dslth_edge", "fleet", "run", "--nodes", "2", "--rounds", "2",
                            "--workers", "1", "--dataset", "synthetic", "--model", "mcu-cnn", "--eval-every", "0",
                            "--topology", "ring", "--no-plots", "--json", "--out", str(out),
                            "--broker", f"mqtt://fleet:{secret}@127.0.0.1:{broker.port}"],
                           capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    finally:
        broker.stop()
    assert p.returncode == 0, p.stderr[-2000:]
    summary = json.loads(p.stdout)
    assert summary["security"]["mode"] == "crc" and summary["security"]["broker_password"] is True
    assert json.loads((out / "summary.json").read_text())["security"] == summary["security"]
    assert summary["transport"]["broker"] == f"mqtt://127.0.0.1:{broker.port}"
    assert secret not in p.stdout + p.stderr
    assert list(out.glob("worker-*.json")) and secret not in all_text(out)
    shutil.rmtree(out)
