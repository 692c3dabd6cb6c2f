"""The coordinator's round service: open a round (assign work to the chosen devices), collect
their answers until quorum or deadline, and close it (aggregate, apply, log durably, publish).

Durable rounds: everything a round's metrics record needs that is not re-derivable from the model
(the mean loss, who answered, the work done, the bytes moved) rides in the seed-log entry's
``meta``. What follows the append (publishing the update, the checkpoint, the announcement, the
evaluation, the record) is ``finish``, which a resumed coordinator runs for a round the crash cut
before its record was written: so each of them happens exactly once per recorded round.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

from edgezo.config import JobConfig, probe_config
from edgezo.engine import RoundRecord, Totals, evaluation_due
from edgezo.errors import EdgezoError
from edgezo.seedlog import LogEntry

from edgezo.coordinator.wire import messages as m
from edgezo.coordinator.server.crashpoints import crash_point
from edgezo.coordinator.server.log_service import LogService
from edgezo.coordinator.server.planning import DevicePlanner
from edgezo.coordinator.server.presence import Presence
from edgezo.coordinator.server.rounds import OffenderLedger, RoundCollector, RoundPolicy, sample_devices

log = logging.getLogger("edgezo.coordinator")


@dataclass(frozen=True)
class Work:
    """The summed work of a round's devices (what ``Totals.add_round`` adds)."""

    forwards1: int
    forwards2: int
    flops: float


def round_meta(collector: RoundCollector, assign_bytes: int) -> dict:
    """The facts of a closed round that its record needs, kept in the seed log."""
    answers = list(collector.answers.values())
    return {
        "loss": sum(a.result.loss for a in answers) / len(answers),
        "devices": len(answers),
        "assigned": len(collector.tasks),
        "forwards1": sum(a.result.forwards1 for a in answers),
        "forwards2": sum(a.result.forwards2 for a in answers),
        "flops": sum(a.result.flops for a in answers),
        "bytes_up": sum(a.payload_bytes for a in answers) / len(answers),  # measured payloads, per device
        "assign_bytes": assign_bytes,
    }


def review_meta(review) -> dict:
    """What the round's review adds to its seed-log ``meta`` (nothing for a clean round): the cut
    devices and the refusal, so a resumed coordinator's record and ledger see them too."""
    return {k: v for k, v in (("cut", review.named()), ("refused", "; ".join(review.refused))) if v}


class RoundService:
    """``receive(timeout)`` handles what devices sent (the message pump); ``wait`` and ``close``
    default to this service's own steps, and are how the coordinator (or an instrumented one, as
    in ``benchmarks/coordinator_scale.py``) wraps them."""

    def __init__(self, cfg: JobConfig, policy: RoundPolicy, receive: Callable[[float], None], presence: Presence,
                 planner: DevicePlanner, logs: LogService, ex, evaluate: Callable[[], float],
                 on_record: Callable[[RoundRecord], None], say: Callable[[str], None], min_devices: int = 1,
                 devices_per_round: int = 0, max_attempts: int = 20, wait: Callable[[], None] | None = None,
                 close: Callable[..., None] | None = None):
        self.cfg, self.policy, self.receive, self.presence, self.planner, self.logs = cfg, policy, receive, presence, planner, logs
        self.ex, self.evaluate, self.on_record, self.say = ex, evaluate, on_record, say
        self.min_devices, self.devices_per_round, self.max_attempts = min_devices, devices_per_round, max_attempts
        self.wait, self.close_hook = wait or self.wait_for_devices, close or self.close
        self.totals = Totals()
        # devices out of bound in too many recent rounds are dropped from the job (rebuilt from
        # the seed log's "cut" on resume: ``remember``)
        self.ledger = OffenderLedger()
        self.started = time.perf_counter()
        self.collector: RoundCollector | None = None  # the open round's
        self.assign_payload: bytes | None = None  # the open round's assignment (re-sent after a reconnect)

    def eligible(self) -> list[str]:
        return self.ledger.allowed(self.planner.eligible(self.presence.online))

    def remember(self, entry: LogEntry) -> list:
        """Feed a logged round's verdict to the ledger; returns the devices it drops now."""
        meta = entry.meta or {}
        return self.ledger.record(entry.round, meta.get("participants", []), meta.get("cut") or {})

    def wait_for_devices(self) -> None:
        shown = None
        while len(ready := self.eligible()) < self.min_devices:
            now = (len(ready), len(self.presence.online))
            if now != shown:
                shown = now
                dropped = len(self.presence.online) - len(self.ledger.allowed(self.presence.online))
                left_out = len(self.presence.online) - len(ready) - dropped
                more = f"; {left_out} more online but left out by the planner (nothing fits them)" if left_out else ""
                more += f"; {dropped} online but dropped from the job (out of bound)" if dropped else ""
                self.say(f"waiting for devices: {len(ready)}/{self.min_devices} online{more} (start them with: edgezo join --broker HOST)")
            self.receive(0.5)

    def one_round(self, rnd: int) -> None:
        lr = self.cfg.round_lr(rnd)
        probe = probe_config(self.cfg)
        for attempt in range(self.max_attempts):
            self.wait()
            chosen = sample_devices(self.eligible(), self.devices_per_round, self.cfg.seed, rnd, attempt)
            tasks = [self.planner.task_of(d) for d in chosen]
            assign = m.Assign(v=m.PROTOCOL_VERSION, run=self.logs.run, round=rnd, attempt=attempt, lr=lr,
                              timeout_s=self.policy.timeout_s, tasks=tasks)
            payload = m.encode(assign)
            collector = RoundCollector(self.logs.run, self.cfg.seed, rnd, attempt, tasks, probe, self.policy,
                                       time.monotonic(), self.cfg.resolved_method, fingerprint=self.logs.fingerprint)
            self.logs.link.publish(self.logs.topics.round, payload, retain=True)
            self.collector, self.assign_payload = collector, payload
            try:
                while not collector.should_close(time.monotonic()):
                    self.receive(0.2)
            finally:
                self.collector = None
            self.presence.round_closed([t.device for t in tasks], collector.answers)
            if collector.answers:
                self.close_hook(rnd, lr, collector, len(payload))
                return
            self.say(f"round {rnd}: no device answered within {self.policy.timeout_s:.0f} s; re-opening it")
        raise EdgezoError(f"round {rnd} got no answer in {self.max_attempts} attempts; are the devices running?")

    def close(self, rnd: int, lr: float, collector: RoundCollector, assign_bytes: int) -> None:
        """Review the round (screening cut devices; a refused update is logged empty, so the model
        stays where it was, as in ``simulate``), apply, append, then ``finish``."""
        review = collector.review(lr)
        for line in review.describe(rnd):
            log.warning(line)
            self.say(line)
        self.ex.apply_update(review.update)
        meta = {**round_meta(collector, assign_bytes), **review_meta(review),
                "participants": sorted(collector.answers) + sorted(set(collector.faults) - set(collector.answers))}
        entry = LogEntry(rnd, review.update, self.ex.fingerprint(), meta)
        entry = self.logs.append(entry)  # durable before anyone hears of it
        crash_point("appended", rnd)
        self.finish(entry)

    def finish(self, entry: LogEntry, evaluate: bool = True) -> None:
        """Everything after the append: publish, checkpoint, announce, count, evaluate, record."""
        rnd, meta = entry.round, entry.meta or {}
        for drop in self.remember(entry):
            line = f"dropping {drop.device} from the job: {drop.reason}"
            log.warning(line)
            self.say(line)
        update_bytes = self.logs.publish_update(entry)
        crash_point("published", rnd)
        self.logs.checkpoint_if_due()
        crash_point("checkpointed", rnd)
        announce_bytes = self.logs.announce()
        crash_point("announced", rnd)
        work = Work(meta.get("forwards1", 0), meta.get("forwards2", 0), meta.get("flops", 0.0))
        self.totals.add_round([work], meta.get("bytes_up", 0.0), meta.get("assign_bytes", 0) + update_bytes + announce_bytes)
        accuracy = self.evaluate() if evaluate and evaluation_due(self.cfg, rnd) else None
        record = self.record(rnd, meta.get("loss"), accuracy, meta.get("devices", 0), meta.get("assigned", 0))
        record.cut, record.refused = meta.get("cut"), meta.get("refused")
        self.on_record(record)
        crash_point("recorded", rnd)

    def record(self, rnd, loss, accuracy, answered, assigned) -> RoundRecord:
        return self.totals.record(rnd, self.cfg.method, loss, accuracy, round(time.perf_counter() - self.started, 3),
                                  answered, assigned, self.logs.fingerprint)
