"""The embedded MQTT broker (amqtt), for fleets without a Mosquitto of their own.

``dslth-edge broker`` runs it in the foreground; ``fleet run`` starts it in a
background thread (:class:`EmbeddedBroker`) unless ``--broker`` names another one.
amqtt speaks MQTT 3.1.1 only, so clients fall back from MQTT 5 (see
:mod:`dslth_edge.transport.mqtt`). It keeps no state on disk: stopping it drops
sessions and retained messages, which the nodes restore when they reconnect
(hello/status are republished, recent frames resent). For production fleets use
Mosquitto (docs/mqtt.md); amqtt is here so a demo needs nothing but ``pip``.

The broker served is :func:`broker_class`, amqtt's ``Broker`` with two of its methods
replaced: amqtt 0.12.1 loses a connecting client's whole session when another client
subscribes at the wrong moment, and sends every connecting client the retained messages
of every filter anyone holds (docs/mqtt.md, "The embedded broker").
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import inspect
import logging
import socket
import threading
from typing import Any

from dslth_edge.errors import TransportError, UsageError

__all__ = ["AMQTT_VERSION", "EmbeddedBroker", "amqtt_drift", "broker_class", "broker_config", "free_port",
           "run_broker"]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on right now (tests, ``fleet run``)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def broker_config(host: str, port: int) -> dict[str, Any]:
    """amqtt configuration: one TCP listener, anonymous access, no $SYS chatter, quiet."""
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}", "max_connections": -1}},
        # no timeout on idle clients beyond their own keep-alive. (MQTT 3.1.1 allows 1.5x;
        # amqtt 0.12.1 parses this field but reads "timeout-disconnect-delay" when it applies
        # it, so no value here takes effect: a client is dropped after exactly its keep-alive)
        "timeout_disconnect_delay": 0,
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }


def _import_amqtt() -> Any:
    """amqtt's own ``Broker`` class (quietened); :class:`UsageError` when amqtt is missing."""
    try:
        from amqtt.broker import Broker
    except ImportError as exc:  # the `broker` extra is optional
        raise UsageError("the embedded broker needs amqtt: pip install 'dslth-edge[broker]' (or pass --broker URL)") from exc
    # amqtt logs every connection at INFO; a fleet of 100 nodes would drown the live table
    for name in ("amqtt", "transitions"):
        logging.getLogger(name).setLevel(logging.ERROR)
    return Broker


#: The one amqtt release :func:`broker_class` was read against (pinned exactly in
#: pyproject.toml): its two overrides are amended copies of that release's private methods.
AMQTT_VERSION = "0.12.1"

#: SHA-256 (first 16 hex digits) of the source, in amqtt 0.12.1, of every private ``Broker``
#: method the overrides copy or depend on. :func:`amqtt_drift` compares them with the
#: installed amqtt, and tests/transport/test_embedded_broker.py fails when one differs.
AMQTT_SOURCES: dict[str, str] = {
    # copied and amended below
    "_handle_client_session": "8b1b52a03df9daf5",
    "_run_broadcast": "e852128b3e38e04a",
    # called by the copies, or relied on: retained messages go out at SUBSCRIBE time
    # (_handle_subscription -> _publish_retained_messages_for_subscription), and the
    # subscription table is a dict of filter -> [(session, qos)] (add_subscription,
    # _del_all_subscriptions)
    "_publish_session_retained_messages": "78cd66096c935c1f",
    "_publish_retained_messages_for_subscription": "d6ad257821ba29ef",
    "_handle_subscription": "3dae18afa195209e",
    "_client_message_loop": "916c4647c3389918",
    "add_subscription": "07757b63113c395e",
    "_del_all_subscriptions": "615579810f47d1e0",
    # wrapped (the keep-alive grace): sets session.keep_alive from the CONNECT
    "_initialize_client_session": "5dd89158bbe46266",
}


def _source_digest(func: Any) -> str:
    return hashlib.sha256(inspect.getsource(func).encode()).hexdigest()[:16]


def amqtt_drift() -> list[str]:
    """How the installed amqtt differs from the one :func:`broker_class` was checked
    against: its version, and every method of :data:`AMQTT_SOURCES` whose source changed
    (or vanished). Empty when it is amqtt 0.12.1 as read."""
    import amqtt

    Broker = _import_amqtt()
    drift: list[str] = []
    if amqtt.__version__ != AMQTT_VERSION:
        drift.append(f"amqtt {amqtt.__version__} installed, {AMQTT_VERSION} checked")
    for name, digest in AMQTT_SOURCES.items():
        method = getattr(Broker, name, None)
        if method is None:
            drift.append(f"Broker.{name} is gone")
        elif _source_digest(method) != digest:
            drift.append(f"Broker.{name} changed (source digest {_source_digest(method)}, checked {digest})")
    return drift


@functools.cache
def broker_class() -> Any:
    """amqtt's ``Broker`` with its subscription-table bugs fixed; what this module serves.

    This (with ``_close_listeners``'s look at ``Broker._servers``) is where the module
    reaches into amqtt's private API; it is written against amqtt 0.12.1
    (:data:`AMQTT_VERSION`, pinned exactly) and refuses any other version.

    amqtt 0.12.1 keeps the subscription table ``Broker._subscriptions`` as a plain dict
    (filter -> [(session, qos)]) that every client's SUBSCRIBE adds to
    (``add_subscription``) while other coroutines walk it:

    1. ``_handle_client_session`` ends, for every connecting client, with
       ``for topic in self._subscriptions: await self._publish_retained_messages_for_subscription(...)``.
       The ``await`` suspends whenever a retained message matches; another client's SUBSCRIBE
       of a new filter meanwhile makes the next step raise "RuntimeError: dictionary changed
       size during iteration". Nothing catches it (``_client_connected`` catches only amqtt's
       own errors): the connection task dies before ``_client_message_loop`` and asyncio
       closes the connection. The client had its CONNACK; its SUBSCRIBE is never answered,
       and the QoS 1 PUBLISHes the protocol handler already acknowledged are never
       delivered: a node loses frames until paho reconnects (1 s backoff or more).
    2. The same loop walks *every* client's filters, so a connecting client receives (QoS 0,
       retain set) the retained messages of filters it never subscribed to, one copy per
       matching filter. MQTT 3.1.1 sends retained messages when a subscription is made
       ([MQTT-3.3.1-6], and again when a SUBSCRIBE repeats a filter, [MQTT-3.8.4-3]); a
       resumed session (clean session 0) keeps its subscriptions and gets the messages
       queued for it, not a replay of the retained store (Mosquitto behaves so).
       ``_handle_subscription`` already does the subscribe-time part right, for the
       client's own filters only.
    3. ``_run_broadcast`` walks ``self._subscriptions.items()`` and each filter's list with
       awaits inside (topic-filter plugins, queueing for a disconnected session): the
       same failure, and the message is then lost for the remaining subscribers. With the
       anonymous, plugin-less configuration of :func:`broker_config` those awaits do not
       suspend today, but one plugin or an authenticated session would make them.

    The replacements are copies of amqtt 0.12.1's methods (debug logging trimmed) with
    exactly these changes:
    ``_handle_client_session`` drops the replay loop (fixes 1 and 2: no walk of the table
    at all), ``_run_broadcast`` walks snapshots (fixes 3: a message goes to the
    subscriptions that existed when the broker took it off its queue, which is what a
    subscriber can expect of a message published before it subscribed).
    """
    Broker = _import_amqtt()
    import amqtt

    if amqtt.__version__ != AMQTT_VERSION:
        raise UsageError(f"the embedded broker is written against amqtt {AMQTT_VERSION}, found {amqtt.__version__}: "
                         f"pip install 'amqtt=={AMQTT_VERSION}' (or pass --broker URL)")
    from amqtt.broker import Server
    from amqtt.contexts import Action
    from amqtt.errors import BrokerError
    from amqtt.events import BrokerEvents
    from amqtt.mqtt.constants import QOS_1, QOS_2
    from amqtt.utils import format_client_message
    from transitions import MachineError

    class DslthBroker(Broker):  # type: ignore[misc,valid-type]
        """amqtt 0.12.1's Broker without its subscription-table races (see :func:`broker_class`)."""

        async def _initialize_client_session(self, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
            """amqtt's, then the keep-alive grace MQTT 3.1.1 gives a silent client: 1.5 x its
            keep-alive [MQTT-3.1.2-24]. amqtt means to add ``timeout_disconnect_delay`` here but
            reads it under a key its config parser refuses, so it drops a client after exactly
            its keep-alive, racing the client's own PINGREQ (a node whose round takes longer
            than 10 s publishes nothing else in between)."""
            handler, session = await super()._initialize_client_session(*args, **kwargs)
            if session.keep_alive > 0:  # set afresh from each CONNECT: the grace never accumulates
                session.keep_alive += (session.keep_alive + 1) // 2
            return handler, session

        async def _handle_client_session(self, reader: Any, writer: Any, client_session: Any, handler: Any,
                                         server: Server, listener_name: str) -> None:
            """amqtt 0.12.1's ``Broker._handle_client_session`` (broker.py lines 549-604) minus
            its last step, the replay of every filter's retained messages."""
            authenticated = await self._authenticate(client_session, self.listeners_config[listener_name])

            if client_session.client_id is None:
                msg = "Client ID was not correctly created/set."
                raise BrokerError(msg)

            while True:
                try:
                    client_session.transitions.connect()
                    break
                except (MachineError, ValueError):
                    if client_session.transitions.is_connected():
                        self.logger.warning(f"Client {client_session.client_id} is already connected, performing take-over.")
                        old_session = self._sessions[client_session.client_id]
                        await old_session[1].handle_connection_closed()
                        await old_session[1].stop()
                        break
                    self.logger.warning(f"Client {client_session.client_id} is reconnecting too quickly, make it wait")
                    await asyncio.sleep(1)

            handler.attach(client_session, reader, writer)
            self._sessions[client_session.client_id] = (client_session, handler)

            await handler.mqtt_connack_authorize(authenticated)

            if not authenticated:
                await writer.close()
                return

            await self.plugins_manager.fire_event(BrokerEvents.CLIENT_CONNECTED,
                                                  client_id=client_session.client_id,
                                                  client_session=client_session)

            await handler.start()

            # the QoS 1/2 messages queued for this session while it was disconnected: the
            # session state MQTT 3.1.1 resumes (a queue, not the subscription table)
            await self._publish_session_retained_messages(client_session)

            # amqtt 0.12.1 then ran `for topic in self._subscriptions: await
            # self._publish_retained_messages_for_subscription((topic, QOS_0), client_session)`:
            # every client's filters, walked across awaits. Dropped: retained messages go out
            # when this client subscribes (_handle_subscription), for its own filters only.
            await self._client_message_loop(client_session, handler)

        async def _run_broadcast(self, running_tasks: Any) -> None:
            """amqtt 0.12.1's ``Broker._run_broadcast`` (broker.py lines 1009-1061), walking
            snapshots of the subscription table and of each filter's subscriber list: the
            awaits inside the loop must not let a SUBSCRIBE break (or skew) the walk."""
            broadcast = await self._broadcast_queue.get()

            for k_filter, subscriptions in list(self._subscriptions.items()):

                # Skip all subscriptions which do not match the topic
                if not self._matches(broadcast["topic"], k_filter):
                    continue

                for target_session, sub_qos in list(subscriptions):
                    qos = broadcast.get("qos", sub_qos)

                    sendable = await self._topic_filtering(target_session, topic=broadcast["topic"],
                                                           action=Action.RECEIVE)
                    if not sendable:
                        self.logger.info(
                            f"{target_session.client_id} not allowed to receive messages from TOPIC {broadcast['topic']}.")
                        continue

                    # queue for a disconnected persistent session [MQTT 3.1.2.4] (as amqtt does)
                    if (target_session.transitions.state != "connected"
                            and not target_session.clean_session
                            and qos in (QOS_1, QOS_2)
                            and not target_session.is_anonymous):
                        await self._retain_broadcast_message(broadcast, qos, target_session)
                        continue

                    # Only broadcast the message to connected clients
                    if target_session.transitions.state != "connected":
                        continue

                    if self.logger.isEnabledFor(logging.DEBUG):
                        self.logger.debug(
                            f"Broadcasting message from {format_client_message(session=broadcast['session'])}"
                            f" on topic '{broadcast['topic']}' to {format_client_message(session=target_session)}",
                        )

                    handler = self._get_handler(target_session)
                    if handler:
                        task = asyncio.ensure_future(
                            handler.mqtt_publish(broadcast["topic"], broadcast["data"], qos, retain=False),
                        )
                        running_tasks.append(task)

    return DslthBroker


async def _close_listeners(broker: Any) -> None:
    """Close amqtt's listening sockets (amqtt 0.11-0.12 keeps them in the private
    ``Broker._servers``, each with ``close_instance()``); nothing if that changed."""
    for server in list(getattr(broker, "_servers", {}).values()):
        close = getattr(server, "close_instance", None)
        if close is not None:
            await close()


def _cancel_pending(loop: asyncio.AbstractEventLoop, timeout: float = 5.0) -> None:
    """Cancel the tasks amqtt left on its stopped loop and let them unwind (as
    ``asyncio.run`` does): its shutdown leaves every client's waiters pending, and closing
    the loop under them makes each one's garbage collection print "Task was destroyed but
    it is pending!" or "Event loop is closed" later, in whatever runs next."""
    tasks = [task for task in asyncio.all_tasks(loop) if not task.done()]
    for task in tasks:
        task.cancel()
    if tasks:  # bounded: a task that ignores its cancellation must not keep the thread alive
        loop.run_until_complete(asyncio.wait(tasks, timeout=timeout))


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
        Broker = broker_class()
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
            _cancel_pending(loop)
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
    Broker = broker_class()

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
