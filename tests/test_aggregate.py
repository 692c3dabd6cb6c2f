"""The default aggregation's screening, the trimmed mean's count and the update check, as pure
functions: what a hostile or broken participant can and cannot do to a round."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgezo.aggregate import OUTLIER_BOUND, Aggregation, average_scalars, screen, trim_count
from edgezo.engine import MAX_STEP_GAIN, RoundRecord, check_update, review_round
from edgezo.errors import EdgezoError
from edgezo.keys import Direction
from edgezo.methods import method_of

DIRS = [Direction(7, 1, 0, 2, 0, j) for j in range(8)]


def honest(devices: int, seed: int = 0, scale: float = 1.0) -> list[tuple[dict, float]]:
    """Scalars as honest devices send them: a shared signal per direction plus each batch's noise."""
    rng = np.random.default_rng(seed)
    signal = rng.normal(0, scale, len(DIRS))
    return [({d: float(s + rng.normal(0, scale)) for d, s in zip(DIRS, signal)}, 4.0 + k) for k in range(devices)]


@pytest.mark.parametrize("devices", [3, 4, 10, 40])
def test_honest_rounds_pass_untouched_and_give_the_plain_weighted_mean_bit_for_bit(devices):
    for seed in range(50):
        contributions = honest(devices, seed, scale=10.0 ** (seed % 5 - 2))
        s = screen(contributions)
        assert s.outliers == {} and s.kept == contributions
        assert Aggregation().combine(contributions) == average_scalars(contributions)


@pytest.mark.parametrize("value", [1e30, -1e30, math.nan, math.inf, 1e4])
def test_a_minority_far_outside_the_round_is_left_out_and_named(value):
    contributions = honest(10, seed=3)
    bad = [({d: value for d in DIRS}, 8.0), ({d: value for d in DIRS}, 8.0)]
    s = screen(contributions[:4] + bad[:1] + contributions[4:] + bad[1:])
    assert sorted(s.outliers) == [4, 11]
    assert "8 " in s.outliers[4] and ("non-finite" in s.outliers[4] or "out of bound" in s.outliers[4])
    assert Aggregation().combine(contributions[:4] + bad[:1] + contributions[4:] + bad[1:]) == average_scalars(contributions)


def test_a_device_mostly_out_of_bound_is_left_out_of_the_round_altogether():
    contributions = honest(9, seed=4)
    garbage = {d: (1e3 if k < 6 else 0.5) for k, d in enumerate(DIRS)}  # two of eight land in bound by luck
    s = screen(contributions + [(garbage, 4.0)])
    assert "left out of the round" in s.outliers[9] and s.kept[9] == ({}, 4.0)
    assert Aggregation().combine(contributions + [(garbage, 4.0)]) == average_scalars(contributions)
    few = {d: (1e3 if k < 2 else contributions[0][0][d]) for k, d in enumerate(DIRS)}  # two of eight out: only those
    s = screen(contributions + [(few, 4.0)])
    assert len(s.kept[9][0]) == 6 and "left out of the round" not in s.outliers[9]


def test_one_hostile_device_of_three_is_cut_without_cutting_the_honest_two():
    """Three devices: a direction's MAD is the smaller of two honest gaps, so it would cut honest
    scalars; the pooled round scale does not."""
    a = {d: 1.0 + 0.001 * k for k, d in enumerate(DIRS)}
    b = {d: 1.001 + 0.001 * k for k, d in enumerate(DIRS)}  # b is very close to a: a tiny per-direction MAD
    c = {d: -2.0 + 0.5 * k for k, d in enumerate(DIRS)}  # honest but far from both, within the round's scale
    assert screen([(a, 1.0), (b, 1.0), (c, 1.0)]).outliers == {}
    s = screen([(a, 1.0), (b, 1.0), ({d: 1e30 for d in DIRS}, 1.0)])
    assert list(s.outliers) == [2]


def test_two_devices_are_not_screened_by_bound_and_tiny_values_cannot_hide_a_huge_one():
    a, huge = honest(1)[0], ({d: 1e30 for d in DIRS}, 1.0)
    assert screen([a, huge]).outliers == {}  # no majority: the update check guards this round
    tiny = ({d: 1e-30 for d in DIRS}, 1.0)
    assert 3 in screen([a, *honest(2, 1), huge, tiny]).outliers  # a tiny scale does not let 1e30 through


def test_directions_few_devices_evaluated_and_silent_rounds():
    contributions = honest(5)
    extra = Direction(7, 1, 0, 2, 0, 99)
    contributions[0][0][extra] = 1e30  # only one device evaluated it: no majority
    assert screen(contributions).outliers == {}
    assert screen([]).outliers == {} and screen([({}, 1.0)] * 3).outliers == {}
    zeros = [({d: 0.0 for d in DIRS}, 1.0)] * 4
    assert screen(zeros + [({d: 5.0 for d in DIRS}, 1.0)]).outliers == {}  # a round scale of 0: not screened by bound


def test_the_bound_can_be_turned_off_and_is_checked():
    contributions = honest(5) + [({d: 1e30 for d in DIRS}, 1.0)]
    assert screen(contributions, None).outliers == {}
    assert Aggregation(bound=None).combine(contributions)[DIRS[0]] > 1e28
    assert Aggregation().bound == OUTLIER_BOUND
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(EdgezoError, match="outlier bound"):
            Aggregation(bound=bad)


@pytest.mark.parametrize("n,trim,cut", [(2, 0.1, 0), (3, 0.1, 1), (5, 0.1, 1), (9, 0.1, 1), (10, 0.1, 1), (20, 0.1, 2),
                                        (4, 0.45, 1), (3, 0.0, 0), (10, 0.25, 2)])
def test_trimmed_cuts_at_least_one_device_at_each_end_when_it_can(n, trim, cut):
    assert trim_count(n, trim) == cut
    assert n - 2 * trim_count(n, trim) >= 1


def test_trimmed_survives_one_huge_device_of_four_with_the_default_trim():
    contributions = honest(3) + [({d: 1e30 for d in DIRS}, 1.0)]
    out = Aggregation("trimmed", bound=None).combine(contributions)
    assert max(abs(v) for v in out.values()) < 10


@pytest.mark.parametrize("trim", [-0.1, 0.5, 0.7, math.nan])
def test_trim_out_of_range_is_one_clear_error(trim):
    with pytest.raises(EdgezoError, match="--trim"):
        Aggregation("trimmed", trim=trim)


def test_the_update_check_refuses_non_finite_and_oversized_steps():
    ok = [(d, -2e-3 * 0.5) for d in DIRS]
    assert check_update(ok, 2e-3).accepted
    nan = check_update(ok[:-1] + [(DIRS[-1], math.nan)], 2e-3)
    assert not nan.accepted and "1 of its 8 coefficients are not finite" in nan.reasons[0]
    huge = check_update([(d, -2e-3 * 1e30 / 8) for d in DIRS], 2e-3)
    assert not huge.accepted and "would move a weight" in huge.reasons[0]
    # the bound is per local step and relative to lr: K steps of honest size pass
    steps = [(Direction(7, 1, k, 2, 0, j), -1e-2 * 100 / 4) for k in range(20) for j in range(4)]
    assert check_update(steps, 1e-2).accepted
    assert not check_update(steps, 1e-2 / MAX_STEP_GAIN).accepted
    assert check_update([], 1e-3).accepted


def test_a_review_names_the_cut_and_blames_the_cause_of_a_refusal():
    spzo = method_of("spzo")
    contributions = honest(4) + [({d: 1e30 for d in DIRS}, 4.0)]
    names = ["a", "b", "c", "d", "e"]
    review = review_round(spzo, names, contributions, 1e-3, "joint", Aggregation())
    assert review.accepted and list(review.cut) == ["e"]
    assert review.update == spzo.aggregate(contributions[:4], 1e-3, "joint", Aggregation(bound=None))
    two = review_round(spzo, ["a", "e"], [contributions[0], contributions[-1]], 1e-3, "joint", Aggregation())
    assert not two.accepted and two.update == [] and list(two.blamed) == ["e"]
    lines = two.describe(4)
    assert any("update refused" in line for line in lines) and any(line.startswith("round 4: e:") for line in lines)
    record = two.annotate(RoundRecord(4, "spzo", 0.7, None, 0, 0, 0.0, 0.0, 0.0, 0.0))
    assert "e" in record.cut and "would move a weight" in record.refused
    clean = review_round(spzo, names[:4], contributions[:4], 1e-3, "joint", Aggregation())
    row = clean.annotate(RoundRecord(4, "spzo", 0.7, None, 0, 0, 0.0, 0.0, 0.0, 0.0)).to_dict()
    assert "cut" not in row and "refused" not in row  # an honest round's metrics row is what it was
