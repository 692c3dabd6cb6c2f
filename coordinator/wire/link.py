"""The seam between edgezo's federation and a transport: what the coordinator and a device use of
a link, whatever carries the messages.

Why a protocol: the coordinator (``server``, ``pump``, ``log_service``) and the device
(``device.Device``) are plain loops over ``get`` and ``publish``; MQTT through paho
(``transport.MqttLink``), the signing wrapper (``signed_link.SignedLink``) and the planned
browser device's bridge are links. A new transport implements these five members and nothing
else; tests/test_architecture.py checks the links in the package against it.

Optional members a link may offer, asked with ``getattr`` by their one user each: ``refusal()``
(why the broker refused a publish or subscription, ``device.Device``), ``key`` and ``last_drop``
(a signing link's key and the last message it dropped), ``enrolment`` (a coordinator's signing
link's enrolled keys).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class Received(Protocol):
    """One message taken off a link: its topic, its bytes, and whether it was retained."""

    topic: str
    payload: bytes
    retain: bool


@runtime_checkable
class Link(Protocol):
    """A connected, thread-safe message link. ``publish`` may be called while the transport is
    reconnecting (QoS 1 messages are kept and sent later); ``get`` waits up to ``timeout``
    seconds (None: forever) and returns None when nothing came; ``connections`` counts successful
    (re)connections, so a party re-announces itself (its status) when it grows."""

    connections: int

    def subscribe(self, topic_filter: str, qos: int = 1) -> None: ...

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None: ...

    def get(self, timeout: float | None) -> Received | None: ...

    def close(self) -> None: ...
