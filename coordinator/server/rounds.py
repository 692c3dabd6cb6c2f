"""One federated round on the coordinator, as pure logic: who is assigned what, which results
count, when the round closes, and the aggregate. No network and no clock of its own (the caller
passes ``now``), so every rule here is unit-tested without a broker.

A result counts only if it is for this run, round and attempt, from an assigned device, on that
device's own topic, with exactly the scalars the assignment asked for, all finite, and a
plausible example count. The first valid result of a device counts; duplicates are ignored.

Closing a round (``RoundCollector.review``) leaves the out-of-bound scalars out, checks the update
before it may be appended to the seed log, and names the devices at fault; ``OffenderLedger``
counts those faults over rounds and says when a device must be dropped from the job.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from edgezo.aggregate import Aggregation
from edgezo.engine import RoundReview, review_round
from edgezo.estimators import ProbeConfig
from edgezo.keys import Direction
from edgezo.methods import Method

from edgezo.coordinator.wire.messages import DeviceTask, Result, unpack_scalars, BadMessage


@dataclass
class RoundPolicy:
    """How a round is run: the coordinator's knobs, separate from the training job."""

    timeout_s: float = 300.0  # deadline after the assignment
    quorum: float = 1.0  # close early once this fraction of the assigned devices answered
    aggregation: Aggregation = field(default_factory=Aggregation)  # clipping and the per-direction rule


def sample_devices(online: list[str], count: int, seed: int, rnd: int, attempt: int) -> list[str]:
    """The devices of a round: all online ones (count 0 or more than are online), else a seeded
    sample, so a restarted coordinator picks the same devices from the same population."""
    online = sorted(online)
    if count <= 0 or count >= len(online):
        return online
    rng = np.random.default_rng([seed, rnd, attempt, 0x5A4D])
    return sorted(online[k] for k in rng.choice(len(online), size=count, replace=False))


@dataclass
class Answer:
    """A counted result: the message, its scalars keyed by direction (clipped), its wire size."""

    result: Result
    scalars: dict[Direction, float]
    payload_bytes: int


@dataclass
class RoundCollector:
    run: str
    run_seed: int
    round: int
    attempt: int
    tasks: list[DeviceTask]
    probe: ProbeConfig  # method, eps, variant, difference; P1/P2 come from each task
    policy: RoundPolicy
    opened_at: float
    method: Method  # the job's (resolved from its name where the job was read)
    fingerprint: str = ""  # the global model the round starts from; results must be computed on it
    answers: dict[str, Answer] = field(default_factory=dict)
    gone: set[str] = field(default_factory=set)
    faults: dict[str, str] = field(default_factory=dict)  # assigned devices whose result was refused for its scalars

    def __post_init__(self):
        self._by_device = {t.device: t for t in self.tasks}
        self._expected: dict[str, list[Direction]] = {}
        shared: dict[tuple, list[Direction]] = {}  # shared seeds: devices with the same task owe the same list
        for position, t in enumerate(self.tasks, start=1):
            stream = self.method.stream(position)
            key = (t.k, t.p1, t.p2, stream)
            if key not in shared:
                probe = self.method.probe(t.p1, t.p2, self.probe.eps, self.probe.variant, self.probe.difference)
                shared[key] = self.method.directions(probe, self.run_seed, self.round, t.k, stream)
            self._expected[t.device] = shared[key]

    def offer(self, topic_device: str, result: Result, payload_bytes: int = 0) -> str | None:
        """Take a result; returns None if it counts, else why it was rejected (for the log)."""
        if result.run != self.run:
            return f"for run {result.run!r}, not {self.run!r}"
        if result.round != self.round or result.attempt != self.attempt:
            return f"for round {result.round} attempt {result.attempt}; round {self.round} attempt {self.attempt} is open"
        if result.device != topic_device:
            return f"claims device {result.device!r} on device {topic_device!r}'s topic"
        task = self._by_device.get(result.device)
        if task is None:
            return f"device {result.device!r} was not assigned round {self.round}"
        if self.fingerprint and result.fingerprint != self.fingerprint:
            return f"computed on a replica ({result.fingerprint[:12]}) that is not the global model ({self.fingerprint[:12]})"
        if result.device in self.answers:
            return f"duplicate result from {result.device!r} (the first one counts)"
        try:
            values = unpack_scalars(result.scalars)
        except BadMessage as e:
            return str(e)
        expected = self._expected[result.device]
        if len(values) != len(expected):
            return f"{len(values)} scalars; the assignment asked for {len(expected)}"
        if not np.all(np.isfinite(values)):
            self.faults.setdefault(result.device, f"sent {int((~np.isfinite(values)).sum())} non-finite scalars of {len(values)}")
            return "non-finite scalars"
        if not (0 < result.examples <= task.k * task.batch) or not math.isfinite(result.loss):
            return f"implausible example count {result.examples} or loss {result.loss}"
        scalars = self.policy.aggregation.clipped(dict(zip(expected, map(float, values))))
        self.answers[result.device] = Answer(result, scalars, payload_bytes)
        return None

    def device_gone(self, device: str) -> None:
        if device in self._by_device:
            self.gone.add(device)

    def should_close(self, now: float) -> bool:
        assigned = len(self.tasks)
        answered = len(self.answers)
        if answered >= math.ceil(self.policy.quorum * assigned):
            return True
        if all(t.device in self.answers or t.device in self.gone for t in self.tasks):
            return True
        return now >= self.opened_at + self.policy.timeout_s

    def update(self, lr: float) -> list[tuple[Direction, float]]:
        """The round's update from the counted answers (in device order, so arrival order does not
        matter), by the method's aggregation under the policy's rule."""
        contributions = [(self.answers[d].scalars, float(self.answers[d].result.examples)) for d in sorted(self.answers)]
        return self.method.aggregate(contributions, lr, self.probe.variant, self.policy.aggregation)

    def review(self, lr: float) -> RoundReview:
        """The round's update, checked before it may be appended: ``review.update`` is what to apply
        and log (the same as ``update(lr)`` when accepted), ``review.refused`` why not (then
        append nothing and re-open the round without the devices to blame), and
        ``review.offenders()`` every device at fault, for the ledger, including those whose result
        was refused for non-finite scalars."""
        names = sorted(self.answers)
        contributions = [(self.answers[d].scalars, float(self.answers[d].result.examples)) for d in names]
        review = review_round(self.method, names, contributions, lr, self.probe.variant, self.policy.aggregation)
        for device, why in self.faults.items():
            review.cut.setdefault(device, why + "; its result was refused")
        return review


@dataclass(frozen=True)
class Drop:
    """A device the ledger says to drop from the job, and why (for the log and the device)."""

    device: str
    reason: str


@dataclass
class OffenderLedger:
    """Per device, the rounds whose scalars were out of bound (or refused): a device at fault in
    ``strikes`` of the last ``window`` rounds it took part in is dropped from the job. A window,
    not a run of consecutive rounds, so a device cannot dodge it by lying every other round, and
    an honest device cut once by bad luck is forgiven. Pure: the coordinator feeds it each closed
    round and acts on what it returns."""

    strikes: int = 3
    window: int = 10
    history: dict[str, deque] = field(default_factory=dict)  # device -> (round, reason or "") of its last rounds
    dropped: dict[str, str] = field(default_factory=dict)  # device -> why it was dropped

    def __post_init__(self):
        if not 1 <= self.strikes <= self.window:
            raise ValueError(f"strikes ({self.strikes}) must be between 1 and the window ({self.window})")

    def record(self, rnd: int, participants: list[str], offenders: dict[str, str]) -> list[Drop]:
        """Round ``rnd``'s verdict on each participant (``offenders``: those at fault, with the
        reason); returns the devices to drop now (each once)."""
        drops = []
        for device in sorted(set(participants) | set(offenders)):
            if device in self.dropped:
                continue
            past = self.history.setdefault(device, deque(maxlen=self.window))
            past.append((rnd, offenders.get(device, "")))
            faults = [(r, why) for r, why in past if why]
            if len(faults) >= self.strikes:
                last_round, last_why = faults[-1]
                reason = (f"out of bound in {len(faults)} of its last {len(past)} rounds "
                          f"({', '.join(str(r) for r, _ in faults)}); last: {last_why}")
                self.dropped[device] = reason
                drops.append(Drop(device, reason))
        return drops

    def allowed(self, devices: list[str]) -> list[str]:
        """``devices`` less those dropped: the ones a round may be assigned to."""
        return [d for d in devices if d not in self.dropped]
