"""Retained mirrors: a clustered broker's other nodes get a link's retained messages too.

Why: clustered brokers keep retained messages per node (RabbitMQ's MQTT plugin does, and delivers
none for wildcard subscriptions), so whichever node a client subscribes on must hold the current
retained state itself; ``transport.MqttLink`` publishes each retained message, once the broker
acknowledged it, through one ``RetainedMirror`` per other node.
"""

from __future__ import annotations

import logging
import threading

from edgezo.errors import EdgezoError

from edgezo.coordinator.wire.broker_address import BrokerSettings

log = logging.getLogger("edgezo.mqtt")


class RetainedMirror:
    """A side connection to one other node of a clustered broker, through which a link also
    publishes its retained messages (so that node's retained store holds them too).

    It connects in the background and keeps trying while the node is down; what is published
    before it connects waits in its link and goes out, in order, once it does.
    """

    def __init__(self, link, settings: BrokerSettings):
        self.settings, self.link = settings, link  # a link to that node alone, not connected yet
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
