"""An MQTT link that signs what it publishes and opens what it receives (``edgezo.signing``).

It wraps a ``transport.MqttLink`` (everything else is the wrapped link's): ``publish`` seals every
non-empty payload with this party's key (an empty retained payload, which deletes, stays empty);
``get`` returns ``Opened`` messages, the envelope taken off and its signer named. What to trust is
the receiver's: with ``trust`` (a device: the coordinator's key on the job topics) a message it
refuses, or whose signature does not verify, is logged and dropped here, so no read path of the
device can see it; without (the coordinator) it is passed on, marked, for ``MessagePump`` to
reject with a reason, counted, and to answer with a ``Refused``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

from edgezo import signing
from edgezo.signing import SigningKey

from edgezo.coordinator.wire.messages import MAX_PAYLOAD_BYTES

log = logging.getLogger("edgezo.signing")

COORDINATOR_KINDS = ("announce", "round", "update", "log")  # what only the coordinator publishes
Trust = Callable[[str, "bytes | None"], "str | None"]  # (topic, signer or None) -> why refused, or None


@dataclass(frozen=True)
class Opened:
    """A received message with its envelope taken off: ``signer`` is the public key that signed it
    (None: unsigned), ``size`` its bytes on the wire, ``problem`` why the envelope failed ("": it
    did not; then ``payload`` is what arrived)."""

    topic: str
    payload: bytes
    retain: bool
    signer: bytes | None = None
    size: int = 0
    problem: str = ""


def topic_kind(topic: str) -> str:
    """'announce', 'status', ... of ``edgezo/<run>/<kind>[/<device>]`` (any run)."""
    parts = topic.split("/")
    return parts[2] if len(parts) > 2 else ""


def device_trust(coordinator: bytes | None, own: bytes | None) -> Trust:
    """A device's rule: the job topics signed by the coordinator's key (when it was given), and its
    own status topic by its own key (when it signs: a stranger's fake "online" there would make it
    refuse itself as a duplicate)."""

    def check(topic: str, signer: bytes | None) -> str | None:
        kind = topic_kind(topic)
        if coordinator is not None and kind in COORDINATOR_KINDS and signer != coordinator:
            by = "unsigned" if signer is None else f"signed by {signing.public_text(signer)}"
            return f"{by}, not by the coordinator's key (--coordinator-key)"
        if own is not None and kind == "status" and signer != own:
            return "a status for this device not signed by its key"
        return None

    return check


class SignedLink:
    """``link`` with signed publishes (``key``; None: published as they are) and opened receives."""

    def __init__(self, link, key: SigningKey | None = None, trust: Trust | None = None, enrolment=None):
        self.link, self.key, self.trust = link, key, trust
        self.enrolment = enrolment  # the coordinator's (MessagePump reads it); None on a device
        self.dropped = 0
        self.last_drop = ""  # the latest reason, for an error that would otherwise only say "nothing came"

    def __getattr__(self, name):  # connections, subscribe, close, refusal, settings, flush, ...
        return getattr(self.link, name)

    def __enter__(self) -> "SignedLink":
        self.link.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.link.__exit__(*exc)

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        if self.key is not None and payload:
            payload = signing.seal(self.key, topic, payload)
        self.link.publish(topic, payload, qos, retain)

    def get(self, timeout: float | None = None) -> Opened | None:
        """The next message (None after ``timeout``), opened; with ``trust``, only trusted ones."""
        deadline = None if timeout is None else time.monotonic() + timeout
        wait = timeout
        while True:
            msg = self.link.get(wait)
            if msg is None:
                return None
            opened = open_message(msg)
            if self.trust is None:
                return opened
            why = opened.problem or (self.trust(opened.topic, opened.signer) if opened.payload else None)
            if why is None:
                return opened
            self.dropped += 1
            self.last_drop = f"{opened.topic}: {why}"
            log.warning("ignoring a message on %s: %s", opened.topic, why)
            if deadline is not None:
                wait = max(0.0, deadline - time.monotonic())


def open_message(msg) -> Opened:
    """``msg`` (a ``transport.Message``) with its envelope, if any, verified and taken off."""
    data = msg.payload
    if not signing.is_sealed(data):
        return Opened(msg.topic, data, msg.retain, None, len(data))
    if len(data) > MAX_PAYLOAD_BYTES + signing.OVERHEAD:
        return Opened(msg.topic, data, msg.retain, None, len(data),
                      f"oversized payload ({len(data):,} bytes; the limit is {MAX_PAYLOAD_BYTES:,})")
    try:
        signer, payload = signing.unseal(msg.topic, data)
    except signing.BadSignature as e:
        return Opened(msg.topic, data, msg.retain, None, len(data), str(e))
    return Opened(msg.topic, payload, msg.retain, signer, len(data))
