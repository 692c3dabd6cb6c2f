"""Probe settings chosen, not tuned: a short calibration picks the SPZO P2 (and split) with the
best expected descent per second of a step, from gradient energies measured on the job's own
model and data with forwards only.

Why this works without training: with Rademacher probes and a small eps, a central-difference
scalar is h·z (h the batch gradient), so, given the block energies ‖h1‖², ‖h2‖² and sizes d1, d2,
the second moment E‖ĝ‖² of every SPZO setting is a closed form (``joint_moment``,
``clean_moment``; derived in benchmarks/gradient_quality_stats.py, which imports them from here),
and the expected one-step descent at the best step size is ‖G‖² / E‖ĝ‖² (G the population
gradient). Divided by the step's cost (the method's own ``step_seconds`` from the device's
profile, or its forward FLOPs when there is none), that ranks the settings.

The energies come from probes restricted to groups of layers: for z supported on group g,
E[c²] = ‖h_g‖² on one batch, and the same z on two batches gives h_a,g · h_b,g, whose mean over
batch pairs (the U-statistic) estimates ‖G_g‖². A split at a group boundary sums groups.

Pure functions above the line "measurement"; the measurement runs the executor's forwards.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from edgezo.costmodel import ModelShape, Predictor, StepCosts, Work
from edgezo.keys import Direction

if TYPE_CHECKING:  # pragma: no cover
    from edgezo.profiles import BackendProfile, Profile

CALIBRATION_STREAM = 0xCA1B  # the calibration's own batch stream and probe keys: the training's are untouched
P2_CHOICES = (1, 2, 4, 8)
SPLIT_FRACTIONS = (1 / 3, 1 / 2, 2 / 3, 5 / 6)


# -- the closed forms (shared with the gradient-quality bench) ------------------------------------


def joint_moment(a1, a2, d1: int, d2: int, p1: int, p2: int):
    """E‖ĝ‖² of a joint SPZO step given ‖h1‖², ‖h2‖²: block 1's estimate carries block 2's
    gradient averaged over the P2 probes as noise, block 2's carries block 1's whole."""
    n = p1 * p2
    block1 = (d1 * (a1 + a2 / p2) + (p1 - 1) * a1) / p1
    block2 = (d2 * (a1 + a2) + (n - 1) * a2) / n
    return block1 + block2


def clean_moment(a1, a2, d1: int, d2: int, p1: int, p2: int):
    """E‖ĝ‖² of a clean SPZO step: two independent SPSA estimates (block 1 with P1 probes, block 2
    with P1·P2 on unperturbed activations)."""
    n = p1 * p2
    return a1 * (d1 + p1 - 1) / p1 + a2 * (d2 + n - 1) / n


MOMENTS = {"joint": joint_moment, "clean": clean_moment}


# -- the model: candidates, their descent per second, the choice ----------------------------------


@dataclass(frozen=True)
class GroupEnergy:
    """One group of layers [start, end) (the embedding joins the first group, the head the last):
    its trainable elements, the mean over batches of ‖h_g‖², and the U-statistic of ‖G_g‖²."""

    start: int
    end: int
    elements: int
    energy: float
    signal: float


@dataclass(frozen=True)
class Candidate:
    p1: int
    p2: int
    split: int


def block_energies(groups: Sequence[GroupEnergy], split: int) -> tuple[float, float, int, int]:
    """‖h1‖², ‖h2‖², d1, d2 at ``split`` (a group boundary: blocks are sums of whole groups)."""
    if not any(g.end == split for g in groups[:-1]):
        raise ValueError(f"split {split} is not at a group boundary ({[g.end for g in groups[:-1]]})")
    one = [g for g in groups if g.end <= split]
    two = [g for g in groups if g.start >= split]
    return (sum(g.energy for g in one), sum(g.energy for g in two),
            sum(g.elements for g in one), sum(g.elements for g in two))


def candidate_splits(groups: Sequence[GroupEnergy], fractions: Sequence[float] = SPLIT_FRACTIONS) -> list[int]:
    """The group boundaries nearest to the given fractions of the layers (each once)."""
    layers = groups[-1].end
    bounds = [g.end for g in groups[:-1]]
    return sorted({min(bounds, key=lambda b: abs(b - f * layers)) for f in fractions})


def candidates(p1: int, splits: Sequence[int], p2s: Sequence[int] = P2_CHOICES) -> list[Candidate]:
    return [Candidate(p1, p2, s) for s in splits for p2 in p2s]


def descent_table(groups: Sequence[GroupEnergy], split: int, variant: str) -> Callable[[int, int], float]:
    """(P1, P2) -> the expected one-step descent ratio ‖G‖²/E‖ĝ‖² at ``split``, up to the factor
    ‖G‖² that every setting shares (so 1/E‖ĝ‖²: a noisy ‖G‖² estimate cannot flip a comparison).
    What the planner weighs each device's (P1, P2) with, from the one measurement."""
    a1, a2, d1, d2 = block_energies(groups, split)
    moment = MOMENTS[variant]
    return lambda p1, p2: 1.0 / float(moment(a1, a2, d1, d2, p1, p2))


def rank(groups: Sequence[GroupEnergy], cands: Sequence[Candidate], variant: str, flops: Callable[[Candidate], float],
         seconds: Callable[[Candidate], float] | None = None, prefer_split: int | None = None) -> list[dict]:
    """Each candidate's expected descent ratio ‖G‖²/E‖ĝ‖², its step's forward FLOPs and (given a
    device profile's ``seconds``) seconds, and descent per each; best first by descent per second,
    or per FLOP without a profile. Ties (to rounding: at P2 = 1 a joint step is a whole-model probe
    whatever the split) go to ``prefer_split``, the job's own, so a tie never moves the split."""
    g2 = sum(g.signal for g in groups)  # common to every candidate: the ranking does not use it (a noisy
    rows, merit = [], []  # U-statistic can even be negative on 3 batches), only the printed figures
    for c in cands:
        inverse_moment, f = descent_table(groups, c.split, variant)(c.p1, c.p2), float(flops(c))
        row = {**asdict(c), "descent": g2 * inverse_moment, "flops": f, "descent_per_flop": g2 * inverse_moment / f}
        if seconds is not None:
            t = float(seconds(c))
            row |= {"seconds": t, "descent_per_second": g2 * inverse_moment / t}
        rows.append(row)
        merit.append(inverse_moment / (f if seconds is None else row["seconds"]))
    top = max(merit)
    tied = [m >= top * (1 - 1e-9) for m in merit]
    order = sorted(range(len(rows)), key=lambda k: (not tied[k], tied[k] and rows[k]["split"] != prefer_split, -merit[k]))
    return [rows[k] for k in order]


def table(rows: Sequence[dict]) -> list[str]:
    """The candidates as printed lines: setting, descent per step, FLOPs (and seconds) per step,
    descent per each."""
    timed = "seconds" in rows[0]
    head = f"  {'P1':>3} {'P2':>3} {'split':>5} {'descent/step':>13} {'FLOP/step':>10} {'descent/FLOP':>13}"
    lines = [head + (f" {'s/step':>9} {'descent/s':>10}" if timed else "")]
    for r in rows:
        line = f"  {r['p1']:>3} {r['p2']:>3} {r['split']:>5} {r['descent']:>13.3e} {r['flops']:>10.3e} {r['descent_per_flop']:>13.3e}"
        lines.append(line + (f" {r['seconds']:>9.3g} {r['descent_per_second']:>10.3e}" if timed else ""))
    return lines


# -- measurement ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class UnitProbe:
    """A probe direction restricted to some units of the model (the split executor perturbs a
    unit only when it is in ``units``): the calibration's group-restricted probe."""

    direction: Direction
    units: frozenset

    def covers(self, block: int) -> bool:
        return True

    def covers_unit(self, unit: str, block: int) -> bool:
        return unit in self.units

    def tensor_key(self, name: str) -> int:
        return self.direction.tensor_key(name)


@dataclass(frozen=True)
class Group:
    """What the measurement perturbs for one group: layers [start, end), its trainable elements,
    and ``probe(index)`` -> the index-th direction supported on the group only."""

    start: int
    end: int
    elements: int
    probe: Callable[[int], Any]


def group_bounds(layers: int, keep: Sequence[int] = (), groups: int = 6) -> list[int]:
    """Layer indices where groups end: about ``groups`` equal groups, plus the splits in ``keep``
    (a job's own split stays a boundary, so its blocks are sums of groups)."""
    size = max(1, round(layers / groups))
    return sorted({*range(size, layers, size), *(k for k in keep if 0 < k < layers), layers})


def layer_groups(ex, run_seed: int, bounds: Sequence[int]) -> list[Group]:
    """Groups of layers of a split executor ending at ``bounds`` (embedding with the first, head
    with the last), each probed by ``UnitProbe`` directions of the calibration's own key."""
    layers, out = ex.num_layers, []
    for k, (start, end) in enumerate(zip([0, *bounds[:-1]], bounds)):
        units = {f"layers.{i}" for i in range(start, end)} | ({"embed"} if start == 0 else set()) | ({"head"} if end == layers else set())
        numel = sum(ex.tensor_numel[n] for u in units for n in ex.unit_tensors.get(u, ()))
        out.append(Group(start, end, numel, _unit_probe(run_seed, k, frozenset(units))))
    return out


def _unit_probe(run_seed: int, group: int, units: frozenset) -> Callable[[int], UnitProbe]:
    return lambda i: UnitProbe(Direction(run_seed, 0, 0, 0, group, i, CALIBRATION_STREAM), units)


def full_loss(ex, batch, perturbation) -> float:
    return ex.forward_block2(ex.forward_block1(batch, perturbation), batch, perturbation)


def measure(ex, batches: Sequence[Any], groups: Sequence[Group], probes: int, eps: float) -> dict:
    """Per group, central-difference scalars c[p, b] of ``probes`` directions on every batch
    (2 full forwards each): the mean of c² is ‖h_g‖², the mean of c_a·c_b over batch pairs a ≠ b
    ‖G_g‖². Returns the ``GroupEnergy`` list and the forwards and seconds it took."""
    started, forwards, energies = time.perf_counter(), 0, []
    n = len(batches)
    if n < 2:
        raise ValueError("the calibration needs at least 2 batches (‖G‖² comes from pairs of batches)")
    for g in groups:
        c = np.zeros((probes, n))
        for p in range(probes):
            d = g.probe(p)
            for b, batch in enumerate(batches):
                c[p, b] = (full_loss(ex, batch, [(d, eps)]) - full_loss(ex, batch, [(d, -eps)])) / (2 * eps)
                forwards += 2
        gram = c.T @ c / probes  # [n, n] estimates of h_a,g · h_b,g
        signal = float((gram.sum() - np.trace(gram)) / (n * (n - 1)))
        energies.append(GroupEnergy(g.start, g.end, g.elements, float(np.trace(gram) / n), signal))
    return {"groups": energies, "forwards": forwards, "seconds": time.perf_counter() - started}


def calibration_batches(batcher: Callable[[list[int]], Any], examples: int, batch_size: int, count: int, run_seed: int) -> list:
    """``count`` batches drawn from the calibration's own stream (seeded by the run seed and
    ``CALIBRATION_STREAM``, so the training's batches are the same with or without it)."""
    rng = np.random.default_rng([run_seed, CALIBRATION_STREAM])
    size = min(batch_size, examples)
    return [batcher(sorted(rng.choice(examples, size, replace=False).tolist())) for _ in range(count)]


# -- costs ------------------------------------------------------------------------------------------


def step_cost(method, work, costs_at: Callable[[int], Any]) -> Callable[[Candidate], float]:
    """A candidate's cost of one step: the method's own ``step_seconds`` on the block costs at the
    candidate's split (``costs_at(split)`` -> ``edgezo.costmodel.StepCosts``), with its P1 and P2."""
    return lambda c: method.step_seconds(costs_at(c.split), replace(work, p1=c.p1, p2=c.p2))


def flops_costs(shape, batch: int, tokens: int) -> Callable[[int], StepCosts]:
    """Block costs in forward FLOPs (no device profile): a step's "seconds" are then its FLOPs,
    perturbed copies and updates free, which ranks the settings by descent per FLOP."""

    def at(split: int) -> StepCosts:
        s = replace(shape, split=split)
        return StepCosts(s.block_flops(1, batch, tokens), s.block_flops(2, batch, tokens), 0.0, 0.0, 0.0, 0.0)

    return at


def shape_at(shape: ModelShape, groups: Sequence[GroupEnergy], split: int) -> ModelShape:
    """The model split at ``split``: each block's trainable elements from the groups (exact), its
    trainable tensors re-divided by layer share (the cost model needs only their count per block,
    for the per-call overheads of perturbing and updating)."""
    _, _, d1, d2 = block_energies(groups, split)
    tensors = sum(shape.trainable_tensors)
    t1 = round(tensors * split / shape.layers)
    return replace(shape, split=split, trainable=(d1, d2), trainable_tensors=(t1, tensors - t1))


def profile_costs(backend: "BackendProfile", shape: ModelShape, groups: Sequence[GroupEnergy], batch: int,
                  tokens: int) -> Callable[[int], StepCosts]:
    """Block costs in seconds on one backend of a device profile (``edgezo.costmodel.Predictor``:
    its measured forwards when it measured this model and split, else its throughput and per-unit
    overhead; a full forward per block-2 probe where it does not reuse block 1), at each split."""
    return lambda split: Predictor(backend, shape_at(shape, groups, split), tokens).step_costs(batch)


def profile_backend(profile: "Profile", shape: ModelShape, tokens: int, work: Work) -> "BackendProfile":
    """The backend a device of ``profile`` would run the job's round on: its fastest (as
    ``planner.fixed_plan`` picks, memory aside: the calibration ranks speed, the planner checks fit)."""
    return min(profile.backends, key=lambda b: Predictor(b, shape, tokens).round_s(work))


def slowest_profile(profiles: Sequence["Profile"], shape: ModelShape, tokens: int, work: Work) -> "Profile":
    """The profile whose device takes longest over the job's round. A job-wide setting is ranked
    on it: a synchronous round lasts as long as its slowest device, so that device's seconds are
    the round's (the median device's would favour settings that make the round wait)."""
    return max(profiles, key=lambda p: Predictor(profile_backend(p, shape, tokens, work), shape, tokens).round_s(work))
