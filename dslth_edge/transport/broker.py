"""The embedded MQTT broker (amqtt), for fleets without a Mosquitto of their own.

``dslth-edge broker`` runs it in the foreground; ``fleet run`` starts it in a
background thread (:class:`EmbeddedBroker`) unless ``--broker`` names another one.
amqtt speaks MQTT 3.1.1 only, so clients fall back from MQTT 5 (see
:mod:`dslth_edge.transport.mqtt`). It keeps no state on disk: stopping it drops
sessions and retained messages, which the nodes restore when they reconnect
(hello/status are republished, recent frames resent). For production fleets use
Mosquitto (docs/mqtt.md); amqtt is here so a demo needs nothing but ``pip``.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from typing import Any

from dslth_edge.errors import TransportError, UsageError

__all__ = ["EmbeddedBroker", "broker_config", "free_port", "run_broker"]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on right now (tests, ``fleet run``)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def broker_config(host: str, port: int) -> dict[str, Any]:
    """amqtt configuration: one TCP listener, anonymous access, no $SYS chatter, quiet."""
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}", "max_connections": -1}},
        # no timeout on idle clients beyond their own keep-alive
        "timeout_disconnect_delay": 0,
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }


def _import_amqtt() -> Any:
    try:
        from amqtt.broker import Broker
    except ImportError as exc:  # the `broker` extra is optional
        raise UsageError("the embedded broker needs amqtt: pip install 'dslth-edge[broker]' (or pass --broker URL)") from exc
    # amqtt logs every connection at INFO; a fleet of 100 nodes would drown the live table
    for name in ("amqtt", "transitions"):
        logging.getLogger(name).setLevel(logging.ERROR)
    return Broker


async def _close_listeners(broker: Any) -> None:
    """Close amqtt's listening sockets (amqtt 0.11-0.12 keeps them in the private
    ``Broker._servers``, each with ``close_instance()``); nothing if that changed."""
    for server in list(getattr(broker, "_servers", {}).values()):
        close = getattr(server, "close_instance", None)
        if close is not None:
            await close()


class EmbeddedBroker:
    """amqtt on its own event loop in a daemon thread; ``start()``/``stop()``, or a context manager."""

    def __init__(self, host: str = "127.0.0.1", port: int = 1883) -> None:
        self.host = host
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._broker: Any = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def start(self, timeout: float = 15.0) -> "EmbeddedBroker":
        """Bind and serve; raises :class:`TransportError` if the port cannot be bound."""
        Broker = _import_amqtt()
        ready = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                self._broker = Broker(broker_config(self.host, self.port), loop=loop)
                loop.run_until_complete(self._broker.start())
            except BaseException as exc:  # reported to start()'s caller
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=serve, name="dslth-broker", daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise TransportError(f"embedded broker did not start on {self.host}:{self.port} within {timeout:.0f} s")
        if failure:
            raise TransportError(f"embedded broker cannot listen on {self.host}:{self.port}: {failure[0]}")
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Shut down (clients see the connection drop, as with a real broker restart)."""
        loop, broker = self._loop, self._broker
        if loop is None or broker is None or not loop.is_running():
            return
        fut = asyncio.run_coroutine_threadsafe(broker.shutdown(), loop)
        try:
            fut.result(timeout)
        except Exception:  # noqa: BLE001 - a failed shutdown still stops the loop below
            # amqtt closes its listeners last: a session clean-up that raised or hung (a client
            # mid-way through a large message) would leave the port bound, and a restart on
            # the same port would fail with "address already in use"
            closing = asyncio.run_coroutine_threadsafe(_close_listeners(broker), loop)
            try:
                closing.result(timeout)
            except Exception:  # noqa: BLE001 - nothing more to do; the loop stops below
                pass
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout)
        self._broker = None

    def __enter__(self) -> "EmbeddedBroker":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_broker(host: str = "127.0.0.1", port: int = 1883) -> None:
    """Serve in the foreground until Ctrl-C (``dslth-edge broker``)."""
    Broker = _import_amqtt()

    async def main() -> None:
        broker = Broker(broker_config(host, port))
        try:
            await broker.start()
        except Exception as exc:
            raise TransportError(f"embedded broker cannot listen on {host}:{port}: {exc}") from exc
        try:
            await asyncio.Event().wait()
        finally:
            await broker.shutdown()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
