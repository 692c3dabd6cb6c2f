"""N virtual devices in one process: the federated loop without a network.

Every device works on a replica of the model (devices on the same executor share it): it starts
each round from the global weights (a snapshot of the trainable parameters), runs its K local
steps, and reports its scalars. The global update is then applied to every replica with the same
code a real device and the seed-log replay use, so the simulated global model is exactly
``base + replay(seed log)``.

The loop holds the algorithm only, as a training loop in mlx-lm's tuner does: the job's settings
come as a ``JobConfig``, batching with each ``SimulatedDevice``, the devices' rounds (``round_fn``),
evaluation and reporting as callables; ``edgezo.app.jobs.simulate`` does the I/O. Each method's own part (its step, its
aggregation, its bytes) is the method's (``edgezo.methods``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from edgezo.aggregate import Aggregation
from edgezo.config import JobConfig, job_work, probe_config
from edgezo.costmodel import Work
from edgezo.errors import EdgezoError
from edgezo.estimators import LocalRound
from edgezo.methods import Method
from edgezo.methods.base import Update
from edgezo.seedlog import LogEntry, replay
from edgezo.engine import (DeviceTurn, RoundRecord, Totals, apply_reviewed, device_round, evaluation_due, log_review,
                           simulated_bytes)


@dataclass
class SimulatedClock:
    """Heterogeneous devices on a simulated wall clock. ``seconds[d]`` is device d's predicted
    round time (from its profile and the cost model), ``latency[d]`` its network round trip. A
    device that cannot answer within ``deadline`` is left out (its work is not even computed);
    a round lasts until its slowest included device answers, or the whole deadline when some
    device missed it (the coordinator waits that long for it)."""

    seconds: Sequence[float]
    latency: Sequence[float]
    deadline: float | None = None
    now: float = 0.0

    def included(self, device: int) -> bool:
        return self.deadline is None or self.seconds[device] + self.latency[device] <= self.deadline

    def advance(self) -> float:
        answered = [s + lat for d, (s, lat) in enumerate(zip(self.seconds, self.latency)) if self.included(d)]
        missed = len(answered) < len(self.seconds)
        self.now += self.deadline if missed else max(answered, default=0.0)
        return self.now


@dataclass
class SimulatedDevice:
    """One virtual device: its training examples (indices), the executor whose replica it works
    on, how it makes that executor's batches from indices, and its work (its own K, P1, P2 and
    batch, planned from its profile; None: the job's)."""

    shard: Sequence[int]
    executor: Any
    make_batch: Callable[[list[int]], Any]
    work: Work | None = None


@dataclass
class Resume:
    """Where a stopped simulation continues: the seed log's entries of its completed rounds
    (replayed onto every replica: the global model is base + replay) and the metrics record of
    the last of them (the totals and the clocks continue from it). The rounds after it run as
    they would have, so the resumed job ends on the uninterrupted job's model."""

    entries: list[LogEntry]
    last: dict


@dataclass
class RoundStart:
    """What a round's devices start from: the round, its learning rate, the devices that take
    part (indices, in order) and every replica's snapshot of the global model (``weights_of``)."""

    rnd: int
    lr: float
    included: list[int]
    weights: list[tuple[Any, Any]]  # (replica, its snapshot of the round's start)

    def weights_of(self, ex: Any) -> Any:
        return next(w for replica, w in self.weights if replica is ex)


Results = list[tuple[LocalRound, float]]  # each device's round and its weight (examples), in device order
RoundFn = Callable[[RoundStart, Callable[[], None]], Results]  # (round start, on_device) -> results


def _ignore(*args) -> None:
    pass


def local_rounds(cfg: JobConfig, devices: Sequence[SimulatedDevice], method: Method) -> RoundFn:
    """The default ``round_fn``: every included device's round in this process, one after the
    other, each from the round's starting weights (``edgezo.engine.device_round``)."""
    turns = []
    for index, device in enumerate(devices):
        work = device.work or job_work(cfg)
        turns.append(DeviceTurn(index, index + 1, work.k, work.batch, probe_config(cfg, work.p1, work.p2)))

    def round_fn(start: RoundStart, on_device: Callable[[], None]) -> Results:
        results = []
        for index in start.included:
            device = devices[index]
            device.executor.restore(start.weights_of(device.executor))
            result = device_round(method, device.executor, device.make_batch, device.shard, turns[index], cfg.seed,
                                  start.rnd, start.lr)
            results.append((result, float(result.examples)))
            on_device()
        return results

    return round_fn


def run_simulation(
    cfg: JobConfig,
    devices: Sequence[SimulatedDevice],
    primary: Any,
    evaluate: Callable[[], float],
    aggregation: Aggregation = Aggregation(),
    clock: SimulatedClock | None = None,
    on_round: Callable[[RoundRecord, LogEntry | None], None] = _ignore,
    on_device: Callable[[], None] = _ignore,
    resume: Resume | None = None,
    round_fn: RoundFn | None = None,
    follow: Callable[[int, Update | None], None] = _ignore,
    method: Method | None = None,
) -> list[RoundRecord]:
    """Run the job's rounds; returns every round's record (round 0: before training).

    ``primary`` is the executor whose replica ``evaluate()`` measures and whose fingerprint the
    records carry; every distinct executor of ``devices`` holds a replica of the global model
    too and gets every global update, as a real device would. ``on_round`` receives each record
    and the seed-log entry of the round (None for a method without a seed log); ``on_device``
    is called after each device's round (a progress bar). A ``clock`` leaves out the devices
    that miss its deadline and times the rounds. With ``resume``, the job continues after the
    resumed rounds (and returns the records of the rounds it ran).

    Behaviour is passed in, as mlx-lm's trainer takes its loss and batch iterator: ``round_fn``
    computes the included devices' rounds (default ``local_rounds``: here, one after the other;
    a Ray engine's ``round``: on its actors), and ``follow`` is told each global update (the Ray
    actors' replicas follow it). The aggregation, the records and the seed log stay here. Each
    device's scalars are clipped here, on receipt, as the coordinator clips them. ``method``:
    the job's method (None: ``cfg.method``'s).
    """
    method = method or cfg.resolved_method
    replicas = _replicas(primary, devices)
    _check_runnable(cfg, method, len(devices), len(replicas), clock)
    round_fn = round_fn or local_rounds(cfg, devices, method)
    totals = Totals()
    t0 = time.perf_counter()

    def record(rnd: int, loss: float | None, accuracy: float | None, answered: int) -> RoundRecord:
        return totals.record(rnd, cfg.method, loss, accuracy, round(time.perf_counter() - t0, 3), answered, len(devices),
                             primary.fingerprint(), None if clock is None else round(clock.now, 3))

    if resume is None:
        records = [record(0, None, evaluate(), 0)]
        on_round(records[0], None)
    else:
        records = []
        totals, t0 = Totals.from_record(resume.last), t0 - resume.last.get("wall_s", 0.0)
        _continue(resume, replicas, clock)
    trainable = primary.trainable_numel(1) + primary.trainable_numel(2)
    for rnd in range(1 + (len(resume.entries) if resume else 0), cfg.rounds + 1):
        included = [d for d in range(len(devices)) if clock is None or clock.included(d)]
        start = RoundStart(rnd, cfg.round_lr(rnd), included, [(replica, replica.snapshot()) for replica in replicas])
        results = round_fn(start, on_device)
        for result, _ in results:
            result.scalars = aggregation.clipped(result.scalars)
        update, review = apply_reviewed(method, start.weights, results, [f"device {d}" for d in included], start.lr,
                                        cfg.variant, aggregation)
        follow(rnd, update)
        totals.add_round([r for r, _ in results], *simulated_bytes(method, [r.scalars for r, _ in results], trainable))
        loss = float(np.mean([np.mean(r.losses) for r, _ in results]))  # what the devices reported
        accuracy = evaluate() if evaluation_due(cfg, rnd) else None
        if clock is not None:
            clock.advance()
        records.append(record(rnd, loss, accuracy, len(results)))
        if review is not None:  # the devices it cut and a refusal, in the metrics and the log
            review.annotate(records[-1])
            log_review(review, rnd)
        on_round(records[-1], None if update is None else LogEntry(rnd, update))
    return records


def _check_runnable(cfg: JobConfig, method: Method, devices: int, replicas: int, clock: SimulatedClock | None) -> None:
    """Refuse, in one line, a job no round of which could run."""
    if clock is not None and not any(clock.included(d) for d in range(devices)):
        raise EdgezoError(f"no device can answer a round within the {clock.deadline:g} s deadline; "
                          "raise --round-seconds, or plan each device's work with --plan")
    if method.backprop and replicas > 1:
        raise EdgezoError(f"{cfg.method} backpropagates, which only the torch backend does: run it with --backend torch")


def _replicas(primary: Any, devices: Sequence[SimulatedDevice]) -> list[Any]:
    """The distinct executors of the job, ``primary`` first: each holds a replica of the global model."""
    replicas = [primary]
    for device in devices:
        if all(device.executor is not seen for seen in replicas):
            replicas.append(device.executor)
    return replicas


def _continue(resume: Resume, replicas: Sequence[Any], clock: SimulatedClock | None) -> None:
    """Bring every replica to the resumed round's global model, checked against its record."""
    done = len(resume.entries)
    if [e.round for e in resume.entries] != list(range(1, done + 1)) or resume.last.get("round") != done:
        raise EdgezoError(f"cannot resume: the seed log holds rounds {[e.round for e in resume.entries]} but the metrics "
                          f"end at round {resume.last.get('round')}; start the run again with --overwrite")
    for replica in replicas:
        replay(replica, resume.entries)
    if resume.last.get("fingerprint") and replicas[0].fingerprint() != resume.last["fingerprint"]:
        raise EdgezoError(f"cannot resume: replaying the seed log does not give round {done}'s recorded model "
                          "(another model, backend or changed files); start the run again with --overwrite")
    if clock is not None:
        clock.now = resume.last.get("sim_time_s") or 0.0
