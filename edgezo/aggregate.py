"""Server-side aggregation of devices' scalars: a weighted mean per direction.

All devices in a round share the round's seeds, so direction (step k, i, j) is the same vector
for every device and its scalars can be averaged. Each direction is averaged over the devices that
evaluated it (weights: the number of examples behind the scalar), so devices that ran fewer local
steps or fewer block-2 perturbations leave the estimate unbiased instead of pulling it to zero.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Iterable

from edgezo.keys import Direction


def average_scalars(contributions: Iterable[tuple[dict[Direction, float], float]]) -> dict[Direction, float]:
    """``contributions``: (scalars, weight) per device. Returns the per-direction weighted mean."""
    total: dict[Direction, float] = defaultdict(float)
    weight: dict[Direction, float] = defaultdict(float)
    for scalars, w in contributions:
        if not (w > 0 and math.isfinite(w)):
            continue
        for d, g in scalars.items():
            if math.isfinite(g):
                total[d] += w * g
                weight[d] += w
    return {d: total[d] / weight[d] for d in sorted(total)}
