"""The coordinator's log and checkpoint service: the global model's history and everything
served from it.

It owns the seed log (``round``, ``fingerprint`` and the entries: the global model is base +
replay of them), appends each closed round durably before anyone hears of it, answers devices'
catch-up requests in bounded chunks (each entry with the fingerprint after it, so a replaying
device verifies every step), writes the periodic checkpoint, runs the checkpoint HTTP server and
publishes the retained announcement (with the trainable layout a device checks itself against).
"""

from __future__ import annotations

import logging

from edgezo.config import JobConfig
from edgezo.seedlog import LogEntry, replay

from edgezo.coordinator.wire import messages as m
from edgezo.coordinator.server.checkpoint_server import CheckpointServer
from edgezo.coordinator.wire.checkpoint_format import latest_checkpoint, write_checkpoint
from edgezo.coordinator.server.state import StateFolder, shared_job
from edgezo.coordinator.wire.topics import Topics
from edgezo.coordinator.wire.trainables import announced_trainables

log = logging.getLogger("edgezo.coordinator")


class LogService:
    def __init__(self, cfg: JobConfig, run: str, state: StateFolder, link, topics: Topics, ex, model: m.ModelRef,
                 log_chunk: int, checkpoint_every: int):
        self.cfg, self.run, self.state, self.link, self.topics = cfg, run, state, link, topics
        self.ex, self.model, self.log_chunk, self.checkpoint_every = ex, model, log_chunk, checkpoint_every
        self.entries = state.entries()  # the hash chain is checked here
        self.round = replay(ex, self.entries, verify=True)  # and every logged fingerprint
        self.fingerprint = ex.fingerprint()  # of the global model; recomputed only when it changes
        self.trainable = announced_trainables(ex)
        self.onnx_sha256 = ""  # the browser devices' ONNX export (coordinate --web-port), announced when set
        self.http: CheckpointServer | None = None

    # -- the log ------------------------------------------------------------------------------
    def append(self, entry: LogEntry) -> LogEntry:
        """Make a closed round durable (fsync'd) and the new global model's round; the executor
        already holds the updated weights and ``entry.fingerprint`` is theirs."""
        entry = self.state.seedlog.append(entry) or entry  # (a timing wrapper may return nothing)
        self.entries.append(entry)
        self.round, self.fingerprint = entry.round, entry.fingerprint
        return entry

    def update_message(self, entry: LogEntry) -> m.Update:
        return m.Update(v=m.PROTOCOL_VERSION, run=self.run, round=entry.round, run_seed=self.cfg.seed,
                        rows=m.pack_update(entry.update), fingerprint=entry.fingerprint)

    def publish_update(self, entry: LogEntry) -> int:
        payload = m.encode(self.update_message(entry))
        self.link.publish(self.topics.update, payload)
        return len(payload)

    def serve(self, device: str, req: m.LogRequest) -> None:
        """Answer a catch-up request with at most ``log_chunk`` entries, under the payload limit."""
        first, last = max(1, req.first), min(req.last, self.round)
        updates, size = [], 0
        for entry in self.entries[first - 1 : last][: self.log_chunk]:
            update = self.update_message(entry)
            size += len(update.rows) + 160
            if updates and size > m.MAX_PAYLOAD_BYTES // 2:
                break  # stay well under the payload limit: the device asks again for the rest
            updates.append(update)
        reply = m.LogChunk(v=m.PROTOCOL_VERSION, run=self.run, device=device, entries=updates, last=self.round)
        self.link.publish(self.topics.log(device), m.encode(reply))

    # -- checkpoints and the announcement ------------------------------------------------------
    def start_http(self, host: str, port: int, advertise_host: str | None) -> None:
        self.http = CheckpointServer(self.state.checkpoints, host, port, advertise_host).start()

    def stop_http(self) -> None:
        if self.http is not None:
            self.http.stop()

    def checkpoint_if_due(self) -> None:
        if self.checkpoint_every and self.round % self.checkpoint_every == 0:
            ck = latest_checkpoint(self.state.checkpoints)
            if ck is None or ck.round != self.round:  # a resumed round may have written it already
                write_checkpoint(self.state.checkpoints, self.round, self.ex.trainable_arrays(), self.fingerprint)

    def announce(self, state: str = "running") -> int:
        """Publish the retained announcement; returns its size (devices receive it every round)."""
        ck = latest_checkpoint(self.state.checkpoints)
        msg = m.Announce(
            v=m.PROTOCOL_VERSION, run=self.run, state=state, model=self.model, job=shared_job(self.cfg),
            split=self.ex.split, round=self.round, rounds=self.cfg.rounds, fingerprint=self.fingerprint,
            log_chunk=self.log_chunk, checkpoint_url=self.http.url if (self.http and ck) else "",
            checkpoint_round=ck.round if ck else 0, trainable=self.trainable, onnx_sha256=self.onnx_sha256 or m.UNSET,
        )
        payload = m.encode(msg)
        self.link.publish(self.topics.announce, payload, retain=True)
        return len(payload)
