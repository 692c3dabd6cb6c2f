"""Learning-rate schedules: decay from lr to lr/10 over all rounds or over --lr-decay-rounds."""

from __future__ import annotations

import pytest

from edgezo.config import JobConfig, build_config, lr_at
from edgezo.errors import EdgezoError


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_decay_goes_from_lr_to_a_tenth_by_the_last_round(schedule):
    rates = [lr_at(1.0, schedule, r, 30) for r in range(1, 31)]
    assert rates[0] == 1.0 and rates[-1] == pytest.approx(0.1)
    assert all(a > b for a, b in zip(rates, rates[1:]))
    assert lr_at(1.0, "constant", 17, 30) == 1.0


def test_decay_rounds_reach_the_floor_earlier_and_hold_it():
    held = [lr_at(1.0, "cosine", r, 30, decay_rounds=20) for r in range(1, 31)]
    assert held[:20] == [lr_at(1.0, "cosine", r, 20) for r in range(1, 21)]  # the 20-round schedule
    assert held[19:] == pytest.approx([0.1] * 11)
    assert [lr_at(1.0, "cosine", r, 30, decay_rounds=0) for r in range(1, 31)] == [lr_at(1.0, "cosine", r, 30) for r in range(1, 31)]
    assert lr_at(1.0, "linear", 30, 30, decay_rounds=99) == pytest.approx(0.1)  # longer than the job: the job's length


def test_negative_decay_rounds_is_a_clear_error():
    with pytest.raises(EdgezoError, match="--lr-decay-rounds"):
        build_config({}, {"lr_decay_rounds": -1})
    assert JobConfig().lr_decay_rounds == 0
