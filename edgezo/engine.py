"""The round engine: what a federated round is, whoever runs it (``edgezo.simulation`` in one
process, ``edgezo.coordinator`` over MQTT), so both count, batch and record it the same way.

A device's batches are a function of (run seed, round, device), the round's record carries the
cumulative totals of every device's work, and a simulated device's bytes are those its messages
would carry. The aggregation rules are ``edgezo.aggregate``'s, the update each method's
(``edgezo.methods``). Before a round's update is applied (and appended to the seed log), both
check it with ``review_round``: the devices the screening cut, and a refusal of an update that
would break the model (``check_update``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence

import numpy as np

from edgezo.aggregate import to_wire_precision
from edgezo.estimators import LocalRound, ProbeConfig
from edgezo.keys import Direction

if TYPE_CHECKING:  # pragma: no cover
    from edgezo.aggregate import Aggregation
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
    cut: dict[str, str] | None = None  # devices whose scalars were left out (some or all), and why
    refused: str | None = None  # why the round's update was refused (the model did not move)

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if not (v is None and k in OPTIONAL_FIELDS)}


OPTIONAL_FIELDS = ("eval_accuracy", "sim_time_s", "cut", "refused")  # left out of a metrics row when None


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


@dataclass(frozen=True)
class DeviceTurn:
    """What one device does in one round, whoever runs it (``edgezo.simulation``, a Ray actor,
    ``coordinator.device``): ``index`` picks its batches (``device_batch_indices``), ``position``
    (1-based, among the round's devices) its direction stream (``Method.stream``), ``steps`` and
    ``batch`` its local steps and batch size, ``probe`` how it probes the loss (None: a method
    that backpropagates)."""

    index: int
    position: int
    steps: int
    batch: int
    probe: ProbeConfig | None

    def directions(self, method: Method, run_seed: int, rnd: int) -> list[Direction]:
        """The directions this turn owes scalars for, sorted: the order a device sends them in."""
        return method.directions(self.probe, run_seed, rnd, self.steps, method.stream(self.position))


def device_round(method: Method, ex: Any, make_batch: Callable[[list[int]], Any], shard: Sequence[int], turn: DeviceTurn,
                 run_seed: int, rnd: int, lr: float) -> LocalRound:
    """One device's round on a replica that holds the round's starting weights: its batches, the
    method's local steps on its stream, and its scalars as it sends them (float32).

    Why one function: the simulation, the Ray actors and a real device must end on the same model
    bit for bit, so the batches, the stream and the rounding are decided here only. The replica is
    left where the local steps took it: the caller restores the round's start."""
    indices = device_batch_indices(shard, turn.batch, turn.steps, run_seed, rnd, turn.index)
    batches = [make_batch(ix) for ix in indices]
    result = method.local_round(ex, batches, turn.probe, lr, run_seed, rnd, method.stream(turn.position))
    result.examples = sum(b.size for b in batches)
    result.scalars = to_wire_precision(result.scalars)
    return result


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


# An update is refused when it could move one weight by more than MAX_STEP_GAIN times the
# learning rate per local step. The bound is on the sum of |coefficient| (with Rademacher
# directions, exactly the most any single weight can move): an honest step moves a weight by
# about lr times the typical |scalar|, single digits to hundreds; 1e4 is far beyond what trains.
MAX_STEP_GAIN = 1e4


@dataclass(frozen=True)
class UpdateVerdict:
    """Whether an update may be applied, and if not, why (one line each)."""

    accepted: bool
    reasons: tuple[str, ...] = ()


def check_update(update: Sequence[tuple[Direction, float]], lr: float, max_gain: float = MAX_STEP_GAIN) -> UpdateVerdict:
    """Refuse an update with a non-finite coefficient, or whose step (the sum of |coefficient|
    per local step) exceeds ``max_gain * lr``: applied, it would break the model for good, since
    the seed log keeps it. Pure, so the coordinator and the simulation refuse the same rounds."""
    reasons = []
    coefficients = np.array([c for _, c in update], dtype=np.float64)
    bad = int((~np.isfinite(coefficients)).sum())
    if bad:
        reasons.append(f"{bad} of its {len(update)} coefficients are not finite")
    steps = len({(d.step, d.stream) for d, _ in update}) or 1
    finite = coefficients[np.isfinite(coefficients)]
    move = float(np.abs(finite).sum()) / steps if finite.size else 0.0
    limit = max_gain * abs(lr)
    if not move <= limit:
        reasons.append(f"it would move a weight by up to {move:.3g} per local step, more than {max_gain:g} x lr = {limit:.3g}")
    return UpdateVerdict(not reasons, tuple(reasons))


@dataclass
class RoundReview:
    """What became of a round's results: the update to apply and log (empty when refused), the
    devices whose scalars were left out and why (``cut``), and the refusal's reasons. ``blamed``
    are the devices whose own scalars alone would have been refused: the likely cause of a refusal."""

    update: list[tuple[Direction, float]]
    cut: dict[str, str] = field(default_factory=dict)
    refused: tuple[str, ...] = ()
    blamed: dict[str, str] = field(default_factory=dict)

    @property
    def accepted(self) -> bool:
        return not self.refused

    def offenders(self) -> dict[str, str]:
        """Every device this round found at fault, with the reason (for a ledger)."""
        return {**self.cut, **self.blamed}

    def describe(self, rnd: int) -> list[str]:
        """Log lines naming the cut and blamed devices and the refusal (none for a clean round)."""
        lines = [f"round {rnd}: {name}: {why}" for name, why in sorted(self.cut.items())]
        if self.refused:
            lines.append(f"round {rnd}: update refused, the model stays where it was: {'; '.join(self.refused)}")
            lines += [f"round {rnd}: {name}: {why}" for name, why in sorted(self.blamed.items())]
        return lines

    def named(self) -> dict[str, str]:
        """The cut devices, then the blamed ones, each in name order, with why: what a metrics row
        (and the coordinator's seed-log meta) records of the round."""
        return {**dict(sorted(self.cut.items())), **dict(sorted(self.blamed.items()))}

    def annotate(self, record: RoundRecord) -> RoundRecord:
        """Put the cut devices and the refusal into the round's record (nothing to say: the
        metrics row stays as it was)."""
        record.cut = self.named() or None
        record.refused = "; ".join(self.refused) or None
        return record


def review_round(method: Method, names: Sequence[str], contributions: Sequence[tuple[dict[Direction, float], float]],
                 lr: float, variant: str, aggregation: Aggregation, max_gain: float = MAX_STEP_GAIN) -> RoundReview:
    """The round's update by the method's aggregation (which leaves out-of-bound scalars out),
    the devices the screening cut, and ``check_update``'s verdict on the result. A refused round's
    update is empty; the devices to blame are those whose scalars alone would be refused.

    ``names[k]`` names the device of ``contributions[k]``; both in a fixed order (device order), so
    the review does not depend on the order results arrived in."""
    screening = aggregation.screen(contributions)  # once a round: the update below is combined from it
    cut = {names[k]: why for k, why in screening.outliers.items()}
    update = method.aggregate(contributions, lr, variant, aggregation, screening)
    verdict = check_update(update, lr, max_gain)
    if verdict.accepted:
        return RoundReview(update, cut)
    blamed = {}
    for name, (scalars, w) in zip(names, contributions):
        alone = check_update(method.aggregate([(scalars, w)], lr, variant, aggregation), lr, max_gain)
        if not alone.accepted and name not in cut:
            blamed[name] = "its scalars alone would be refused: " + "; ".join(alone.reasons)
    return RoundReview([], cut, verdict.reasons, blamed)


def apply_reviewed(method: Method, replicas: Sequence[tuple], results: Sequence[tuple], names: Sequence[str], lr: float,
                   variant: str, aggregation: Aggregation) -> tuple[list | None, RoundReview | None]:
    """A simulated round's close: ``review_round`` on the devices' results (``names[k]`` names
    ``results[k]``), then every replica put back where the round started and moved by the
    reviewed update (empty when refused: the seed-log entry is empty too). Returns the update
    (None for a method without a seed log: a first-order method's ``apply_round`` moves the
    replica itself) and the review (None: nothing reviewed)."""
    if method.backprop:
        return method.apply_round(replicas, results, lr, variant, aggregation), None
    review = review_round(method, names, [(r.scalars, w) for r, w in results], lr, variant, aggregation)
    for replica, weights in replicas:
        replica.restore(weights)
        if review.update:
            replica.apply_update(review.update)
    return review.update, review


def log_review(review: RoundReview | None, rnd: int) -> None:
    """Warn (logger ``edgezo``) of the devices a round cut or blamed and of a refusal."""
    import logging

    for line in review.describe(rnd) if review is not None else ():
        logging.getLogger("edgezo").warning(line)
