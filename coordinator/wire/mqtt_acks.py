"""What a link's broker has yet to acknowledge, and what it refused (``transport.MqttLink``).

Why a book of its own: paho calls ``on_publish`` and ``on_subscribe`` on its network thread,
possibly before ``publish`` returned the message id (an acknowledgement may beat its own
publish), and under MQTT 5 an acknowledgement may carry a refusal (an ACL). The bookkeeping of
both is the same few dictionaries under the link's lock, kept apart from the connection logic.
The lock is the link's (``flush`` reads the book and the link's held messages together); never
hold it while calling into paho, which runs its callbacks under its own locks.
"""

from __future__ import annotations

import threading
import time

Copy = tuple[str, bytes, int]  # a retained message's (topic, payload, qos), for the other nodes


class AckBook:
    """QoS>0 publishes and subscriptions awaiting the broker's answer, and its refusals."""

    def __init__(self, lock: threading.Lock):
        self.lock = lock
        self.unacked: dict[int, str] = {}  # mid -> topic of QoS>0 publishes the broker has not acknowledged
        self._acked_early: dict[int, float] = {}  # mid -> time: acks that beat publish() to recording the mid
        self._copies: dict[int, Copy] = {}  # mid -> retained copy to send on once the original is acknowledged
        self._subscribing: dict[int, str] = {}  # SUBSCRIBE mid -> filter, to name refused ones
        self._refusals: list[str] = []  # publishes and subscriptions the broker refused (MQTT 5 reason codes)

    def sent(self, mid: int, topic: str, copy: Copy | None) -> bool:
        """Record a QoS>0 publish until its ack; False when the ack came first (then send the
        ``copy`` on now)."""
        with self.lock:
            if self._acked_early.pop(mid, None) is not None:
                return False
            self.unacked[mid] = topic
            if copy is not None:
                self._copies[mid] = copy
            return True

    def copy_of(self, mid: int) -> Copy | None:
        """The retained copy waiting for ``mid``'s ack (taken: sent once)."""
        with self.lock:
            return self._copies.pop(mid, None)

    def acked(self, mid: int) -> str | None:
        """The topic of the publish ``mid`` acknowledged, or None when ``publish`` has not recorded
        it yet (the ack is then parked; QoS 0 "acks" land here too, and old ones are pruned so
        message ids can be reused)."""
        with self.lock:
            topic = self.unacked.pop(mid, None)
            if topic is None:
                now = time.monotonic()
                self._acked_early[mid] = now
                if len(self._acked_early) > 1000:
                    self._acked_early = {m: t for m, t in self._acked_early.items() if now - t < 10.0}
            return topic

    def subscribing(self, mid: int, topic_filter: str) -> None:
        with self.lock:
            self._subscribing[mid] = topic_filter

    def subscribed(self, mid: int) -> str:
        """The filter SUBSCRIBE ``mid`` asked for ("?" if unknown)."""
        with self.lock:
            return self._subscribing.pop(mid, "?")

    def refused(self, what: str) -> None:
        with self.lock:
            self._refusals.append(what)

    def first_refusal(self) -> str | None:
        with self.lock:
            return self._refusals[0] if self._refusals else None
