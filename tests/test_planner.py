"""The cost model, the planner and heterogeneous simulation: pure functions, no model loaded
(the toy quadratic executor stands in for a network where a job must run)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgezo.config import JobConfig
from edgezo.costmodel import ModelShape, Predictor, Work, linear_fit, suggest_split
from edgezo.errors import EdgezoError
from edgezo.methods import method_of
from edgezo.planner import Budget, Limits, NothingFits, fixed_plan, plan_device
from edgezo.profiles import BackendProfile, ForwardTiming, ModelMeasurement, Profile
from edgezo.simulation import SimulatedClock, SimulatedDevice, run_simulation
from tests.toy_executor import QuadraticExecutor


def with_split(shape: ModelShape, split: int) -> ModelShape:
    """The same model split elsewhere, trainable elements re-divided by layer share (only tests
    need it, so it lives here)."""
    from dataclasses import replace

    total = sum(shape.trainable)
    tensors = sum(shape.trainable_tensors)
    share1 = split / shape.layers
    n1 = round(total * share1)
    t1 = round(tensors * share1)
    return replace(shape, split=split, trainable=(n1, total - n1), trainable_tensors=(t1, tensors - t1))


SHAPE = ModelShape(
    name="toy-llm", layers=30, split=20, layer_params=(3_500_000,) * 30, head_params=28_000_000, hidden=576,
    intermediate=1536, heads=9, kv_hidden=192, vocab=49152, total_params=135_000_000, trainable=(23_000, 12_000),
    trainable_tensors=(41, 21), largest_unit_trainable=1152,
)


def backend(name="torch", gflops=50.0, overhead_ms=1.0, measured=None, **kw) -> BackendProfile:
    return BackendProfile(name=name, gflops=gflops, overhead_ms=overhead_ms, measured=measured, **kw)


def profile(*backends, available=8.0, kind="reference") -> Profile:
    return Profile(name="dev", kind=kind, memory_total_gb=max(available, 8.0), memory_available_gb=available,
                   backends=list(backends) or [backend()], sources=["test"])


def measured_rows(t1: float, t2: float, batches=(1, 4, 16), tokens=64) -> ModelMeasurement:
    """Timings proportional to batch: t_b per sequence."""
    rows = [ForwardTiming(b, tokens, t1 * b, t2 * b) for b in batches]
    return ModelMeasurement(model=SHAPE.name, layers=SHAPE.layers, split=SHAPE.split, trainable="norm", load_mb=600.0, forwards=rows)


# ------------------------------------------------------------------------------ cost model


def test_linear_fit_recovers_a_line_and_clamps_a_negative_intercept():
    a, b = linear_fit([1, 2, 4], [3.0, 5.0, 9.0])
    assert a == pytest.approx(1.0) and b == pytest.approx(2.0)
    a, b = linear_fit([1, 2], [0.5, 2.5])  # the line through them crosses below zero
    assert a == 0.0 and b > 0


def test_measured_rows_are_reproduced_and_interpolated_along_flops():
    pred = Predictor(backend(measured=measured_rows(0.1, 0.05)), SHAPE, 64)
    assert pred.forward_s(1, 4) == pytest.approx(0.4, rel=1e-9)
    assert pred.forward_s(2, 16) == pytest.approx(0.8, rel=1e-9)
    assert pred.forward_s(1, 8) == pytest.approx(0.8, rel=1e-9)  # unmeasured batch, on the line


def test_another_model_or_split_falls_back_to_the_capability_figures():
    pred = Predictor(backend(gflops=100.0, overhead_ms=2.0, measured=measured_rows(0.1, 0.05)), with_split(SHAPE, 10), 64)
    flops = with_split(SHAPE, 10).block_flops(1, 4, 64)
    assert pred.forward_s(1, 4) == pytest.approx(11 * 2e-3 + flops / 100e9)


def test_step_time_counts_the_forwards_of_each_method():
    pred = Predictor(backend(perturb_melems_s=1e9, update_melems_s=1e9, call_us=0.0), SHAPE, 64)
    t1, t2 = pred.forward_s(1, 8), pred.forward_s(2, 8)
    assert pred.step_s(Work(1, 2, 5, 8)) == pytest.approx(2 * (2 * t1 + 10 * t2), rel=1e-6)
    assert pred.step_s(Work(1, 3, 1, 8, method=method_of("mezo"))) == pytest.approx(6 * (t1 + t2), rel=1e-6)
    assert pred.step_s(Work(1, 3, 1, 8, method=method_of("fedzo"), difference="forward")) == pytest.approx(4 * (t1 + t2), rel=1e-6)
    clean = pred.step_s(Work(1, 1, 4, 8, variant="clean"))
    assert clean == pytest.approx(t1 + 2 * (t1 + t2) + 8 * t2, rel=1e-6)
    assert pred.round_s(Work(3, 1, 4, 8)) >= 3 * pred.step_s(Work(3, 1, 4, 8))


def test_peak_memory_grows_with_the_batch_and_the_weights_dtype():
    fp32 = Predictor(backend(bytes_per_param=4.0), SHAPE, 64)
    q8 = Predictor(backend(bytes_per_param=1.0625), SHAPE, 64)
    assert fp32.peak_mb(16) > fp32.peak_mb(1)
    assert fp32.peak_mb(1) - q8.peak_mb(1) == pytest.approx(SHAPE.total_params * (4 - 1.0625) / 2**20)


def test_suggested_split_balances_the_blocks():
    assert suggest_split(SHAPE, 4) == 24
    assert suggest_split(SHAPE, 1) == 15
    assert 1 <= suggest_split(SHAPE, 1000) <= SHAPE.layers - 1


# ------------------------------------------------------------------------------ planner


def test_planner_never_exceeds_its_budgets():
    rng = np.random.default_rng(0)
    planned = refused = 0
    for _ in range(300):
        prof = profile(
            backend("torch", gflops=float(rng.uniform(2, 300)), overhead_ms=float(rng.uniform(0, 5)),
                    perturb_melems_s=float(rng.uniform(10, 2000)), call_us=float(rng.uniform(1, 200))),
            backend("mlx", gflops=float(rng.uniform(2, 300)), overhead_ms=float(rng.uniform(0, 5)), bytes_per_param=2.0),
            available=float(rng.uniform(0.3, 16)),
        )
        budget = Budget(round_seconds=float(rng.uniform(0.5, 300)), memory_gb=float(rng.uniform(0.3, 8)))
        limits = Limits(Work(k=int(rng.integers(1, 5)), batch=int(rng.integers(1, 33))), p1=int(rng.integers(1, 4)), p2=int(rng.integers(1, 17)))
        tokens = int(rng.integers(16, 257))
        try:
            plan = plan_device(prof, SHAPE, tokens, budget, limits)
        except NothingFits:
            refused += 1
            # Refusing is right only if the smallest work fits nowhere.
            smallest = Work(1, 1, 1, 1)
            for b in prof.backends:
                pred = Predictor(b, SHAPE, tokens)
                assert pred.peak_mb(1) > 1024 * budget.memory_gb or pred.round_s(smallest) > budget.safety * budget.round_seconds
            continue
        planned += 1
        pred = Predictor(prof.backend(plan.backend), SHAPE, tokens)
        assert pred.round_s(plan.work) == pytest.approx(plan.round_s)
        assert plan.round_s <= budget.safety * budget.round_seconds
        assert pred.peak_mb(plan.work.batch) <= 1024 * budget.memory_gb
        w = plan.work
        assert 1 <= w.k <= limits.k and 1 <= w.batch <= limits.batch and 1 <= w.p1 <= limits.p1 and 1 <= w.p2 <= limits.p2
    assert planned > 50 and refused > 10  # both branches were exercised


def test_planner_gives_larger_p2_where_block_2_is_cheap():
    """Same full-forward time per sequence; on one device block 2 is a tenth of block 1."""
    limits = Limits(Work(k=2, batch=16), p1=2, p2=32)
    budget = Budget(round_seconds=60)
    cheap_block2 = plan_device(profile(backend(measured=measured_rows(0.10, 0.01))), SHAPE, 64, budget, limits)
    even = plan_device(profile(backend(measured=measured_rows(0.055, 0.055))), SHAPE, 64, budget, limits)
    assert cheap_block2.work.p2 > even.work.p2
    assert cheap_block2.work.estimates > even.work.estimates


def test_faster_devices_get_more_work_and_slow_ones_less_but_still_some():
    limits, budget = Limits(Work(k=2, batch=16), p1=2, p2=16), Budget(round_seconds=30)
    fast = plan_device(profile(backend(measured=measured_rows(0.01, 0.005))), SHAPE, 64, budget, limits)
    slow = plan_device(profile(backend(measured=measured_rows(0.3, 0.15))), SHAPE, 64, budget, limits)
    assert fast.work.estimates > slow.work.estimates >= 1
    assert fast.work == Work(2, 2, 16, 16)  # everything the limits allow
    assert slow.work.batch == 16  # time alone never lowers the batch while a smaller K or P2 fits


def test_memory_lowers_the_batch_before_time_does():
    prof = profile(backend(measured=measured_rows(0.001, 0.001)), available=64.0)
    pred = Predictor(prof.backends[0], SHAPE, 256)
    memory_gb = (pred.peak_mb(4) + pred.peak_mb(8)) / 2 / 1024  # batch 4 fits, 8 does not
    plan = plan_device(prof, SHAPE, 256, Budget(600, memory_gb=memory_gb), Limits(Work(k=2, batch=16)))
    assert plan.work.batch == 4


def test_planner_picks_the_backend_that_does_more():
    slow, fast = backend("torch", gflops=5.0), backend("mlx", gflops=200.0)
    plan = plan_device(profile(slow, fast), SHAPE, 64, Budget(20), Limits())
    assert plan.backend == "mlx"


def test_planner_refuses_clearly():
    with pytest.raises(NothingFits, match=r"does not fit in memory on dev.*batch 1.*budget is 200 MB"):
        plan_device(profile(), SHAPE, 64, Budget(60, memory_gb=200 / 1024), Limits())
    with pytest.raises(NothingFits, match=r"no round fits .*smallest round \(K=1, P1=1, P2=1, batch 1\) takes .* on its fastest backend \(torch\)"):
        plan_device(profile(backend(gflops=0.01)), SHAPE, 64, Budget(5), Limits())
    with pytest.raises(EdgezoError, match="round-time budget must be positive"):
        Budget(0)
    with pytest.raises(EdgezoError, match="planner limit p2"):
        Limits(p2=0)


def test_fixed_plan_is_the_jobs_work_on_the_fastest_backend_that_fits():
    prof = profile(backend("torch", gflops=20.0), backend("mlx", gflops=80.0, bytes_per_param=2.0))
    plan = fixed_plan(prof, SHAPE, 64, Work(2, 1, 4, 16))
    assert plan.backend == "mlx" and plan.work == Work(2, 1, 4, 16)
    with pytest.raises(NothingFits, match="does not fit"):
        fixed_plan(prof, SHAPE, 64, Work(2, 1, 4, 16), memory_gb=0.1)


# ------------------------------------------------------------------------------ heterogeneous simulation


def test_simulated_clock_waits_for_the_slowest_or_the_deadline():
    clock = SimulatedClock([10.0, 30.0], [0.5, 0.5])
    assert clock.advance() == pytest.approx(30.5)
    clock = SimulatedClock([10.0, 30.0], [0.5, 0.5], deadline=20.0)
    assert clock.included(0) and not clock.included(1)
    assert clock.advance() == pytest.approx(20.0)  # waited the deadline for the late device
    clock = SimulatedClock([10.0, 15.0], [0.5, 0.5], deadline=20.0)
    assert clock.advance() == pytest.approx(15.5)  # everyone answered: closes at the last answer


class ToyBatch(float):
    """The toy executor's batch (a target shift of 0) with a size, as the simulation expects."""

    def __new__(cls, size: int):
        obj = super().__new__(cls, 0.0)
        obj.size = size
        return obj


def run_toy(works, clock=None, rounds=40, seed=3):
    ex = QuadraticExecutor(n1=8, n2=12, seed=seed)
    works = works or [None] * 3
    devices = [SimulatedDevice(list(range(20 * d, 20 * d + 20)), ex, lambda ix: ToyBatch(len(ix)), w) for d, w in enumerate(works)]
    cfg = JobConfig(method="spzo", clients=len(works), rounds=rounds, local_steps=2, lr=0.05, lr_schedule="constant", p1=1, p2=4,
                    eps=1e-3, batch_size=4, seed=seed).validate()
    start = ex.loss()
    records = run_simulation(cfg, devices, ex, evaluate=lambda: 0.0, clock=clock)
    return ex, start, records


def test_a_job_with_mixed_p2_converges():
    """Devices with P2 = 1, 4 and 16 (and different K and P1) train one model together."""
    works = [Work(1, 1, 1, 4), Work(2, 1, 4, 4), Work(2, 2, 16, 4)]
    ex, start, records = run_toy(works)
    assert ex.loss() < 0.2 * start, (start, ex.loss())
    assert all(r.devices == 3 for r in records[1:])
    ex_fixed, _, _ = run_toy([Work(1, 1, 1, 4)] * 3)
    assert ex.loss() < ex_fixed.loss()  # the devices that did more made the job better, not worse


def test_devices_that_miss_the_deadline_are_left_out():
    works = [Work(2, 1, 4, 4)] * 3
    clock = SimulatedClock([5.0, 8.0, 50.0], [0.1, 0.1, 0.1], deadline=20.0)
    _, _, records = run_toy(works, clock, rounds=3)
    assert [r.devices for r in records[1:]] == [2, 2, 2]
    assert [r.sim_time_s for r in records] == [0.0, 20.0, 40.0, 60.0]
    with pytest.raises(EdgezoError, match="no device can answer a round within the 1 s deadline"):
        run_toy(works, SimulatedClock([5.0, 8.0, 50.0], [0.1] * 3, deadline=1.0), rounds=1)


def test_no_profiles_means_no_simulated_time():
    _, _, records = run_toy(None, rounds=1)
    assert all(r.sim_time_s is None and "sim_time_s" not in r.to_dict() for r in records)
    assert math.isfinite(records[-1].flops)


def test_a_tight_memory_budget_moves_a_reference_device_to_int8():
    """pi5 lists torch (fp32) and int8 (Q8_0): with room, torch (faster); under the fp32 step's
    peak, int8 (a third of the weight memory), with the same work."""
    from edgezo.profiles import resolve_profile

    pi5 = resolve_profile("pi5")
    limits = Limits(Work(2, 1, 4, 16), p1=2, p2=16)
    roomy = plan_device(pi5, SHAPE, 40, Budget(120, None), limits)
    fp32_peak = roomy.peak_mb
    tight = plan_device(pi5, SHAPE, 40, Budget(120, 0.95 * fp32_peak / 1024), limits)
    assert roomy.backend == "torch" and tight.backend == "int8"
    assert tight.peak_mb < 0.6 * fp32_peak
    assert (tight.work.k, tight.work.p2, tight.work.batch) == (roomy.work.k, roomy.work.p2, roomy.work.batch)


# ------------------------------------------------------------------------------ full-forward devices


def test_a_device_without_block_1_reuse_pays_a_full_forward_per_block_2_probe_and_gets_fewer():
    """``reuses_block1 = false`` (the browser device): a joint step costs 2·P1·P2 full forwards
    instead of 2·P1 block-1 and 2·P1·P2 block-2 ones, so the planner gives it fewer probes."""
    free = dict(perturb_melems_s=1e9, update_melems_s=1e9, call_us=0.0)
    reuses, full = Predictor(backend(**free), SHAPE, 64), Predictor(backend(reuses_block1=False, **free), SHAPE, 64)
    t1, t2 = reuses.forward_s(1, 8), reuses.forward_s(2, 8)
    assert reuses.step_s(Work(1, 2, 5, 8)) == pytest.approx(2 * (2 * t1 + 10 * t2), rel=1e-6)
    assert full.step_s(Work(1, 2, 5, 8)) == pytest.approx(2 * 10 * (t1 + t2), rel=1e-6)
    assert full.step_s(Work(1, 3, 1, 8, method=method_of("mezo"))) == pytest.approx(6 * (t1 + t2), rel=1e-6)  # already full
    limits, budget = Limits(Work(k=2, batch=16), p1=2, p2=16), Budget(round_seconds=60)
    kept = plan_device(profile(backend()), SHAPE, 64, budget, limits)
    browser = plan_device(profile(backend(reuses_block1=False)), SHAPE, 64, budget, limits)
    assert browser.work.p2 < kept.work.p2 and browser.round_s <= 0.85 * 60


def test_reuses_block1_is_read_from_a_profile_and_must_be_a_boolean():
    from edgezo.profiles import profile_from_dict

    data = {"name": "page", "kind": "measured", "memory_total_gb": 4.0, "memory_available_gb": 2.0,
            "backends": [{"name": "onnxruntime-web-wasm", "gflops": 5.0, "reuses_block1": False}]}
    assert profile_from_dict(data).backends[0].reuses_block1 is False
    assert profile_from_dict({**data, "backends": [{"name": "torch"}]}).backends[0].reuses_block1 is True
    with pytest.raises(EdgezoError, match="reuses_block1 must be true or false"):
        profile_from_dict({**data, "backends": [{"name": "torch", "reuses_block1": 0}]})
