"""A device in a federated job: keeps a replica of the global model, answers assignments with
scalars, and applies each round's update.

The replica is base + seed-log entries 1..``replica_round``. A device that is behind (it joined
late, or missed rounds while offline) catches up before working: it replays the entries it lacks,
fetched over MQTT in bounded chunks, or, when replay would cost more than a download, loads the
coordinator's hash-checked checkpoint over HTTP and replays only what follows it.

A device that leaves for any reason (the job ended, NaN loss, a diverged replica, a failed
catch-up, any exception) publishes its offline status and disconnects, so the coordinator stops
assigning it at once instead of waiting out deadlines. A device refuses to work when its trainable
tensors differ from the announced ones, when another process is online under its device id, and
says the job is over (exit 0) when it wakes after the job ended.

In a signed job (its announcement is signed) the device's link signs everything it publishes and
may check the coordinator's key (``signed_link.SignedLink``); a device without a key, or whose key
the coordinator refuses (a ``Refused`` naming it), ends with an error saying how to get enrolled.

All work runs on the caller's thread; the MQTT network thread only queues messages.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from edgezo.config import JobConfig, config_keys, probe_config
from edgezo.engine import DeviceTurn, device_round
from edgezo.errors import EdgezoError
from edgezo.jobdata import device_shards, load_job_data, make_batcher
from edgezo.keys import fnv1a64

from edgezo.coordinator.wire import messages as m
from edgezo.coordinator.device.catchup_cost import checkpoint_worth_it
from edgezo.coordinator.device.checkpoint_client import download_checkpoint
from edgezo.coordinator.wire.link import Link
from edgezo.coordinator.wire.topics import ROOT, Topics
from edgezo.coordinator.wire.trainables import announced_trainables

log = logging.getLogger("edgezo.device")
CATCH_UP_MODES = ("auto", "replay", "checkpoint")


@dataclass
class DeviceSettings:
    device_id: str
    run: str | None = None  # None: the one job announced on the broker
    model: str | None = None  # local copy of the announced model (None: the default model)
    data: str | None = None
    shard: tuple[int, int] | None = None  # (i, N): hold simulated device i's examples of N
    train_samples: int | None = None
    stay: bool = False  # after the job finishes, wait for the next one
    catch_up: str = "auto"  # auto, replay or checkpoint
    cache: Path = Path.home() / ".cache" / "edgezo" / "checkpoints"
    announce_timeout: float = 60.0
    log_timeout: float = 30.0
    profile: dict = field(default_factory=dict)  # this device's profile (Profile.to_dict()), sent in its status; {}: none
    memory_gb: float = 0.0  # memory budget for training sent with it (0: the profile's memory_available_gb)
    id_check_s: float = 1.0  # how long to wait for the retained status of this id (is it already online?)
    instance: str = ""  # this process's instance (the last will names it too); "": a random one


class DuplicateDevice(EdgezoError):
    """Another process is online under this device id."""


def find_job(link: Link, run: str | None, timeout: float, stay: bool = False, signers: dict | None = None) -> m.Announce:
    """The running job announced on the broker (the named one, or the only one); without ``stay``,
    the finished one when that is all there is (its ``state`` says so). ``signers`` gets, per run,
    the key that signed its announcement (None: unsigned; a signed announcement means a signed job)."""
    pattern = f"{ROOT}/{run}/announce" if run else f"{ROOT}/+/announce"
    link.subscribe(pattern)
    deadline = time.monotonic() + timeout
    seen: dict[str, m.Announce] = {}
    finished: dict[str, m.Announce] = {}
    while time.monotonic() < deadline:
        msg = link.get(0.5)
        if msg is None:
            if seen or (run and finished):
                break  # retained announcements arrive together, right after subscribing
            continue
        if not msg.topic.endswith("/announce") or not msg.payload:
            continue
        try:
            ann = m.decode(msg.payload, m.Announce)
        except m.BadMessage as e:
            log.warning("ignoring bad announcement on %s: %s", msg.topic, e)
            continue
        if signers is not None:
            signers[ann.run] = getattr(msg, "signer", None)
        if ann.state == "running":
            seen[ann.run] = ann
        elif not stay and (run is None or ann.run == run):
            finished[ann.run] = ann
    if not seen and len(finished) == 1:
        return next(iter(finished.values()))  # the job is over: the caller says so and exits 0
    if not seen:
        where = f"job {run!r}" if run else "any job"
        ignored = getattr(link, "last_drop", "")  # a SignedLink dropped what did not come from --coordinator-key
        if ignored:
            raise EdgezoError(f"no announcement of {where} signed by the coordinator's key within {timeout:.0f} s (ignored "
                              f"{ignored}); check --coordinator-key against the line the coordinator printed")
        raise EdgezoError(f"no coordinator announced {where} on the broker within {timeout:.0f} s; start `edgezo coordinate` first (or check --run)")
    if len(seen) > 1:
        raise EdgezoError(f"the broker carries several jobs ({', '.join(sorted(seen))}); pick one with --run")
    return next(iter(seen.values()))


class Device:
    def __init__(self, settings: DeviceSettings, link: Link, build_executor: Callable, say: Callable[[str], None] = print):
        self.s, self.link, self.build_executor, self.say = settings, link, build_executor, say
        self.deferred: deque = deque()
        self.ex = None
        self.replica_round = 0
        self.announcement: m.Announce | None = None
        self.answered: dict[int, m.Result] = {}  # round -> result (a re-opened round is answered again)
        self.connections_seen = 0
        self.instance = settings.instance or secrets.token_hex(6)  # tells this process apart from another using the same id
        self.status_published = False
        self.signers: dict[str, bytes | None] = {}  # run -> the key its announcement was signed with
        key = getattr(link, "key", None)  # a SignedLink signing this device's messages
        self.key_text = key.text if key is not None else ""  # how a Refused names this device's key

    # -- setup ------------------------------------------------------------------------------
    def _wait_announcement(self) -> m.Announce:
        return find_job(self.link, self.s.run, self.s.announce_timeout, self.s.stay, self.signers)

    def _setup(self, ann: m.Announce) -> None:
        if ann.v != m.PROTOCOL_VERSION:
            raise EdgezoError(f"the coordinator speaks protocol {ann.v}, this edgezo {m.PROTOCOL_VERSION}; install the same edgezo version")
        signed = self.signers.get(ann.run) is not None
        if signed != bool(self.key_text):  # before the model loads
            raise signing_mismatch(ann.run, self.s.device_id, signed)
        known = set(config_keys())
        unknown = sorted(set(ann.job) - known)
        if unknown:  # PROTOCOL.md: a newer coordinator's keys are ignored, not fatal
            log.info("ignoring job settings this edgezo does not know (from a newer coordinator): %s", ", ".join(unknown))
        job = {k: v for k, v in ann.job.items() if k in known}
        cfg = JobConfig(**{**job, "model": self.s.model, "data": self.s.data}).validate()
        self.cfg = cfg
        self.method = cfg.resolved_method  # the announcement names the method: resolved here, once
        self.topics = Topics(ann.run)
        data = load_job_data(cfg, self.s.train_samples, need_dev=False)
        if self.s.shard:
            i, n = self.s.shard
            self.shard = device_shards(cfg, data.train, n)[i]
            self.index = i
        else:
            self.shard = list(range(len(data.train)))
            self.index = fnv1a64(self.s.device_id) % (1 << 31)
        self.ex, info = self.build_executor(cfg, data.task)
        if info.digest != ann.model.digest:
            raise EdgezoError(
                f"model mismatch: the job trains {ann.model.name} (digest {ann.model.digest[:12]}...), but this device "
                f"loaded {info.name} (digest {info.digest[:12]}...); pass --model with the same weights"
            )
        if self.ex.split != ann.split:
            raise EdgezoError(f"the job splits at layer {ann.split}, this device's executor at {self.ex.split}")
        check_trainable(ann.trainable, announced_trainables(self.ex))
        self.make_batch = make_batcher(self.ex, data.task, data.train)
        self.replica_round = 0
        self.say(f"joined job {ann.run!r} as {self.s.device_id}: {info.name}, {len(self.shard):,} local examples, round {ann.round}/{ann.rounds}")

    def leave(self) -> None:
        """Tell the coordinator this device is gone (it stops assigning work to it); once."""
        if self.status_published:
            self.status_published = False
            try:
                self._publish_status("offline")
            except Exception as e:  # leaving must not hide why we leave
                log.warning("could not publish the offline status: %s", e)

    def _publish_status(self, state: str = "online") -> None:
        online = state == "online"  # the profile rides on the online status (the coordinator plans from it)
        status = m.Status(v=m.PROTOCOL_VERSION, run=self.topics.run, device=self.s.device_id, state=state,
                          replica_round=self.replica_round, examples=len(self.shard), backend=self.ex.backend,
                          profile=self.s.profile if online else {}, memory_gb=self.s.memory_gb if online else 0.0,
                          instance=self.instance)
        self.link.publish(self.topics.status(self.s.device_id), m.encode(status), retain=True)
        if online:
            self.status_published = True

    def _check_id_free(self) -> None:
        """Refuse to go online under an id another process holds: its retained status says online
        with another instance. (A device whose power failed stays "online" until the broker's
        keepalive fires its last will, about 1.5 keepalives: retry after that.)"""
        topic = self.topics.status(self.s.device_id)
        self.link.subscribe(topic)
        deadline = time.monotonic() + self.s.id_check_s
        while time.monotonic() < deadline:
            msg = self.link.get(0.1)
            if msg is None:
                continue
            if msg.topic != topic:
                self.deferred.append(msg)
                continue
            if not msg.payload:
                continue
            try:
                status = m.decode(msg.payload, m.Status)
            except m.BadMessage:
                continue
            if status.state == "online" and status.instance != self.instance:
                raise DuplicateDevice(
                    f"device id {self.s.device_id!r} is already online in job {self.topics.run!r} (another device or "
                    "process uses it); give this device its own --device-id (if that device lost power, retry in "
                    "about 90 s, when the broker has marked it offline)"
                )
            if status.state == "offline":
                return

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> int:
        """Serve jobs until the job ends (0); whatever ends it, the coordinator is told we left
        and the link is closed."""
        try:
            return self._run()
        finally:
            self.leave()
            close = getattr(self.link, "close", None)
            if close is not None:
                close()

    def _run(self) -> int:
        while True:
            ann = self._wait_announcement()
            if ann.state == "finished":
                self.say(f"job {ann.run!r} is over (it finished after round {ann.round}/{ann.rounds}); nothing to do")
                return 0
            self._setup(ann)
            t = self.topics
            self._check_id_free()
            for topic in (t.round, t.update, t.log(self.s.device_id)):
                self.link.subscribe(topic)
            self.connections_seen = getattr(self.link, "connections", 0)
            self._publish_status()
            self._handle_announce(ann)
            finished = self._serve()
            self.say(f"job {self.topics.run!r} finished: replica at round {self.replica_round}, fingerprint {self.ex.fingerprint()}")
            if finished and not self.s.stay:
                return 0
            self.leave()
            self.say("job finished; waiting for the next one (--stay)")

    def _serve(self) -> bool:
        """Handle messages until the job is announced finished."""
        while True:
            self._check_not_refused()
            if getattr(self.link, "connections", 0) != self.connections_seen:
                self.connections_seen = self.link.connections
                self._publish_status()  # our last will marked us offline while we were away
            msg = self.deferred.popleft() if self.deferred else self.link.get(1.0)
            if msg is None or not msg.payload:
                continue
            kind = self.topics.kind_of(msg.topic)
            try:
                if kind == "announce":
                    ann = m.decode(msg.payload, m.Announce)
                    if ann.run == self.topics.run and self._handle_announce(ann):
                        return True
                elif kind == "round":
                    self._handle_assign(m.decode(msg.payload, m.Assign))
                elif kind == "update":
                    self._handle_update(m.decode(msg.payload, m.Update))
                elif kind == "log":
                    self._check_refused(m.decode(msg.payload))  # a late LogChunk is dropped
            except m.BadMessage as e:
                log.warning("ignoring bad message on %s: %s", msg.topic, e)

    def _check_not_refused(self) -> None:
        """End with a clear error when the broker refused one of our publishes or subscriptions:
        with an ACL that lets a device write only under its own username, a device id other than
        the username would otherwise wait forever for rounds its results never reach."""
        why = getattr(self.link, "refusal", lambda: None)()
        if why:
            raise EdgezoError(f"the broker refused device {self.s.device_id!r}'s {why}: its ACL lets a device use only "
                              "topics named after its broker username; start `edgezo join` with --device-id equal to "
                              "--username, or fix the broker's ACL")

    def _check_refused(self, message) -> None:
        """End with the coordinator's reason when a signed job refused this device's messages (its
        key is not enrolled); a refusal naming another key (a stranger's messages) is not ours."""
        if isinstance(message, m.Refused) and message.device == self.s.device_id and message.key == self.key_text:
            key = f"its key {self.key_text}" if self.key_text else "its messages (unsigned)"
            raise EdgezoError(f"job {message.run!r} refused device {self.s.device_id!r} and {key}: {message.reason}; have the "
                              f"operator add this device's line (`edgezo keys show --device-id {self.s.device_id}`) to the "
                              "coordinator's --enrolled file, or join with the enrolled --key")

    def _handle_announce(self, ann: m.Announce) -> bool:
        self.announcement = ann
        if ann.state == "finished" and ann.round > self.replica_round:
            # Woken after the job ended (asleep, or cut off): the coordinator is gone, so is the log.
            self.say(f"job {ann.run!r} is over (it finished after round {ann.round}/{ann.rounds}) while this device "
                     f"was away; its replica stays at round {self.replica_round}")
            return True
        if ann.round > self.replica_round:
            self._catch_up(ann.round)
        return ann.state == "finished"

    def _handle_update(self, update: m.Update) -> None:
        if update.run != self.topics.run or update.round <= self.replica_round:
            return
        if update.round > self.replica_round + 1:
            self._catch_up(update.round - 1)
        self._apply(update)

    def _apply(self, update: m.Update) -> None:
        self.ex.apply_update(m.unpack_update(update))
        self.replica_round = update.round
        if update.fingerprint and self.ex.fingerprint() != update.fingerprint:
            raise EdgezoError(
                f"replica diverged at seed-log entry {update.round}: fingerprint {self.ex.fingerprint()[:12]} != the "
                f"coordinator's {update.fingerprint[:12]}; restart the device to resynchronise"
            )

    # -- work -------------------------------------------------------------------------------
    def _handle_assign(self, assign: m.Assign) -> None:
        if assign.run != self.topics.run:
            return
        task = next((t for t in assign.tasks if t.device == self.s.device_id), None)
        if task is None or assign.round <= self.replica_round:
            return
        if assign.round > self.replica_round + 1:
            self._catch_up(assign.round - 1)
        cached = self.answered.get(assign.round)
        if cached is not None and cached.attempt != assign.attempt:
            cached = None  # the task may differ in a re-opened round: redo it
        result = cached or self._work(assign, task)
        self.answered = {assign.round: result}
        self.link.publish(self.topics.result(self.s.device_id), m.encode(result))

    def _work(self, assign: m.Assign, task: m.DeviceTask) -> m.Result:
        """This device's round (``edgezo.engine.device_round``, as a simulated device's), from
        and back to the replica's global model; its scalars in the order the method lists them."""
        cfg, method = self.cfg, self.method
        position = 1 + [t.device for t in assign.tasks].index(task.device)
        turn = DeviceTurn(self.index, position, task.k, task.batch, probe_config(cfg, task.p1, task.p2))
        t0 = time.perf_counter()
        before = self.ex.snapshot()
        fingerprint = self.ex.fingerprint()
        try:
            out = device_round(method, self.ex, self.make_batch, self.shard, turn, cfg.seed, assign.round, assign.lr)
        finally:
            self.ex.restore(before)
        order = turn.directions(method, cfg.seed, assign.round)
        seconds = time.perf_counter() - t0
        loss = sum(out.losses) / len(out.losses)
        self.say(f"round {assign.round}: {len(order)} scalars (K {task.k}, P1 {task.p1}, P2 {task.p2}, batch {task.batch}) "
                 f"in {seconds:.1f} s, loss {loss:.4f}")
        return m.Result(
            v=m.PROTOCOL_VERSION, run=self.topics.run, round=assign.round, attempt=assign.attempt,
            device=self.s.device_id, scalars=m.pack_scalars([out.scalars[d] for d in order]),
            examples=out.examples, loss=loss, forwards1=out.forwards1, forwards2=out.forwards2,
            flops=out.flops, compute_s=seconds, fingerprint=fingerprint,
        )

    # -- catch-up ---------------------------------------------------------------------------
    def _catch_up(self, target: int) -> None:
        missing = target - self.replica_round
        if missing <= 0:
            return
        ann = self.announcement
        t0 = time.perf_counter()
        start, how = self.replica_round, "replay"
        if ann and ann.checkpoint_url and ann.checkpoint_round > self.replica_round and self._prefer_checkpoint(missing):
            self._load_checkpoint(ann.checkpoint_url)
            how = "checkpoint + replay"
        while self.replica_round < target:
            self._fetch_log(self.replica_round + 1, target)
        if ann and ann.round == self.replica_round and ann.fingerprint and self.ex.fingerprint() != ann.fingerprint:
            raise EdgezoError(f"replica after catching up to round {target} differs from the coordinator's global model; restart the device")
        self.say(f"caught up from round {start} to {target} by {how} in {time.perf_counter() - t0:.1f} s")
        self._publish_status()

    def _prefer_checkpoint(self, missing: int) -> bool:
        if self.s.catch_up != "auto":
            return self.s.catch_up == "checkpoint"
        cfg = self.cfg
        directions = self.method.update_directions(cfg.local_steps, cfg.p1, cfg.p2)
        return checkpoint_worth_it(missing, directions, self.ex.trainable_numel(1) + self.ex.trainable_numel(2))

    def _load_checkpoint(self, url: str) -> None:
        folder = self.s.cache / self.topics.run / self.s.device_id
        rnd, arrays, fingerprint = download_checkpoint(url, folder)
        self.ex.load_trainable(arrays)
        if self.ex.fingerprint() != fingerprint:
            raise EdgezoError(f"checkpoint of round {rnd} from {url} does not give its stated fingerprint; it is for other base weights")
        self.replica_round = rnd
        self.say(f"loaded checkpoint of round {rnd} from {url}")

    def _fetch_log(self, first: int, last: int) -> None:
        """Ask for entries first..last and apply what comes back (at most log_chunk of them)."""
        req = m.LogRequest(v=m.PROTOCOL_VERSION, run=self.topics.run, device=self.s.device_id, first=first, last=last)
        self.link.publish(self.topics.logreq(self.s.device_id), m.encode(req))
        deadline = time.monotonic() + self.s.log_timeout
        mine = self.topics.log(self.s.device_id)
        while time.monotonic() < deadline:
            msg = self.link.get(0.5)
            if msg is None:
                continue
            if msg.topic != mine:
                self.deferred.append(msg)  # handled after catching up, in order
                continue
            try:
                chunk = m.decode(msg.payload)
                self._check_refused(chunk)
                if not isinstance(chunk, m.LogChunk):
                    raise m.BadMessage(f"expected a LogChunk message, got {type(chunk).__name__}")
            except m.BadMessage as e:
                log.warning("ignoring bad log chunk: %s", e)
                continue
            applied = 0
            for update in chunk.entries:
                if update.round == self.replica_round + 1:
                    self._apply(update)
                    applied += 1
            if applied or chunk.last < first:
                if chunk.last < first:
                    raise EdgezoError(f"the coordinator has only {chunk.last} rounds, but round {first} was announced")
                return
        raise EdgezoError(f"no seed-log entries from the coordinator within {self.s.log_timeout:.0f} s (asked for rounds {first}-{last})")


def signing_mismatch(run: str, device_id: str, signed: bool) -> EdgezoError:
    """The error of a device whose signing does not match the job's (PROTOCOL.md section 14: a job
    requires signed messages exactly when its announcement is signed)."""
    if signed:
        return EdgezoError(f"job {run!r} requires signed messages, and this device has no signing key: make one with "
                           f"`edgezo keys init --device-id {device_id}`, send the line it prints to the operator (to enrol "
                           "it with coordinate --enrolled), then join again (with --key if it is not in the default place)")
    return EdgezoError(f"job {run!r} does not use signed messages, but this device joined signing them; start `edgezo join` "
                       "again (it signs only for a signed job)")


def check_trainable(announced, own) -> None:
    """The device trains the announced tensors, in the announced order and blocks, or refuses:
    otherwise every direction would be applied to other numbers (names key the perturbation)."""
    if not announced or not own:
        return  # an older coordinator, or an executor outside the shared model layer: nothing to compare
    announced = [tuple(x) for x in announced]
    own = [tuple(x) for x in own]
    if announced == own:
        return
    for k, (a, b) in enumerate(zip(announced, own)):
        if a != b:
            raise EdgezoError(
                f"trainable tensors differ from the job's at position {k}: the coordinator trains {a[0]} (block {a[1]}, "
                f"{a[2]:,} elements), this device {b[0]} (block {b[1]}, {b[2]:,} elements); use the job's model and "
                "edgezo version"
            )
    n, mine = len(announced), len(own)
    raise EdgezoError(f"the job trains {n} tensors, this device selected {mine}; use the job's model and edgezo version")
