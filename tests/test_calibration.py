"""--p2 auto / --split auto: the calibration's model picks the known best setting, its
measurement recovers known gradient energies, and a job records (and a resumed job reuses) it."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import edgezo
from edgezo import calibration as cal
from edgezo.backends.torch.factory import build_torch_executor
from edgezo.config import JobConfig
from edgezo.costmodel import StepCosts, Work
from edgezo.errors import JobStopped
from edgezo.jobdata import make_batcher
from edgezo.keys import Direction
from edgezo.methods import method_of
from edgezo.tasks import get_task, load_examples
from toy_executor import QuadraticExecutor


def _costs(t1: float, t2: float, variant: str = "joint"):
    return cal.step_cost(method_of("spzo"), Work(variant=variant), lambda split: StepCosts(t1, t2, 0, 0, 0, 0))


def _ranked(a1: float, a2: float, f1: float, f2: float, variant: str = "joint") -> list[dict]:
    groups = [cal.GroupEnergy(0, 1, 1000, a1, a1 / 2), cal.GroupEnergy(1, 2, 1000, a2, a2 / 2)]
    return cal.rank(groups, cal.candidates(1, [1]), variant, _costs(f1, f2, variant))


def test_cheap_block_2_holding_the_gradient_takes_the_most_block_2_probes():
    assert _ranked(a1=1e-3, a2=1.0, f1=10.0, f2=1.0)[0]["p2"] == 8


@pytest.mark.parametrize("variant", ["joint", "clean"])
def test_block_1_holding_the_gradient_takes_one_block_2_probe(variant):
    rows = _ranked(a1=1.0, a2=1e-3, f1=1.0, f2=1.0, variant=variant)
    assert rows[0]["p2"] == 1
    assert [r["descent_per_flop"] for r in rows] == sorted((r["descent_per_flop"] for r in rows), reverse=True)


def test_a_negative_signal_estimate_does_not_invert_the_ranking():
    """‖G‖² is common to every setting; its U-statistic on 3 batches can come out negative."""
    groups = [cal.GroupEnergy(0, 1, 1000, 1e-3, -1.0), cal.GroupEnergy(1, 2, 1000, 1.0, 0.1)]
    assert cal.rank(groups, cal.candidates(1, [1]), "joint", _costs(10.0, 1.0))[0]["p2"] == 8


def test_a_tie_keeps_the_jobs_split():
    groups = [cal.GroupEnergy(0, 1, 1000, 1.0, 0.5), cal.GroupEnergy(1, 2, 1000, 1e-3, 1e-3), cal.GroupEnergy(2, 3, 1000, 1e-3, 1e-3)]
    rows = cal.rank(groups, cal.candidates(1, [1, 2]), "joint", _costs(1.0, 2.0), prefer_split=2)
    assert (rows[0]["p2"], rows[0]["split"]) == (1, 2) and rows[1]["descent_per_flop"] == pytest.approx(rows[0]["descent_per_flop"])
    assert [r["descent_per_flop"] for r in rows[1:]] == sorted((r["descent_per_flop"] for r in rows[1:]), reverse=True)


def test_splits_sum_whole_groups_and_refuse_others():
    groups = [cal.GroupEnergy(0, 5, 10, 1.0, 0.5), cal.GroupEnergy(5, 10, 20, 2.0, 1.0), cal.GroupEnergy(10, 12, 30, 4.0, 2.0)]
    assert cal.block_energies(groups, 10) == (3.0, 4.0, 30, 30)
    assert cal.candidate_splits(groups) == [5, 10]
    with pytest.raises(ValueError, match="group boundary"):
        cal.block_energies(groups, 7)
    assert cal.group_bounds(30, keep=[17]) == [5, 10, 15, 17, 20, 25, 30]


def test_the_measurement_recovers_known_block_energies():
    """On the quadratic toy (exact gradients), 200 probes per block on 3 batches: ‖h_b‖² within
    15% and the cross-batch U-statistic of ‖G_b‖² within 20%."""
    ex = QuadraticExecutor(n1=6, n2=10, seed=3)
    batches = [0.0, 0.7, -0.4]
    groups = [cal.Group(0, 1, 6, lambda i: Direction(7, 0, 0, 1, 0, i, cal.CALIBRATION_STREAM)),
              cal.Group(1, 2, 10, lambda i: Direction(7, 0, 0, 2, 0, i, cal.CALIBRATION_STREAM))]
    measured = cal.measure(ex, batches, groups, probes=200, eps=1e-3)
    h = np.stack([ex.gradient(b) for b in batches])
    for g, part in zip(measured["groups"], (h[:, :6], h[:, 6:])):
        gram = part @ part.T
        assert g.energy == pytest.approx(np.trace(gram) / 3, rel=0.15)
        assert g.signal == pytest.approx((gram.sum() - np.trace(gram)) / 6, rel=0.2)
    assert measured["forwards"] == 2 * 200 * 3 * 2


def test_a_unit_probe_perturbs_only_its_units(tiny_llama, sst2_dir):
    """The split executor's hook: a probe over every unit is the whole-model direction; one over a
    unit with no trainable tensors changes nothing."""
    cfg = JobConfig(model=str(tiny_llama), trainable="norm", split=2)
    ex, _ = build_torch_executor(cfg, get_task("sst2"))
    train = load_examples(get_task("sst2"), sst2_dir, "train")[:4]
    batch = make_batcher(ex, get_task("sst2"), train)([0, 1, 2, 3])
    d = Direction(1, 0, 0, 0, 0)
    every = frozenset(ex.unit_tensors)
    assert cal.full_loss(ex, batch, [(cal.UnitProbe(d, every), 0.1)]) == cal.full_loss(ex, batch, [(d, 0.1)])
    assert cal.full_loss(ex, batch, [(cal.UnitProbe(d, frozenset({"nothing"})), 0.1)]) == cal.full_loss(ex, batch, [])


def _options(tiny_llama, sst2_dir, out) -> dict:
    return dict(model=str(tiny_llama), data=str(sst2_dir), clients=2, rounds=2, local_steps=1, trainable="norm",
                batch_size=4, eval_samples=16, train_samples=40, out=str(out), quiet=True, p2="auto", split="auto")


def test_auto_records_the_calibration_and_a_resumed_run_reuses_it(tiny_llama, sst2_dir, tmp_path):
    out, said = tmp_path / "auto", []

    def stop_after_one(record):
        if record.round == 1:
            raise JobStopped("enough for now")

    stopped = edgezo.simulate(**_options(tiny_llama, sst2_dir, out), callbacks=stop_after_one, say=said.append)
    assert stopped.stopped and any(line.startswith("calibration chose") for line in said)
    record = json.loads((out / "job.json").read_text())["calibration"]
    chosen = record["chosen"]
    assert chosen["p2"] in cal.P2_CHOICES and record["forwards"] > 0 and record["seconds"] > 0
    assert len(record["candidates"]) == len(cal.P2_CHOICES) * len({c["split"] for c in record["candidates"]})
    assert json.loads((out / "job.json").read_text())["job"]["p2"] == chosen["p2"]
    resumed = subprocess.run([sys.executable, "-m", "edgezo.app.cli", "simulate", "--out", str(out), "--resume"],
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "calibrating" not in resumed.stderr + resumed.stdout and "calibration reused" in resumed.stderr + resumed.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["calibration"] == record and summary["settings"]["p2"] == chosen["p2"]


def test_auto_is_refused_where_it_does_not_apply(tiny_llama, sst2_dir, tmp_path):
    done = subprocess.run([sys.executable, "-m", "edgezo.app.cli", "coordinate", "--p2", "auto", "--method", "mezo", "--data",
                           str(sst2_dir), "--out", str(tmp_path / "coord")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--method mezo has neither" in done.stderr and "loading model" not in done.stderr + done.stdout
    with pytest.raises(edgezo.ConfigError, match="has neither"):
        edgezo.simulate(**_options(tiny_llama, sst2_dir, tmp_path / "mezo"), method="mezo")


def test_auto_in_a_config_file_means_what_it_means_on_the_command_line(tmp_path):
    """``p2 = "auto"`` in --config's TOML turns the calibration on (it was read as the number)."""
    from edgezo.app.jobs.coordinate import CoordinateJob
    from edgezo.app.jobs.simulate import SimulateJob

    config = tmp_path / "job.toml"
    config.write_text('p2 = "auto"\nsplit = "Auto"\nrounds = 3\n')
    for job_class in (SimulateJob, CoordinateJob):
        job = job_class.from_options(config_file=config, out=str(tmp_path / job_class.__name__))
        assert (job.settings.p2_auto, job.settings.split_auto, job.config.rounds) == (True, True, 3), job_class
    given = SimulateJob.from_options(config_file=config, p2=2, out=str(tmp_path / "given"))  # the command line wins
    assert (given.settings.p2_auto, given.config.p2, given.settings.split_auto) == (False, 2, True)
