"""`--device auto|cpu|cuda` for the torch backend.

Always run: the option's parsing, what auto picks, the one-line errors (cuda without a GPU, a
device the int8 and mlx backends cannot honour) and the CPU path (the same fingerprint as before
the option existed; the device recorded in the summary).

Run only where torch sees a CUDA GPU (reported as skipped elsewhere):
* the canonical perturbations generated on the GPU equal the NumPy reference bit for bit
  (Rademacher: integer hash and a table gather on the device; Gaussian: computed on the CPU and
  moved, so bit-equal to the CPU's torch values and within the reference's one-ulp contract);
* updates applied on the GPU equal the CPU's bit for bit: replaying a CPU run's seed log on a
  CUDA replica ends on the CPU run's fingerprint (what keeps a GPU device's replica in step with
  the others in a federation);
* a short simulate on the GPU ends *within tolerance* of the CPU run, not on its fingerprint:
  cuBLAS sums the forward passes' products in another order, so the probed losses, hence the
  projected-gradient scalars and the updates, differ in their last bits.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from edgezo import perturb
from edgezo.backends.choice import build_executor, check_device
from edgezo.backends.torch import perturb as tz
from edgezo.backends.torch.device import describe, resolve_device
from edgezo.errors import EdgezoError
from edgezo.keys import Direction

CUDA = torch.cuda.is_available()
needs_gpu = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU: not run on this machine")
JOB = dict(clients=2, rounds=2, local_steps=1, batch_size=4, max_length=32, eval_samples=16, train_samples=60, seed=5,
           lr=2e-3, trainable="norm", p1=2, p2=2)


def _simulate(tiny_llama, sst2_dir, out, **options):
    from edgezo.app.jobs.simulate import SimulateJob

    return SimulateJob.from_options(model=str(tiny_llama), data=str(sst2_dir), out=str(out), **{**JOB, **options}).run()


# -- always run ---------------------------------------------------------------------------------


def test_auto_picks_the_gpu_only_when_torch_can_use_one(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if CUDA else "cpu")
    assert resolve_device(None) == resolve_device("auto") and resolve_device(" CPU ") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the choice alone, not a GPU
    assert resolve_device("auto") == torch.device("cuda") and resolve_device("cuda") == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(EdgezoError, match=r"^--device cuda: .*; or run on the CPU with --device cpu"):
        resolve_device("cuda")
    with pytest.raises(EdgezoError, match=r"unknown --device 'tpu'; use one of auto, cpu, cuda"):
        resolve_device("tpu")


def test_device_settings_are_checked_when_the_job_is_built():
    from edgezo.app.settings import JoinSettings, SimulateSettings

    assert SimulateSettings(device="CUDA").validate().device == "cuda"
    with pytest.raises(EdgezoError, match="unknown --device 'gpu'"):
        SimulateSettings(device="gpu").validate()
    with pytest.raises(EdgezoError, match="unknown --device 'gpu'"):
        JoinSettings(broker="localhost", device="gpu").validate()


@pytest.mark.parametrize("backend,device,ok", [("torch", "cuda", True), ("int8", "cpu", True), ("int8", "auto", True), ("mlx", "auto", True),
                                               ("int8", "cuda", False), ("mlx", "cpu", False), ("mlx", "cuda", False)])
def test_device_is_for_the_torch_backend(backend, device, ok):
    if ok:
        check_device(backend, device)
        return
    with pytest.raises(EdgezoError, match=rf"^--device {device} places the torch backend only; the {backend} backend .*: drop --device"):
        check_device(backend, device)


@pytest.mark.skipif(CUDA, reason="checks the error of a machine without a GPU")
def test_cuda_without_a_gpu_is_one_line_before_any_data_is_read(tmp_path):
    done = subprocess.run([sys.executable, "-m", "edgezo", "simulate", "--device", "cuda", "--data", str(tmp_path / "nowhere"),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode != 0 and len(lines) == 1 and lines[0].startswith("edgezo: error: --device cuda: "), done.stderr
    assert "--device cpu" in lines[0] and not (tmp_path / "out").exists()


def test_int8_with_device_cuda_is_refused_before_any_data_is_read(tmp_path):
    from edgezo.app.jobs.simulate import SimulateJob

    with pytest.raises(EdgezoError, match=r"^--device cuda places the torch backend only; the int8 backend runs on the CPU only"):
        SimulateJob.from_options(backend="int8", device="cuda", data=str(tmp_path / "nowhere"), out=str(tmp_path / "out")).run()
    assert not (tmp_path / "out").exists()


def test_the_cpu_path_keeps_its_fingerprint_and_records_the_device(tiny_llama, sst2_dir, tmp_path):
    default = _simulate(tiny_llama, sst2_dir, tmp_path / "default", device="cpu")
    again = _simulate(tiny_llama, sst2_dir, tmp_path / "again")  # auto: the CPU here (the GPU where there is one)
    assert default.summary["device"] == "cpu" and again.summary["device"] == describe(resolve_device("auto"))
    assert "peak_gpu_mib" not in default.summary  # the CPU's figure is the process's RSS, not this
    if not CUDA:
        assert again.fingerprint == default.fingerprint
    assert "device" not in json.loads((tmp_path / "default" / "job.json").read_text())["simulate"]  # how to run, not what


def test_a_torch_executor_keeps_batches_and_checkpoints_on_its_device(tiny_llama):
    from edgezo.config import JobConfig
    from edgezo.tasks import get_task

    cfg = JobConfig(model=str(tiny_llama), trainable="norm").validate()
    ex, _ = build_executor("torch", cfg, get_task("sst2"), "cpu")
    batch = ex.encode(["Review: great fun\nSentiment:"], [1])
    assert ex.device == torch.device("cpu") and batch.input_ids.device == ex.device and ex.verbalizer_ids.device == ex.device
    arrays = ex.trainable_arrays()
    ex.load_trainable(arrays)
    assert all(ex.params[n].device == ex.device for n in arrays)


# -- needs a GPU ------------------------------------------------------------------------------------

KEY = Direction(42, 3, 1, 2, 0, 5).tensor_key("model.layers.20.input_layernorm.weight")


@needs_gpu
@pytest.mark.parametrize("start,count", [(0, 1), (5, 1000), (31, 33), (12345, 70001), (2**31 + 7, 100), (0, tz.CHUNK + 45)])
def test_rademacher_on_the_gpu_is_the_reference_bit_for_bit(start, count):
    z = tz.rademacher(KEY, start, count, device="cuda")
    assert z.device.type == "cuda" and np.array_equal(z.cpu().numpy(), perturb.rademacher(KEY, start, count))


@needs_gpu
def test_gaussian_on_the_gpu_is_the_cpus_bit_for_bit_and_the_reference_within_one_ulp():
    z = tz.gaussian(KEY, 100, 50000, device="cuda")
    cpu, ref = tz.gaussian(KEY, 100, 50000).numpy(), perturb.gaussian(KEY, 100, 50000)
    assert z.device.type == "cuda" and np.array_equal(z.cpu().numpy(), cpu)
    assert np.all(np.abs(cpu - ref) <= np.spacing(np.abs(ref)))


@needs_gpu
@pytest.mark.parametrize("distribution", ["rademacher", "gaussian"])
@pytest.mark.parametrize("compiled", [False, True])  # the fused CPU kernel is skipped on the GPU
def test_updates_on_the_gpu_equal_the_cpus(distribution, compiled, monkeypatch):
    monkeypatch.setattr(tz, "CHUNK", 1 << 12)
    tz.use_compiled_kernel(compiled)
    try:
        base = torch.randn(3 * 4096 + 45)
        on_cpu, on_gpu = base.clone(), base.cuda()
        for t in (on_cpu, on_gpu):
            tz.add_scaled(t, KEY, -0.003, distribution)
        if distribution == "rademacher":  # +-scale: one rounding, the same on every device
            assert np.array_equal(on_gpu.cpu().numpy(), on_cpu.numpy())
            assert np.array_equal(on_cpu.numpy(), base.numpy() + np.float32(-0.003) * perturb.rademacher(KEY, 0, base.numel()))
        else:  # the values are the CPU's; the multiply-add may fuse differently
            np.testing.assert_allclose(on_gpu.cpu().numpy(), on_cpu.numpy(), rtol=0, atol=1e-7)
        copy = tz.perturbed_copy(base.cuda(), KEY, 0.01, distribution)
        assert copy.device.type == "cuda"
    finally:
        tz.use_compiled_kernel(False)


@needs_gpu
def test_a_cpu_runs_seed_log_replayed_on_the_gpu_ends_on_its_fingerprint(tiny_llama, sst2_dir, tmp_path):
    from edgezo.config import JobConfig
    from edgezo.seedlog import SeedLog, replay
    from edgezo.tasks import get_task

    run = _simulate(tiny_llama, sst2_dir, tmp_path / "cpu", device="cpu")
    cfg = JobConfig(**json.loads((tmp_path / "cpu" / "job.json").read_text())["job"]).validate()
    ex, _ = build_executor("torch", cfg, get_task("sst2"), "cuda")
    assert ex.device.type == "cuda"
    replay(ex, list(SeedLog(tmp_path / "cpu" / "seedlog.jsonl").entries()))
    assert ex.fingerprint() == run.fingerprint


@needs_gpu
def test_a_short_simulate_on_the_gpu_ends_within_tolerance_of_the_cpu(tiny_llama, sst2_dir, tmp_path):
    cpu = _simulate(tiny_llama, sst2_dir, tmp_path / "cpu", device="cpu")
    gpu = _simulate(tiny_llama, sst2_dir, tmp_path / "gpu", device="cuda")
    assert gpu.summary["device"].startswith("cuda:") and gpu.summary["peak_gpu_mib"] > 0
    for a, b in zip(cpu.records, gpu.records):
        assert a.round == b.round and a.forwards_block2 == b.forwards_block2 and a.flops == b.flops
        assert b.train_loss is None or abs(a.train_loss - b.train_loss) <= 1e-3 * max(1.0, abs(a.train_loss))
    cpu_model = (tmp_path / "cpu" / "trainable.safetensors")
    gpu_model = (tmp_path / "gpu" / "trainable.safetensors")
    from safetensors.numpy import load_file

    a, b = load_file(cpu_model), load_file(gpu_model)
    assert set(a) == set(b) and all(np.allclose(a[k], b[k], rtol=0, atol=1e-4) for k in a)
