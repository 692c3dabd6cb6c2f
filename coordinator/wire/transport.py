"""MQTT transport: a small blocking-friendly wrapper around paho-mqtt 2.x.

Why a wrapper: the coordinator and the device agent are written as plain loops
("wait for the next message, act, publish"), not as callback soups. paho runs its
network I/O on a background thread and calls callbacks there; :class:`MqttLink`
keeps that thread doing network work only — every received message is put on a
thread-safe :class:`queue.Queue` and the application pulls it with :meth:`MqttLink.get`.

Design choices, and why:

* **Clean sessions.** State that matters (the current round, the announce) is
  re-published by the application and retained on the broker, so a reconnecting
  client needs no broker-side session. Clean sessions also mean nothing piles up
  on the broker for devices that went away for good.
* **Automatic reconnect** with exponential backoff (1 s up to 30 s). Subscriptions
  are remembered and re-sent after every reconnect, because a clean session
  forgets them. Retained messages are therefore delivered again after a reconnect;
  the application must treat messages idempotently (it has to anyway, QoS 1 is
  "at least once").
* **QoS 1 publishes survive an outage**: paho keeps unacknowledged QoS 1 messages
  and re-sends them after reconnecting, so :meth:`MqttLink.publish` may be called
  while disconnected. The client queue is unlimited (``max_queued_messages 0``)
  and the in-flight window large, because round traffic is bursty.
* **MQTT 5 when available, 3.1.1 otherwise.** ``protocol="auto"`` (the default)
  first probes the broker with a bare v5 CONNECT and uses 3.1.1 when it refuses
  v5 — the embedded amqtt broker (amqtt 0.12) only speaks 3.1.1. Nothing here
  needs a v5-only feature; v5 only buys better diagnostics (a broker can say
  *why* it rejected a publish or a subscription, and MqttLink logs it).
* **Several addresses: the nodes of one clustered broker** (``--broker a:1883,b:1883``).
  ``connect`` takes the first node that accepts; after a connection loss the link
  reconnects to the next node in turn, so clients fail over when a node stops.
  Clustered brokers keep retained messages per node (RabbitMQ's MQTT plugin does, and
  delivers none for wildcard subscriptions), so a link with several nodes also
  publishes each retained message through a side connection to every other node
  ("retained mirrors"): whichever node a client subscribes on holds the current
  retained state, and nothing depends on a retained message crossing nodes. The price:
  subscribers get a retained message once per node (the protocol is idempotent).

Where the parts live: ``broker_address`` (``--broker`` parsed, ``BrokerSettings``),
``mqtt_connect`` (one connection attempt: TLS, the MQTT 5 probe, the handshake and its errors),
``mqtt_mirror`` (the retained mirrors), ``mqtt_acks`` (what the broker has yet to acknowledge,
and its refusals); this module keeps the link itself (subscriptions, the inbox, reconnects and
failover) and re-exports the names callers import from
here. ``MqttLink`` is a ``link.Link``, the seam the coordinator and the device are written against.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from edgezo.errors import EdgezoError

from edgezo.coordinator.wire.broker_address import (BrokerSettings, broker_settings_for, format_address, parse_broker,
                                               parse_brokers)
from edgezo.coordinator.wire.mqtt_connect import (PAHO_PROTOCOL, PROTOCOLS, BrokerUnreachable, Handshake, attempt_error,
                                             broker_speaks_v5, close_wakeup_sockets, configure_tls, is_success,
                                             run_handshake, worth_next_node)
from edgezo.coordinator.wire.mqtt_acks import AckBook
from edgezo.coordinator.wire.mqtt_mirror import RetainedMirror

__all__ = ["PROTOCOLS", "BrokerSettings", "BrokerUnreachable", "Message", "MqttLink", "broker_settings_for",
           "format_address", "parse_broker", "parse_brokers"]

log = logging.getLogger("edgezo.mqtt")


class _DropPahoNoise(logging.Filter):
    """paho logs ERRORs when the connection drops and on every failed reconnect attempt;
    MqttLink already logs those outages once, as warnings."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(("Client is not connected", "failed to receive on socket"))


_paho_log = logging.getLogger("edgezo.mqtt.paho")
_paho_log.addFilter(_DropPahoNoise())

_RECONNECT_TIMEOUT = 10.0  # seconds for TCP + TLS of each background reconnect attempt


@dataclass(frozen=True)
class Message:
    """One received MQTT message (a ``link.Received``). ``retain`` is True when the broker
    delivered it from its retained store (i.e. it was published before we subscribed)."""

    topic: str
    payload: bytes
    retain: bool


class MqttLink:
    """One MQTT client connection with a blocking, queue-based receive side.

    Typical use::

        link = MqttLink(BrokerSettings(host, port), client_id="dev-a",
                        will=("edgezo/run1/status/dev-a", b'{"state":"gone"}', True))
        link.subscribe("edgezo/run1/round")
        link.connect()                 # raises EdgezoError with a one-line reason
        link.publish("edgezo/run1/hello/dev-a", b"...")
        msg = link.get(timeout=5.0)    # Message or None
        link.close()                   # clean: the will is NOT sent

    ``will`` is ``(topic, payload, retain)``, published by the broker with QoS 1
    when this client disappears without :meth:`close` (crash, power loss, network
    loss noticed after ~1.5 x keepalive).

    ``protocol``: ``"auto"`` (MQTT 5 if the broker speaks it, found by a probe
    connection, else 3.1.1), ``"5"`` or ``"3.1.1"``. After :meth:`connect`,
    :attr:`protocol` is the one in use.

    With ``settings.fallbacks`` (a clustered broker), :attr:`settings` is the node in use
    (it changes on failover) and :attr:`cluster` all of them; ``mirror_retained`` (on by
    default for several nodes) publishes retained messages through every node.
    """

    def __init__(
        self,
        settings: BrokerSettings,
        client_id: str,
        will: tuple[str, bytes, bool] | None = None,
        protocol: str = "auto",
        mirror_retained: bool | None = None,
    ):
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, not {protocol!r}")
        self.cluster = settings
        self._node = 0
        self.settings = settings.node(0)  # the node in use
        self.mirror_retained = len(settings.addresses) > 1 if mirror_retained is None else mirror_retained
        self._mirrors: list[RetainedMirror] = []
        self.client_id = client_id
        self.will = will
        self.requested_protocol = protocol
        self.protocol: str | None = None  # the version in use, once connected
        self._client: mqtt.Client | None = None  # set once connect() succeeded; publish() uses it
        self._live: mqtt.Client | None = None  # set by the network thread on CONNACK; subscribe() uses it
        self._inbox: queue.Queue[Message] = queue.Queue()
        self._lock = threading.Lock()
        self._subscriptions: dict[str, int] = {}  # filter -> qos, re-sent on every (re)connect
        self._acks = AckBook(self._lock)  # publishes and subscriptions awaiting the broker's answer, its refusals
        self._before_connect: list[tuple[str, bytes, int, bool]] = []
        self._up = threading.Event()
        self._closing = False
        self._ever_connected = False
        self.connections = 0  # successful (re)connects: a caller re-announces itself when it grows
        self._outage_logged = False
        self._handshake = Handshake()  # outcome of connect()'s CONNECT, set by the callbacks

    # ------------------------------------------------------------------ public API

    @property
    def connected(self) -> bool:
        return self._up.is_set()

    def connect(self, timeout: float = 10.0) -> None:
        """Connect, block until the broker accepted us, then keep the link up in the background.

        Raises :class:`EdgezoError` with a one-line, actionable message when the broker
        is unreachable, refuses the credentials, fails TLS, or does not answer within
        ``timeout`` seconds. Later connection losses are not errors: the link
        reconnects on its own and logs it.
        """
        if self._client is not None:
            raise RuntimeError("MqttLink.connect() called twice")
        nodes = len(self.cluster.addresses)
        failures = []
        for index in range(nodes):
            self._use_node(index)
            try:
                self._connect_node(timeout)
                break
            except EdgezoError as exc:
                if nodes == 1 or not worth_next_node(exc):
                    raise
                failures.append(str(exc).split(";")[0])
                log.warning("%s; trying the next broker node", failures[-1])
        else:
            raise BrokerUnreachable(f"no node of the MQTT broker accepted the connection ({'; '.join(failures)}); "
                                    "is the cluster running? check --broker")
        if self.mirror_retained:
            self._mirrors = [self._mirror(i) for i in range(nodes) if i != self._node]

    def _mirror(self, index: int) -> RetainedMirror:
        """The retained mirror to node ``index`` (a link of its own, connecting in the background)."""
        settings = self.cluster.node(index)
        protocol = self.protocol or self.requested_protocol
        link = MqttLink(settings, f"{self.client_id}-m{index}"[:64], protocol=protocol, mirror_retained=False)
        return RetainedMirror(link, settings)

    def _use_node(self, index: int) -> None:
        self._node = index
        self.settings = self.cluster.node(index)

    def _connect_node(self, timeout: float) -> None:
        """connect() to the node in :attr:`settings`."""
        deadline = time.monotonic() + timeout
        version = self.requested_protocol
        if version == "auto":
            version = "5" if broker_speaks_v5(self.settings, self.client_id, deadline, timeout) else "3.1.1"
        client = self._new_client(version)
        self._handshake = Handshake()
        outcome = run_handshake(client, self.settings, version, deadline, self._handshake)
        if outcome != "ok":
            raise attempt_error(outcome, self.settings, self.client_id, version, timeout)
        # Background reconnects reuse connect_timeout, which was set to what was left of this
        # call's timeout (maybe 0.1 s). paho refuses the public setter while connected.
        client._connect_timeout = _RECONNECT_TIMEOUT
        close_wakeup_sockets(client)  # made by the handshake's loop(); loop_start() makes new ones
        client.loop_start()  # from now on paho's thread does the I/O and the reconnects
        self._connected_as(client, version)

    def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        """Subscribe now (if connected) and again after every reconnect.

        May be called before :meth:`connect`. Retained messages matching the filter are
        delivered on every (re)subscription, so expect them again after a reconnect.
        """
        with self._lock:
            self._subscriptions[topic_filter] = qos
            live = self._live
        if live is not None and self.connected:
            self._send_subscribe(live, topic_filter, qos)

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        """Queue a message for sending; returns at once.

        Thread-safe. While disconnected, QoS >= 1 messages wait in paho's queue and go
        out after the reconnect; QoS 0 messages are dropped (that is what QoS 0 means).
        Before :meth:`connect` messages are held and sent right after connecting.
        """
        with self._lock:
            if self._closing:
                raise RuntimeError(f"MqttLink.publish({topic!r}) after close()")
            client = self._client
            if client is None:
                self._before_connect.append((topic, payload, qos, retain))
                return
        info = client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN and qos == 0:
            log.debug("dropped QoS 0 message to %s while disconnected", topic)
            return
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise EdgezoError(f"cannot publish to {topic}: {mqtt.error_string(info.rc)}")
        copy = (topic, payload, qos) if retain and self._mirrors else None
        if qos > 0:
            if not self._acks.sent(info.mid, topic, copy) and copy is not None:  # acknowledged already
                self._to_mirrors(copy)
        elif copy is not None:
            self._to_mirrors(copy)

    def _to_mirrors(self, copy: tuple[str, bytes, int]) -> None:
        """Publish a retained message's copy through every other node. Called once the broker
        acknowledged the original: it has then routed it, and everything published before it, to
        every subscriber, so a copy (which takes a shorter path to the subscribers of its node)
        never overtakes an earlier message (an ``update`` must not arrive after the ``announce``
        that follows it)."""
        for mirror in list(self._mirrors):
            try:
                mirror.publish(*copy)
            except RuntimeError:  # closed meanwhile (the link is closing)
                log.debug("retained copy to %s dropped: the link is closing", mirror.settings.address)

    def flush(self, timeout: float) -> bool:
        """Wait until the broker acknowledged every QoS >= 1 publish (True) or ``timeout`` passes (False)."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if not self._acks.unacked and not self._before_connect:
                    return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)

    def get(self, timeout: float | None) -> Message | None:
        """Next received message, or None after ``timeout`` seconds (``None``: wait for ever)."""
        try:
            return self._inbox.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self, flush_timeout: float = 2.0) -> None:
        """Disconnect cleanly (the broker does NOT send the will) and stop the network thread.

        Waits up to ``flush_timeout`` seconds for outstanding QoS >= 1 publishes to be
        acknowledged first, so a final "goodbye" or result is not lost. Idempotent.
        """
        if self._closing:
            return
        if self._client is not None and self.connected:
            self.flush(flush_timeout)
        with self._lock:
            self._closing = True
            client, self._client, self._live = self._client, None, None
            mirrors, self._mirrors = self._mirrors, []
        for mirror in mirrors:
            mirror.close(flush_timeout)
        if client is not None:
            client.disconnect()
            client.loop_stop()
            close_wakeup_sockets(client)
        self._up.clear()

    def __enter__(self) -> MqttLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ connection setup

    def _new_client(self, version: str) -> mqtt.Client:
        """A paho client configured for ``version``, with our callbacks, will, auth and TLS."""
        proto = PAHO_PROTOCOL[version]
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=proto,
            clean_session=True if proto != mqtt.MQTTv5 else None,  # v5 sets clean_start in connect()
        )
        client.enable_logger(_paho_log)
        client.max_inflight_messages_set(1000)
        client.max_queued_messages_set(0)  # unlimited: publish() must never fail because of an outage
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        if self.settings.username is not None:
            client.username_pw_set(self.settings.username, self.settings.password)
        if self.will is not None:
            topic, payload, retain = self.will
            client.will_set(topic, payload, qos=1, retain=retain)
        if self.settings.use_tls:
            configure_tls(client, self.settings)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        return client

    def _connected_as(self, client: mqtt.Client, version: str) -> None:
        """Adopt the client whose attempt succeeded; send what was held back while connecting."""
        with self._lock:
            self._client, self.protocol = client, version
            held, self._before_connect = self._before_connect, []
        self._ever_connected = True
        log.info("connected to MQTT broker %s (MQTT %s) as %s", self.settings.address, version, self.client_id)
        for topic, payload, qos, retain in held:
            self.publish(topic, payload, qos, retain)

    def _send_subscribe(self, client: mqtt.Client, topic_filter: str, qos: int) -> None:
        rc, mid = client.subscribe(topic_filter, qos)
        if rc == MQTTErrorCode.MQTT_ERR_SUCCESS and mid is not None:
            self._acks.subscribing(mid, topic_filter)
        # MQTT_ERR_NO_CONN: fine, _on_connect subscribes again once the link is back.

    # ------------------------------------------- callbacks (paho's network thread)
    # These only record state, enqueue messages and log: the application's work
    # happens in the thread that calls get().

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if not is_success(reason_code):
            if self._ever_connected:
                log.error("MQTT broker %s refused the reconnect: %s; retrying", self.settings.address, reason_code)
                self._fail_over(client)
            self._finish_attempt(reason_code)
            return
        # Mark the link up before taking the snapshot: a subscribe() racing with us is then
        # either in the snapshot or sends itself (at worst twice, which is harmless).
        with self._lock:
            self._live = client
            self.connections += 1
        self._up.set()
        with self._lock:
            subscriptions = list(self._subscriptions.items())
        for topic_filter, qos in subscriptions:
            self._send_subscribe(client, topic_filter, qos)
        self._outage_logged = False
        if self._ever_connected:
            log.info(
                "reconnected to MQTT broker %s; re-subscribed to %d topic filter(s)",
                self.settings.address,
                len(subscriptions),
            )
        self._finish_attempt(reason_code)

    def _on_connect_fail(self, client, userdata) -> None:
        if not self._outage_logged:
            log.warning(
                "cannot reach MQTT broker %s; retrying with backoff (up to every 30 s)", self.settings.address
            )
            self._outage_logged = True
        else:
            log.debug("reconnect to MQTT broker %s failed; retrying", self.settings.address)
        self._fail_over(client)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        was_up = self._up.is_set()
        self._up.clear()
        self._finish_attempt("closed")
        if self._closing:
            log.debug("disconnected from MQTT broker %s", self.settings.address)
        elif was_up:
            log.warning(
                "lost connection to MQTT broker %s (%s); reconnecting with backoff",
                self.settings.address,
                reason_code,
            )
        if not self._closing and self._ever_connected:
            self._fail_over(client)

    def _fail_over(self, client: mqtt.Client) -> None:
        """The next reconnect goes to the next node of a clustered broker (paho's thread reads the
        client's host and port on each attempt; they may change while no connection is open)."""
        nodes = self.cluster.addresses
        if len(nodes) < 2 or client is not self._client:
            return
        self._use_node((self._node + 1) % len(nodes))
        try:
            client.host, client.port = self.settings.host, self.settings.port
        except RuntimeError:  # paho still counts the dying socket as open
            client._host, client._port = self.settings.host, self.settings.port
        log.info("next reconnect attempt: broker node %s", self.settings.address)

    def _on_message(self, client, userdata, message) -> None:
        self._inbox.put(Message(message.topic, bytes(message.payload), bool(message.retain)))

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        copy = self._acks.copy_of(mid)
        if copy is not None:  # before the ack counts: flush() then covers the copies too
            self._to_mirrors(copy)
        topic = self._acks.acked(mid)
        if reason_code is not None and reason_code.is_failure:  # MQTT 5 only: 3.1.1 brokers drop silently
            self._acks.refused(f"publish to {topic or 'a topic'} ({reason_code})")
            log.warning(
                "MQTT broker %s rejected the publish to %s (%s); check the broker's ACL",
                self.settings.address,
                topic or "a topic",
                reason_code,
            )

    def refusal(self) -> str | None:
        """The first publish or subscription the broker refused (an ACL), or None. Under MQTT 5
        a refusal comes back as a reason code; a client that ignored it would wait forever for
        messages the broker never lets through, so devices end on it."""
        return self._acks.first_refusal()

    def _on_subscribe(self, client, userdata, mid, reason_code_list, properties) -> None:
        topic_filter = self._acks.subscribed(mid)
        for rc in reason_code_list:
            if rc.is_failure:
                self._acks.refused(f"subscription to {topic_filter} ({rc})")
                log.warning(
                    "MQTT broker %s refused the subscription to %s (%s); check the broker's ACL",
                    self.settings.address,
                    topic_filter,
                    rc,
                )

    def _finish_attempt(self, reason: object) -> None:
        self._handshake.finish(reason)


