"""bforward (edgezo/methods/bforward.py): forward differences on LoRA's B factors. Its probe
support (the ``lora:factors=B`` trainable set), its cost, its estimate's moments on a toy with a
known gradient against the gradient-quality bench's closed form, and a federated job rebuilt bit
for bit from its seed log: round by round (a late joiner), from a checkpoint, and on mlx and int8."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import edgezo
from edgezo.backends.choice import build_executor
from edgezo.backends.hf.trainable import parse_trainable
from edgezo.backends.torch.factory import build_torch_executor
from edgezo.config import JobConfig
from edgezo.errors import EdgezoError
from edgezo.estimators import ProbeConfig, update_rule
from edgezo.jobdata import load_job_data
from edgezo.methods import method_of
from edgezo.methods.bforward import b_only
from edgezo.seedlog import SeedLog, replay
from edgezo.tasks import get_task
from toy_executor import QuadraticExecutor, estimated_gradient

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import flops_check  # noqa: E402
import gradient_quality_stats as st  # noqa: E402
from test_gradient_quality import ScaledProbeToy, toy_checkpoint  # noqa: E402

BFORWARD = method_of("bforward")


def test_the_probe_support_is_the_lora_spec_with_b_factors_only():
    assert b_only("lora") == "lora:factors=B"
    assert b_only("lora:r=2,targets=q_proj") == "lora:r=2,targets=q_proj,factors=B"
    assert b_only("norm") == "norm" and b_only("lora:factors=B") == "lora:factors=B"
    spec = parse_trainable(b_only("lora:r=2"))
    assert spec.factors == "B" and parse_trainable(str(spec)) == spec
    assert str(parse_trainable("lora")) == "lora:r=8,alpha=16,targets=q_proj+v_proj+query+value"  # unchanged default
    with pytest.raises(EdgezoError, match="factors AB or B"):
        parse_trainable("lora:factors=A")


def test_a_lora_set_that_still_trains_a_is_refused_with_the_fix(tiny_llama):
    ex, _ = build_torch_executor(JobConfig(model=str(tiny_llama), trainable="lora:r=2", split=2).validate(), get_task("sst2"))
    probe = BFORWARD.probe(2, 1, 1e-3, "joint", "forward")
    with pytest.raises(EdgezoError, match="--trainable lora:factors=B"):
        BFORWARD.step(ex, None, probe, 1, 1, 0)
    b_ex, _ = build_torch_executor(JobConfig(model=str(tiny_llama), trainable="lora:r=2,factors=B", split=2).validate(),
                                   get_task("sst2"))
    assert b_ex.names == [n for n in ex.names if n.endswith(".lora_B")]
    frozen, trained = dict(b_ex.model.named_parameters()), dict(ex.model.named_parameters())
    a_names = [n for n in ex.names if n.endswith(".lora_A")]
    assert a_names and all(not frozen[n].requires_grad for n in a_names)
    assert all(frozen[n].abs().sum() > 0 and (frozen[n] == trained[n]).all() for n in a_names)  # A at its seeded init


def test_a_step_costs_p_plus_one_forwards_and_only_forward_differences_are_taken():
    ex = QuadraticExecutor()
    probe = BFORWARD.probe(16, 4, 1e-3, "joint", "forward")
    out = BFORWARD.local_round(ex, [0.0] * 2, probe, 1e-3, run_seed=7, rnd=2)
    assert (out.forwards1, out.forwards2) == (2 * 17, 2 * 17)
    assert out.flops == 2 * 17 * sum(ex.forward_flops(0.0))
    assert sorted(out.scalars) == BFORWARD.directions(probe, 7, 2, 2)
    with pytest.raises(EdgezoError, match="forward"):
        BFORWARD.probe(4, 1, 1e-3, "joint", "central")


def test_its_estimate_has_the_benchs_closed_form_moments():
    """Block 1 frozen (scale 0: LoRA's A), block 2 probed: E[g·ĝ] = ‖g_2‖² and E‖ĝ‖² as
    ``gradient_quality_stats.scaled_terms`` says, within 4 Monte-Carlo SEs."""
    ex = ScaledProbeToy({"block1.w": 0.0, "block2.w": 1.0}, seed=2)
    tck, g = toy_checkpoint(ex, 1e-3)
    probe = ProbeConfig("bforward", 3, 1, 1e-3, difference="forward")
    draws = [estimated_gradient(BFORWARD.step(ex, 0.0, probe, 4, rnd, 0).scalars, lambda s: update_rule(s, 1.0), ex)
             for rnd in range(800)]
    dot, dot_se = st.mean_and_se([g @ d for d in draws])
    norm, norm_se = st.mean_and_se([d @ d for d in draws])
    assert all(np.all(d[:6] == 0) for d in draws)  # nothing moves block 1
    assert abs(dot - g[6:] @ g[6:]) < 4 * dot_se
    expected = float(st.scaled_terms(tck, st.ScaledProbe("b-only", "forward", 3, np.array([0.0, 1.0]))).y[0])
    assert abs(norm - expected) < 4 * norm_se and norm_se < 0.06 * expected


@pytest.mark.parametrize("trainable", ["lora:r=2,factors=B", "lora:r=2,targets=v_proj,factors=B"])
def test_a_federated_bforward_job_is_rebuilt_bit_for_bit_from_its_seed_log(tiny_llama, sst2_dir, tmp_path, trainable):
    result = edgezo.simulate(model=str(tiny_llama), data=str(sst2_dir), method="bforward", p1=4, clients=2, rounds=2,
                             local_steps=2, batch_size=4, max_length=32, trainable=trainable, lr=1e-2,
                             eval_samples=16, train_samples=60, out=str(tmp_path / "run"))
    rows = [json.loads(line) for line in result.metrics_path.read_text().splitlines()]
    assert [r["forwards_block1"] for r in rows] == [0, 2 * 2 * 5, 2 * 2 * 2 * 5]  # devices x steps x (P + 1), cumulative
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    settings = JobConfig(**summary["settings"])
    replica, _ = build_torch_executor(settings, get_task("sst2"))
    start = replica.trainable_arrays()
    entries = list(SeedLog(tmp_path / "run" / "seedlog.jsonl").entries())
    assert all(len(e.update) == 2 * 4 for e in entries)  # K x P whole-model directions a round
    for entry, row in zip(entries, rows[1:]):  # a late joiner catching up round by round
        assert replay(replica, [entry]) == 1
        assert replica.fingerprint() == row["fingerprint"]
        if entry is entries[0]:
            checkpoint = replica.trainable_arrays()
    assert replica.fingerprint() == summary["fingerprint"] != rows[0]["fingerprint"]
    assert replica.names and all(n.endswith(".lora_B") for n in replica.names)
    assert all(not np.array_equal(replica.trainable_arrays()[n], start[n]) for n in replica.names)  # every B moved
    loaded, _ = build_torch_executor(settings, get_task("sst2"))  # a device that loads round 1's checkpoint
    loaded.load_trainable(checkpoint)
    assert replay(loaded, entries[1:]) == 1 and loaded.fingerprint() == summary["fingerprint"]
    for backend in ("mlx", "int8"):  # one seed log, one global model, on every backend
        other, _ = build_executor(backend, settings, get_task("sst2"))
        assert replay(other, entries) == 2 and other.fingerprint() == summary["fingerprint"], backend


def test_its_step_is_charged_what_torch_runs(tiny_llama):
    """FlopCounterMode on one bforward step (P = 2: 3 forwards) on the B-only LoRA set, as
    ``benchmarks/flops_check.py`` runs it: charged within 1% of measured (the norms' elementwise
    products, which edgezo counts and torch does not)."""
    cfg = JobConfig(model=str(tiny_llama), task="sst2", trainable=b_only("lora"), max_length=32, eval_samples=8, clients=1).validate()
    data = load_job_data(cfg, need_train=False)
    ex, _ = build_executor("torch", cfg, data.task)
    batch = flops_check.one_batch(ex, data.task, data.dev, 4)
    with torch.no_grad():
        (check,) = flops_check.check_steps(cfg, ex, batch, [("bforward", "bforward", {"p1": 2})])
    assert check.measured > 0 and check.ratio == pytest.approx(1.0, abs=0.01)
    assert check.charged == pytest.approx(3 * sum(ex.forward_flops(batch)))
