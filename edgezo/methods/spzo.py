"""FedSPZO (Ahmed et al. 2025, arXiv 2502.10239): the model is split in two blocks and block 2
gets ``P2`` perturbations per block-1 perturbation.

Variant ``joint`` (the default) probes block 2 on the *perturbed* block-1 activations a±: each
(i, j) is a full-model SPSA estimate along (z1_i, z2_ij), and the block-2 forwards reuse a±, so a
step costs ``2·P1·(F1 + P2·F2)`` forwards instead of ``2·P1·P2·(F1 + F2)``. Variant ``clean``
probes block 2 on unperturbed activations and block 1 with full forwards of its own. Central
differences only; all devices share the round's seeds (docs/algorithm.md, "FedSPZO").
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edgezo.estimators import ForwardCounter, ProbeConfig, StepResult, check_finite, full_loss
from edgezo.executor import Executor
from edgezo.keys import Direction
from edgezo.methods.base import Method

if TYPE_CHECKING:  # pragma: no cover
    from edgezo.costmodel import StepCosts, Work


def spzo_step(ex: Executor, batch: Any, cfg: ProbeConfig, run_seed: int, rnd: int, step: int) -> StepResult:
    """One FedSPZO step: P1 block-1 probes, each with P2 block-2 probes."""
    count = ForwardCounter(*ex.forward_flops(batch))
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
            lp = full_loss(ex, batch, [(d1, eps)], count)
            lm = full_loss(ex, batch, [(d1, -eps)], count)
            check_finite(lp, lm)
            scalars[d1] = (lp - lm) / (2 * eps)
            a_plus = a_minus = base
        d2s = [Direction(run_seed, rnd, step, 2, i, j) for j in range(cfg.p2)]
        pm = block2_losses(ex, batch, [(a, [(d2, s)]) for d2 in d2s for a, s in ((a_plus, eps), (a_minus, -eps))])
        for j, d2 in enumerate(d2s):
            lp, lm = pm[2 * j], pm[2 * j + 1]
            count.two(2)
            check_finite(lp, lm)
            scalars[d2] = (lp - lm) / (2 * eps)
            losses.append(0.5 * (lp + lm))
    return StepResult(scalars, sum(losses) / len(losses), count.forwards1, count.forwards2, count.flops)


def block2_losses(ex: Executor, batch: Any, probes: list) -> list[float]:
    """Block 2's loss per (activation, perturbation): one forward each, or together where the
    executor can run them so (``forward_block2_many``: the torch executor's batched probes)."""
    many = getattr(ex, "forward_block2_many", None)
    return many(probes, batch) if many is not None else [ex.forward_block2(a, batch, p) for a, p in probes]


def spzo_directions(cfg: ProbeConfig, run_seed: int, rnd: int, steps: int) -> list[Direction]:
    """Per step and block-1 index i: z1_i's own scalar (clean variant only) and the P2 z2_ij."""
    out: list[Direction] = []
    for step in range(steps):
        for i in range(cfg.p1):
            if cfg.variant == "clean":
                out.append(Direction(run_seed, rnd, step, 1, i))
            out += [Direction(run_seed, rnd, step, 2, i, j) for j in range(cfg.p2)]
    return sorted(out)


class SPZO(Method):
    name = "spzo"
    label = "FedSPZO"
    differences = ("central",)

    def effective_p2(self, p2: int) -> int:
        return p2

    def update_directions(self, k: int, p1: int, p2: int) -> int:
        return k * p1 * (p2 + 1)  # P1 on block 1, P1*P2 on block 2

    def step(self, ex, batch, probe, run_seed, rnd, step, stream=0) -> StepResult:
        return spzo_step(ex, batch, probe, run_seed, rnd, step)

    def directions(self, probe, run_seed, rnd, steps, stream=0) -> list[Direction]:
        return spzo_directions(probe, run_seed, rnd, steps)

    def step_seconds(self, costs: StepCosts, w: Work) -> float:
        """Joint: 2 block-1 forwards and perturbed copies per P1, 2 block-2 ones per (i, j), then
        the local update of P1 block-1 and P1*P2 block-2 directions. Clean adds the unperturbed
        block-1 forward and block 1's own full-forward probes."""
        t1, t2, c1, c2, u1, u2 = costs
        probes = w.p1 * (2 * t1 + 2 * c1) + w.p1 * w.p2 * (2 * t2 + 2 * c2)
        if w.variant == "clean":
            probes += t1 + w.p1 * 2 * (t2 + c2)  # the clean forward, and block 1 probed with full forwards
        return probes + w.p1 * u1 + w.p1 * w.p2 * u2

    def update_seconds(self, costs: StepCosts, w: Work) -> float:
        return w.k * w.p1 * (costs.u1 + w.p2 * costs.u2)
