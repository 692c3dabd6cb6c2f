"""FZOO (Dang et al., ICLR 2026, arXiv 2506.09034): N one-sided Rademacher probes per step
against one unperturbed loss (N + 1 forwards), the step divided by the standard deviation of
the N probe losses.

With ``l_0 = L(θ)`` and ``l_i = L(θ + ε u_i)``, the authors' code (github DKmiyan/FZOO,
``trainer.py``: ``zo_step``/``zo_update``) moves the weights by::

    θ ← θ − η/N · Σ_i (l_i − l_0)/σ · u_i,    σ = std(l_1 .. l_N)  (population, ``unbiased=False``)

The paper writes the same step with a further 1/ε (``g = 1/(εN) Σ (l_i − l_0) u_i``, then
``θ ← θ − η g/σ``) and a sample standard deviation; we follow the code, which produced the
paper's figures and whose learning rates (1e-5 at ε = 1e-3 for OPT-1.3B) then carry over: the
difference is a constant factor in η. Dividing by σ makes it a zero-order normalised SGD: the
differences and σ both scale with ε and with the loss, so the step is ``≈ η·ĝ/|ĝ|``-sized
whatever ε or the loss's scale; where the loss is steep along the probes the step shrinks
relative to MeZO's, where it is flat it grows. ``N`` is ``--p1``, at least 2 (one loss has no
spread).

Federated, nothing new travels. Devices share the round's seeds (whole-model directions, as
MeZO); each device folds its own σ into its scalars, ``s_i = (l_i − l_0)/σ``, and sends one float
per direction. The update is ``update_rule``'s whole-model rule on those scalars (``−η s_i / N``
per direction, averaged over devices), so the seed log holds (direction, coefficient) pairs like
every other method's and replay, a late joiner and a checkpoint reach the same weights bit for
bit: no state survives a step, and σ is a function of one device's own losses in that step,
computed in double precision by plain Python arithmetic (the same on every platform). A step
whose N losses are all equal (σ = 0) says nothing about the gradient's direction: its scalars
are 0 and the model does not move.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from edgezo.errors import EdgezoError
from edgezo.estimators import ForwardCounter, ProbeConfig, StepResult, check_finite
from edgezo.executor import Executor
from edgezo.keys import WHOLE_MODEL, Direction
from edgezo.methods.single_block import SingleBlockMethod


def population_std(values: Sequence[float]) -> float:
    """The standard deviation over N (the authors' ``torch.std(unbiased=False)``), in double
    precision and a fixed order."""
    mean = math.fsum(values) / len(values)
    return math.sqrt(math.fsum((v - mean) ** 2 for v in values) / len(values))


def normalised_scalars(base: float, losses: Sequence[float]) -> list[float]:
    """``(l_i − l_0)/σ`` per probe, σ the probe losses' standard deviation; all 0 when σ is 0
    (equal losses say nothing about where the gradient points)."""
    sigma = population_std(losses)
    if sigma == 0.0:
        return [0.0] * len(losses)
    return [(loss - base) / sigma for loss in losses]


def full_losses(ex: Executor, batch: Any, perturbations: list) -> list[float]:
    """The whole model's loss under each perturbation: one forward each, or together where the
    executor can run them so (``forward_full_many``: the torch executor's batched probes, the
    paper's batched forward)."""
    many = getattr(ex, "forward_full_many", None)
    if many is not None:
        return many(perturbations, batch)
    return [ex.forward_block2(ex.forward_block1(batch, p), batch, p) for p in perturbations]


def fzoo_step(ex: Executor, batch: Any, cfg: ProbeConfig, run_seed: int, rnd: int, step: int, stream: int = 0) -> StepResult:
    """One FZOO step: the unperturbed loss and N = P1 one-sided whole-model probes (N + 1 forwards)."""
    count = ForwardCounter(*ex.forward_flops(batch))
    directions = [Direction(run_seed, rnd, step, WHOLE_MODEL, i, 0, stream) for i in range(cfg.p1)]
    base, *losses = full_losses(ex, batch, [()] + [[(d, cfg.eps)] for d in directions])
    count.one(cfg.p1 + 1)
    count.two(cfg.p1 + 1)
    check_finite(base, *losses)
    scalars = dict(zip(directions, normalised_scalars(base, losses)))
    return StepResult(scalars, base, count.forwards1, count.forwards2, count.flops)


class FZOO(SingleBlockMethod):
    """Whole-model directions (MeZO's), one-sided and normalised by the probe losses' spread; the
    cost model is a forward difference's (P + 1 forwards, ``SingleBlockMethod``)."""

    name = "fzoo"
    label = "FZOO"
    default_difference = "forward"
    differences = ("forward",)

    def probe(self, p1: int, p2: int, eps: float, variant: str, difference: str) -> ProbeConfig | None:
        if p1 < 2:
            raise EdgezoError(f"fzoo divides its step by the spread of its N = P1 probe losses: use --p1 2 or more (got {p1})")
        return super().probe(p1, p2, eps, variant, difference)

    def step(self, ex, batch, probe, run_seed, rnd, step, stream=0) -> StepResult:
        return fzoo_step(ex, batch, probe, run_seed, rnd, step, stream)
