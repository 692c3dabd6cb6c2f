"""The planner: from a device profile and budgets to the work a device does in a round.

Given a round-time budget and a memory budget, it chooses the backend, batch size, local steps K
and perturbation counts P1, P2 for one device, by these rules (in this order):

1. memory decides the batch: the job's batch if a step fits in memory, else the largest of
   batch/2, batch/4, ... that fits (the job's batch is a hyperparameter tied to the learning
   rate, so it is only lowered when it must be);
2. among the (K, P1, P2) whose predicted round time fits ``safety * round_seconds`` (K at most
   the job's; P1, P2 up to the limits), take the most directional estimates K*P1*P2 (each
   (i, j) is a full-model SPSA estimate), then the larger K, then the smaller P1. For a fixed
   number of estimates, P1 = 1 and a large P2 is cheapest (block 1 runs twice per P1, block 2
   twice per estimate), so P2 grows first, and grows further where t2 is small relative to t1;
3. if nothing fits at that batch, halve it and try again; across backends, the larger batch and
   then the most estimates win.

With the job's measured descent table (``--p2 auto``: ``edgezo.calibration.descent_table``), rule
2 takes the best expected descent per second of the round K·d(P1, P2)/t instead of the most
estimates, so each device's P2 follows its own profile's seconds: a device whose block-2 forwards
are dear (or that runs a full forward per probe) gets fewer.

It refuses, naming the reason, when no backend fits the memory budget even at batch 1, or when
the smallest round (K=1, P1=1, P2=1, batch 1) is already over the time budget.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

from edgezo.costmodel import ModelShape, Predictor, Work, suggest_split
from edgezo.errors import EdgezoError
from edgezo.profiles import Profile


class NothingFits(EdgezoError):
    """No backend of the device can do a round within the budgets."""


@dataclass(frozen=True)
class Budget:
    round_seconds: float
    memory_gb: float | None = None  # None: the memory the profile says is available
    safety: float = 0.85  # plan to this fraction of the round (timing noise, network, the update)

    def __post_init__(self):
        if not self.round_seconds > 0:
            raise EdgezoError(f"the round-time budget must be positive (got {self.round_seconds} s)")
        if self.memory_gb is not None and not self.memory_gb > 0:
            raise EdgezoError(f"the memory budget must be positive (got {self.memory_gb} GB)")
        if not 0 < self.safety <= 1:
            raise EdgezoError(f"the safety fraction must be in (0, 1] (got {self.safety})")


@dataclass(frozen=True)
class Limits:
    """The most a device may be given: the job's own work caps K and the batch (and fixes the
    method), ``p1`` and ``p2`` cap the perturbation counts."""

    job: Work = Work()
    p1: int = 2
    p2: int = 16

    def __post_init__(self):
        for name, value in (("k", self.k), ("batch", self.batch), ("p1", self.p1), ("p2", self.p2)):
            if value < 1:
                raise EdgezoError(f"planner limit {name} must be at least 1 (got {value})")

    @property
    def k(self) -> int:
        return self.job.k

    @property
    def batch(self) -> int:
        return self.job.batch

    def work(self, k: int, p1: int, p2: int, batch: int) -> Work:
        """The job's work with these counts."""
        return replace(self.job, k=k, p1=p1, p2=p2, batch=batch)


@dataclass(frozen=True)
class Plan:
    device: str
    backend: str
    work: Work
    round_s: float  # predicted
    peak_mb: float  # predicted
    budget_s: float
    memory_mb: float
    suggested_split: int
    source: str  # the profile's kind: measured or reference

    def describe(self) -> str:
        w = self.work
        return (
            f"{self.device}: backend {self.backend}, batch {w.batch}, K {w.k}, P1 {w.p1}, P2 {w.p2} "
            f"-> {w.estimates} estimates a round, predicted {self.round_s:.1f} s"
            f"{f' of {self.budget_s:g} s' if self.budget_s else ''}, "
            f"peak {self.peak_mb:,.0f} MB of {self.memory_mb:,.0f} MB ({self.source} profile)"
        )


def _batches(limit: int) -> list[int]:
    out, b = [], limit
    while b >= 1:
        out.append(b)
        b //= 2
    return out


Descent = Callable[[int, int], float]  # (P1, P2) -> expected descent of a step (calibration.descent_table)


def _score(descent: Descent | None) -> Callable[[Work, float], float]:
    """What a plan maximises: the round's directional estimates K·P1·P2, or, given the job's
    measured descent table, the round's expected descent per second K·d(P1, P2)/t. The deadline
    only bounds the round: probes past the best rate buy less descent than a round that closes
    sooner (the quorum closes it), and the job's FLOPs go further."""
    if descent is None:
        return lambda w, t: w.estimates
    return lambda w, t: w.k * descent(w.p1, w.p2) / t


def _best_work(pred: Predictor, batch: int, limits: Limits, seconds: float,
               score: Callable[[Work, float], float]) -> tuple[Work, float] | None:
    p2_max = limits.job.method.effective_p2(limits.p2)
    best: tuple[tuple, Work, float] | None = None
    for k in range(limits.k, 0, -1):
        for p1 in range(1, limits.p1 + 1):
            for p2 in range(1, p2_max + 1):
                w = limits.work(k, p1, p2, batch)
                t = pred.round_s(w)
                if t > seconds:
                    break  # larger P2 only costs more
                key = (score(w, t), k, -p1, -t)
                if best is None or key > best[0]:
                    best = (key, w, t)
    return None if best is None else (best[1], best[2])


def plan_device(profile: Profile, shape: ModelShape, tokens: int, budget: Budget, limits: Limits, device: str | None = None,
                descent: Descent | None = None) -> Plan:
    """The work for one device (see the module docstring); raises ``NothingFits`` with the reason.
    With ``descent`` (``--p2 auto``: the calibration's table), the best expected descent per second
    of the device's own round replaces the most estimates (see ``_score``)."""
    score = _score(descent)
    memory_mb = 1024 * (budget.memory_gb if budget.memory_gb is not None else profile.memory_available_gb)
    seconds = budget.safety * budget.round_seconds
    candidates: list[tuple[tuple, Plan]] = []
    smallest_peak: dict[str, float] = {}
    fastest: dict[str, float] = {}
    for backend in profile.backends:
        pred = Predictor(backend, shape, tokens)
        smallest_peak[backend.name] = pred.peak_mb(1)
        fastest[backend.name] = pred.round_s(limits.work(1, 1, 1, 1))
        for batch in _batches(limits.batch):
            peak = pred.peak_mb(batch)
            if peak > memory_mb:
                continue
            found = _best_work(pred, batch, limits, seconds, score)
            if found is None:
                continue
            work, t = found
            plan = Plan(device or profile.name, backend.name, work, t, peak, budget.round_seconds, memory_mb,
                        suggest_split(shape, work.p2), profile.kind)
            candidates.append(((batch, score(work, t), -t), plan))
            break
    if candidates:
        return max(candidates, key=lambda c: c[0])[1]
    who = device or profile.name
    if all(p > memory_mb for p in smallest_peak.values()):
        need = ", ".join(f"{b}: {p:,.0f} MB" for b, p in smallest_peak.items())
        raise NothingFits(
            f"{shape.name} does not fit in memory on {who}: a step at batch 1 and {tokens} tokens needs {need}, "
            f"the budget is {memory_mb:,.0f} MB. Use a smaller model or --max-length, a lower-memory backend, or a larger memory budget"
        )
    quickest = min(fastest, key=fastest.get)
    raise NothingFits(
        f"no round fits {seconds:.1f} s ({budget.safety:.0%} of the {budget.round_seconds:g} s budget) on {who}: "
        f"the smallest round (K=1, P1=1, P2=1, batch 1) takes {fastest[quickest]:.1f} s on its fastest backend ({quickest}). "
        "Raise the round budget (--round-seconds), shorten --max-length, or leave this device out"
    )


def fixed_plan(profile: Profile, shape: ModelShape, tokens: int, work: Work, memory_gb: float | None = None, device: str | None = None,
               round_seconds: float = 0.0) -> Plan:
    """The job's own work, unplanned, on the device's fastest backend that fits it in memory:
    what a device does when every device gets the same K, P1, P2 and batch."""
    memory_mb = 1024 * (memory_gb if memory_gb is not None else profile.memory_available_gb)
    options = []
    for backend in profile.backends:
        pred = Predictor(backend, shape, tokens)
        peak = pred.peak_mb(work.batch)
        if peak <= memory_mb:
            options.append(Plan(device or profile.name, backend.name, work, pred.round_s(work), peak, round_seconds, memory_mb,
                                suggest_split(shape, work.p2), profile.kind))
    if not options:
        raise NothingFits(f"{shape.name} at batch {work.batch} does not fit in {memory_mb:,.0f} MB on {device or profile.name}; "
                          "lower --batch-size or plan the devices' work with --plan")
    return min(options, key=lambda p: p.round_s)
