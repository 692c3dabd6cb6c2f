"""FedZO (Fang et al. 2022): P whole-model perturbations per step with forward differences
(P + 1 forwards), each device on its own seeds, uploading its full model delta.

Per-device seeds make each device's stream of directions its own (``stream`` = its position in
the round, 1-based), so no two devices share a direction: the global update is the
example-weighted mean of the devices' own updates, i.e. the union of their directions with
coefficients scaled by each device's weight. A per-direction median or trimmed mean has nothing to
combine, hence mean only. Devices move full float32 deltas both ways (its bytes), though the
simulation and the coordinator apply the same update through seeds.
"""

from __future__ import annotations

from typing import Sequence

from edgezo.aggregate import Aggregation, Screening
from edgezo.estimators import update_rule
from edgezo.methods.base import Contribution, Update
from edgezo.methods.single_block import SingleBlockMethod


class FedZO(SingleBlockMethod):
    name = "fedzo"
    label = "FedZO"
    default_difference = "forward"
    shared_seeds = False
    moves_model = True
    aggregations = ("mean",)

    def aggregate(self, contributions: Sequence[Contribution], lr: float, variant: str, aggregation: Aggregation,
                  screening: Screening | None = None) -> Update:
        total = sum(w for _, w in contributions)
        out = []
        for scalars, w in contributions:
            out += [(d, c * w / total) for d, c in update_rule(scalars, lr, variant)]
        return sorted(out)
