"""The coordinator: runs a job's rounds over MQTT.

Its only durable state is the state folder: ``job.json`` (what the job is) and the append-only,
fsync'd ``seedlog.jsonl``. The global model is always base + replay(seed log), so a coordinator
killed at any moment and restarted with the same ``--state`` replays the log and re-opens the
next round; devices answer a re-opened round with the same scalars (their batches and
directions are functions of the run seed and round), so the job ends on the same model.

All work happens on the caller's thread; the MQTT network thread only queues messages.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from edgezo.config import JobConfig, probe_config
from edgezo.engine import RoundRecord, Totals, evaluation_due
from edgezo.errors import EdgezoError
from edgezo.seedlog import LogEntry, SeedLog, replay

from edgezo.coordinator import messages as m
from edgezo.coordinator.checkpoint import CheckpointServer, latest_checkpoint, write_checkpoint
from edgezo.coordinator.rounds import RoundCollector, RoundPolicy, sample_devices
from edgezo.coordinator.topics import Topics

if TYPE_CHECKING:  # pragma: no cover - planning is imported only when used (--plan)
    from edgezo.costmodel import ModelShape
    from edgezo.planner import Limits
    from edgezo.profiles import Profile

log = logging.getLogger("edgezo.coordinator")

# Keys of JobConfig that only matter on the coordinator's machine: they are not announced, and
# a resumed job may change them.
LOCAL_KEYS = ("model", "data", "out", "eval_every", "eval_samples", "clients")


@dataclass
class Planning:
    """Per-device planning (``coordinate --plan``): each device's K, P1, P2 and batch come from its
    profile (sent in its Status, else ``default_profile``) through ``edgezo.planner.plan_device``."""

    shape: ModelShape  # the job's model, as split
    tokens: int  # padded tokens per sequence of a typical batch of the job
    limits: Limits  # the job's K and batch, the caps on P1 and P2, the job's method
    round_seconds: float  # the round deadline: the time budget
    default_profile: Profile | None = None  # for devices that send none (None: they get the job's fixed work)
    safety: float = 0.85  # plan to this fraction of the deadline


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


def shared_job(cfg: JobConfig) -> dict:
    return {k: v for k, v in cfg.to_dict().items() if k not in LOCAL_KEYS}


class StateFolder:
    """``job.json`` + ``seedlog.jsonl`` + ``checkpoints/``; refuses to resume a different job."""

    def __init__(self, path: Path, job: dict, model: m.ModelRef, run: str):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.seedlog = SeedLog(self.path / "seedlog.jsonl")
        self.checkpoints = self.path / "checkpoints"
        identity = {"run": run, "job": job, "model_digest": model.digest}
        job_file = self.path / "job.json"
        if job_file.exists():
            try:
                old = json.loads(job_file.read_text(encoding="utf-8"))
            except ValueError as e:
                raise EdgezoError(f"{job_file} is corrupt ({e}); delete the state folder to start over") from e
            if old != identity:
                diff = sorted(k for k in set(old.get("job", {})) | set(job) if old.get("job", {}).get(k) != job.get(k))
                what = f"settings {diff}" if diff else "run name or model"
                raise EdgezoError(
                    f"state folder {self.path} belongs to another job (different {what}); "
                    "pass another --state, or the same settings to resume it"
                )
        else:
            tmp = job_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(identity, indent=2), encoding="utf-8")
            tmp.replace(job_file)

    def entries(self) -> list[LogEntry]:
        entries = list(self.seedlog.entries())
        for k, e in enumerate(entries, 1):
            if e.round != k:
                raise EdgezoError(f"seed log {self.seedlog.path} skips from round {k - 1} to {e.round}; it is corrupt")
        return entries


class Coordinator:
    def __init__(
        self,
        cfg: JobConfig,
        settings: CoordinatorSettings,
        link,
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
        self.entries = self.state.entries()
        self.round = replay(ex, self.entries)
        self.fingerprint = ex.fingerprint()  # of the global model; recomputed only when it changes
        self.online: dict[str, m.Status] = {}
        # --plan: device -> (what it was planned from, its task; None: nothing fits, left out of rounds)
        self.plans: dict[str, tuple[tuple, m.DeviceTask | None]] = {}
        self.rejected = 0
        self.totals = Totals()
        self.http = None
        self.started = time.perf_counter()
        self._assign_payload: bytes | None = None  # the open round's assignment (re-sent after a reconnect)
        self._connections = getattr(link, "connections", 0)

    def continue_totals(self, last: dict) -> None:
        """After a restart, cumulative counters continue from the last recorded round."""
        self.totals = Totals.from_record(last)

    # -- publishing -------------------------------------------------------------------------
    def announce(self, state: str = "running") -> int:
        """Publish the retained announcement; returns its size (devices receive it every round)."""
        ck = latest_checkpoint(self.state.checkpoints)
        msg = m.Announce(
            v=m.PROTOCOL_VERSION, run=self.s.run, state=state, model=self.model, job=shared_job(self.cfg),
            split=self.ex.split, round=self.round, rounds=self.cfg.rounds, fingerprint=self.fingerprint,
            log_chunk=self.s.log_chunk, checkpoint_url=self.http.url if (self.http and ck) else "",
            checkpoint_round=ck.round if ck else 0,
        )
        payload = m.encode(msg)
        self.link.publish(self.topics.announce, payload, retain=True)
        return len(payload)

    def _checkpoint(self) -> None:
        if self.s.checkpoint_every and self.round % self.s.checkpoint_every == 0:
            write_checkpoint(self.state.checkpoints, self.round, self.ex.trainable_arrays(), self.fingerprint)

    # -- receiving --------------------------------------------------------------------------
    def _pump(self, collector: RoundCollector | None, timeout: float) -> None:
        if getattr(self.link, "connections", 0) != self._connections:
            # Back after a broker outage: a restarted broker lost our retained messages.
            self._connections = self.link.connections
            log.info("reconnected: re-publishing the announcement and the open round")
            self.announce()
            if self._assign_payload is not None:
                self.link.publish(self.topics.round, self._assign_payload, retain=True)
        msg = self.link.get(timeout)
        while msg is not None:
            self._dispatch(msg, collector)
            msg = self.link.get(0)

    def _dispatch(self, msg, collector: RoundCollector | None) -> None:
        kind = self.topics.kind_of(msg.topic)
        if kind not in ("status", "result", "logreq") or not msg.payload:
            return  # our own publications echoed back, or a cleared retained message
        device = self.topics.device_of(msg.topic)
        expected = {"status": m.Status, "result": m.Result, "logreq": m.LogRequest}[kind]
        try:
            message = m.decode(msg.payload, expected)
            if message.run != self.s.run:
                raise m.BadMessage(f"for run {message.run!r}")
        except m.BadMessage as e:
            self._reject(msg.topic, str(e))
            return
        if kind == "status":
            self._on_status(device, message, collector)
        elif kind == "result":
            if collector is None:
                self._reject(msg.topic, f"result for round {message.round} while no round is open")
                return
            why = collector.offer(device, message, len(msg.payload))
            if why:
                self._reject(msg.topic, why)
        else:
            self._serve_log(device, message)

    def _reject(self, topic: str, why: str) -> None:
        self.rejected += 1
        log.warning("rejected message on %s: %s", topic, why)

    def _on_status(self, device: str, status: m.Status, collector: RoundCollector | None) -> None:
        if status.device != device:
            self._reject(self.topics.status(device), f"status claims device {status.device!r}")
            return
        if status.state == "online":
            if device not in self.online:
                self.say(f"device {device} online ({status.examples} examples, {status.backend or 'unknown backend'}, replica at round {status.replica_round})")
            self.online[device] = status
            self._plan(device, status)
        else:
            if self.online.pop(device, None) is not None:
                self.say(f"device {device} went offline")
            if collector is not None:
                collector.device_gone(device)

    # -- planning (--plan) --------------------------------------------------------------------
    def _fixed_task(self, device: str) -> m.DeviceTask:
        return m.DeviceTask(device, self.cfg.local_steps, self.cfg.p1, self.cfg.p2, self.cfg.batch_size)

    def _plan(self, device: str, status: m.Status) -> None:
        """Plan a device when it comes online, and again when its profile or memory budget changes
        (its status is re-sent after every catch-up and reconnect: those do not re-plan)."""
        if self.s.planning is None:
            return
        key = (repr(status.profile), status.memory_gb)  # a device re-sends the same decoded dict: same repr
        known = self.plans.get(device)
        if known is not None and known[0] == key:
            return
        self.plans[device] = (key, self._plan_task(device, status))

    def _plan_task(self, device: str, status: m.Status) -> m.DeviceTask | None:
        """The device's task, or None when nothing fits it (then it is left out of rounds). A
        malformed profile is rejected with a logged reason and the device treated as sending none."""
        from edgezo.planner import Budget, NothingFits, plan_device
        from edgezo.profiles import profile_from_dict

        p = self.s.planning
        profile, source = None, ""
        if status.profile:
            try:
                profile, source = profile_from_dict(dict(status.profile), where=f"the profile of device {device}"), "its own"
            except EdgezoError as e:  # names the bad key
                log.warning("rejected the profile of device %s: %s; treating it as a device without a profile", device, e)
        memory = status.memory_gb
        if memory != 0 and not (math.isfinite(memory) and memory > 0):
            log.warning("device %s sent memory budget %r GB; using its profile's memory_available_gb", device, memory)
            memory = 0.0
        if profile is None and p.default_profile is not None:
            profile, source = p.default_profile, "the --default-profile"
        if profile is None:
            task = self._fixed_task(device)
            self.say(f"plan for {device}: no profile, so the job's K {task.k}, P1 {task.p1}, P2 {task.p2}, batch {task.batch}")
            return task
        running = [b for b in profile.backends if b.name == status.backend]
        if running:  # the device already runs this backend (chosen at join): plan for it alone
            profile = replace(profile, backends=running)
        try:
            budget = Budget(p.round_seconds, memory or None, p.safety)
            plan = plan_device(profile, p.shape, p.tokens, budget, p.limits, device)
        except NothingFits as e:
            log.warning("device %s is left out of rounds (%s profile %r): %s", device, source, profile.name, e)
            return None
        except Exception as e:  # never let a device's figures stop the job
            why = str(e) if isinstance(e, EdgezoError) else f"{type(e).__name__}: {e}"
            task = self._fixed_task(device)
            log.warning("could not plan device %s from %s profile %r (%s); it gets the job's fixed work", device, source, profile.name, why)
            return task
        w = plan.work
        self.say(f"plan for {plan.describe()}; from {source} profile {profile.name!r}")
        return m.DeviceTask(device, w.k, w.p1, w.p2, w.batch)

    def task_of(self, device: str) -> m.DeviceTask | None:
        """What ``device`` is assigned in a round (None: left out by the planner)."""
        if self.s.planning is None:
            return self._fixed_task(device)
        known = self.plans.get(device)  # planned by _on_status when it came online
        return known[1] if known is not None else self._fixed_task(device)

    def eligible(self) -> list[str]:
        """Online devices that can be given work (with --plan, those a plan fits)."""
        if self.s.planning is None:
            return list(self.online)
        return [d for d in self.online if self.task_of(d) is not None]

    def _serve_log(self, device: str, req: m.LogRequest) -> None:
        if req.device != device:
            self._reject(self.topics.logreq(device), f"log request claims device {req.device!r}")
            return
        first, last = max(1, req.first), min(req.last, self.round)
        updates, size = [], 0
        for entry in self.entries[first - 1 : last][: self.s.log_chunk]:
            update = self._update_message(entry)
            size += len(update.rows) + 64
            if updates and size > m.MAX_PAYLOAD_BYTES // 2:
                break  # stay well under the payload limit: the device asks again for the rest
            updates.append(update)
        reply = m.LogChunk(v=m.PROTOCOL_VERSION, run=self.s.run, device=device, entries=updates, last=self.round)
        self.link.publish(self.topics.log(device), m.encode(reply))

    def _update_message(self, entry: LogEntry, fingerprint: str = "") -> m.Update:
        return m.Update(v=m.PROTOCOL_VERSION, run=self.s.run, round=entry.round, run_seed=self.cfg.seed,
                        rows=m.pack_update(entry.update), fingerprint=fingerprint)

    # -- the job ----------------------------------------------------------------------------
    def run(self) -> None:
        t = self.topics
        for topic in (t.all_status, t.all_results, t.all_logreq):
            self.link.subscribe(topic)
        self.http = CheckpointServer(self.state.checkpoints, self.s.http_host, self.s.http_port, self.s.advertise_host).start()
        try:
            if self.round:
                self.say(f"resuming {self.s.run} at round {self.round}/{self.cfg.rounds} from {self.state.path}")
            self.announce()
            if self.round == 0:
                self.on_record(self._record(0, None, self.evaluate(), 0, 0))
            while self.round < self.cfg.rounds:
                self._one_round(self.round + 1)
            self.announce("finished")
            self.link.publish(t.round, b"", retain=True)  # clear the retained assignment
        finally:
            self.http.stop()

    def _wait_for_devices(self) -> None:
        shown = None
        while len(ready := self.eligible()) < self.s.min_devices:
            now = (len(ready), len(self.online))
            if now != shown:
                shown = now
                left_out = len(self.online) - len(ready)
                more = f"; {left_out} more online but left out by the planner (nothing fits them)" if left_out else ""
                self.say(f"waiting for devices: {len(ready)}/{self.s.min_devices} online{more} (start them with: edgezo join --broker HOST)")
            self._pump(None, 0.5)

    def _one_round(self, rnd: int) -> None:
        lr = self.cfg.round_lr(rnd)
        probe = probe_config(self.cfg)
        for attempt in range(self.s.max_attempts):
            self._wait_for_devices()
            chosen = sample_devices(self.eligible(), self.s.devices_per_round, self.cfg.seed, rnd, attempt)
            tasks = [self.task_of(d) for d in chosen]
            assign = m.Assign(v=m.PROTOCOL_VERSION, run=self.s.run, round=rnd, attempt=attempt, lr=lr,
                              timeout_s=self.s.policy.timeout_s, tasks=tasks)
            payload = m.encode(assign)
            collector = RoundCollector(self.s.run, self.cfg.seed, rnd, attempt, tasks, probe, self.s.policy,
                                       time.monotonic(), fingerprint=self.fingerprint)
            self.link.publish(self.topics.round, payload, retain=True)
            self._assign_payload = payload
            while not collector.should_close(time.monotonic()):
                self._pump(collector, 0.2)
            if collector.answers:
                self._close(rnd, lr, collector, len(payload))
                return
            self.say(f"round {rnd}: no device answered within {self.s.policy.timeout_s:.0f} s; re-opening it")
        raise EdgezoError(f"round {rnd} got no answer in {self.s.max_attempts} attempts; are the devices running?")

    def _close(self, rnd: int, lr: float, collector: RoundCollector, assign_bytes: int) -> None:
        update = collector.update(lr)
        self.ex.apply_update(update)
        self.fingerprint = self.ex.fingerprint()
        entry = LogEntry(rnd, update)
        self.state.seedlog.append(entry)  # durable before anyone hears of it
        self.entries.append(entry)
        self.round = rnd
        message = self._update_message(entry, self.fingerprint)
        payload = m.encode(message)
        self.link.publish(self.topics.update, payload)
        self._checkpoint()
        announce_bytes = self.announce()
        answers = list(collector.answers.values())
        bytes_up = sum(a.payload_bytes for a in answers) / len(answers)  # measured payloads, per device
        self.totals.add_round([a.result for a in answers], bytes_up, assign_bytes + len(payload) + announce_bytes)
        loss = sum(a.result.loss for a in answers) / len(answers)
        accuracy = self.evaluate() if evaluation_due(self.cfg, rnd) else None
        self.on_record(self._record(rnd, loss, accuracy, len(answers), len(collector.tasks)))

    def _record(self, rnd, loss, accuracy, answered, assigned) -> RoundRecord:
        return self.totals.record(rnd, self.cfg.method, loss, accuracy, round(time.perf_counter() - self.started, 3),
                                  answered, assigned, self.fingerprint)
