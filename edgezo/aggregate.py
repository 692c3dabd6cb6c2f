"""Server-side aggregation of devices' scalars, per direction, by one of ``AGGREGATIONS``.

All devices in a round share the round's seeds, so direction (step k, i, j) is the same vector
for every device and its scalars can be averaged. Each direction is averaged over the devices that
evaluated it (weights: the number of examples behind the scalar), so devices that ran fewer local
steps or fewer block-2 perturbations leave the estimate unbiased instead of pulling it to zero.
The robust rules (median, trimmed mean) and clipping let a few hostile or broken devices move
the model only so far. ``Aggregation`` is the choice, the same for ``simulate`` and ``coordinate``.

Robust by default: before any rule combines them, ``screen`` leaves out of each direction the
scalars that lie far outside the round's own spread (a hostile or broken device's 1e30, NaN or
garbage), and names the devices it cut. When nothing is out of bound the contributions go through
untouched, so an honest round gives the very bits the plain weighted mean gives.
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

# A scalar is out of bound when it lies farther than OUTLIER_BOUND round scales from its
# direction's median (the round scale: the typical device's median |scalar|, per block). Honest
# scalars of the invariant jobs and of a 10-device tiny-model job on SST-2 reached 15 scales at
# most (3-device Dirichlet job); 50 leaves a margin, since an honest device cut by mistake is also
# a strike in the coordinator's ledger.
OUTLIER_BOUND = 50.0
# Fewer devices than this on a direction have no majority to tell the outlier by: with two, either
# may be the one that lies. Such directions are not screened (the update check still guards them).
SCREEN_MIN_DEVICES = 3

Contribution = tuple[dict[Direction, float], float]  # one device's scalars and its weight (examples)


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
            kept = v[trim_count(len(v), trim) : len(v) - trim_count(len(v), trim)]
            out[d] = math.fsum(kept) / len(kept)
        else:
            raise ValueError(f"unknown aggregation {how!r}")
    return out


def trim_count(n: int, trim: float) -> int:
    """Values a trimmed mean of ``n`` cuts at each end: ``int(n * trim)``, but at least one when
    ``trim`` > 0 and three or more remain to trim (so --trim 0.1 trims something in a round of
    fewer than ten devices), and never so many that nothing is left."""
    if trim <= 0 or n < 3:
        return 0
    return min(max(1, int(n * trim)), (n - 1) // 2)


@dataclass(frozen=True)
class Screening:
    """What ``screen`` made of a round: the contributions with their out-of-bound and non-finite
    scalars left out (the very same objects when nothing was), and why each cut device was cut
    (keyed by its position among the contributions)."""

    kept: list[Contribution]
    outliers: dict[int, str]


def _round_scale(rows: list[np.ndarray]) -> float:
    """The typical device's median |scalar| over ``rows`` (one array per device, NaN: not
    evaluated or non-finite): a scale a minority of devices cannot drag, whatever they send."""
    per_device = [float(np.median(np.abs(r[np.isfinite(r)]))) for r in rows if np.isfinite(r).any()]
    return float(np.median(per_device)) if per_device else 0.0


def screen(contributions: Iterable[Contribution], bound: float | None = OUTLIER_BOUND) -> Screening:
    """Leave out of each direction the scalars farther than ``bound`` round scales from the
    direction's median over devices, and every non-finite scalar; name the devices concerned.

    Why median and a pooled scale rather than each direction's MAD: in a round of three devices a
    direction's MAD is the smaller of two honest gaps and can be tiny, so it would cut honest
    scalars; the round scale (per block, the median over devices of each device's median |scalar|)
    pools every direction of the block and still ignores a minority of devices. A block whose
    scale is 0 falls back to the scale of the whole round; a round whose scale is 0 is not screened
    by bound. Directions that fewer than ``SCREEN_MIN_DEVICES`` devices evaluated are not screened
    by bound either. A device more than half of whose scalars are out is left out of the round
    altogether (garbage that happens to land in bound is no contribution). Example weights play
    no part in the screening (a device could lie about its count).
    """
    contributions = list(contributions)
    directions = sorted(set().union(*(s for s, _ in contributions))) if contributions else []
    if not directions:
        return Screening(contributions, {})
    column = {d: c for c, d in enumerate(directions)}
    matrix = np.full((len(contributions), len(directions)), np.nan)
    for row, (scalars, _) in enumerate(contributions):
        for d, g in scalars.items():
            matrix[row, column[d]] = g
    finite = np.isfinite(matrix)
    values = np.where(finite, matrix, np.nan)
    out = ~finite & ~np.isnan(matrix)  # non-finite scalars (NaN placeholders are "not evaluated")
    out |= np.isnan(matrix) & np.array([[d in s for d in directions] for s, _ in contributions], bool)
    limits = np.full(len(directions), np.inf)
    if bound is not None and len(contributions) >= SCREEN_MIN_DEVICES:
        whole = _round_scale(list(values))
        blocks = np.array([d.block for d in directions])
        for block in np.unique(blocks):
            cols = blocks == block
            scale = _round_scale(list(values[:, cols])) or whole
            if scale > 0:
                limits[cols] = bound * scale
        counts = finite.sum(axis=0)
        screened = counts >= SCREEN_MIN_DEVICES
        if screened.any():
            with np.errstate(invalid="ignore"):
                medians = np.nanmedian(values[:, screened], axis=0)
                far = np.abs(values[:, screened] - medians) > limits[screened]
            out[:, screened] |= far & finite[:, screened]
    if not out.any():
        return Screening(contributions, {})
    kept: list[Contribution] = []
    outliers: dict[int, str] = {}
    for row, (scalars, w) in enumerate(contributions):
        cut = out[row]
        if not cut.any():
            kept.append((scalars, w))
            continue
        bad = int((~finite[row] & cut).sum())
        far_count = int(cut.sum()) - bad
        why = []
        if bad:
            why.append(f"{bad} non-finite")
        if far_count:
            worst = float(np.nanmax(np.abs(np.where(cut & finite[row], matrix[row], np.nan))))
            limit = float(np.nanmin(limits[cut & finite[row]]))
            why.append(f"{far_count} out of bound (largest {worst:.3g}, more than {limit:.3g} from the devices' median)")
        if 2 * int(cut.sum()) > len(scalars):  # mostly garbage: its in-bound scalars are luck, not honesty
            kept.append(({}, w))
            outliers[row] = f"{' and '.join(why)} of its {len(scalars)} scalars: left out of the round"
            continue
        dropped = {directions[c] for c in np.flatnonzero(cut)}
        kept.append(({d: g for d, g in scalars.items() if d not in dropped}, w))
        outliers[row] = f"{' and '.join(why)} of its {len(scalars)} scalars left out"
    return Screening(kept, outliers)


def to_wire_precision(scalars: dict[Direction, float]) -> dict[Direction, float]:
    """Round scalars to float32, as devices send them: a simulation that does the same aggregates
    the very numbers a coordinator receives."""
    return {d: float(np.float32(g)) for d, g in scalars.items()}


@dataclass(frozen=True)
class Aggregation:
    """How a round's scalars become one per direction: the rule (``mean`` weighted by examples,
    ``median``, or ``trimmed`` mean cutting ``trim`` at each end, at least one device when it
    can), after clipping every device's scalars to [-clip, clip] when ``clip`` is set and leaving
    out the scalars ``screen`` finds out of ``bound`` (the default: robust without a flag)."""

    rule: str = "mean"
    trim: float = 0.1
    clip: float | None = None
    bound: float | None = OUTLIER_BOUND  # screen's bound in round scales; None: no screening

    def __post_init__(self):
        if self.rule not in AGGREGATIONS:
            raise EdgezoError(f"unknown aggregation {self.rule!r}; use one of {', '.join(AGGREGATIONS)}")
        if not 0 <= self.trim < 0.5:
            raise EdgezoError(f"--trim must be at least 0 and below 0.5 (got {self.trim})")
        if self.clip is not None and not (self.clip > 0 and math.isfinite(self.clip)):
            raise EdgezoError(f"--clip must be a positive number (got {self.clip})")
        if self.bound is not None and not (self.bound > 0 and math.isfinite(self.bound)):
            raise EdgezoError(f"the outlier bound must be a positive number of round scales (got {self.bound})")

    def clipped(self, scalars: dict[Direction, float]) -> dict[Direction, float]:
        """One device's scalars, each clipped to [-clip, clip] (in double precision: a clipped
        scalar is the bound as given)."""
        if self.clip is None:
            return scalars
        values = np.clip(np.fromiter(scalars.values(), np.float64, len(scalars)), -self.clip, self.clip)
        return dict(zip(scalars, map(float, values)))

    def combine(self, contributions: Iterable[tuple[dict[Direction, float], float]],
                screening: Screening | None = None) -> dict[Direction, float]:
        """(scalars, weight) per device -> one scalar per direction, by the rule, once the
        out-of-bound scalars are left out. ``screening``: ``screen(contributions)`` when the
        caller has it already (a round's review), so a round is screened once."""
        if screening is None:
            screening = self.screen(contributions)
        return robust_average(screening.kept, self.rule, self.trim)

    def screen(self, contributions: Iterable[Contribution]) -> Screening:
        """``screen`` at this aggregation's bound: which devices' scalars ``combine`` leaves out."""
        return screen(contributions, self.bound)
