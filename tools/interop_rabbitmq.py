#!/usr/bin/env python3
"""Interop check: a fleet over RabbitMQ's MQTT plugin ends bit-identical to ``simulate``.

Starts a private RabbitMQ (Debian's ``rabbitmq-server``, its own node name, data
directory and free loopback ports; the MQTT plugin enabled), then runs a 4-node ring
with ``fleet run --mqtt-protocol auto`` (RabbitMQ 3.10 refuses an MQTT 5 CONNECT with
"Unspecified error": the nodes must fall back to 3.1.1) and with ``3.1.1``, and compares
every final mask with the simulator's. Prints one JSON object per run with the broker's
version. Not part of the suite: RabbitMQ takes ~10 s and ~150 MB to start.

    apt-get install rabbitmq-server
    nice -n 10 python tools/interop_rabbitmq.py [--rounds 4]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dslth_edge.transport.broker import free_port  # noqa: E402
from tests.transport.brokers import wait_port  # noqa: E402

SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
CTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"


def start_rabbitmq(tmp: Path) -> tuple[subprocess.Popen[bytes], int, dict[str, str]]:
    mqtt_port, amqp_port, dist_port = free_port(), free_port(), free_port()
    (tmp / "rabbitmq.conf").write_text("\n".join([
        f"listeners.tcp.default = 127.0.0.1:{amqp_port}",
        f"mqtt.listeners.tcp.default = 127.0.0.1:{mqtt_port}",
        "mqtt.allow_anonymous = true",
        "mqtt.default_user = guest",
        "mqtt.default_pass = guest",
        "loopback_users = none",
        "log.console = false",
        f"log.file = {tmp / 'rabbit.log'}",
    ]) + "\n")
    (tmp / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")
    env = {**os.environ, "RABBITMQ_NODENAME": f"dslth-interop-{os.getpid()}@localhost",
           "RABBITMQ_CONFIG_FILE": str(tmp / "rabbitmq.conf"), "RABBITMQ_ENABLED_PLUGINS_FILE": str(tmp / "enabled_plugins"),
           "RABBITMQ_MNESIA_BASE": str(tmp / "mnesia"), "RABBITMQ_LOG_BASE": str(tmp / "log"),
           "RABBITMQ_DIST_PORT": str(dist_port), "HOME": str(tmp)}
    proc = subprocess.Popen([SERVER], env=env, stdout=open(tmp / "server.out", "wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    if not wait_port(mqtt_port, timeout=120):
        proc.terminate()
        raise SystemExit(f"RabbitMQ did not open its MQTT port; see {tmp}/server.out and {tmp}/rabbit.log")
    return proc, mqtt_port, env


def version(env: dict[str, str]) -> str:
    try:
        return subprocess.run([CTL, "version"], env=env, capture_output=True, text=True, timeout=60).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def run(tmp: Path, port: int, protocol: str, rounds: int) -> dict:
    import numpy as np

    from dslth_edge.runs.rundir import load_mask

    out, sim = tmp / f"fleet-{protocol}", tmp / "sim"
    common = ["--nodes", "4", "--topology", "ring", "--dataset", "synthetic", "--model", "mcu-cnn", "--partition",
              "classes:2", "--rounds", str(rounds), "--eval-every", "0"]
    cli = [sys.executable, "-m", "dslth_edge"]
    if not (sim / "node-3" / "mask.npz").is_file():
        subprocess.run([*cli, "simulate", *common, "--out", str(sim), "--no-plots", "--json"], check=True,
                       capture_output=True)
    t0 = time.perf_counter()
    proc = subprocess.run([*cli, "fleet", "run", *common, "--out", str(out), "--no-plots", "--json", "--workers", "1",
                           "--fleet-id", "interop",
                           "--broker", f"mqtt://127.0.0.1:{port}", "--mqtt-protocol", protocol],
                          capture_output=True, text=True)
    result = {"protocol": protocol, "exit": proc.returncode, "seconds": round(time.perf_counter() - t0, 1)}
    if proc.returncode != 0:
        result["error"] = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return result
    equal = sum(all(np.array_equal(a, b) for a, b in zip(load_mask(out / f"node-{i}" / "mask.npz").masks,
                                                         load_mask(sim / f"node-{i}" / "mask.npz").masks))
                for i in range(4))
    summary = json.loads(proc.stdout)
    result.update(masks_equal_simulator=f"{equal}/4", deadline_misses=summary.get("deadline_misses"))
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--protocols", default="auto,3.1.1", help="--mqtt-protocol values to run, comma-separated")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()
    if not os.path.exists(SERVER):
        raise SystemExit("rabbitmq-server is not installed: apt-get install rabbitmq-server")
    tmp = Path(tempfile.mkdtemp(prefix="interop-rabbitmq-"))
    proc, port, env = start_rabbitmq(tmp)
    try:
        ver = version(env)
        for protocol in args.protocols.split(","):
            print(json.dumps({"broker": f"RabbitMQ {ver} (rabbitmq_mqtt)", **run(tmp, port, protocol, args.rounds)}),
                  flush=True)
    finally:
        subprocess.run([CTL, "stop"], env=env, capture_output=True, timeout=120)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
