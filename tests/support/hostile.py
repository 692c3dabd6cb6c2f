"""Hostile and broken participants for simulated jobs (test-only; no user-facing flag).

A hostile device computes its round honestly and then sends something else in place of its
scalars, as a compromised or broken device on a real federation would: ``hostile_rounds`` wraps a
simulation's ``round_fn`` so that device d's scalars are replaced by what ``hostile(kind)``
returns (the simulation then clips and screens them, as a coordinator would on receipt). The
kinds are those of issue 14:

- ``huge``: every scalar 1e30 (the issue's attack: one participant destroyed the job);
- ``nan``: every scalar NaN (a device whose arithmetic broke; over MQTT the coordinator refuses
  the message, in a simulation the screening leaves the scalars out);
- ``flip``: every scalar sign-flipped (an adversary pulling against the gradient);
- ``random``: Gaussian garbage of standard deviation 1e3, seeded;
- ``silent``: no scalars at all (the reference: a device that contributes nothing).

``simulate_job`` runs a short real job in one process, a tiny (or any) model on real data, with
some devices hostile, under the default aggregation unless told otherwise; the robust-simulation
test and ``benchmarks/reliability.py`` share it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from edgezo.aggregate import Aggregation
from edgezo.keys import Direction

KINDS = ("huge", "nan", "flip", "random")
Scalars = dict[Direction, float]


def hostile_rounds(round_fn: Callable, senders: dict[int, Callable[[Scalars], Scalars]]) -> Callable:
    """``round_fn`` (a ``run_simulation`` round function) with device d's scalars replaced by
    ``senders[d](scalars)`` after it computed its round honestly."""

    def hostile_round_fn(start, on_device):
        results = round_fn(start, on_device)
        for index, (result, _) in zip(start.included, results):
            if index in senders:
                result.scalars = senders[index](result.scalars)
        return results

    return hostile_round_fn


def hostile(kind: str, seed: int = 0) -> Callable[[Scalars], Scalars]:
    """What a device of ``kind`` sends instead of its honest scalars."""
    if kind == "huge":
        return lambda scalars: {d: 1e30 for d in scalars}
    if kind == "nan":
        return lambda scalars: {d: math.nan for d in scalars}
    if kind == "flip":
        return lambda scalars: {d: -g for d, g in scalars.items()}
    if kind == "random":
        rng = np.random.default_rng([seed, 0x4057])
        return lambda scalars: {d: float(np.float32(rng.normal(0.0, 1e3))) for d in scalars}
    if kind == "silent":
        return lambda scalars: {}
    raise ValueError(f"unknown hostile kind {kind!r}; use one of {', '.join(KINDS + ('silent',))}")


@dataclass
class JobOutcome:
    """What a hostile-participant job ended on."""

    records: list  # RoundRecord per round (round 0 first)
    fingerprint: str
    finite: bool  # every trainable weight of the final global model is finite
    named: set[str]  # devices the rounds' reviews cut or blamed

    @property
    def accuracy(self) -> float:
        return self.records[-1].eval_accuracy


def simulate_job(model, data, hostile_devices: dict[int, str] | None = None, aggregation: Aggregation = Aggregation(),
                 clients: int = 10, rounds: int = 4, eval_samples: int = 0, train_samples: int = 400, **settings) -> JobOutcome:
    """A short `simulate`-style job (torch backend) with ``hostile_devices`` (device index -> kind).
    Its defaults (lr 2e-2, the whole SST-2 validation split) make a tiny model learn a few points
    in four rounds, so "within one point of the clean run" is about 9 examples, not noise."""
    import torch

    from edgezo.backends.choice import build_executor
    from edgezo.config import JobConfig
    from edgezo.evaluate import make_evaluator
    from edgezo.jobdata import device_shards, load_job_data, make_batcher
    from edgezo.methods import method_of
    from edgezo.simulation import SimulatedDevice, local_rounds, run_simulation

    job = dict(model=str(model) if model else None, data=str(data), clients=clients, rounds=rounds, local_steps=1, p1=1, p2=4, lr=2e-2,
               lr_schedule="constant", batch_size=4, max_length=32, eval_samples=eval_samples, seed=5, trainable="full")
    cfg = JobConfig(**{**job, **settings}).validate()
    data = load_job_data(cfg, train_samples)
    ex, _ = build_executor("torch", cfg, data.task)
    make_batch = make_batcher(ex, data.task, data.train)
    kinds = hostile_devices or {}
    devices = [SimulatedDevice(shard, ex, make_batch) for shard in device_shards(cfg, data.train)]
    round_fn = hostile_rounds(local_rounds(cfg, devices, method_of(cfg.method)),
                              {d: hostile(kind, seed=d) for d, kind in kinds.items()})
    records = run_simulation(cfg, devices, ex, make_evaluator(ex, data.task, data.dev, quiet=True), aggregation,
                             round_fn=round_fn)
    finite = all(bool(torch.isfinite(p).all()) for p in ex.model.parameters())
    named = {name for r in records for name in (r.cut or {})}
    return JobOutcome(records, ex.fingerprint(), finite, named)
