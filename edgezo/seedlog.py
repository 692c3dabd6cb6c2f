"""The seed log: the global model is always ``base weights + replay(seed log)``.

One JSON line per round, appended and fsync'd, holding the round's update as
``[run_seed, round, step, block, i, j, stream, coefficient]`` rows. Coefficients are written with
Python's shortest round-trip float repr, so replay applies exactly the coefficients the
coordinator applied. A torn last line (a crash mid-write) is detected and ignored on read.

The log is **hash-chained** so that no edit goes unnoticed (issue 14): each line carries
``prev`` (the hash of the line before it; 64 zeros for the first) and ``hash`` (SHA-256 of the
line's own JSON without the ``hash`` key, ``prev`` included), and, where the writer knows it,
``fingerprint``: the global model's fingerprint after applying the entry. Reading checks the
chain and names the first entry that breaks it; ``replay(..., verify=True)`` also checks every
logged fingerprint, so a coefficient changed *and* re-hashed is still caught. ``meta`` holds what
the coordinator needs to rebuild the round's metrics record after a crash (durable rounds).

Logs written by an older edgezo (no ``hash`` keys) are still read: their entries are treated as
unauthenticated (a warning says so), new entries chain on from the SHA-256 of the last old line,
and an unhashed line *after* a hashed one is refused (hashes do not disappear by themselves).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from edgezo.errors import EdgezoError
from edgezo.executor import Executor
from edgezo.keys import Direction

log = logging.getLogger("edgezo.seedlog")
GENESIS = "0" * 64  # ``prev`` of the first entry


@dataclass(frozen=True)
class LogEntry:
    round: int
    update: list[tuple[Direction, float]]
    fingerprint: str = ""  # of the global model after applying this entry ("" : not recorded)
    meta: dict | None = None  # the round's record facts (coordinator), for a resume after a crash
    prev: str = ""  # hash of the previous entry (set by SeedLog.append)
    hash: str = ""  # this entry's own hash (set by SeedLog.append; "" in logs of an older edgezo)


def _body(entry: LogEntry, prev: str) -> dict:
    body: dict = {"round": entry.round, "update": [[*d.fields(), c] for d, c in entry.update]}
    if entry.fingerprint:
        body["fingerprint"] = entry.fingerprint
    if entry.meta is not None:
        body["meta"] = entry.meta
    body["prev"] = prev
    return body


def _dumps(obj: dict) -> str:
    return json.dumps(obj, separators=(",", ":"))


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def encode_entry(entry: LogEntry, prev: str = GENESIS) -> str:
    """The entry's line (without the newline), chained onto ``prev``."""
    body = _body(entry, prev)
    return _dumps({**body, "hash": _sha(_dumps(body))})


def decode_entry(line: str) -> LogEntry:
    """Parse one line; the ``hash`` is checked against the line's content, the chain by the caller."""
    obj = json.loads(line)
    update = [(Direction(*map(int, row[:7])), float(row[7])) for row in obj["update"]]
    digest = obj.get("hash", "")
    if digest:
        body = {k: v for k, v in obj.items() if k != "hash"}
        if _sha(_dumps(body)) != digest:
            raise EdgezoError(f"seed-log entry of round {obj.get('round')} does not match its hash: it was edited after it was written")
    return LogEntry(int(obj["round"]), update, str(obj.get("fingerprint", "")), obj.get("meta"), str(obj.get("prev", "")), digest)


class SeedLog:
    """Append-only, hash-chained file of rounds; ``append`` returns only once the line is on disk."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._last: str | None = None  # hash the next entry chains onto (read lazily from the file)

    def append(self, entry: LogEntry) -> LogEntry:
        """Write ``entry`` chained onto the last one; returns it with ``prev`` and ``hash`` set."""
        if self._last is None:
            self._last = GENESIS
            for e in self.entries():
                self._last = e.hash
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = encode_entry(entry, self._last)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())
        obj = json.loads(line)
        self._last = obj["hash"]
        return LogEntry(entry.round, entry.update, entry.fingerprint, entry.meta, obj["prev"], obj["hash"])

    def entries(self) -> Iterator[LogEntry]:
        """The entries in order, the hash chain checked; an entry that breaks it is one clear error."""
        if not self.path.exists():
            return
        with open(self.path, encoding="utf-8") as f:
            lines = f.readlines()
        prev, legacy = GENESIS, 0
        for number, line in enumerate(lines, 1):
            if not line.endswith("\n"):
                return  # torn final write: that round never completed
            where = f"seed log {self.path}, line {number}"
            try:
                entry = decode_entry(line)
            except EdgezoError as e:
                raise EdgezoError(f"{where}: {e}; restore the log from a backup (or start the job over)") from None
            except (ValueError, KeyError, TypeError, IndexError) as e:
                raise EdgezoError(f"{where} is corrupt ({e}); restore it from a backup") from e
            if not entry.hash:  # written by an older edgezo
                if number > legacy + 1:
                    raise EdgezoError(f"{where} (round {entry.round}) has no hash after hashed entries: the log was edited; restore it from a backup")
                legacy = number
                prev = _sha(line.rstrip("\n"))
                entry = LogEntry(entry.round, entry.update, entry.fingerprint, entry.meta, "", prev)
            elif entry.prev != prev:
                raise EdgezoError(f"{where} (round {entry.round}) does not chain onto the entry before it: an entry was "
                                  "changed, removed or reordered; restore the log from a backup")
            else:
                prev = entry.hash
            yield entry
        if legacy:
            log.warning("seed log %s: its first %d entries were written by an older edgezo without a hash chain; "
                        "they are not authenticated", self.path, legacy)


class ReplayMismatch(EdgezoError):
    """A replayed entry does not give the fingerprint logged with it."""


def replay(ex: Executor, entries: Iterator[LogEntry] | list[LogEntry], verify: bool = False) -> int:
    """Apply logged updates in order onto the executor's weights; returns the rounds applied.

    With ``verify``, every entry that carries a fingerprint is checked after it is applied."""
    n = 0
    for entry in entries:
        ex.apply_update(entry.update)
        n += 1
        if verify and entry.fingerprint:
            got = ex.fingerprint()
            if got != entry.fingerprint:
                raise ReplayMismatch(
                    f"seed-log entry of round {entry.round} gives fingerprint {got[:12]}..., but it was logged with "
                    f"{entry.fingerprint[:12]}...: the log does not belong to these base weights, or was edited; "
                    "restore it from a backup"
                )
    return n
