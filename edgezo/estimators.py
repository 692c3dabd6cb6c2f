"""Zero-order gradient estimators, written against the executor protocol (no tensors here).

A step evaluates the loss along canonical directions and returns *projected gradients*: one
scalar per probed direction. The update is linear in those scalars (``update_rule``), so a client's
whole contribution to a round is a list of (direction, scalar) pairs, and the coordinator can
average scalars per direction over devices before turning them into an update.

Methods:

* ``spzo`` (FedSPZO, Ahmed et al. 2025): the model is split in two blocks; block 2 gets ``P2``
  perturbations per block-1 perturbation. Variant ``joint`` (default) probes block 2 on the
  *perturbed* block-1 activations a± (each (i, j) is a full-model SPSA estimate along (z1_i, z2_ij)
  and the block-2 forwards reuse a±); variant ``clean`` probes block 2 on unperturbed activations
  and block 1 with full forwards.
* ``mezo``, ``decomfl``, ``fedzo``: one block (the whole model, ``Direction.block == 0``), ``P``
  perturbations, central or forward difference.

Forward passes are counted per block, so compute is comparable across methods in FLOPs.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Sequence

from edgezo.errors import EdgezoError
from edgezo.executor import Executor, Perturbation
from edgezo.keys import WHOLE_MODEL, Direction

ZO_METHODS = ("spzo", "mezo", "decomfl", "fedzo")
METHODS = ZO_METHODS + ("fedavg",)
VARIANTS = ("joint", "clean")
DIFFERENCES = ("central", "forward")
DEFAULT_DIFFERENCE = {"spzo": "central", "mezo": "central", "decomfl": "central", "fedzo": "forward"}


@dataclass(frozen=True)
class ProbeConfig:
    """How one step probes the loss."""

    method: str = "spzo"
    p1: int = 1
    p2: int = 4
    eps: float = 1e-3
    variant: str = "joint"
    difference: str = "central"

    def __post_init__(self):
        if self.method not in ZO_METHODS:
            raise EdgezoError(f"unknown zero-order method {self.method!r}; use one of {', '.join(ZO_METHODS)}")
        if self.p1 < 1 or self.p2 < 1:
            raise EdgezoError(f"P1 and P2 must be at least 1 (got P1={self.p1}, P2={self.p2})")
        if not (self.eps > 0 and math.isfinite(self.eps)):
            raise EdgezoError(f"eps must be a positive number (got {self.eps})")
        if self.variant not in VARIANTS:
            raise EdgezoError(f"unknown SPZO variant {self.variant!r}; use one of {', '.join(VARIANTS)}")
        if self.difference not in DIFFERENCES:
            raise EdgezoError(f"unknown difference {self.difference!r}; use central or forward")
        if self.method == "spzo" and self.difference != "central":
            raise EdgezoError("SPZO uses central differences; --difference forward is for mezo/decomfl/fedzo")


@dataclass
class StepResult:
    """What one local step produced: a scalar per probed direction, and what it cost."""

    scalars: dict[Direction, float]
    loss: float
    forwards1: int = 0
    forwards2: int = 0
    flops: float = 0.0


@dataclass
class _Counter:
    """Counts block forwards and their FLOPs for one batch."""

    flops1: float
    flops2: float
    forwards1: int = 0
    forwards2: int = 0

    def one(self, n: int = 1):
        self.forwards1 += n

    def two(self, n: int = 1):
        self.forwards2 += n

    @property
    def flops(self) -> float:
        return self.forwards1 * self.flops1 + self.forwards2 * self.flops2


def _check_finite(*losses: float) -> None:
    for loss in losses:
        if not math.isfinite(loss):
            raise EdgezoError(
                f"the loss became {loss} (NaN or infinite): lower --lr or --eps, or check the data"
            )


def _full_loss(ex: Executor, batch: Any, perturbation: Perturbation, count: _Counter) -> float:
    act = ex.forward_block1(batch, perturbation)
    loss = ex.forward_block2(act, batch, perturbation)
    count.one()
    count.two()
    return loss


def spzo_step(ex: Executor, batch: Any, cfg: ProbeConfig, run_seed: int, rnd: int, step: int) -> StepResult:
    """One FedSPZO step: P1 block-1 probes, each with P2 block-2 probes (DESIGN section 3)."""
    count = _Counter(*ex.forward_flops(batch))
    scalars: dict[Direction, float] = {}
    losses: list[float] = []
    eps = cfg.eps
    if cfg.variant == "clean":
        base = ex.forward_block1(batch)
        count.one()
    for i in range(cfg.p1):
        d1 = Direction(run_seed, rnd, step, 1, i)
        if cfg.variant == "joint":
            a_plus = ex.forward_block1(batch, [(d1, eps)])
            a_minus = ex.forward_block1(batch, [(d1, -eps)])
            count.one(2)
        else:
            lp = _full_loss(ex, batch, [(d1, eps)], count)
            lm = _full_loss(ex, batch, [(d1, -eps)], count)
            _check_finite(lp, lm)
            scalars[d1] = (lp - lm) / (2 * eps)
            a_plus = a_minus = base
        for j in range(cfg.p2):
            d2 = Direction(run_seed, rnd, step, 2, i, j)
            lp = ex.forward_block2(a_plus, batch, [(d2, eps)])
            lm = ex.forward_block2(a_minus, batch, [(d2, -eps)])
            count.two(2)
            _check_finite(lp, lm)
            scalars[d2] = (lp - lm) / (2 * eps)
            losses.append(0.5 * (lp + lm))
    return StepResult(scalars, sum(losses) / len(losses), count.forwards1, count.forwards2, count.flops)


def single_block_step(
    ex: Executor, batch: Any, cfg: ProbeConfig, run_seed: int, rnd: int, step: int, stream: int = 0
) -> StepResult:
    """MeZO / DeComFL / FedZO: P1 whole-model probes, central (2P forwards) or forward (P+1)."""
    count = _Counter(*ex.forward_flops(batch))
    scalars: dict[Direction, float] = {}
    losses: list[float] = []
    base = None
    if cfg.difference == "forward":
        base = _full_loss(ex, batch, (), count)
        _check_finite(base)
        losses.append(base)
    for i in range(cfg.p1):
        d = Direction(run_seed, rnd, step, WHOLE_MODEL, i, 0, stream)
        lp = _full_loss(ex, batch, [(d, cfg.eps)], count)
        if base is None:
            lm = _full_loss(ex, batch, [(d, -cfg.eps)], count)
            _check_finite(lp, lm)
            scalars[d] = (lp - lm) / (2 * cfg.eps)
            losses.append(0.5 * (lp + lm))
        else:
            _check_finite(lp)
            scalars[d] = (lp - base) / cfg.eps
    return StepResult(scalars, sum(losses) / len(losses), count.forwards1, count.forwards2, count.flops)


def zo_step(ex: Executor, batch: Any, cfg: ProbeConfig, run_seed: int, rnd: int, step: int, stream: int = 0) -> StepResult:
    if cfg.method == "spzo":
        return spzo_step(ex, batch, cfg, run_seed, rnd, step)
    return single_block_step(ex, batch, cfg, run_seed, rnd, step, stream)


def probe_directions(cfg: ProbeConfig, run_seed: int, rnd: int, steps: int, stream: int = 0) -> list[Direction]:
    """The directions ``steps`` local steps probe, sorted: the scalars a device owes for an
    assignment, so a coordinator can check a result and a device can send bare values in this
    order."""
    out: list[Direction] = []
    for step in range(steps):
        for i in range(cfg.p1):
            if cfg.method != "spzo":
                out.append(Direction(run_seed, rnd, step, WHOLE_MODEL, i, 0, stream))
                continue
            if cfg.variant == "clean":
                out.append(Direction(run_seed, rnd, step, 1, i))
            out += [Direction(run_seed, rnd, step, 2, i, j) for j in range(cfg.p2)]
    return sorted(out)


def update_rule(scalars: dict[Direction, float], lr: float, variant: str = "joint") -> list[tuple[Direction, float]]:
    """Turn (averaged) projected gradients into an update: sorted (direction, coefficient) pairs.

    Scalars are grouped by (round, step, stream) and normalised within the group by the number of
    directions actually evaluated, so a group where only some (i, j) were probed (devices with
    different P2, say) still gives an unbiased estimate:

    * block-2 and whole-model directions: ``-lr * g / N`` with N the number of such directions;
    * SPZO joint, block 1: ``-lr * mean_j(g_ij) / P1_evaluated`` (each (i, j) probed z1_i too);
    * SPZO clean, block 1: ``-lr * g_i / P1_evaluated`` from its own full-forward scalar.
    """
    groups: dict[tuple, list[tuple[Direction, float]]] = defaultdict(list)
    for d, g in scalars.items():
        groups[(d.run_seed, d.round, d.step, d.stream)].append((d, g))
    update: list[tuple[Direction, float]] = []
    for items in groups.values():
        whole = [(d, g) for d, g in items if d.block == WHOLE_MODEL]
        block2 = [(d, g) for d, g in items if d.block == 2]
        block1 = [(d, g) for d, g in items if d.block == 1]
        for d, g in whole:
            update.append((d, -lr * g / len(whole)))
        for d, g in block2:
            update.append((d, -lr * g / len(block2)))
        if variant == "joint" and block2:
            per_i: dict[Direction, list[float]] = defaultdict(list)
            for d, g in block2:
                per_i[Direction(d.run_seed, d.round, d.step, 1, d.i, 0, d.stream)].append(g)
            for d1, gs in per_i.items():
                update.append((d1, -lr * (sum(gs) / len(gs)) / len(per_i)))
        else:
            for d, g in block1:
                update.append((d, -lr * g / len(block1)))
    return sorted(update)


@dataclass
class LocalRound:
    """A device's contribution to one round: every step's scalars, plus what it cost."""

    scalars: dict[Direction, float] = field(default_factory=dict)
    losses: list[float] = field(default_factory=list)
    forwards1: int = 0
    forwards2: int = 0
    flops: float = 0.0
    examples: int = 0
    deltas: Any = None  # FedAvg only: the full model delta the device uploads


def local_round(
    ex: Executor,
    batches: Sequence[Any],
    cfg: ProbeConfig,
    lr: float,
    run_seed: int,
    rnd: int,
    stream: int = 0,
) -> LocalRound:
    """K local steps (one per batch): probe, then apply this device's own update locally.

    The caller restores the round's starting weights afterwards (the global model moves by the
    aggregate of all devices' scalars, not by this device's local steps).
    """
    out = LocalRound()
    for step, batch in enumerate(batches):
        result = zo_step(ex, batch, cfg, run_seed, rnd, step, stream)
        ex.apply_update(update_rule(result.scalars, lr, cfg.variant))
        out.scalars.update(result.scalars)
        out.losses.append(result.loss)
        out.forwards1 += result.forwards1
        out.forwards2 += result.forwards2
        out.flops += result.flops
    return out
