"""Server-side aggregation of devices' scalars, per direction, by one of ``AGGREGATIONS``.

All devices in a round share the round's seeds, so direction (step k, i, j) is the same vector
for every device and its scalars can be averaged. Each direction is averaged over the devices that
evaluated it (weights: the number of examples behind the scalar), so devices that ran fewer local
steps or fewer block-2 perturbations leave the estimate unbiased instead of pulling it to zero.
The robust rules (median, trimmed mean) and clipping let a few hostile or broken devices move
the model only so far. ``Aggregation`` is the choice, the same for ``simulate`` and ``coordinate``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable

import numpy as np

from edgezo.errors import EdgezoError
from edgezo.keys import Direction

AGGREGATIONS = ("mean", "median", "trimmed")


def average_scalars(contributions: Iterable[tuple[dict[Direction, float], float]]) -> dict[Direction, float]:
    """``contributions``: (scalars, weight) per device. Returns the per-direction weighted mean."""
    terms: dict[Direction, list[float]] = defaultdict(list)
    weights: dict[Direction, list[float]] = defaultdict(list)
    for scalars, w in contributions:
        if not (w > 0 and math.isfinite(w)):
            continue
        for d, g in scalars.items():
            if math.isfinite(g):
                terms[d].append(w * g)
                weights[d].append(w)
    # fsum is exactly rounded, so the mean does not depend on the order results arrived in: a
    # coordinator over MQTT gets the bits a simulation gets.
    return {d: math.fsum(terms[d]) / math.fsum(weights[d]) for d in sorted(terms)}


def robust_average(contributions: Iterable[tuple[dict[Direction, float], float]], how: str = "mean", trim: float = 0.1) -> dict[Direction, float]:
    """Per-direction aggregation that a few bad devices cannot drag far: ``median`` (of the devices'
    scalars) or ``trimmed`` (drop the ``trim`` fraction at each end, then the unweighted mean).
    ``mean`` is ``average_scalars``. Both robust rules ignore example weights: a device could lie
    about its count."""
    contributions = list(contributions)
    if how == "mean":
        return average_scalars(contributions)
    values: dict[Direction, list[float]] = defaultdict(list)
    for scalars, w in contributions:
        if w > 0 and math.isfinite(w):
            for d, g in scalars.items():
                if math.isfinite(g):
                    values[d].append(g)
    out = {}
    for d in sorted(values):
        v = sorted(values[d])
        if how == "median":
            n = len(v)
            out[d] = v[n // 2] if n % 2 else 0.5 * (v[n // 2 - 1] + v[n // 2])
        elif how == "trimmed":
            cut = int(len(v) * trim)
            kept = v[cut : len(v) - cut] or v
            out[d] = math.fsum(kept) / len(kept)
        else:
            raise ValueError(f"unknown aggregation {how!r}")
    return out


def to_wire_precision(scalars: dict[Direction, float]) -> dict[Direction, float]:
    """Round scalars to float32, as devices send them: a simulation that does the same aggregates
    the very numbers a coordinator receives."""
    return {d: float(np.float32(g)) for d, g in scalars.items()}


@dataclass(frozen=True)
class Aggregation:
    """How a round's scalars become one per direction: the rule (``mean`` weighted by examples,
    ``median``, or ``trimmed`` mean cutting ``trim`` at each end), after clipping every device's
    scalars to [-clip, clip] when ``clip`` is set."""

    rule: str = "mean"
    trim: float = 0.1
    clip: float | None = None

    def __post_init__(self):
        if self.rule not in AGGREGATIONS:
            raise EdgezoError(f"unknown aggregation {self.rule!r}; use one of {', '.join(AGGREGATIONS)}")
        if not 0 <= self.trim < 0.5:
            raise EdgezoError(f"--trim must be at least 0 and below 0.5 (got {self.trim})")
        if self.clip is not None and not (self.clip > 0 and math.isfinite(self.clip)):
            raise EdgezoError(f"--clip must be a positive number (got {self.clip})")

    def clipped(self, scalars: dict[Direction, float]) -> dict[Direction, float]:
        """One device's scalars, each clipped to [-clip, clip] (in double precision: a clipped
        scalar is the bound as given)."""
        if self.clip is None:
            return scalars
        values = np.clip(np.fromiter(scalars.values(), np.float64, len(scalars)), -self.clip, self.clip)
        return dict(zip(scalars, map(float, values)))

    def combine(self, contributions: Iterable[tuple[dict[Direction, float], float]]) -> dict[Direction, float]:
        """(scalars, weight) per device -> one scalar per direction, by the rule."""
        return robust_average(contributions, self.rule, self.trim)
