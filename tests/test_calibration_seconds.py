"""--p2 auto ranks by descent per second on a device profile: the same measured descent table
gives different choices on devices whose block-2 forwards are cheap or dear, both in the job's
calibration (``calibration.rank`` with a profile's seconds) and in the planner (``descent=``)."""

from __future__ import annotations

import pytest

from edgezo import calibration as cal
from edgezo.costmodel import ModelShape, Predictor, Work
from edgezo.methods import method_of
from edgezo.planner import Budget, Limits, plan_device
from edgezo.profiles import BackendProfile, Profile

SHAPE = ModelShape(
    name="toy-llm", layers=30, split=20, layer_params=(3_500_000,) * 30, head_params=28_000_000, hidden=576,
    intermediate=1536, heads=9, kv_hidden=192, vocab=49152, total_params=135_000_000, trainable=(23_000, 12_000),
    trainable_tensors=(41, 21), largest_unit_trainable=1152,
)
# Block 2 (layers 20-29) holds nearly all of the gradient: extra block-2 probes pay where they are cheap.
GROUPS = [cal.GroupEnergy(0, 10, 11_500, 1e-4, 5e-5), cal.GroupEnergy(10, 20, 11_500, 1e-4, 5e-5),
          cal.GroupEnergy(20, 30, 12_000, 1.0, 0.5)]
FREE = dict(perturb_melems_s=1e9, update_melems_s=1e9, call_us=0.0)  # forwards only: the known answers below


def device(name: str, reuses_block1: bool, gflops: float = 50.0) -> Profile:
    return Profile(name=name, kind="reference", memory_total_gb=8.0, memory_available_gb=8.0, sources=["a test"],
                   backends=[BackendProfile("torch", gflops=gflops, overhead_ms=0.0, reuses_block1=reuses_block1, **FREE)])


def ranked(profile: Profile | None) -> list[dict]:
    work, method = Work(batch=16), method_of("spzo")
    flops = cal.step_cost(method, work, cal.flops_costs(SHAPE, 16, 64))
    seconds = None if profile is None else cal.step_cost(
        method, work, cal.profile_costs(cal.profile_backend(profile, SHAPE, 64, work), SHAPE, GROUPS, 16, 64))
    return cal.rank(GROUPS, cal.candidates(1, [20]), "joint", flops, seconds, prefer_split=20)


def test_two_profiles_choose_different_p2_from_one_descent_table():
    """Reusing block 1, a block-2 probe costs a third of a full forward: P2 = 8 (the largest).
    Without reuse every probe is a full forward, so a step costs P2·(t1 + t2) and E‖ĝ‖²·P2 grows
    with P2: P2 = 1, whatever the throughput."""
    reuse, full = ranked(device("reuses", True)), ranked(device("page", False, gflops=500.0))
    assert reuse[0]["p2"] == 8 and full[0]["p2"] == 1
    by_p2 = {r["p2"]: r for r in full}
    for row in reuse:  # the same descent table and FLOPs beside the seconds in both records
        assert row["descent"] == by_p2[row["p2"]]["descent"] and row["flops"] == by_p2[row["p2"]]["flops"]
        assert row["descent_per_flop"] == pytest.approx(row["descent"] / row["flops"])
        assert row["descent_per_second"] == pytest.approx(row["descent"] / row["seconds"])


def test_without_a_profile_the_ranking_is_per_flop_and_carries_no_seconds():
    rows = ranked(None)
    assert "seconds" not in rows[0] and rows[0]["p2"] == 8
    assert [r["descent_per_flop"] for r in rows] == sorted((r["descent_per_flop"] for r in rows), reverse=True)


def test_the_planner_gives_each_device_its_p2_from_the_descent_table():
    """Same deadline and caps: the device that reuses block 1 gets more P2 than the one that runs
    full forwards (which gets 1, the known answer above), both within --max-p2; without the table
    the planner fills the deadline (the most estimates), with it the best descent per second."""
    descent = cal.descent_table(GROUPS, 20, "joint")
    limits, budget = Limits(Work(k=2, batch=16), p1=1, p2=12), Budget(round_seconds=600)
    reuse = plan_device(device("reuses", True), SHAPE, 64, budget, limits, descent=descent)
    full = plan_device(device("page", False), SHAPE, 64, budget, limits, descent=descent)
    filled = plan_device(device("page", False), SHAPE, 64, budget, limits)
    assert full.work.p2 == 1 and 1 < reuse.work.p2 <= 12
    assert filled.work.p2 > full.work.p2
    pred = Predictor(device("reuses", True).backends[0], SHAPE, 64)
    rate = {p2: descent(1, p2) / pred.step_s(Work(k=2, p1=1, p2=p2, batch=16)) for p2 in range(1, 13)}
    assert reuse.work.p2 == max(rate, key=rate.get)


def test_a_job_wide_choice_is_ranked_on_the_slowest_profile():
    slow, fast = device("slow", True, gflops=5.0), device("fast", True, gflops=500.0)
    assert cal.slowest_profile([fast, slow], SHAPE, 64, Work()).name == "slow"
    assert cal.shape_at(SHAPE, GROUPS, 10).trainable == (11_500, 23_500)
