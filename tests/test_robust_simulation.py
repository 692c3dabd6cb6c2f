"""`simulate` aggregates with the coordinator's rules: a device whose scalars are far off drags
the plain example-weighted mean, but neither the default (the mean after screening out-of-bound
scalars), the median, the trimmed mean nor clipping lets it."""

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
    start, dragged = loss_after(Aggregation(bound=None))
    assert dragged > start  # the unscreened mean follows the outlier
    for robust in (Aggregation(), Aggregation("median"), Aggregation("trimmed", trim=0.2), Aggregation(clip=5.0, bound=None)):
        _, loss = loss_after(robust)
        assert loss < 0.5 * start, robust


def test_a_rule_a_method_cannot_use_is_a_clear_error():
    with pytest.raises(EdgezoError, match="fedzo"):
        method_of("fedzo").check_aggregation(Aggregation("median"))  # per-device seeds: nothing to take a median of
    with pytest.raises(EdgezoError, match="--trim"):
        Aggregation("trimmed", trim=0.5)
    with pytest.raises(EdgezoError, match="--clip"):
        Aggregation(clip=-1.0)


# -- hostile participants under the default settings, on a tiny model and real SST-2 -----------

from support.hostile import KINDS, simulate_job  # noqa: E402

HOSTILE = 3  # the hostile device's index among ten
SHORT = dict(rounds=3, eval_samples=200)  # seconds per job; benchmarks/reliability.py runs longer ones


@pytest.fixture(scope="module")
def jobs(tiny_llama, sst2_dir):
    """The clean job, the job whose device 3 sends nothing (a perfect defence), one per hostile kind."""
    runs = {"clean": simulate_job(tiny_llama, sst2_dir, **SHORT),
            "silent": simulate_job(tiny_llama, sst2_dir, {HOSTILE: "silent"}, **SHORT)}
    for kind in KINDS:
        runs[kind] = simulate_job(tiny_llama, sst2_dir, {HOSTILE: kind}, **SHORT)
    return runs


def test_the_clean_job_names_no_device_and_refuses_no_round(jobs):
    clean = jobs["clean"]
    assert clean.finite and not clean.named
    assert all(r.refused is None for r in clean.records)
    assert clean.fingerprint != jobs["silent"].fingerprint  # the tenth device's scalars do count when honest


@pytest.mark.parametrize("kind", ["huge", "nan", "random"])
def test_a_huge_nan_or_garbage_device_is_named_every_round_and_gets_nothing_in(jobs, kind):
    run = jobs[kind]
    assert run.finite, f"{kind}: the global model has non-finite weights"
    assert all(r.refused is None for r in run.records), kind
    assert run.named == {f"device {HOSTILE}"}  # named, and no honest device with it
    assert all(f"device {HOSTILE}" in r.cut for r in run.records[1:])
    assert run.fingerprint == jobs["silent"].fingerprint  # bit for bit the model the nine honest devices make
    assert run.accuracy == jobs["silent"].accuracy


def test_a_sign_flipping_device_is_outvoted_without_being_named(jobs):
    """Its scalars are in bound (a sign flip is not an outlier): kept, and it pulls against nine."""
    run = jobs["flip"]
    assert run.finite and not run.named and all(r.refused is None for r in run.records)
    assert run.fingerprint not in (jobs["clean"].fingerprint, jobs["silent"].fingerprint)


def test_without_the_screening_the_update_check_refuses_the_poisoned_rounds(tiny_llama, sst2_dir):
    """The plain mean takes the 1e30 in; the check refuses every such round, so the model stays
    finite at its start and the device is blamed by name."""
    run = simulate_job(tiny_llama, sst2_dir, {HOSTILE: "huge"}, Aggregation(bound=None), rounds=2, eval_samples=200)
    assert run.finite
    assert all("would move a weight" in r.refused for r in run.records[1:])
    assert run.named == {f"device {HOSTILE}"}
    assert run.accuracy == run.records[0].eval_accuracy
