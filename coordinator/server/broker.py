"""The MQTT broker the coordinator can start itself: :class:`EmbeddedBroker`.

A pure-Python amqtt broker on a background thread. It is what ``edgezo coordinate`` starts when
no ``--broker`` is given, so a first run needs nothing installed. amqtt 0.12 speaks MQTT 3.1.1
only (a bare v5 CONNECT gets "unacceptable protocol version"; one with a will or a login makes it
wait for bytes that never come); :class:`~.transport.MqttLink`'s ``protocol="auto"`` probes and
falls back to 3.1.1 on its own, or pass ``protocol=EmbeddedBroker.protocol`` to skip the probe.
Its TCP listener has no authentication: bind it to 127.0.0.1 (the default) unless every host that
can reach it is trusted. Its WebSocket listener for browser devices admits only the accounts given
with it (``WebSocketListener.accounts``: the per-device tokens ``coordinate --web-port`` issues).

Real deployments run a real broker (mosquitto, see ``mosquitto.conf.example``; or a cluster, see
``docs/deployment-cluster.md``). The private mosquitto and RabbitMQ brokers the tests and
benchmarks start live in ``tests/support/``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import threading
from dataclasses import dataclass

from edgezo.errors import EdgezoError

from edgezo.coordinator.wire.transport import BrokerSettings, format_address

log = logging.getLogger("edgezo.mqtt")


def port_accepts(host: str, port: int, timeout: float = 0.2) -> bool:
    """Whether something accepts TCP connections on host:port right now."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class BrokerBase:
    """What both brokers share: an address, settings for clients, context-manager use."""

    host: str
    port: int
    protocol = "auto"  # the MqttLink protocol argument that suits this broker

    @property
    def address(self) -> str:
        return format_address(self.host, self.port)

    def settings(self, **overrides) -> BrokerSettings:
        """:class:`BrokerSettings` pointing at this broker (``overrides``: username=..., keepalive=...)."""
        return BrokerSettings(host=self.host, port=self.port, **overrides)

    def stop(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------- amqtt


class _DropAmqttNoise(logging.Filter):
    """Hide amqtt warnings that are expected and say nothing actionable.

    * Two warnings for every MQTT 5 CONNECT it refuses: MqttLink's ``protocol="auto"``
      probes with v5 first. "Failed to initialize client session: <why>" still shows
      for any other reason.
    * "Broker startup failed" with a traceback: EmbeddedBroker reports it in one line.
    * "Received PUBACK for unknown pending message" / "PUBACK waiter ... already done":
      amqtt 0.12 registers its wait for a subscriber's PUBACK only after sending the
      PUBLISH, so a fast client's PUBACK can come first. The message was delivered;
      under a burst this would print one warning per message.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if msg.startswith(("Invalid connection from", "Received PUBACK for unknown pending message")):
            return False
        if msg == "Broker startup failed":  # EmbeddedBroker raises a one-line EdgezoError instead
            return False
        if msg.startswith("PUBACK waiter with Id") and msg.endswith("already done"):
            return False
        return not (msg.startswith("Failed to initialize client session: Invalid protocol") and msg.endswith(": 5"))


_amqtt_logging_quieted = False


def _quiet_amqtt_logging() -> None:
    """amqtt logs every connection and packet at INFO/DEBUG; keep only warnings and errors."""
    global _amqtt_logging_quieted
    if _amqtt_logging_quieted:
        return
    for name in ("amqtt", "transitions"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in ("amqtt.broker", "amqtt.mqtt.protocol.handler"):
        logging.getLogger(name).addFilter(_DropAmqttNoise())
    _amqtt_logging_quieted = True


def _amqtt_config(host: str, port: int, websocket: "WebSocketListener | None" = None) -> dict:
    """Anonymous access, one TCP listener (and a WebSocket one for browser devices), no $SYS
    topics and no packet logging."""
    listeners = {"default": {"type": "tcp", "bind": f"{host}:{port}", "max_connections": -1}}
    if websocket is not None:
        listeners["ws"] = {"type": "ws", "bind": f"{websocket.host}:{websocket.port}", "max_connections": -1}
        if websocket.certfile is not None:
            listeners["ws"].update(ssl=True, certfile=websocket.certfile, keyfile=websocket.keyfile)
    return {
        "listeners": listeners,
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }


@dataclass(frozen=True)
class WebSocketListener:
    """MQTT over WebSockets for browser devices (``coordinate --web-port``): amqtt serves it on
    the address given (and only there), with TLS (``wss://``) when a certificate is given, which a
    page served over HTTPS needs. ``port`` 0: a free port, read back from
    :attr:`EmbeddedBroker.ws_port`."""

    host: str = "127.0.0.1"
    port: int = 0
    certfile: str | None = None
    keyfile: str | None = None
    accounts: object | None = None  # with ``admits(username, password, client_id) -> bool``: who may connect here (None: anyone)


def _keepalive_broker_class():
    """amqtt's Broker, made to drop clients that fall silent, so their last will goes out.

    amqtt 0.12 reads each client with a keepalive timeout but its broker-side
    ``handle_read_timeout`` does nothing: a device that loses its network (no TCP
    FIN) would stay "connected" for ever and its will would never be published.
    Here a client silent for 1.5 x its keepalive (the MQTT spec's limit) gets an EOF
    fed to its reader, which amqtt handles like a dropped connection. The hook is an
    override of a private method; if a later amqtt renames it, the override is simply
    never called and behaviour falls back to amqtt's own.
    """
    from amqtt.broker import Broker

    class KeepaliveBroker(Broker):
        async def _initialize_client_session(self, *args, **kwargs):
            handler, session = await super()._initialize_client_session(*args, **kwargs)
            if getattr(session, "keep_alive", 0) > 0:
                session.keep_alive = math.ceil(session.keep_alive * 1.5)  # amqtt's read timeout
                handler.handle_read_timeout = lambda: _drop_silent_client(handler, session)
            return handler, session

        async def _authenticate(self, session, listener) -> bool:
            """WebSocket clients (browser devices) need an account when the listener has them."""
            accounts = getattr(self, "edgezo_ws_accounts", None)
            if accounts is not None and getattr(listener.type, "value", listener.type) == "ws":
                password = session.password.decode() if isinstance(session.password, bytes) else session.password
                return bool(accounts.admits(session.username, password, session.client_id))
            return await super()._authenticate(session, listener)

    return KeepaliveBroker


def _drop_silent_client(handler, session) -> None:
    log.info("embedded broker: client %s silent past 1.5 x keepalive; dropping it", session.client_id)
    if handler.reader is not None:
        handler.reader.feed_eof()  # the reader loop ends as on a closed socket; the will is sent


class EmbeddedBroker(BrokerBase):
    """An amqtt broker running on its own asyncio loop in a daemon thread.

    Starts on construction (well under a second); ``port=0`` picks a free port,
    read it back from :attr:`port`. Supports what the coordinator needs: QoS 1,
    retained messages and last wills (also for clients that fall silent without
    closing their connection, see :func:`_keepalive_broker_class`). Use as a
    context manager or call :meth:`stop`.
    """

    protocol = "3.1.1"

    def __init__(self, port: int = 0, host: str = "127.0.0.1", start_timeout: float = 10.0,
                 websocket: WebSocketListener | None = None):
        try:
            from amqtt.broker import Broker  # noqa: F401  (checked here for a clear error)
        except ImportError:
            raise EdgezoError(
                "the embedded MQTT broker needs amqtt, which edgezo installs with it: pip install 'amqtt>=0.11,<0.13' "
                "(or reinstall edgezo), or pass --broker to use another MQTT broker"
            ) from None
        _quiet_amqtt_logging()
        self.host = host
        self.port = port
        self.websocket = websocket
        self.ws_port: int | None = websocket.port if websocket is not None else None  # the port it got
        self._broker = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="edgezo-amqtt", daemon=True)
        self._thread.start()
        if not self._ready.wait(start_timeout):
            raise EdgezoError(f"the embedded MQTT broker did not start within {start_timeout:g} s")
        if self._error is not None:
            raise EdgezoError(
                f"cannot start the embedded MQTT broker on {format_address(host, port)} ({_root_cause(self._error)}); "
                "choose another port or pass --broker"
            ) from None
        log.info("embedded MQTT broker (amqtt, MQTT 3.1.1) listening on %s", self.address)
        if websocket is not None:
            log.info("embedded MQTT broker: WebSocket listener on %s", format_address(websocket.host, self.ws_port))

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            loop.run_until_complete(self._start())
        except BaseException as exc:  # noqa: BLE001 - reported to the constructing thread
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            _cancel_leftover_tasks(loop)
            loop.close()

    async def _start(self) -> None:
        self._broker = _keepalive_broker_class()(_amqtt_config(self.host, self.port, self.websocket))
        self._broker.edgezo_ws_accounts = self.websocket.accounts if self.websocket is not None else None
        await self._broker.start()
        if self.port == 0:  # amqtt binds port 0 as given; ask the listening socket which port it got
            self.port = self._bound_port("default")
        if self.websocket is not None and self.ws_port == 0:
            self.ws_port = self._bound_port("ws")

    def _bound_port(self, listener: str) -> int:
        server = self._broker._servers[listener].instance  # no public accessor in amqtt 0.12
        return list(server.sockets)[0].getsockname()[1]

    def stop(self, timeout: float = 3.0) -> None:
        """Shut the broker down (clients see the connection drop) and end its thread. Idempotent.

        amqtt's shutdown can hang for seconds when deliveries are still waiting for a
        PUBACK (amqtt 0.12 sometimes registers the wait after the PUBACK already came
        back; the wait then lasts its full 5 s timeout). After ``timeout`` seconds the
        remaining tasks are cancelled instead.
        """
        loop, self._loop = self._loop, None
        if loop is None or loop.is_closed():
            return
        if self._broker is not None:
            future = asyncio.run_coroutine_threadsafe(self._broker.shutdown(), loop)
            try:
                future.result(timeout)
            except Exception as exc:  # noqa: BLE001 - shutting down anyway
                log.debug("embedded broker shutdown did not finish (%r); cancelling its tasks", exc)
                future.cancel()
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(timeout)


def _root_cause(exc: BaseException) -> BaseException:
    """The innermost exception of a ``raise ... from`` chain (amqtt wraps the OSError twice)."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


def _cancel_leftover_tasks(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel per-client tasks amqtt leaves behind, so closing the loop does not warn."""
    tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
