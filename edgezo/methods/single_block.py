"""What the single-block methods (MeZO, DeComFL, FedZO) share: a step probes the whole model
(``Direction.block == 0``) along ``P`` directions (``P1``; ``P2`` does not apply), with central
(2P forwards) or forward (P + 1 forwards) differences."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edgezo.estimators import ForwardCounter, ProbeConfig, StepResult, check_finite, full_loss
from edgezo.executor import Executor
from edgezo.keys import WHOLE_MODEL, Direction
from edgezo.methods.base import Method

if TYPE_CHECKING:  # pragma: no cover
    from edgezo.costmodel import StepCosts, Work


def single_block_step(
    ex: Executor, batch: Any, cfg: ProbeConfig, run_seed: int, rnd: int, step: int, stream: int = 0
) -> StepResult:
    """P1 whole-model probes, central (2P forwards) or forward (P+1)."""
    count = ForwardCounter(*ex.forward_flops(batch))
    scalars: dict[Direction, float] = {}
    losses: list[float] = []
    base = None
    if cfg.difference == "forward":
        base = full_loss(ex, batch, (), count)
        check_finite(base)
        losses.append(base)
    for i in range(cfg.p1):
        d = Direction(run_seed, rnd, step, WHOLE_MODEL, i, 0, stream)
        lp = full_loss(ex, batch, [(d, cfg.eps)], count)
        if base is None:
            lm = full_loss(ex, batch, [(d, -cfg.eps)], count)
            check_finite(lp, lm)
            scalars[d] = (lp - lm) / (2 * cfg.eps)
            losses.append(0.5 * (lp + lm))
        else:
            check_finite(lp)
            scalars[d] = (lp - base) / cfg.eps
    return StepResult(scalars, sum(losses) / len(losses), count.forwards1, count.forwards2, count.flops)


def single_block_directions(cfg: ProbeConfig, run_seed: int, rnd: int, steps: int, stream: int = 0) -> list[Direction]:
    """P1 whole-model directions per step, on ``stream``."""
    return sorted(Direction(run_seed, rnd, step, WHOLE_MODEL, i, 0, stream) for step in range(steps) for i in range(cfg.p1))


class SingleBlockMethod(Method):
    """The base of the methods that probe the whole model as one block."""

    def step(self, ex, batch, probe, run_seed, rnd, step, stream=0) -> StepResult:
        return single_block_step(ex, batch, probe, run_seed, rnd, step, stream)

    def directions(self, probe, run_seed, rnd, steps, stream=0) -> list[Direction]:
        return single_block_directions(probe, run_seed, rnd, steps, stream)

    def step_seconds(self, costs: StepCosts, w: Work) -> float:
        """``P`` full forwards twice (central) or ``P + 1`` times (forward; the unperturbed one
        copies nothing), then the local update of P whole-model directions."""
        t1, t2, c1, c2, u1, u2 = costs
        full = t1 + t2 + c1 + c2
        forwards = 2 * w.p1 if w.difference == "central" else w.p1 + 1
        base = 0.0 if w.difference == "central" else c1 + c2  # the unperturbed forward copies nothing
        return forwards * full - base + w.p1 * (u1 + u2)
