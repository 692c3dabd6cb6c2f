"""The coordinator's message pump: takes what the MQTT network thread queued, decodes and
validates it (in a signed job the device's signature first, then schema, protocol version, run),
and hands each good message to a handler. A bad
message is counted and logged with its reason, never raised: no device can crash the coordinator.

After a broker outage it calls ``on_reconnect`` first, since a restarted broker lost every
retained message the coordinator had published (the announcement, the open round).
"""

from __future__ import annotations

import logging
import time
from typing import Callable

from edgezo.signing import public_text
from edgezo.coordinator.wire import messages as m
from edgezo.coordinator.wire.topics import Topics

log = logging.getLogger("edgezo.coordinator")

# What devices send, by topic kind; anything else on the job's topics is our own publications echoed.
INBOUND = {"status": m.Status, "result": m.Result, "logreq": m.LogRequest}

Handler = Callable[[str, str, object, int], None]  # (kind, device, message, payload bytes)
Dispatch = Callable[[object], None]  # one raw message (``transport.Message``)


class MessagePump:
    def __init__(self, link, topics: Topics, on_reconnect: Callable[[], None]):
        self.link, self.topics, self.on_reconnect = link, topics, on_reconnect
        self.rejected = 0
        self._connections = getattr(link, "connections", 0)
        # A signed job (a ``SignedLink`` with the enrolled keys): every inbound message must be
        # signed by the enrolled key of the device its topic names (PROTOCOL.md section 14).
        self.enrolment = getattr(link, "enrolment", None)
        self._refused: dict[tuple[str, str], float] = {}  # (device, key) -> when a Refused last went out

    def subscribe(self) -> None:
        t = self.topics
        for topic in (t.all_status, t.all_results, t.all_logreq):
            self.link.subscribe(topic)

    def reject(self, topic: str, why: str) -> None:
        self.rejected += 1
        log.warning("rejected message on %s: %s", topic, why)

    def pump(self, dispatch: Dispatch, timeout: float) -> None:
        """Wait up to ``timeout`` for a message, then pass everything queued to ``dispatch``
        (usually ``lambda msg: pump.dispatch(msg, handler)``)."""
        if getattr(self.link, "connections", 0) != self._connections:
            self._connections = self.link.connections
            log.info("reconnected: re-publishing the announcement and the open round")
            self.on_reconnect()
        msg = self.link.get(timeout)
        while msg is not None:
            dispatch(msg)
            msg = self.link.get(0)

    def dispatch(self, msg, handle: Handler) -> None:
        kind = self.topics.kind_of(msg.topic)
        expected = INBOUND.get(kind)
        if expected is None or not msg.payload:
            return  # our own publications echoed back, or a cleared retained message
        if self.enrolment is not None and not self._signed_by_device(kind, msg):
            return
        try:
            message = m.decode(msg.payload, expected)
            if message.run != self.topics.run:
                raise m.BadMessage(f"for run {message.run!r}")
        except m.BadMessage as e:
            self.reject(msg.topic, str(e))
            return
        device = self.topics.device_of(msg.topic)
        if kind != "result" and message.device != device:  # results: the collector names the claim
            self.reject(msg.topic, f"{kind} claims device {message.device!r}")
            return
        handle(kind, device, message, getattr(msg, "size", 0) or len(msg.payload))  # signed: the envelope's bytes too

    def _signed_by_device(self, kind: str, msg) -> bool:
        """A signed job's check: the message's envelope verifies and its signer is the enrolled key
        of the device its topic names; otherwise it is rejected and, for a device announcing itself
        or asking for the log, answered with a ``Refused`` naming the key (at most every 5 s per
        device and key), so a device that is not enrolled ends with a clear error instead of waiting."""
        device = self.topics.device_of(msg.topic)
        why = getattr(msg, "problem", "") or self.enrolment.check(device, getattr(msg, "signer", None))
        if not why:
            return True
        self.reject(msg.topic, why)
        if kind in ("status", "logreq") and not getattr(msg, "problem", ""):
            self._refuse(device, msg.signer, why)
        return False

    def _refuse(self, device: str, signer: bytes | None, why: str) -> None:
        key = public_text(signer) if signer is not None else ""
        now = time.monotonic()
        if now - self._refused.get((device, key), -1e9) < 5.0:
            return
        if len(self._refused) > 10_000:
            self._refused.clear()
        self._refused[(device, key)] = now
        refusal = m.Refused(v=m.PROTOCOL_VERSION, run=self.topics.run, device=device, key=key, reason=why)
        self.link.publish(self.topics.log(device), m.encode(refusal))
