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
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import queue
import re
import ssl
import threading
import time
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from edgezo.errors import EdgezoError

log = logging.getLogger("edgezo.mqtt")


class _DropPahoNoise(logging.Filter):
    """paho logs ERRORs when the connection drops and on every failed reconnect attempt;
    MqttLink already logs those outages once, as warnings."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(("Client is not connected", "failed to receive on socket"))


_paho_log = logging.getLogger("edgezo.mqtt.paho")
_paho_log.addFilter(_DropPahoNoise())

PROTOCOLS = ("auto", "5", "3.1.1")
_PAHO_PROTOCOL = {"5": mqtt.MQTTv5, "3.1.1": mqtt.MQTTv311}

# CONNACK reason codes (MQTT 5 numbering; paho maps 3.1.1 return codes onto these).
_RC_UNSUPPORTED_PROTOCOL = 0x84
_RC_BAD_CREDENTIALS = 0x86
_RC_NOT_AUTHORIZED = 0x87

_RECONNECT_TIMEOUT = 10.0  # seconds for TCP + TLS of each background reconnect attempt

_HOSTNAME = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass
class BrokerSettings:
    """Where the broker is and how to authenticate to it.

    TLS is used as soon as any ``tls_*`` field is set. ``tls_ca`` is the CA file
    that signed the broker's certificate (None: the system's CAs); ``tls_cert`` /
    ``tls_key`` are the client's own certificate for brokers that require one;
    ``tls_insecure`` skips verifying the broker's certificate (lab setups with a
    self-signed broker only). ``keepalive`` (seconds) also bounds how fast the
    broker notices a dead client and sends its last will: about 1.5 x keepalive.
    """

    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_insecure: bool = False
    keepalive: int = 15
    fallbacks: tuple[tuple[str, int], ...] = ()  # the other nodes of a clustered broker, tried in turn

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """Every node: (host, port) first, then the fallbacks."""
        return [(self.host, self.port), *self.fallbacks]

    def node(self, index: int) -> "BrokerSettings":
        """These settings for node ``index`` of :attr:`addresses` alone."""
        host, port = self.addresses[index]
        return dataclasses.replace(self, host=host, port=port, fallbacks=())

    @property
    def use_tls(self) -> bool:
        return bool(self.tls_ca or self.tls_cert or self.tls_key or self.tls_insecure)

    @property
    def address(self) -> str:
        """``host:port`` for messages, with IPv6 hosts bracketed."""
        return format_address(self.host, self.port)


@dataclass(frozen=True)
class Message:
    """One received MQTT message. ``retain`` is True when the broker delivered it
    from its retained store (i.e. it was published before we subscribed)."""

    topic: str
    payload: bytes
    retain: bool


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_broker(text: str, default_port: int = 1883) -> tuple[str, int]:
    """Parse ``HOST``, ``HOST:PORT``, ``[IPv6]`` or ``[IPv6]:PORT`` into (host, port).

    A bare IPv6 address (``::1``) is accepted as a host; to give it a port it must be
    bracketed, since ``fe80::1:1883`` is ambiguous. Raises :class:`EdgezoError` on
    anything else, naming the accepted forms.
    """
    raw = text.strip() if isinstance(text, str) else ""
    if not raw:
        raise _bad_broker(text, "it is empty")
    if "://" in raw:
        raise _bad_broker(text, "leave out the scheme (TLS is chosen with the --tls-* options)")
    if raw.startswith("["):
        host, sep, rest = raw[1:].partition("]")
        if not sep:
            raise _bad_broker(text, "missing ']' after the IPv6 address")
        _check_ipv6(text, host)
        if not rest:
            return host, default_port
        if not rest.startswith(":"):
            raise _bad_broker(text, f"unexpected {rest!r} after ']'")
        return host, _parse_port(text, rest[1:])
    if raw.count(":") > 1:  # bare IPv6 address, no port
        _check_ipv6(text, raw)
        return raw, default_port
    host, sep, port_text = raw.partition(":")
    if not _HOSTNAME.match(host):
        raise _bad_broker(text, f"{host!r} is not a host name or IP address")
    return host, (_parse_port(text, port_text) if sep else default_port)


def parse_brokers(text: str, default_port: int = 1883) -> list[tuple[str, int]]:
    """Parse ``--broker``: one address, or the comma-separated nodes of one clustered broker
    (``10.0.0.1:1883,10.0.0.2:1883``), each in a form :func:`parse_broker` accepts."""
    parts = [part.strip() for part in (text.split(",") if isinstance(text, str) else [text])]
    if len(parts) > 1 and not all(parts):
        raise _bad_broker(text, "an empty address between commas")
    addresses = [parse_broker(part, default_port) for part in parts]
    repeated = sorted({format_address(*a) for a in addresses if addresses.count(a) > 1})
    if repeated:
        raise _bad_broker(text, f"{', '.join(repeated)} is listed twice")
    return addresses


def broker_settings_for(text: str | None, default_port: int = 1883, **options) -> BrokerSettings:
    """:class:`BrokerSettings` for a ``--broker`` value (None: 127.0.0.1), with the other
    options (username=..., tls_ca=...) as given."""
    addresses = parse_brokers(text, default_port) if text else [("127.0.0.1", default_port)]
    (host, port), rest = addresses[0], tuple(addresses[1:])
    return BrokerSettings(host=host, port=port, fallbacks=rest, **options)


def _parse_port(text: str, port_text: str) -> int:
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise _bad_broker(text, f"port {port_text!r} is not a number from 1 to 65535")
    return int(port_text)


def _check_ipv6(text: str, host: str) -> None:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        raise _bad_broker(text, f"{host!r} is not an IPv6 address") from None


def _bad_broker(text: object, why: str) -> EdgezoError:
    return EdgezoError(
        f"bad broker address {text!r}: {why}; give HOST, HOST:PORT or [IPv6]:PORT (e.g. 192.168.1.10:1883), "
        "or a clustered broker's nodes separated by commas"
    )


class BrokerUnreachable(EdgezoError):
    """Nothing answered at the broker's address: worth retrying (it may be starting)."""


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
        self._mirrors: list[_RetainedMirror] = []
        self.client_id = client_id
        self.will = will
        self.requested_protocol = protocol
        self.protocol: str | None = None  # the version in use, once connected
        self._client: mqtt.Client | None = None  # set once connect() succeeded; publish() uses it
        self._live: mqtt.Client | None = None  # set by the network thread on CONNACK; subscribe() uses it
        self._inbox: queue.Queue[Message] = queue.Queue()
        self._lock = threading.Lock()
        self._subscriptions: dict[str, int] = {}  # filter -> qos, re-sent on every (re)connect
        self._sub_mids: dict[int, str] = {}  # SUBSCRIBE mid -> filter, to name refused ones
        self._refusals: list[str] = []  # publishes and subscriptions the broker refused (MQTT 5 reason codes)
        self._unacked: dict[int, str] = {}  # mid -> topic of QoS>0 publishes the broker has not acknowledged
        self._acked_early: dict[int, float] = {}  # mid -> time: acks that beat publish() to recording the mid
        self._mirror_after_ack: dict[int, tuple[str, bytes, int]] = {}  # mid -> retained copy for the other nodes
        self._before_connect: list[tuple[str, bytes, int, bool]] = []
        self._up = threading.Event()
        self._closing = False
        self._ever_connected = False
        self.connections = 0  # successful (re)connects: a caller re-announces itself when it grows
        self._outage_logged = False
        self._handshake = _Handshake()  # outcome of connect()'s CONNECT, set by the callbacks

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
                if nodes == 1 or not _worth_next_node(exc):
                    raise
                failures.append(str(exc).split(";")[0])
                log.warning("%s; trying the next broker node", failures[-1])
        else:
            raise BrokerUnreachable(f"no node of the MQTT broker accepted the connection ({'; '.join(failures)}); "
                                    "is the cluster running? check --broker")
        if self.mirror_retained:
            self._mirrors = [_RetainedMirror(self, i) for i in range(nodes) if i != self._node]

    def _use_node(self, index: int) -> None:
        self._node = index
        self.settings = self.cluster.node(index)

    def _connect_node(self, timeout: float) -> None:
        """connect() to the node in :attr:`settings`."""
        deadline = time.monotonic() + timeout
        version = self.requested_protocol
        if version == "auto":
            version = "5" if self._broker_speaks_v5(deadline, timeout) else "3.1.1"
        client = self._new_client(version)
        self._handshake = _Handshake()
        outcome = self._run_handshake(client, version, deadline, self._handshake)
        if outcome != "ok":
            raise self._attempt_error(outcome, version, timeout)
        # Background reconnects reuse connect_timeout, which was set to what was left of this
        # call's timeout (maybe 0.1 s). paho refuses the public setter while connected.
        client._connect_timeout = _RECONNECT_TIMEOUT
        _close_wakeup_sockets(client)  # made by the handshake's loop(); loop_start() makes new ones
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
            self._track_unacked(info.mid, topic, copy)
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
                if not self._unacked and not self._before_connect:
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
            _close_wakeup_sockets(client)
        self._up.clear()

    def __enter__(self) -> MqttLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ connection setup

    def _new_client(self, version: str) -> mqtt.Client:
        """A paho client configured for ``version``, with our callbacks, will, auth and TLS."""
        proto = _PAHO_PROTOCOL[version]
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
            self._configure_tls(client)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        return client

    def _configure_tls(self, client: mqtt.Client) -> None:
        s = self.settings
        try:
            client.tls_set(
                ca_certs=s.tls_ca,
                certfile=s.tls_cert,
                keyfile=s.tls_key,
                cert_reqs=ssl.CERT_NONE if s.tls_insecure else ssl.CERT_REQUIRED,
            )
        except (OSError, ValueError) as exc:  # missing/unreadable files, key not matching cert
            raise EdgezoError(
                f"cannot load the TLS files for the MQTT connection ({exc}); check --tls-ca/--tls-cert/--tls-key"
            ) from None
        if s.tls_insecure:
            client.tls_insecure_set(True)

    def _broker_speaks_v5(self, deadline: float, timeout: float) -> bool:
        """Probe with a bare MQTT 5 CONNECT (no will, no login) whether the broker speaks v5.

        Why a separate probe instead of just trying the real CONNECT with v5: amqtt 0.12
        reads a v5 CONNECT as if it were 3.1.1; a bare one it answers "unsupported
        protocol version", but with a will or a username the misread field lengths make
        it wait for bytes that never come, so the attempt would only time out. Any
        CONNACK other than "unsupported protocol version" (even "not authorized",
        since the probe has no login) proves v5.
        """
        probe = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5)
        if self.settings.use_tls:
            self._configure_tls(probe)
        handshake = _Handshake()
        probe.on_connect = lambda client, userdata, flags, reason, props: handshake.finish(reason)
        probe.on_disconnect = lambda client, userdata, flags, reason, props: handshake.finish("closed")
        outcome = self._run_handshake(probe, "5", deadline, handshake)
        if outcome == "ok":
            _drop(probe)
        elif outcome == "timeout":
            raise self._attempt_error(outcome, "5", timeout)
        speaks = not _worth_older_protocol(outcome)
        log.debug("MQTT broker %s %s MQTT 5 (probe: %s)", self.settings.address, "speaks" if speaks else "lacks", outcome)
        return speaks

    def _run_handshake(self, client: mqtt.Client, version: str, deadline: float, handshake: _Handshake) -> object:
        """Send CONNECT and wait for the answer: "ok", a refusing reason code, "closed" or "timeout".

        The network loop is driven from this thread until the CONNACK: a failed attempt
        then simply ends, whereas paho's own thread would start its reconnect backoff.
        On "ok" the connection is left open for the caller; otherwise it is closed.
        """
        s = self.settings
        client.connect_timeout = max(0.1, deadline - time.monotonic())
        kwargs = {"clean_start": True} if version == "5" else {}
        try:
            client.connect(s.host, s.port, keepalive=s.keepalive, **kwargs)
        except ssl.SSLError as exc:
            raise EdgezoError(
                f"TLS handshake with MQTT broker at {s.address} failed ({_short(exc)}); "
                "check --tls-ca/--tls-cert/--tls-key, and that the broker expects TLS on this port"
            ) from None
        except (OSError, ValueError) as exc:
            raise BrokerUnreachable(
                f"cannot reach MQTT broker at {s.address} ({_short(exc)}); is it running? start one or pass --broker"
            ) from None
        while not handshake.done.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                _drop(client)
                return "timeout"
            if client.loop(timeout=min(remaining, 0.1)) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                handshake.finish("closed")  # on_disconnect normally says so already
        if not _is_success(handshake.reason):
            _drop(client)
            return handshake.reason
        return "ok"

    def _attempt_error(self, outcome: object, version: str, timeout: float) -> EdgezoError:
        addr = self.settings.address
        if outcome == "timeout":
            return EdgezoError(
                f"MQTT broker at {addr} did not accept the connection within {timeout:g} s; "
                "is this port an MQTT broker, and does it expect TLS?"
            )
        if outcome == "closed":
            return EdgezoError(
                f"MQTT broker at {addr} closed the connection before accepting it; "
                "does it expect TLS on this port, or is client id "
                f"{self.client_id!r} banned or already in use?"
            )
        code = getattr(outcome, "value", None)
        if code == _RC_BAD_CREDENTIALS or (code == _RC_NOT_AUTHORIZED and self.settings.username is not None):
            # mosquitto answers a wrong password with "not authorized", under v5 as well.
            return EdgezoError(
                f"broker {addr} refused the connection: bad username or password; check --username/--password"
                + (" (the broker said: not authorized)" if code == _RC_NOT_AUTHORIZED else "")
            )
        if code == _RC_NOT_AUTHORIZED:
            return EdgezoError(
                f"broker {addr} refused the connection: not authorized; it wants a login: pass --username/--password"
            )
        if code == _RC_UNSUPPORTED_PROTOCOL:
            return EdgezoError(
                f"broker {addr} does not support MQTT {version}; use protocol 'auto' to fall back to 3.1.1"
            )
        return EdgezoError(f"broker {addr} refused the connection: {outcome}")

    def _connected_as(self, client: mqtt.Client, version: str) -> None:
        """Adopt the client whose attempt succeeded; send what was held back while connecting."""
        with self._lock:
            self._client, self.protocol = client, version
            held, self._before_connect = self._before_connect, []
        self._ever_connected = True
        log.info("connected to MQTT broker %s (MQTT %s) as %s", self.settings.address, version, self.client_id)
        for topic, payload, qos, retain in held:
            self.publish(topic, payload, qos, retain)

    def _track_unacked(self, mid: int, topic: str, copy: tuple[str, bytes, int] | None = None) -> None:
        """Remember a QoS>0 publish until its ack (see :meth:`flush`).

        Never hold ``self._lock`` while calling into paho: paho runs ``on_publish``
        under its own locks, so the two could deadlock. Hence the ack may be seen
        before this runs, and is then parked in ``_acked_early``.
        """
        with self._lock:
            if self._acked_early.pop(mid, None) is None:
                self._unacked[mid] = topic
                if copy is not None:
                    self._mirror_after_ack[mid] = copy
                return
        if copy is not None:  # acknowledged already
            self._to_mirrors(copy)

    def _send_subscribe(self, client: mqtt.Client, topic_filter: str, qos: int) -> None:
        rc, mid = client.subscribe(topic_filter, qos)
        if rc == MQTTErrorCode.MQTT_ERR_SUCCESS and mid is not None:
            with self._lock:
                self._sub_mids[mid] = topic_filter
        # MQTT_ERR_NO_CONN: fine, _on_connect subscribes again once the link is back.

    # ------------------------------------------- callbacks (paho's network thread)
    # These only record state, enqueue messages and log: the application's work
    # happens in the thread that calls get().

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if not _is_success(reason_code):
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
        with self._lock:
            copy = self._mirror_after_ack.pop(mid, None)
        if copy is not None:  # before the ack counts: flush() then covers the copies too
            self._to_mirrors(copy)
        with self._lock:
            topic = self._unacked.pop(mid, None)
            if topic is None:  # QoS 0 "acks" land here too; old entries are pruned so mids can be reused
                now = time.monotonic()
                self._acked_early[mid] = now
                if len(self._acked_early) > 1000:
                    self._acked_early = {m: t for m, t in self._acked_early.items() if now - t < 10.0}
        if reason_code is not None and reason_code.is_failure:  # MQTT 5 only: 3.1.1 brokers drop silently
            with self._lock:
                self._refusals.append(f"publish to {topic or 'a topic'} ({reason_code})")
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
        with self._lock:
            return self._refusals[0] if self._refusals else None

    def _on_subscribe(self, client, userdata, mid, reason_code_list, properties) -> None:
        with self._lock:
            topic_filter = self._sub_mids.pop(mid, "?")
        for rc in reason_code_list:
            if rc.is_failure:
                with self._lock:
                    self._refusals.append(f"subscription to {topic_filter} ({rc})")
                log.warning(
                    "MQTT broker %s refused the subscription to %s (%s); check the broker's ACL",
                    self.settings.address,
                    topic_filter,
                    rc,
                )

    def _finish_attempt(self, reason: object) -> None:
        self._handshake.finish(reason)


class _Handshake:
    """The answer to one CONNECT: written once by a paho callback, read by connect()."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.reason: object = None  # a paho ReasonCode, or "closed" when dropped before CONNACK

    def finish(self, reason: object) -> None:
        if not self.done.is_set():
            self.reason = reason
            self.done.set()


class _RetainedMirror:
    """A side connection to one other node of a clustered broker, through which a link also
    publishes its retained messages (so that node's retained store holds them too).

    It connects in the background and keeps trying while the node is down; what is published
    before it connects waits in its link and goes out, in order, once it does.
    """

    def __init__(self, owner: MqttLink, index: int):
        self.settings = owner.cluster.node(index)
        protocol = owner.protocol or owner.requested_protocol
        self.link = MqttLink(self.settings, f"{owner.client_id}-m{index}"[:64], protocol=protocol, mirror_retained=False)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._connect_loop, name="edgezo-mqtt-mirror", daemon=True)
        self._thread.start()

    def _connect_loop(self) -> None:
        delay = 0.5
        while not self._closed.is_set():
            try:
                self.link.connect(timeout=5.0)
                return
            except EdgezoError as exc:
                log.debug("retained mirror to %s not connected yet: %s", self.settings.address, exc)
            if self._closed.wait(delay):
                return
            delay = min(delay * 2, 10.0)

    def publish(self, topic: str, payload: bytes, qos: int) -> None:
        self.link.publish(topic, payload, qos, retain=True)  # held until connected; paho keeps QoS 1 across outages

    def close(self, flush_timeout: float) -> None:
        self._closed.set()
        self._thread.join(6.0)
        self.link.close(flush_timeout)


def _worth_next_node(exc: EdgezoError) -> bool:
    """Whether another node of the same cluster might accept where this one did not: not for
    bad credentials or TLS files, which every node would refuse alike."""
    text = str(exc)
    return isinstance(exc, BrokerUnreachable) or "did not accept the connection within" in text or "closed the connection" in text


def _drop(client: mqtt.Client) -> None:
    """End a failed attempt: send DISCONNECT if the socket is still open, and close it."""
    client.disconnect()
    client.loop(timeout=0.05)  # writes the DISCONNECT; paho closes the socket once it is sent
    _close_wakeup_sockets(client)


def _close_wakeup_sockets(client: mqtt.Client) -> None:
    """Close the socket pair paho opens (in loop() or loop_start()) to wake its loop.

    Neither loop_stop() nor a later loop_start() closes it; it stays open until the
    client is garbage-collected (a reference cycle, so maybe much later): two file
    descriptors per link otherwise.
    """
    reset = getattr(client, "_reset_sockets", None)
    if reset is not None:
        reset(sockpair_only=True)


def _worth_older_protocol(outcome: object) -> bool:
    """Whether an MQTT 5 CONNECT failed in a way that MQTT 3.1.1 might fix.

    Brokers without v5 answer "unsupported protocol version" (amqtt) or just hang up.
    """
    return outcome == "closed" or getattr(outcome, "value", None) == _RC_UNSUPPORTED_PROTOCOL


def _is_success(reason: object) -> bool:
    return reason is not None and reason != "closed" and not getattr(reason, "is_failure", True)


def _short(exc: BaseException) -> str:
    """An exception as a short phrase ("Connection refused"), for one-line errors."""
    text = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc) or type(exc).__name__
    return str(text)
