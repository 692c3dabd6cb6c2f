"""The invariant across executors: one seed log means one global model on torch, mlx and int8.

A 100-round job's seed log (written by `edgezo simulate` on torch) is replayed onto the base
weights on each backend. The trainable tensors (norm weights, LoRA adapters: fp32 on every
backend, including int8) must come out **bit-identical** for Rademacher perturbations (the
generator is bit-exact and each update is one float32 multiply-add in the same order), and within
1e-5 for Gaussian ones (each backend's float64 log/cos may differ in the last bit). Then a job
whose three devices run three different backends trains, and converges like a torch-only job.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from edgezo.backends.choice import build_executor
from edgezo.config import JobConfig
from edgezo.jobdata import make_batcher
from edgezo.seedlog import SeedLog, replay
from edgezo.simulation import SimulatedDevice, run_simulation
from edgezo.tasks import get_task, load_examples

BACKENDS = ("torch", "mlx", "int8")
GAUSSIAN_ATOL = 1e-5


def _job(tiny_llama, trainable, distribution="rademacher", split=2):
    return JobConfig(model=str(tiny_llama), trainable=trainable, split=split, seed=0, distribution=distribution)


@pytest.fixture(scope="module")
def seed_logs(tiny_llama, sst2_dir, tmp_path_factory):
    """100-round torch jobs: their seed logs and final fingerprints, per (trainable, distribution)."""
    runs = {}
    for trainable, distribution in (("norm", "rademacher"), ("lora:r=4,alpha=8", "rademacher"), ("norm", "gaussian")):
        out = tmp_path_factory.mktemp("log")
        args = ["simulate", "--model", str(tiny_llama), "--data", str(sst2_dir), "--clients", "2", "--rounds", "100",
                "--local-steps", "1", "--p1", "1", "--p2", "2", "--split", "2", "--trainable", trainable, "--lr", "5e-3",
                "--distribution", distribution, "--batch-size", "4", "--eval-samples", "8", "--train-samples", "200",
                "--backend", "torch", "--out", str(out), "--quiet"]
        done = subprocess.run([sys.executable, "-m", "edgezo.app.cli", *args], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        summary = json.loads((out / "summary.json").read_text())
        runs[(trainable, distribution)] = (list(SeedLog(out / "seedlog.jsonl").entries()), summary["fingerprint"])
    return runs


@pytest.mark.parametrize("trainable", ["norm", "lora:r=4,alpha=8"])
def test_rademacher_replay_is_bit_identical_on_every_backend(seed_logs, tiny_llama, trainable):
    entries, fingerprint = seed_logs[(trainable, "rademacher")]
    assert len(entries) == 100
    task = get_task("sst2")
    arrays = {}
    for backend in BACKENDS:
        ex, _ = build_executor(backend, _job(tiny_llama, trainable), task)
        base = ex.trainable_arrays()
        replay(ex, entries)
        arrays[backend] = ex.trainable_arrays()
        moved = max(float(np.abs(arrays[backend][n] - base[n]).max()) for n in base)
        assert moved > 1e-3, f"{backend}: the log did not move the weights"
        assert ex.fingerprint() == fingerprint, f"{backend} replica differs from the simulated global model"
    for backend in ("mlx", "int8"):
        assert list(arrays[backend]) == list(arrays["torch"])
        for name, value in arrays["torch"].items():
            np.testing.assert_array_equal(arrays[backend][name], value, err_msg=f"{backend}: {name}")


def test_gaussian_replay_agrees_within_tolerance(seed_logs, tiny_llama):
    entries, _ = seed_logs[("norm", "gaussian")]
    task = get_task("sst2")
    arrays = {}
    for backend in BACKENDS:
        ex, _ = build_executor(backend, _job(tiny_llama, "norm", "gaussian"), task)
        replay(ex, entries)
        arrays[backend] = ex.trainable_arrays()
    for backend in ("mlx", "int8"):
        for name, value in arrays["torch"].items():
            np.testing.assert_allclose(arrays[backend][name], value, rtol=0, atol=GAUSSIAN_ATOL, err_msg=f"{backend}: {name}")


def _fit_one_batch(executors, task, train, rounds=6):
    """Three devices, device d on ``executors[d]``, all holding the same 16 examples; the loss
    of the primary (first) executor's replica on them, before and after each round."""
    primary = executors[0]
    batchers = {id(e): make_batcher(e, task, train) for e in executors}
    fixed = batchers[id(primary)](list(range(16)))
    losses = []

    def evaluate():
        losses.append(primary.forward_block2(primary.forward_block1(fixed), fixed))
        return 0.0

    cfg = JobConfig(method="spzo", clients=len(executors), rounds=rounds, local_steps=2, lr=5.0, lr_schedule="constant", p1=2, p2=4,
                    eps=1e-2, batch_size=16, seed=1, eval_every=1).validate()
    run_simulation(cfg, [SimulatedDevice(list(range(16)), e, batchers[id(e)]) for e in executors], primary, evaluate)
    return losses


def test_mixed_backend_job_converges_like_a_torch_job(tiny_llama, sst2_dir):
    task = get_task("sst2")
    train = load_examples(task, sst2_dir, "train")[:16]
    cfg = _job(tiny_llama, "norm")
    built = {b: build_executor(b, cfg, task)[0] for b in BACKENDS}
    mixed = _fit_one_batch([built[b] for b in BACKENDS], task, train)
    # every replica applied the same global updates: bit-identical trainable weights
    fingerprints = {b: built[b].fingerprint() for b in BACKENDS}
    assert len(set(fingerprints.values())) == 1, fingerprints

    alone = build_executor("torch", cfg, task)[0]
    torch_only = _fit_one_batch([alone] * 3, task, train)
    assert mixed[0] == torch_only[0]
    assert mixed[-1] < mixed[0] - 0.03, mixed
    assert torch_only[-1] < torch_only[0] - 0.03, torch_only
    # same seeds and data: the mixed job's progress is within a fifth of the torch job's
    progress_mixed, progress_torch = mixed[0] - mixed[-1], torch_only[0] - torch_only[-1]
    assert abs(progress_mixed - progress_torch) < 0.2 * progress_torch, (mixed, torch_only)


def test_simulate_cli_runs_a_mixed_backend_job(tiny_llama, sst2_dir, tmp_path):
    args = ["simulate", "--model", str(tiny_llama), "--data", str(sst2_dir), "--backend", "int8,torch", "--clients", "3",
            "--rounds", "2", "--local-steps", "1", "--p2", "2", "--split", "2", "--batch-size", "4", "--eval-samples", "16",
            "--train-samples", "60", "--out", str(tmp_path), "--quiet"]
    done = subprocess.run([sys.executable, "-m", "edgezo.app.cli", *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["device_backends"] == ["int8", "torch", "int8"]
    replicas = summary["replica_fingerprints"]
    assert set(replicas) == {"int8", "torch"} and len(set(replicas.values())) == 1
    assert summary["fingerprint"] == replicas["int8"]  # the first listed backend's replica is the evaluated one
    assert (tmp_path / "model" / "model.safetensors").is_file()  # saved at fp32 through a torch replica
