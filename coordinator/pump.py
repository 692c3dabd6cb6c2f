"""The coordinator's message pump: takes what the MQTT network thread queued, decodes and
validates it (schema, protocol version, run), and hands each good message to a handler. A bad
message is counted and logged with its reason, never raised: no device can crash the coordinator.

After a broker outage it calls ``on_reconnect`` first, since a restarted broker lost every
retained message the coordinator had published (the announcement, the open round).
"""

from __future__ import annotations

import logging
from typing import Callable

from edgezo.coordinator import messages as m
from edgezo.coordinator.topics import Topics

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
        handle(kind, device, message, len(msg.payload))
