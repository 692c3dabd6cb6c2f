"""N virtual devices in one process: the federated loop without a network.

Every device works on one shared replica of the model: it starts each round from the global
weights (a snapshot of the trainable parameters), runs its K local steps, and reports its scalars.
The global update is then applied to the global weights with the same code a real device and the
seed-log replay use, so the simulated global model is exactly ``base + replay(seed log)``.

The loop takes its batching, evaluation and output as arguments (callables), so it holds the
algorithm only; ``edgezo.commands.simulate`` does the I/O.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import numpy as np

from edgezo.aggregate import average_scalars, to_wire_precision
from edgezo.costmodel import Work
from edgezo.errors import EdgezoError
from edgezo.estimators import LocalRound, ProbeConfig, local_round, update_rule
from edgezo.keys import Direction
from edgezo.seedlog import LogEntry

MESSAGE_HEADER_BYTES = 32  # run id, round, device, counts: the fixed part of a message
FLOAT_BYTES = 4


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


@dataclass
class Totals:
    forwards1: int = 0
    forwards2: int = 0
    flops: float = 0.0
    bytes_up: float = 0.0
    bytes_down: float = 0.0


def device_batch_indices(shard: Sequence[int], batch_size: int, steps: int, seed: int, rnd: int, device: int) -> list[list[int]]:
    """The examples a device uses in a round: deterministic in (seed, round, device), so a real
    device given the same shard draws the same batches as its simulated twin."""
    rng = np.random.default_rng([seed, rnd, device])
    size = min(batch_size, len(shard))
    return [[shard[k] for k in rng.choice(len(shard), size=size, replace=False)] for _ in range(steps)]


def global_update(method: str, rounds: Sequence[tuple[LocalRound, float]], lr: float, variant: str) -> list[tuple[Direction, float]]:
    """The round's update from every device's scalars.

    Shared-seed methods average scalars per direction first (K*P1*P2 directions whatever the number
    of devices). FedZO uses per-device seeds: its global update is the weighted mean of the devices'
    own updates, i.e. the union of their directions with coefficients scaled by each device's weight.
    """
    if method != "fedzo":
        return update_rule(average_scalars((r.scalars, w) for r, w in rounds), lr, variant)
    total = sum(w for _, w in rounds)
    out = []
    for r, w in rounds:
        out += [(d, c * w / total) for d, c in update_rule(r.scalars, lr, variant)]
    return sorted(out)


def bytes_per_device(method: str, scalars_up: float, scalars_down: int, trainable: int) -> tuple[float, float]:
    """Payload bytes one device sends and receives in a round (up, down): its scalars up, the
    round's averaged scalars down (it regenerates the directions from the seeds); FedZO and FedAvg
    move full float32 model deltas both ways."""
    if method in ("fedzo", "fedavg"):
        full = MESSAGE_HEADER_BYTES + FLOAT_BYTES * trainable
        return full, full
    return (MESSAGE_HEADER_BYTES + FLOAT_BYTES * scalars_up, MESSAGE_HEADER_BYTES + FLOAT_BYTES * scalars_down)


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
class Simulation:
    """The federated loop. ``make_batch(indices)`` builds an executor batch from training
    examples; ``evaluate()`` returns the global model's accuracy; ``on_round`` receives each
    RoundRecord and the log entry (for output). ``works`` gives each device its own K, P1, P2
    and batch (planned from its profile); without it every device does the job's.
    ``device_executors`` (with ``device_batchers``) gives devices different backends: devices
    sharing an executor share its replica, and every replica applies each global update."""

    executor: Any
    shards: Sequence[Sequence[int]]
    make_batch: Callable[[list[int]], Any]
    evaluate: Callable[[], float]
    method: str
    rounds: int
    local_steps: int
    lr: float | Callable[[int], float]  # a rate, or the rate of each round (1-based)
    probe: ProbeConfig | None
    batch_size: int
    seed: int
    eval_every: int = 0
    on_round: Callable[[RoundRecord, LogEntry | None], None] = lambda record, entry: None
    on_device: Callable[[], None] = lambda: None
    totals: Totals = field(default_factory=Totals)
    works: Sequence[Work] | None = None
    clock: SimulatedClock | None = None
    device_executors: Sequence[Any] | None = None  # a mixed-backend job: each device's executor
    device_batchers: Sequence[Callable[[list[int]], Any]] | None = None  # and its make_batch

    def _replicas(self) -> list[Any]:
        """Every distinct executor, ``executor`` (evaluation, fingerprints) first. Each holds a
        replica of the global model and gets every global update, as a real device would."""
        out = [self.executor]
        for ex in self.device_executors or ():
            if all(ex is not seen for seen in out):
                out.append(ex)
        return out

    def _device(self, device: int) -> tuple[Any, Callable[[list[int]], Any]]:
        if self.device_executors is None:
            return self.executor, self.make_batch
        return self.device_executors[device], self.device_batchers[device]

    def _work(self, device: int) -> tuple[int, int, ProbeConfig | None]:
        """(K, batch, probe) of a device."""
        if self.works is None:
            return self.local_steps, self.batch_size, self.probe
        w = self.works[device]
        probe = None if self.probe is None else replace(self.probe, p1=w.p1, p2=w.p2 if self.probe.method == "spzo" else 1)
        return w.k, w.batch, probe

    def run(self) -> list[RoundRecord]:
        ex = self.executor
        if self.clock is not None and not any(self.clock.included(d) for d in range(len(self.shards))):
            raise EdgezoError(f"no device can answer a round within the {self.clock.deadline:g} s deadline; "
                              "raise --round-seconds, or plan each device's work with --plan")
        if self.method == "fedavg" and len(self._replicas()) > 1:
            raise EdgezoError("fedavg backpropagates, which only the torch backend does: run it with --backend torch")
        t0 = time.perf_counter()
        records = [self._record(0, None, self.evaluate(), t0, 0)]
        self.on_round(records[0], None)
        trainable = ex.trainable_numel(1) + ex.trainable_numel(2)
        for rnd in range(1, self.rounds + 1):
            lr = self.lr(rnd) if callable(self.lr) else self.lr
            global_weights = [(replica, replica.snapshot()) for replica in self._replicas()]
            results: list[tuple[LocalRound, float]] = []
            for device, shard in enumerate(self.shards):
                if self.clock is not None and not self.clock.included(device):
                    continue
                dex, make_batch = self._device(device)
                dex.restore(next(w for r, w in global_weights if r is dex))
                k, batch_size, probe = self._work(device)
                batches = [make_batch(ix) for ix in device_batch_indices(shard, batch_size, k, self.seed, rnd, device)]
                if self.method == "fedavg":
                    result = self._fedavg_local(batches, lr)
                else:
                    stream = device + 1 if self.method == "fedzo" else 0
                    result = local_round(dex, batches, probe, lr, self.seed, rnd, stream)
                result.examples = sum(b.size for b in batches)
                result.scalars = to_wire_precision(result.scalars)
                results.append((result, float(result.examples)))
                self.on_device()
            entry = self._apply_global(rnd, global_weights, results, trainable, lr)
            loss = float(np.mean([np.mean(r.losses) for r, _ in results]))
            acc = self.evaluate() if (rnd == self.rounds or (self.eval_every and rnd % self.eval_every == 0)) else None
            if self.clock is not None:
                self.clock.advance()
            record = self._record(rnd, loss, acc, t0, len(results))
            records.append(record)
            self.on_round(record, entry)
        return records

    def _apply_global(self, rnd, global_weights, results, trainable, lr) -> LogEntry | None:
        ex = self.executor
        n = len(results)
        if self.method == "fedavg":
            deltas = [(r.deltas, w) for r, w in results]
            ex.restore(global_weights[0][1])
            total = sum(w for _, w in deltas)
            for delta, w in deltas:
                ex.add_to_trainable(delta, w / total)
            up, down = bytes_per_device("fedavg", 0, 0, trainable)
            entry = None
        else:
            update = global_update(self.method, results, lr, self.probe.variant)
            for replica, weights in global_weights:
                replica.restore(weights)
                replica.apply_update(update)
            scalars_up = sum(len(r.scalars) for r, _ in results) / n
            scalars_down = len(set().union(*(r.scalars for r, _ in results)))  # the averaged scalars
            up, down = bytes_per_device(self.method, scalars_up, scalars_down, trainable)
            entry = LogEntry(rnd, update)
        t = self.totals
        t.forwards1 += sum(r.forwards1 for r, _ in results)
        t.forwards2 += sum(r.forwards2 for r, _ in results)
        t.flops += sum(r.flops for r, _ in results)
        t.bytes_up += up
        t.bytes_down += down
        return entry

    def _fedavg_local(self, batches, lr: float) -> LocalRound:
        """K steps of SGD with backpropagation on this device's replica (first-order reference)."""
        ex = self.executor
        start = ex.snapshot()
        out = LocalRound()
        for batch in batches:
            loss, grads = ex.loss_and_grad(batch)
            ex.add_to_trainable(grads, -lr)
            f1, f2 = ex.forward_flops(batch)
            out.losses.append(loss)
            out.forwards1 += 1
            out.forwards2 += 1
            out.flops += 3 * (f1 + f2)  # forward + backward ~ 3 forwards
        end = ex.snapshot()
        out.deltas = {n: end[n] - start[n] for n in end}
        return out

    def _record(self, rnd, loss, acc, t0, devices) -> RoundRecord:
        t = self.totals
        return RoundRecord(
            round=rnd,
            method=self.method,
            train_loss=loss,
            eval_accuracy=acc,
            forwards_block1=t.forwards1,
            forwards_block2=t.forwards2,
            flops=t.flops,
            bytes_up=t.bytes_up,
            bytes_down=t.bytes_down,
            wall_s=round(time.perf_counter() - t0, 3),
            devices=devices,
            assigned=len(self.shards),
            fingerprint=self.executor.fingerprint(),
            sim_time_s=None if self.clock is None else round(self.clock.now, 3),
        )

