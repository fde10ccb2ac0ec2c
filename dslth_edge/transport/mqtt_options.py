"""How a node reaches the fleet's MQTT broker: the broker URL, TLS files, credentials, limits.

Credentials come from :class:`MqttOptions` (explicit), else the broker URL's, else the
environment (``$DSLTH_MQTT_USERNAME``/``$DSLTH_MQTT_PASSWORD``); :func:`read_secret`
reads a password from a file or a variable so that it stays off the command line.
A URL's credentials never reach a file or a log: :func:`redact_url` is what any URL
goes through before it is written or printed, and :meth:`MqttOptions.split_credentials`
moves them into the options' fields (a launcher hands the password to its workers in
the environment).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from dslth_edge.errors import UsageError
from dslth_edge.wire import DEFAULT_MAX_MESSAGE_BYTES

__all__ = [
    "ENV_USERNAME",
    "ENV_PASSWORD",
    "ENV_FLEET_KEY",
    "BrokerAddress",
    "MqttOptions",
    "parse_broker_url",
    "read_secret",
    "redact_url",
]

ENV_USERNAME = "DSLTH_MQTT_USERNAME"
ENV_PASSWORD = "DSLTH_MQTT_PASSWORD"
ENV_FLEET_KEY = "DSLTH_FLEET_KEY"  # the fleet's HMAC key (nodes seal with it, `fleet watch` verifies)


@dataclass(frozen=True)
class BrokerAddress:
    """A parsed broker URL: ``mqtt://host[:1883]`` or ``mqtts://host[:8883]`` (TLS)."""

    host: str
    port: int
    tls: bool
    username: str | None = None
    password: str | None = None

    def __str__(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def parse_broker_url(url: str) -> BrokerAddress:
    """Parse ``mqtt://``, ``tcp://``, ``mqtts://``/``ssl://`` URLs (credentials allowed, not advised)."""
    parts = urlsplit(url if "://" in url else f"mqtt://{url}")
    scheme = parts.scheme.lower()
    if scheme not in ("mqtt", "tcp", "mqtts", "ssl", "tls"):
        raise UsageError(f"broker URL {url!r}: scheme must be mqtt:// or mqtts://")
    tls = scheme in ("mqtts", "ssl", "tls")
    try:
        port = parts.port or (8883 if tls else 1883)
    except ValueError:
        raise UsageError(f"broker URL {url!r}: bad port") from None
    if not parts.hostname:
        raise UsageError(f"broker URL {url!r}: no host")
    return BrokerAddress(parts.hostname, port, tls,
                         unquote(parts.username) if parts.username else None,
                         unquote(parts.password) if parts.password else None)


def redact_url(url: str) -> str:
    """``url`` without its user name and password (what files and logs may show)."""
    try:
        parts = urlsplit(url if "://" in url else f"mqtt://{url}")
    except ValueError:
        return "<unparsable broker URL>"
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1]))


def read_secret(*, env: str | None = None, file: str | None = None) -> str | None:
    """A secret from a file (first line, trailing newline stripped) or else an environment variable."""
    if file:
        try:
            return Path(file).read_text().splitlines()[0] if Path(file).stat().st_size else ""
        except OSError as exc:
            raise UsageError(f"cannot read secret file {file}: {exc.strerror or exc}") from exc
    if env:
        return os.environ.get(env)
    return None


@dataclass(frozen=True)
class MqttOptions:
    """How to reach the broker. Credentials: explicit, else the URL's, else ``$DSLTH_MQTT_*``."""

    url: str = "mqtt://127.0.0.1:1883"
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False  # skip host-name verification (self-signed test set-ups only)
    username: str | None = None
    password: str | None = None
    protocol: str = "auto"  # "auto" (5, else 3.1.1), "5" or "3.1.1"
    keepalive_s: int = 10
    session_expiry_s: int = 3600
    connect_timeout_s: float = 20.0
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    resend_frames: int = 2  # recent frames published again after a reconnect / a peer's return

    def address(self) -> BrokerAddress:
        return parse_broker_url(self.url)

    def split_credentials(self) -> "MqttOptions":
        """The same options with the URL's credentials moved into ``username``/``password``
        (explicit ones win), so that ``url`` can be written anywhere."""
        clean = redact_url(self.url)
        if clean == self.url:
            return self
        addr = self.address()
        return replace(self, url=clean, username=self.username or addr.username,
                       password=self.password if self.password is not None else addr.password)

    def credentials(self) -> tuple[str | None, str | None]:
        addr = self.address()
        user = self.username or addr.username or os.environ.get(ENV_USERNAME)
        password = self.password if self.password is not None else addr.password
        if password is None:
            password = os.environ.get(ENV_PASSWORD)
        return user, password

