"""N virtual devices in one process: the federated loop without a network.

Every device works on a replica of the model (devices on the same executor share it): it starts
each round from the global weights (a snapshot of the trainable parameters), runs its K local
steps, and reports its scalars. The global update is then applied to every replica with the same
code a real device and the seed-log replay use, so the simulated global model is exactly
``base + replay(seed log)``.

The loop holds the algorithm only, as a training loop in mlx-lm's tuner does: the job's settings
come as a ``JobConfig``, batching with each ``SimulatedDevice``, evaluation and reporting as
callables; ``edgezo.commands.simulate`` does the I/O. Each method's own part (its step, its
aggregation, its bytes) is the method's (``edgezo.methods``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from edgezo.aggregate import Aggregation, to_wire_precision
from edgezo.config import JobConfig, job_work, probe_config
from edgezo.costmodel import Work
from edgezo.engine import RoundRecord, Totals, apply_reviewed, device_batch_indices, evaluation_due, log_review, simulated_bytes
from edgezo.errors import EdgezoError
from edgezo.estimators import LocalRound
from edgezo.methods import method_of
from edgezo.seedlog import LogEntry, replay


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
    sends: Callable[[dict], dict] | None = None  # what it sends instead of its scalars (tests: a hostile device)


@dataclass
class Resume:
    """Where a stopped simulation continues: the seed log's entries of its completed rounds
    (replayed onto every replica: the global model is base + replay) and the metrics record of
    the last of them (the totals and the clocks continue from it). The rounds after it run as
    they would have, so the resumed job ends on the uninterrupted job's model."""

    entries: list[LogEntry]
    last: dict


def _ignore(*args) -> None:
    pass


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
    engine: Any = None,
) -> list[RoundRecord]:
    """Run the job's rounds; returns every round's record (round 0: before training).

    ``primary`` is the executor whose replica ``evaluate()`` measures and whose fingerprint the
    records carry; every distinct executor of ``devices`` holds a replica of the global model
    too and gets every global update, as a real device would. ``on_round`` receives each record
    and the seed-log entry of the round (None for a method without a seed log); ``on_device``
    is called after each device's round (a progress bar). A ``clock`` leaves out the devices
    that miss its deadline and times the rounds. With ``resume``, the job continues after the
    resumed rounds (and returns the records of the rounds it ran). An ``engine``
    (``edgezo.engines``) computes the devices' rounds elsewhere (``round``) and is told each
    global update (``follow``); the aggregation, the records and the seed log stay here.
    """
    method = method_of(cfg.method)
    replicas = [primary]
    for device in devices:
        if all(device.executor is not seen for seen in replicas):
            replicas.append(device.executor)
    if clock is not None and not any(clock.included(d) for d in range(len(devices))):
        raise EdgezoError(f"no device can answer a round within the {clock.deadline:g} s deadline; "
                          "raise --round-seconds, or plan each device's work with --plan")
    if method.backprop and len(replicas) > 1:
        raise EdgezoError(f"{cfg.method} backpropagates, which only the torch backend does: run it with --backend torch")
    works = [device.work or job_work(cfg) for device in devices]
    probes = [probe_config(cfg, w.p1, w.p2) for w in works]
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
        lr = cfg.round_lr(rnd)
        global_weights = [(replica, replica.snapshot()) for replica in replicas]
        included = [d for d in range(len(devices)) if clock is None or clock.included(d)]  # an engine computes these
        results: list[tuple[LocalRound, float]] = [] if engine is None else engine.round(rnd, lr, included, on_device)
        for index, (device, work, probe) in enumerate(zip(devices, works, probes) if engine is None else ()):
            if clock is not None and not clock.included(index):
                continue
            ex = device.executor
            ex.restore(next(w for r, w in global_weights if r is ex))
            indices = device_batch_indices(device.shard, work.batch, work.k, cfg.seed, rnd, index)
            batches = [device.make_batch(ix) for ix in indices]
            result = method.local_round(ex, batches, probe, lr, cfg.seed, rnd, method.stream(index + 1))
            result.examples = sum(b.size for b in batches)
            result.scalars = aggregation.clipped((device.sends or dict)(to_wire_precision(result.scalars)))
            results.append((result, float(result.examples)))
            on_device()
        update, review = apply_reviewed(method, global_weights, results, [f"device {d}" for d in included], lr, cfg.variant, aggregation)
        if engine is not None:  # its workers' replicas follow the global model
            engine.follow(rnd, update)
        totals.add_round([r for r, _ in results], *simulated_bytes(method, [r.scalars for r, _ in results], trainable))
        loss = float(np.mean([np.mean(r.losses) for r, _ in results]))
        accuracy = evaluate() if evaluation_due(cfg, rnd) else None
        if clock is not None:
            clock.advance()
        records.append(record(rnd, loss, accuracy, len(results)))
        if review is not None:  # the devices it cut and a refusal, in the metrics and the log
            review.annotate(records[-1])
            log_review(review, rnd)
        on_round(records[-1], None if update is None else LogEntry(rnd, update))
    return records


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
