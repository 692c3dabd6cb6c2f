"""The pieces every zero-order method's step is built from, written against the executor
protocol (no tensors here, and no method's name: the methods in ``edgezo.methods`` compose them).

A step evaluates the loss along canonical directions and returns *projected gradients*: one
scalar per probed direction. The update is linear in those scalars (``update_rule``), so a client's
whole contribution to a round is a list of (direction, scalar) pairs, and the coordinator can
average scalars per direction over devices before turning them into an update.

Forward passes are counted per block (``ForwardCounter``), so compute is comparable across
methods in FLOPs.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from edgezo.errors import EdgezoError
from edgezo.executor import Executor, Perturbation
from edgezo.keys import WHOLE_MODEL, Direction

VARIANTS = ("joint", "clean")
DIFFERENCES = ("central", "forward")


@dataclass(frozen=True)
class ProbeConfig:
    """How one step probes the loss: the method's name (a label: the method itself is passed as
    an object), its counts and scale. Built from a job or a device's task by ``Method.probe``,
    which also checks what depends on the method (its finite differences); the checks here need
    no method, so this module, which the methods are built on, imports none."""

    method: str = "spzo"
    p1: int = 1
    p2: int = 4
    eps: float = 1e-3
    variant: str = "joint"
    difference: str = "central"

    def __post_init__(self):
        if self.p1 < 1 or self.p2 < 1:
            raise EdgezoError(f"P1 and P2 must be at least 1 (got P1={self.p1}, P2={self.p2})")
        if not (self.eps > 0 and math.isfinite(self.eps)):
            raise EdgezoError(f"eps must be a positive number (got {self.eps})")
        if self.variant not in VARIANTS:
            raise EdgezoError(f"unknown SPZO variant {self.variant!r}; use one of {', '.join(VARIANTS)}")
        if self.difference not in DIFFERENCES:
            raise EdgezoError(f"unknown finite difference {self.difference!r}; use one of {', '.join(DIFFERENCES)}")


@dataclass
class StepResult:
    """What one local step produced: a scalar per probed direction, and what it cost."""

    scalars: dict[Direction, float]
    loss: float
    forwards1: int = 0
    forwards2: int = 0
    flops: float = 0.0


@dataclass
class ForwardCounter:
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


def check_finite(*losses: float) -> None:
    for loss in losses:
        if not math.isfinite(loss):
            raise EdgezoError(
                f"the loss became {loss} (NaN or infinite): lower --lr or --eps, or check the data"
            )


def full_loss(ex: Executor, batch: Any, perturbation: Perturbation, count: ForwardCounter) -> float:
    """The loss of the whole model (block 1 then block 2) under one perturbation."""
    act = ex.forward_block1(batch, perturbation)
    loss = ex.forward_block2(act, batch, perturbation)
    count.one()
    count.two()
    return loss


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
