"""The coordinator: runs a job's rounds over MQTT, by wiring its parts together.

* ``pump``: receives, validates and dispatches devices' messages (a bad one is rejected with a reason);
* ``round_service``: opens, collects and closes rounds (durable: see its docstring);
* ``log_service``: the seed log, catch-up replies, checkpoints and the announcement;
* ``presence`` and ``planning``: who is online (and liveness), and what each device is assigned;
* ``state``: the state folder (``job.json``, ``seedlog.jsonl``, ``checkpoints/``).

Its only durable state is the state folder. The global model is always base + replay(seed log),
so a coordinator killed at any moment and restarted with the same ``--state`` replays (and
verifies) the log, finishes a round the crash cut after its append, and re-opens the next round;
devices answer a re-opened round with the same scalars (their batches and directions are
functions of the run seed and round), so the job ends on the same model.

All work happens on the caller's thread; the MQTT network thread only queues messages.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from edgezo.config import JobConfig
from edgezo.engine import RoundRecord, Totals

from edgezo.coordinator.wire import messages as m
from edgezo.coordinator.wire.link import Link
from edgezo.coordinator.server.log_service import LogService
from edgezo.coordinator.server.planning import DevicePlanner, Planning
from edgezo.coordinator.server.presence import Presence
from edgezo.coordinator.server.pump import MessagePump
from edgezo.coordinator.server.round_service import RoundService
from edgezo.coordinator.server.rounds import RoundCollector, RoundPolicy
from edgezo.coordinator.server.state import LOCAL_KEYS, StateFolder, shared_job
from edgezo.coordinator.wire.topics import Topics

__all__ = ["LOCAL_KEYS", "Coordinator", "CoordinatorSettings", "Planning", "StateFolder", "shared_job"]

log = logging.getLogger("edgezo.coordinator")


@dataclass
class CoordinatorSettings:
    run: str = "edgezo"
    state: Path = Path("runs/coordinate/state")
    min_devices: int = 1
    devices_per_round: int = 0  # 0: every online device
    policy: RoundPolicy = field(default_factory=RoundPolicy)
    log_chunk: int = 50  # seed-log entries per catch-up message
    checkpoint_every: int = 10  # rounds between checkpoints served over HTTP (0: never)
    http_host: str = "0.0.0.0"
    http_port: int = 0
    advertise_host: str | None = None  # the host devices use to reach the checkpoint server
    max_attempts: int = 20  # re-opened rounds before giving up
    planning: Planning | None = None  # None: every device gets the job's K, P1, P2 and batch
    max_missed: int = 3  # rounds in a row a device may miss before it is dropped (0: never drop)


class Coordinator:
    def __init__(
        self,
        cfg: JobConfig,
        settings: CoordinatorSettings,
        link: Link,
        ex,
        model: m.ModelRef,
        evaluate: Callable[[], float],
        on_record: Callable[[RoundRecord], None],
        say: Callable[[str], None] = print,
    ):
        self.cfg, self.s, self.link, self.ex, self.model = cfg, settings, link, ex, model
        self.evaluate, self.on_record, self.say = evaluate, on_record, say
        self.topics = Topics(settings.run)
        self.state = StateFolder(settings.state, shared_job(cfg), model, settings.run)
        self.logs = LogService(cfg, settings.run, self.state, link, self.topics, ex, model, settings.log_chunk,
                               settings.checkpoint_every)
        self.pump = MessagePump(link, self.topics, self._republish)
        self.presence = Presence(settings.max_missed, say)
        self.planner = DevicePlanner(cfg, lambda: self.s.planning, say)
        # The round service calls back through _dispatch, _wait_for_devices and _close, so a subclass
        # can wrap them (benchmarks/coordinator_scale.py times each).
        self.rounds = RoundService(cfg, settings.policy, self._receive, self.presence, self.planner, self.logs, ex,
                                   evaluate, on_record, say, settings.min_devices, settings.devices_per_round,
                                   settings.max_attempts, wait=lambda: self._wait_for_devices(),
                                   close=lambda *a: self._close(*a))
        self.recorded_round: int | None = None  # the last round in metrics.jsonl (continue_totals), if known

    # -- what callers read --------------------------------------------------------------------
    @property
    def round(self) -> int:
        return self.logs.round

    @property
    def fingerprint(self) -> str:
        return self.logs.fingerprint

    @property
    def entries(self):
        return self.logs.entries

    @property
    def online(self) -> dict[str, m.Status]:
        return self.presence.online

    @property
    def rejected(self) -> int:
        return self.pump.rejected

    @property
    def totals(self) -> Totals:
        return self.rounds.totals

    def continue_totals(self, last: dict) -> None:
        """After a restart, cumulative counters continue from the last recorded round."""
        self.rounds.totals = Totals.from_record(last)
        self.recorded_round = int(last.get("round", 0))

    def task_of(self, device: str) -> m.DeviceTask | None:
        return self.planner.task_of(device)

    def eligible(self) -> list[str]:
        return self.rounds.eligible()

    def announce(self, state: str = "running") -> int:
        return self.logs.announce(state)

    # -- receiving ----------------------------------------------------------------------------
    def _republish(self) -> None:
        """Back after a broker outage: a restarted broker lost our retained messages."""
        self.logs.announce()
        if self.rounds.assign_payload is not None:
            self.link.publish(self.topics.round, self.rounds.assign_payload, retain=True)

    def _receive(self, timeout: float) -> None:
        self.pump.pump(lambda msg: self._dispatch(msg, self.rounds.collector), timeout)

    def _dispatch(self, msg, collector: RoundCollector | None = None) -> None:
        """Handle one raw message (tests feed messages through here)."""
        previous = self.rounds.collector
        if collector is not None:
            self.rounds.collector = collector
        try:
            self.pump.dispatch(msg, self._handle)
        finally:
            self.rounds.collector = previous

    def _handle(self, kind: str, device: str, message, size: int) -> None:
        collector = self.rounds.collector
        if kind == "status":
            what = self.presence.status(device, message)
            if what == "conflict":
                return
            if message.state == "online":
                self.planner.plan(device, message)  # a re-sent status re-plans only if its profile changed
            elif what == "offline" and collector is not None:
                collector.device_gone(device)
        elif kind == "result":
            if collector is None:
                self.pump.reject(self.topics.result(device), f"result for round {message.round} while no round is open")
                return
            why = collector.offer(device, message, size)
            if why:
                self.pump.reject(self.topics.result(device), why)
            if message.device == device:
                self.presence.heard_from(device)
        else:
            self.logs.serve(device, message)

    # -- the job ------------------------------------------------------------------------------
    def _one_round(self, rnd: int) -> None:
        self.rounds.one_round(rnd)

    def _wait_for_devices(self) -> None:
        self.rounds.wait_for_devices()

    def _close(self, rnd: int, lr: float, collector: RoundCollector, assign_bytes: int) -> None:
        self.rounds.close(rnd, lr, collector, assign_bytes)

    def _finish_cut_rounds(self) -> None:
        """Rounds in the seed log whose record a crash cut (it came after the append): finish them
        now, once. Only the last can be evaluated (the model is at it)."""
        if self.recorded_round is None or self.recorded_round >= self.round:
            return
        for entry in self.entries[self.recorded_round : self.round]:
            log.warning("round %d was logged but not recorded before the restart: finishing it", entry.round)
            self.rounds.finish(entry, evaluate=entry.round == self.round)
        self.recorded_round = self.round

    def run(self) -> None:
        self.pump.subscribe()
        self.logs.start_http(self.s.http_host, self.s.http_port, self.s.advertise_host)
        try:
            if self.round:
                self.say(f"resuming {self.s.run} at round {self.round}/{self.cfg.rounds} from {self.state.path}")
            self._finish_cut_rounds()
            self.logs.announce()
            if self.round == 0:
                self.on_record(self.rounds.record(0, None, self.evaluate(), 0, 0))
            while self.round < self.cfg.rounds:
                self._one_round(self.round + 1)
            self.logs.announce("finished")
            self.link.publish(self.topics.round, b"", retain=True)  # clear the retained assignment
        finally:
            self.logs.stop_http()
