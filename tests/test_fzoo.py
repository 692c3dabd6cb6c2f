"""FZOO (edgezo/methods/fzoo.py): the authors' rule, its cost, its expected direction on a toy
with a known gradient, a tiny model trained, and a federated job replayed bit for bit from its
seed log round by round (a late joiner) on torch, and whole on mlx and int8."""

from __future__ import annotations

import json

import numpy as np
import pytest

import edgezo
from edgezo.backends.choice import build_executor
from edgezo.backends.torch.factory import build_torch_executor
from edgezo.config import JobConfig
from edgezo.errors import EdgezoError
from edgezo.estimators import ProbeConfig, update_rule
from edgezo.methods import method_of
from edgezo.methods.fzoo import normalised_scalars, population_std
from edgezo.seedlog import SeedLog, replay
from edgezo.tasks import get_task, load_examples
from toy_executor import QuadraticExecutor, estimated_gradient

FZOO = method_of("fzoo")


class ScaledLoss(QuadraticExecutor):
    """The same toy with its loss multiplied by ``factor``."""

    def __init__(self, factor: float, **kw):
        super().__init__(**kw)
        self.factor = factor

    def forward_block2(self, activation, batch, perturbation=()):
        return self.factor * super().forward_block2(activation, batch, perturbation)


def test_scalars_are_the_one_sided_differences_over_the_losses_spread():
    assert population_std([1.0, 1.2]) == pytest.approx(0.1)
    assert normalised_scalars(1.0, [1.0, 1.2]) == pytest.approx([0.0, 2.0])
    assert normalised_scalars(1.0, [1.05, 0.85]) == pytest.approx([0.5, -1.5])
    assert normalised_scalars(1.0, [1.2, 1.2]) == [0.0, 0.0]  # no spread, no direction


def test_a_step_costs_n_plus_one_forwards_and_owes_one_scalar_per_probe():
    ex = QuadraticExecutor()
    probe = FZOO.probe(4, 8, 1e-3, "joint", "forward")
    out = FZOO.local_round(ex, [0.0] * 3, probe, 1e-3, run_seed=7, rnd=2)
    assert (out.forwards1, out.forwards2) == (3 * 5, 3 * 5)
    assert out.flops == 3 * 5 * sum(ex.forward_flops(0.0))
    assert sorted(out.scalars) == FZOO.directions(probe, 7, 2, 3)
    assert FZOO.estimates(3, 4, 8) == FZOO.update_directions(3, 4, 8) == 12
    assert out.losses[0] == pytest.approx(QuadraticExecutor().loss())  # the unperturbed loss is reported


def test_on_a_quadratic_the_expected_step_points_down_the_gradient_whatever_the_loss_scale():
    probe = ProbeConfig("fzoo", 8, 1, 1e-4, difference="forward")
    ex, scaled = QuadraticExecutor(), ScaledLoss(10.0)
    mean = np.zeros(16)
    for step in range(300):
        a, b = FZOO.step(ex, 0.0, probe, 3, 1, step), FZOO.step(scaled, 0.0, probe, 3, 1, step)
        assert max(abs(a.scalars[d] - b.scalars[d]) for d in a.scalars) < 1e-3 * max(map(abs, a.scalars.values()))
        mean += estimated_gradient(a.scalars, lambda s: update_rule(s, 1.0), ex) / 300
    g = ex.gradient()
    assert mean @ g / (np.linalg.norm(mean) * np.linalg.norm(g)) > 0.95
    # normalised SGD: sigma ~ eps·|g|, so the expected step is about g/|g| (MeZO's would be g)
    assert np.linalg.norm(mean) == pytest.approx(1.0, rel=0.5)
    assert np.linalg.norm(g) > 3


def test_fewer_than_two_probes_are_refused():
    with pytest.raises(EdgezoError, match="--p1 2 or more"):
        FZOO.probe(1, 1, 1e-3, "joint", "forward")
    with pytest.raises(EdgezoError, match="forward"):
        FZOO.probe(4, 1, 1e-3, "joint", "central")


def test_a_federated_fzoo_job_is_rebuilt_bit_for_bit_from_its_seed_log(tiny_llama, sst2_dir, tmp_path):
    result = edgezo.simulate(model=str(tiny_llama), data=str(sst2_dir), method="fzoo", p1=3, clients=2, rounds=2, local_steps=2,
                             batch_size=4, max_length=32, trainable="norm", lr=1e-3, eval_samples=16, train_samples=60,
                             out=str(tmp_path / "run"))
    rows = [json.loads(line) for line in result.metrics_path.read_text().splitlines()]
    assert [r["forwards_block1"] for r in rows] == [0, 2 * 2 * 4, 2 * 2 * 2 * 4]  # devices x steps x (N + 1), cumulative
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    replica, _ = build_torch_executor(JobConfig(**summary["settings"]), get_task("sst2"))
    assert replica.fingerprint() == rows[0]["fingerprint"]
    entries = list(SeedLog(tmp_path / "run" / "seedlog.jsonl").entries())
    assert all(len(e.update) == 2 * 3 for e in entries)  # K x N whole-model directions a round, one coefficient each
    for entry, row in zip(entries, rows[1:]):  # a late joiner catching up round by round
        assert replay(replica, [entry]) == 1
        assert replica.fingerprint() == row["fingerprint"]
    assert replica.fingerprint() == summary["fingerprint"] != rows[0]["fingerprint"]
    for backend in ("mlx", "int8"):  # one seed log, one global model, on every backend
        other, _ = build_executor(backend, JobConfig(**summary["settings"]), get_task("sst2"))
        assert replay(other, entries) == 2 and other.fingerprint() == summary["fingerprint"], backend


def test_fzoo_steps_lower_the_loss_of_a_tiny_model_on_real_examples(tiny_llama, sst2_dir):
    ex, _ = build_torch_executor(JobConfig(model=str(tiny_llama), trainable="norm", split=2).validate(), get_task("sst2"))
    task = get_task("sst2")
    train = load_examples(task, sst2_dir, "train")[:16]
    batch = ex.encode([task.prompt(e, ex.kind) for e in train], [e.label for e in train])
    probe = FZOO.probe(4, 1, 1e-2, "joint", "forward")
    before = ex.forward_block2(ex.forward_block1(batch), batch)
    for rnd in range(1, 7):
        FZOO.local_round(ex, [batch, batch], probe, 0.1, run_seed=1, rnd=rnd)
    assert ex.forward_block2(ex.forward_block1(batch), batch) < before - 0.03
