"""Which devices are online, and liveness: a device that misses ``max_missed`` rounds in a row
(assigned, no answer) is dropped, with a logged reason, so a dead device that never said goodbye
(no offline status, no last will yet) stops costing every round its deadline.

A dropped device is not banned: any sign of life (a new online status, or a result, even a late
one) brings it back. Pure bookkeeping, no I/O: the coordinator feeds it statuses and round outcomes.
"""

from __future__ import annotations

import logging
from typing import Callable, Iterable

from edgezo.coordinator.wire import messages as m

log = logging.getLogger("edgezo.coordinator")


class Presence:
    def __init__(self, max_missed: int, say: Callable[[str], None]):
        self.max_missed, self.say = max_missed, say
        self.online: dict[str, m.Status] = {}
        self.missed: dict[str, int] = {}  # device -> rounds missed in a row
        self.dropped: dict[str, m.Status] = {}  # dropped for missing rounds: its last status

    def status(self, device: str, status: m.Status) -> str:
        """Record a status; returns "online", "offline", "conflict" (another process claims an
        online device's id: ignored) or "" (nothing new)."""
        if status.state == "online":
            known = self.online.get(device)
            if known is not None and known.instance and status.instance and known.instance != status.instance:
                log.warning("device %s: a second process (instance %s) claims this id while instance %s is online; "
                            "ignoring it (that device is told to use another --device-id)", device, status.instance, known.instance)
                return "conflict"
            self.dropped.pop(device, None)
            self.missed.pop(device, None)
            self.online[device] = status
            if known is None:
                self.say(f"device {device} online ({status.examples} examples, {status.backend or 'unknown backend'}, "
                         f"replica at round {status.replica_round})")
                return "online"
            return ""
        known = self.online.get(device)
        if known is not None and known.instance and status.instance and known.instance != status.instance:
            return ""  # the goodbye of a refused duplicate: the device online under this id stays
        self.dropped.pop(device, None)
        self.missed.pop(device, None)
        if self.online.pop(device, None) is not None:
            self.say(f"device {device} went offline")
            return "offline"
        return ""

    def heard_from(self, device: str) -> None:
        """A result from ``device``: it is alive (a dropped device comes back)."""
        self.missed.pop(device, None)
        status = self.dropped.pop(device, None)
        if status is not None:
            self.online[device] = status
            self.say(f"device {device} is back (it answered after being dropped)")

    def round_closed(self, assigned: Iterable[str], answered: Iterable[str]) -> list[str]:
        """Count the round's misses; returns the devices dropped now."""
        answered = set(answered)
        dropped = []
        for device in assigned:
            if device in answered:
                self.missed.pop(device, None)
                continue
            if device not in self.online:
                continue  # went offline during the round: already gone
            self.missed[device] = self.missed.get(device, 0) + 1
            if self.max_missed and self.missed[device] >= self.max_missed:
                self.dropped[device] = self.online.pop(device)
                del self.missed[device]
                dropped.append(device)
                log.warning("dropped device %s: it missed %d rounds in a row without answering (it comes back "
                            "when it sends a status or a result)", device, self.max_missed)
        return dropped
