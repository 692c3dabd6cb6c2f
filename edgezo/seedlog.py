"""The seed log: the global model is always ``base weights + replay(seed log)``.

One JSON line per round, appended and fsync'd, holding the round's update as
``[run_seed, round, step, block, i, j, stream, coefficient]`` rows. Coefficients are written with
Python's shortest round-trip float repr, so replay applies exactly the coefficients the
coordinator applied. A torn last line (a crash mid-write) is detected and ignored on read.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from edgezo.errors import EdgezoError
from edgezo.executor import Executor
from edgezo.keys import Direction


@dataclass(frozen=True)
class LogEntry:
    round: int
    update: list[tuple[Direction, float]]


def encode_entry(entry: LogEntry) -> str:
    rows = [[*d.fields(), c] for d, c in entry.update]
    return json.dumps({"round": entry.round, "update": rows}, separators=(",", ":"))


def decode_entry(line: str) -> LogEntry:
    obj = json.loads(line)
    return LogEntry(int(obj["round"]), [(Direction(*map(int, row[:7])), float(row[7])) for row in obj["update"]])


class SeedLog:
    """Append-only file of rounds; ``append`` returns only once the line is on disk."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def append(self, entry: LogEntry) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(encode_entry(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def entries(self) -> Iterator[LogEntry]:
        if not self.path.exists():
            return
        with open(self.path, encoding="utf-8") as f:
            lines = f.readlines()
        for number, line in enumerate(lines, 1):
            if not line.endswith("\n"):
                return  # torn final write: that round never completed
            try:
                yield decode_entry(line)
            except (ValueError, KeyError, TypeError, IndexError) as e:
                raise EdgezoError(f"seed log {self.path} is corrupt at line {number} ({e}); restore it from a backup") from e


def replay(ex: Executor, entries: Iterator[LogEntry] | list[LogEntry]) -> int:
    """Apply logged updates in order onto the executor's weights; returns the rounds applied."""
    n = 0
    for entry in entries:
        ex.apply_update(entry.update)
        n += 1
    return n
