"""`--engine ray`: virtual devices as Ray actors end on the in-process job's model, bit for bit,
also when a worker is killed mid-round (a real local Ray, a tiny LLaMA, real SST-2 examples)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from edgezo.backends.torch.factory import build_torch_executor
from edgezo.config import JobConfig
from edgezo.jobdata import device_shards, load_job_data, make_batcher
from edgezo.simulation import SimulatedDevice, run_simulation
from support.ray_checks import worker_fingerprints

COMMON = ["--clients", "8", "--rounds", "2", "--local-steps", "1", "--p1", "2", "--p2", "2", "--split", "2",
          "--trainable", "norm", "--batch-size", "4", "--max-length", "32", "--eval-samples", "16",
          "--train-samples", "64", "--seed", "3", "--quiet"]


def _rows(out):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return json.loads((out / "summary.json").read_text())["fingerprint"], [
        {k: v for k, v in r.items() if k != "wall_s"} for r in rows]


@pytest.fixture(scope="module")
def in_process(tiny_llama, sst2_dir, tmp_path_factory):
    """The reference: the same job in one process, one thread (as the invariant jobs run)."""
    out = tmp_path_factory.mktemp("local")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "edgezo.app.cli", "simulate", "--model", str(tiny_llama), "--data",
                           str(sst2_dir), *COMMON, "--out", str(out)], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return _rows(out)


@pytest.fixture(scope="module")
def local_ray():
    try:
        import ray
    except ImportError:
        pytest.fail("Ray is not installed: pip install 'edgezo[ray]' (.ci/run installs it)")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=128 * 2**20)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture
def one_thread():
    """The driver evaluates and applies the updates with the reference's thread count."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield 1
    torch.set_num_threads(before)


def test_ray_engine_simulate_ends_on_the_in_process_fingerprint(in_process, local_ray, one_thread, tiny_llama, sst2_dir,
                                                                tmp_path):
    """`edgezo simulate --engine ray`, 8 devices on 2 Ray workers: the in-process job's final
    fingerprint and the same metrics rows (wall time aside)."""
    from edgezo.app.cli import main

    out = tmp_path / "ray"
    main(["simulate", "--model", str(tiny_llama), "--data", str(sst2_dir), *COMMON, "--engine", "ray",
          "--ray-workers", "2", "--out", str(out)])
    fingerprint, rows = _rows(out)
    assert fingerprint == in_process[0]
    assert rows == in_process[1]
    assert rows[-1]["fingerprint"] != rows[0]["fingerprint"]  # the job did move the model


def test_a_worker_killed_mid_round_is_replaced_and_the_job_ends_on_the_same_model(in_process, local_ray, one_thread,
                                                                                   tiny_llama, sst2_dir):
    from edgezo.app.engines.ray_engine import RayEngine, RaySettings

    cfg = JobConfig(model=str(tiny_llama), data=str(sst2_dir), clients=8, rounds=2, local_steps=1, p1=2, p2=2, split=2,
                    trainable="norm", batch_size=4, max_length=32, seed=3).validate()
    data = load_job_data(cfg, 64, need_dev=False)
    shards = device_shards(cfg, data.train)
    ex, _ = build_torch_executor(cfg, data.task)
    devices = [SimulatedDevice(shard, ex, make_batcher(ex, data.task, data.train)) for shard in shards]
    engine = RayEngine.start(RaySettings(workers=2, threads=one_thread), cfg, data.train, shards, ["torch"] * 8,
                             [None] * 8, {"torch": ex})
    killed = []

    def kill_once():  # at round 2's first result: worker 1 still owes devices of the round
        if not killed and engine.history:
            killed.append(engine.pids[1])
            os.kill(engine.pids[1], signal.SIGKILL)

    try:
        records = run_simulation(cfg, devices, ex, lambda: 0.0, round_fn=engine.round, follow=engine.follow,
                                 on_device=kill_once)
        assert killed and engine.replaced == 1 and engine.pids[1] != killed[0]
        assert records[-1].fingerprint == in_process[0]
        assert all(fp == {"torch": in_process[0]} for fp in worker_fingerprints(engine))
    finally:
        engine.close()


def test_engine_ray_without_ray_is_one_line_naming_the_extra(tiny_llama, sst2_dir, tmp_path):
    code = "import sys; sys.modules['ray'] = None; from edgezo.app.cli import main; main()"
    done = subprocess.run([sys.executable, "-c", code, "simulate", "--model", str(tiny_llama), "--data", str(sst2_dir),
                           "--engine", "ray", "--out", str(tmp_path / "x")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    lines = [line for line in done.stderr.strip().splitlines() if line]
    assert len(lines) == 1 and "edgezo[ray]" in lines[0], done.stderr


def test_ray_options_without_engine_ray_are_refused(tmp_path):
    from click.testing import CliRunner

    from edgezo.app.cli import cli

    result = CliRunner().invoke(cli, ["simulate", "--ray-workers", "3", "--out", str(tmp_path / "x")])
    assert result.exit_code != 0 and "--engine ray" in result.output


def test_a_method_that_moves_full_models_is_refused_on_ray():
    from edgezo.app.engines.ray_engine import RayEngine, RaySettings
    from edgezo.errors import EdgezoError

    with pytest.raises(EdgezoError, match="moves full model deltas"):
        RayEngine.start(RaySettings(), JobConfig(method="fedzo"), [], [], [], [])
    with pytest.raises(EdgezoError, match="--ray-workers"):
        RaySettings(workers=0)
