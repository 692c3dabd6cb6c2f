"""One MQTT connection attempt: TLS, the MQTT version probe, the CONNECT handshake and its
one-line errors (``transport.MqttLink.connect`` runs them for each node it tries).

Why apart from the link: an attempt is a sequence of blocking steps on one paho client, driven
from the caller's thread until the broker answers; the link's own state (subscriptions, acks,
failover) plays no part in it, so these are functions of the broker's settings and the client.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from edgezo.errors import EdgezoError

from edgezo.coordinator.wire.broker_address import BrokerSettings

log = logging.getLogger("edgezo.mqtt")

PROTOCOLS = ("auto", "5", "3.1.1")
PAHO_PROTOCOL = {"5": mqtt.MQTTv5, "3.1.1": mqtt.MQTTv311}

# CONNACK reason codes (MQTT 5 numbering; paho maps 3.1.1 return codes onto these).
_RC_UNSUPPORTED_PROTOCOL = 0x84
_RC_BAD_CREDENTIALS = 0x86
_RC_NOT_AUTHORIZED = 0x87


class BrokerUnreachable(EdgezoError):
    """Nothing answered at the broker's address: worth retrying (it may be starting)."""


class Handshake:
    """The answer to one CONNECT: written once by a paho callback, read by connect()."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.reason: object = None  # a paho ReasonCode, or "closed" when dropped before CONNACK

    def finish(self, reason: object) -> None:
        if not self.done.is_set():
            self.reason = reason
            self.done.set()




def configure_tls(client: mqtt.Client, s: BrokerSettings) -> None:
    """Load the TLS files of ``s`` into ``client``, or one line naming the options to check."""
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


def broker_speaks_v5(s: BrokerSettings, client_id: str, deadline: float, timeout: float) -> bool:
    """Probe with a bare MQTT 5 CONNECT (no will, no login) whether the broker speaks v5.

    Why a separate probe instead of just trying the real CONNECT with v5: amqtt 0.12
    reads a v5 CONNECT as if it were 3.1.1; a bare one it answers "unsupported
    protocol version", but with a will or a username the misread field lengths make
    it wait for bytes that never come, so the attempt would only time out. Any
    CONNACK other than "unsupported protocol version" (even "not authorized",
    since the probe has no login) proves v5.
    """
    probe = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    if s.use_tls:
        configure_tls(probe, s)
    handshake = Handshake()
    probe.on_connect = lambda client, userdata, flags, reason, props: handshake.finish(reason)
    probe.on_disconnect = lambda client, userdata, flags, reason, props: handshake.finish("closed")
    outcome = run_handshake(probe, s, "5", deadline, handshake)
    if outcome == "ok":
        drop(probe)
    elif outcome == "timeout":
        raise attempt_error(outcome, s, client_id, "5", timeout)
    speaks = not worth_older_protocol(outcome)
    log.debug("MQTT broker %s %s MQTT 5 (probe: %s)", s.address, "speaks" if speaks else "lacks", outcome)
    return speaks


def run_handshake(client: mqtt.Client, s: BrokerSettings, version: str, deadline: float, handshake: Handshake) -> object:
    """Send CONNECT and wait for the answer: "ok", a refusing reason code, "closed" or "timeout".

    The network loop is driven from this thread until the CONNACK: a failed attempt
    then simply ends, whereas paho's own thread would start its reconnect backoff.
    On "ok" the connection is left open for the caller; otherwise it is closed.
    """
    client.connect_timeout = max(0.1, deadline - time.monotonic())
    kwargs = {"clean_start": True} if version == "5" else {}
    try:
        client.connect(s.host, s.port, keepalive=s.keepalive, **kwargs)
    except ssl.SSLError as exc:
        raise EdgezoError(
            f"TLS handshake with MQTT broker at {s.address} failed ({short(exc)}); "
            "check --tls-ca/--tls-cert/--tls-key, and that the broker expects TLS on this port"
        ) from None
    except (OSError, ValueError) as exc:
        raise BrokerUnreachable(
            f"cannot reach MQTT broker at {s.address} ({short(exc)}); is it running? start one or pass --broker"
        ) from None
    while not handshake.done.is_set():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            drop(client)
            return "timeout"
        if client.loop(timeout=min(remaining, 0.1)) != MQTTErrorCode.MQTT_ERR_SUCCESS:
            handshake.finish("closed")  # on_disconnect normally says so already
    if not is_success(handshake.reason):
        drop(client)
        return handshake.reason
    return "ok"


def attempt_error(outcome: object, s: BrokerSettings, client_id: str, version: str, timeout: float) -> EdgezoError:
    """The one-line error of a failed attempt, saying what to check."""
    addr = s.address
    if outcome == "timeout":
        return EdgezoError(
            f"MQTT broker at {addr} did not accept the connection within {timeout:g} s; "
            "is this port an MQTT broker, and does it expect TLS?"
        )
    if outcome == "closed":
        return EdgezoError(
            f"MQTT broker at {addr} closed the connection before accepting it; "
            "does it expect TLS on this port, or is client id "
            f"{client_id!r} banned or already in use?"
        )
    code = getattr(outcome, "value", None)
    if code == _RC_BAD_CREDENTIALS or (code == _RC_NOT_AUTHORIZED and s.username is not None):
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


def worth_next_node(exc: EdgezoError) -> bool:
    """Whether another node of the same cluster might accept where this one did not: not for
    bad credentials or TLS files, which every node would refuse alike."""
    text = str(exc)
    return isinstance(exc, BrokerUnreachable) or "did not accept the connection within" in text or "closed the connection" in text


def drop(client: mqtt.Client) -> None:
    """End a failed attempt: send DISCONNECT if the socket is still open, and close it."""
    client.disconnect()
    client.loop(timeout=0.05)  # writes the DISCONNECT; paho closes the socket once it is sent
    close_wakeup_sockets(client)


def close_wakeup_sockets(client: mqtt.Client) -> None:
    """Close the socket pair paho opens (in loop() or loop_start()) to wake its loop.

    Neither loop_stop() nor a later loop_start() closes it; it stays open until the
    client is garbage-collected (a reference cycle, so maybe much later): two file
    descriptors per link otherwise.
    """
    reset = getattr(client, "_reset_sockets", None)
    if reset is not None:
        reset(sockpair_only=True)


def worth_older_protocol(outcome: object) -> bool:
    """Whether an MQTT 5 CONNECT failed in a way that MQTT 3.1.1 might fix.

    Brokers without v5 answer "unsupported protocol version" (amqtt) or just hang up.
    """
    return outcome == "closed" or getattr(outcome, "value", None) == _RC_UNSUPPORTED_PROTOCOL


def is_success(reason: object) -> bool:
    return reason is not None and reason != "closed" and not getattr(reason, "is_failure", True)


def short(exc: BaseException) -> str:
    """An exception as a short phrase ("Connection refused"), for one-line errors."""
    text = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc) or type(exc).__name__
    return str(text)
