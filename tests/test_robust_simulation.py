"""`simulate` aggregates with the coordinator's rules: a device whose scalars are far off drags
the example-weighted mean, but neither the median, the trimmed mean nor clipping lets it."""

from __future__ import annotations

import pytest

from edgezo.aggregate import Aggregation
from edgezo.config import JobConfig
from edgezo.errors import EdgezoError
from edgezo.methods import method_of
from edgezo.simulation import SimulatedDevice, run_simulation
from toy_executor import QuadraticExecutor


class ShiftedBatch(float):
    """A toy batch: the targets shifted by its value (an honest device's is 0), with a size."""

    def __new__(cls, size: int, shift: float = 0.0):
        obj = super().__new__(cls, shift)
        obj.size = size
        return obj


def loss_after(aggregation: Aggregation, rounds: int = 30) -> tuple[float, float]:
    """Four honest devices and one whose data pulls the model far away: the honest loss before
    and after the job."""
    ex = QuadraticExecutor(n1=8, n2=12, seed=5)
    shifts = [0.0, 0.0, 0.0, 0.0, 200.0]
    devices = [SimulatedDevice(list(range(10 * d, 10 * d + 10)), ex, lambda ix, s=s: ShiftedBatch(len(ix), s)) for d, s in enumerate(shifts)]
    cfg = JobConfig(clients=len(devices), rounds=rounds, local_steps=1, p1=1, p2=4, eps=1e-3, lr=0.05, lr_schedule="constant",
                    batch_size=4, seed=2).validate()
    start = ex.loss()
    run_simulation(cfg, devices, ex, evaluate=lambda: 0.0, aggregation=aggregation)
    return start, ex.loss()


def test_robust_rules_resist_a_device_the_mean_follows():
    start, dragged = loss_after(Aggregation())
    assert dragged > start  # the mean follows the outlier
    for robust in (Aggregation("median"), Aggregation("trimmed", trim=0.2), Aggregation(clip=5.0)):
        _, loss = loss_after(robust)
        assert loss < 0.5 * start, robust


def test_a_rule_a_method_cannot_use_is_a_clear_error():
    with pytest.raises(EdgezoError, match="fedzo"):
        method_of("fedzo").check_aggregation(Aggregation("median"))  # per-device seeds: nothing to take a median of
    with pytest.raises(EdgezoError, match="--trim"):
        Aggregation("trimmed", trim=0.5)
    with pytest.raises(EdgezoError, match="--clip"):
        Aggregation(clip=-1.0)
