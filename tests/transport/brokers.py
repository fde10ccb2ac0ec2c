"""Brokers for the transport tests: a real Mosquitto (own config, free loopback port) and amqtt.

Tests never touch a system broker: each Mosquitto here runs from a generated config in
a temporary directory, bound to 127.0.0.1 on a port nothing else uses.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from dslth_edge.transport.broker import EmbeddedBroker, free_port

__all__ = ["MOSQUITTO", "MOSQUITTO_MISSING", "Mosquitto", "Embedded", "wait_port"]

MOSQUITTO = "/usr/sbin/mosquitto"
MOSQUITTO_MISSING = "Debian package mosquitto not installed: apt-get install mosquitto"


def wait_port(port: int, timeout: float = 10.0, up: bool = True) -> bool:
    """Wait until 127.0.0.1:port accepts (up=True) or refuses (up=False) connections."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                if up:
                    return True
        except OSError:
            if not up:
                return True
        time.sleep(0.05)
    return False


class Mosquitto:
    """A private mosquitto: ``start()``, ``stop()``, ``restart()``; persistence on (sessions survive)."""

    def __init__(self, workdir: Path, *, port: int | None = None, password_file: Path | None = None,
                 acl_file: Path | None = None) -> None:
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.conf = self.dir / "mosquitto.conf"
        lines = [
            "per_listener_settings false",
            f"listener {self.port} 127.0.0.1",
            "persistence true",
            f"persistence_location {self.dir}/",
            "autosave_interval 1",
            "max_queued_messages 10000",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            f"allow_anonymous {'false' if password_file else 'true'}",
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            # started as root, mosquitto drops to user "mosquitto", which cannot read a
            # pytest temporary directory (mode 700): stay the user that started it
            lines.append("user root")
        if password_file:
            lines.append(f"password_file {password_file}")
        if acl_file:
            lines.append(f"acl_file {acl_file}")
        self.conf.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> "Mosquitto":
        log = self.dir / "mosquitto.log"
        with open(log, "ab") as fh:
            self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                         stderr=fh, start_new_session=True)
        if not wait_port(self.port):
            self.stop()
            tail = log.read_text(errors="replace").strip().splitlines()[-3:]
            raise RuntimeError(f"mosquitto did not start on port {self.port}: {' | '.join(tail)}")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # saves the persistence database
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        wait_port(self.port, up=False)

    def restart(self, down_s: float = 1.0) -> None:
        self.stop()
        time.sleep(down_s)
        self.start()


class Embedded:
    """The amqtt broker behind the same start/stop/restart/url face."""

    def __init__(self, workdir: Path | None = None, *, port: int | None = None) -> None:
        self.port = port or free_port()
        self.broker: EmbeddedBroker | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> "Embedded":
        self.broker = EmbeddedBroker("127.0.0.1", self.port).start()
        return self

    def stop(self) -> None:
        if self.broker is not None:
            self.broker.stop()
        self.broker = None
        wait_port(self.port, up=False)

    def restart(self, down_s: float = 1.0) -> None:
        self.stop()
        time.sleep(down_s)
        self.start()


def mosquitto_passwd(path: Path, users: dict[str, str]) -> None:
    """Write a mosquitto password file with mosquitto_passwd (hashes, not plain text)."""
    tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    path.write_text("")
    for user, password in users.items():
        subprocess.run([tool, "-b", str(path), user, password], check=True, capture_output=True,
                       env={**os.environ})
