"""The round engine: what a federated round is, whoever runs it (``edgezo.simulation`` in one
process, ``edgezo.coordinator`` over MQTT), so both count, batch and record it the same way.

A device's batches are a function of (run seed, round, device), the round's record carries the
cumulative totals of every device's work, and a simulated device's bytes are those its messages
would carry. The aggregation rules are ``edgezo.aggregate``'s, the update each method's
(``edgezo.methods``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, Sequence

import numpy as np

from edgezo.keys import Direction

if TYPE_CHECKING:  # pragma: no cover
    from edgezo.config import JobConfig
    from edgezo.methods.base import Method


@dataclass
class RoundRecord:
    """One line of metrics.jsonl."""

    round: int
    method: str
    train_loss: float | None
    eval_accuracy: float | None
    forwards_block1: int
    forwards_block2: int
    flops: float
    bytes_up: float
    bytes_down: float
    wall_s: float
    devices: int = 0  # devices whose results made the round
    assigned: int = 0  # devices asked (over MQTT some may miss the deadline)
    fingerprint: str = ""  # of the global model after this round: a replica compares against it
    sim_time_s: float | None = None  # simulated wall clock of heterogeneous devices (from their profiles)

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if not (v is None and k in ("eval_accuracy", "sim_time_s"))}


class DeviceWork(Protocol):
    """What a device reports it spent on a round (a ``LocalRound``, or a ``Result`` message)."""

    forwards1: int
    forwards2: int
    flops: float


@dataclass
class Totals:
    """Cumulative counters of a job: every device's forwards and FLOPs, one device's bytes."""

    forwards1: int = 0
    forwards2: int = 0
    flops: float = 0.0
    bytes_up: float = 0.0
    bytes_down: float = 0.0

    @classmethod
    def from_record(cls, record: dict) -> "Totals":
        """The totals a recorded round (a metrics.jsonl row) ended on: a resumed job continues them."""
        return cls(record.get("forwards_block1", 0), record.get("forwards_block2", 0), record.get("flops", 0.0),
                   record.get("bytes_up", 0.0), record.get("bytes_down", 0.0))

    def add_round(self, work: Sequence[DeviceWork], bytes_up: float, bytes_down: float) -> None:
        """Add a round: the work of the devices that made it, and one device's bytes."""
        self.forwards1 += sum(w.forwards1 for w in work)
        self.forwards2 += sum(w.forwards2 for w in work)
        self.flops += sum(w.flops for w in work)
        self.bytes_up += bytes_up
        self.bytes_down += bytes_down

    def record(self, rnd: int, method: str, loss: float | None, accuracy: float | None, wall_s: float, devices: int,
               assigned: int, fingerprint: str, sim_time_s: float | None = None) -> RoundRecord:
        """The record of round ``rnd``, with the totals so far."""
        return RoundRecord(
            round=rnd, method=method, train_loss=loss, eval_accuracy=accuracy,
            forwards_block1=self.forwards1, forwards_block2=self.forwards2, flops=self.flops,
            bytes_up=self.bytes_up, bytes_down=self.bytes_down, wall_s=wall_s,
            devices=devices, assigned=assigned, fingerprint=fingerprint, sim_time_s=sim_time_s,
        )


def device_batch_indices(shard: Sequence[int], batch_size: int, steps: int, seed: int, rnd: int, device: int) -> list[list[int]]:
    """The examples a device uses in a round: deterministic in (seed, round, device), so a real
    device given the same shard draws the same batches as its simulated twin."""
    rng = np.random.default_rng([seed, rnd, device])
    size = min(batch_size, len(shard))
    return [[shard[k] for k in rng.choice(len(shard), size=size, replace=False)] for _ in range(steps)]


def evaluation_due(cfg: JobConfig, rnd: int) -> bool:
    """Whether the global model is evaluated after round ``rnd``: every ``eval_every`` rounds and
    after the last (round 0, before training, always is)."""
    return rnd == cfg.rounds or bool(cfg.eval_every and rnd % cfg.eval_every == 0)


def simulated_bytes(method: Method, scalars: Sequence[dict[Direction, float]], trainable: int) -> tuple[float, float]:
    """Payload bytes one device sends and receives in a simulated round (up, down), from the
    devices' scalars: the mean number a device sends, and the directions of the averaged round."""
    up = sum(len(s) for s in scalars) / len(scalars)
    down = len(set().union(*scalars))
    return method.bytes_per_device(up, down, trainable)
