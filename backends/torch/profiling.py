"""Measuring the torch backend on this device, for ``edgezo profile``.

Forward times are measured on synthetic batches of exactly ``tokens`` tokens per sequence (random
ids, no padding), so a row's token count is exact; the medians of a few repeats after one warm-up
are kept. Peak memory is read from the kernel: on Linux the resident high-water mark is reset
before each step (``/proc/self/clear_refs``), elsewhere the process maximum is read with batches
in ascending order, so each reading belongs to the largest batch run so far.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import sys
import time
from typing import Callable

import torch

from edgezo.backends.torch import perturb as tz
from edgezo.backends.hf import shape
from edgezo.backends.hf.split_executor import Batch
from edgezo.backends.torch.executor import TorchExecutor
from edgezo.costmodel import MIB, ModelShape, linear_fit
from edgezo.estimators import ProbeConfig
from edgezo.methods.spzo import spzo_step
from edgezo.keys import Direction
from edgezo.profiles import BackendProfile, ForwardTiming, MemoryPoint, ModelMeasurement


def model_shape(ex: TorchExecutor, name: str, digest: str = "") -> ModelShape:
    """The cost model's view of a loaded, split model (``edgezo.backends.hf.shape``'s, with the
    torch model's configuration)."""
    return shape.model_shape(ex, ex.model.config, name, digest)


def synthetic_batch(ex: TorchExecutor, batch: int, tokens: int, seed: int = 0) -> Batch:
    """``batch`` sequences of exactly ``tokens`` random tokens (the mask token last for masked LMs)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(100, min(ex.model.config.vocab_size, 30000), (batch, tokens), generator=g)
    if ex.kind == "mlm":
        ids[:, -1] = ex.tokenizer.mask_token_id
    mask = torch.ones_like(ids)
    device = getattr(ex, "device", ids.device)  # drawn on the CPU (the same ids everywhere), used on the model's device
    return Batch(ids.to(device), mask.to(device), torch.full((batch,), tokens - 1, device=device), torch.zeros(batch, dtype=torch.long, device=device))


def median_seconds(fn: Callable[[], object], repeats: int, warm_up: bool = True) -> float:
    if warm_up:
        fn()  # first calls pay allocation and dispatch caches
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t)
    return statistics.median(runs)


def rss_mb() -> float:
    """Current resident memory of this process."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MIB
    except OSError:
        import psutil

        return psutil.Process().memory_info().rss / MIB


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the resident high-water mark (Linux 4.0+)
        return True
    except OSError:
        return False


def peak_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / MIB if sys.platform == "darwin" else kib / 1024  # bytes on macOS, KiB elsewhere


def measure_forwards(ex: TorchExecutor, batches: list[int], tokens: int, repeats: int, tick: Callable[[], None]) -> list[ForwardTiming]:
    rows = []
    for b in batches:
        batch = synthetic_batch(ex, b, tokens)
        t1 = median_seconds(lambda: ex.forward_block1(batch), repeats)
        act = ex.forward_block1(batch)
        t2 = median_seconds(lambda: ex.forward_block2(act, batch), repeats)
        rows.append(ForwardTiming(b, tokens, round(t1, 6), round(t2, 6)))
        tick()
    return rows


def measure_generator(repeats: int) -> tuple[float, float, float]:
    """(perturbed-copy Melem/s, in-place update Melem/s, fixed µs per call) of the canonical
    generator, on a 4M-element tensor and on a norm-sized one."""
    big = torch.zeros(1 << 22)
    key = Direction(0, 1, 0, 1, 0).tensor_key("profile")
    t_copy = median_seconds(lambda: tz.perturbed_copy(big, key, 1e-3), repeats)
    t_add = median_seconds(lambda: tz.add_scaled(big, key, 1e-3), repeats)
    small = torch.zeros(576)
    calls = 200
    t_small = median_seconds(lambda: [tz.add_scaled(small, key, 1e-3) for _ in range(calls)], repeats) / calls
    return big.numel() / t_copy / 1e6, big.numel() / t_add / 1e6, t_small * 1e6


def measure_step_memory(ex: TorchExecutor, batches: list[int], tokens: int, tick: Callable[[], None]) -> tuple[list[MemoryPoint], float]:
    """Peak resident memory of one SPZO step (P1=1, P2=1) per batch size, ascending; and the
    seconds of the step at the largest batch."""
    points, step_s = [], 0.0
    probe = ProbeConfig("spzo", 1, 1, 1e-3)
    for b in sorted(batches):
        batch = synthetic_batch(ex, b, tokens)
        _reset_peak()
        t = time.perf_counter()
        spzo_step(ex, batch, probe, 0, 1, 0)
        step_s = time.perf_counter() - t
        points.append(MemoryPoint(b, tokens, round(peak_mb(), 1)))
        tick()
    return points, step_s


def fit_capability(shape: ModelShape, rows: list[ForwardTiming]) -> tuple[float, float]:
    """(GFLOP/s, ms per unit) such that ``t = units * overhead + FLOPs / throughput`` fits the
    rows of both blocks: the model-independent figures reference profiles also give."""
    xs, ys, us = [], [], []
    for r in rows:
        for block, t in ((1, r.block1_s), (2, r.block2_s)):
            xs.append(shape.block_flops(block, r.batch, r.tokens))
            us.append(shape.units(block))
            ys.append(t)
    # Per-unit time against FLOPs per unit: intercept is the overhead per unit, slope 1/throughput.
    intercept, slope = linear_fit([x / u for x, u in zip(xs, us)], [y / u for y, u in zip(ys, us)])
    return 1.0 / slope / 1e9, intercept * 1e3


def profile_torch(ex: TorchExecutor, shape: ModelShape, trainable: str, tokens: int, batches: list[int], repeats: int,
                  runtime_mb: float, tick: Callable[[], None]) -> BackendProfile:
    """Every figure of the torch backend on this device, for this model and split.

    Memory comes first, while the allocator holds nothing from larger batches: one forward at
    the smallest batch pages the weights in (the model's memory is then the resident growth over
    the bare runtime), then steps run in ascending batch order."""
    smallest = synthetic_batch(ex, batches[0], tokens)
    ex.forward_block2(ex.forward_block1(smallest), smallest)
    load_mb = rss_mb() - runtime_mb
    memory_batches = [batches[0], batches[-1]] if len(batches) > 1 else batches
    memory, step_s = measure_step_memory(ex, memory_batches, tokens, tick)
    rows = measure_forwards(ex, batches, tokens, repeats, tick)
    perturb_rate, update_rate, call_us = measure_generator(repeats)
    tick()
    gflops, overhead_ms = fit_capability(shape, rows)
    base = runtime_mb + load_mb
    analytic = [shape.activation_bytes(p.batch, p.tokens) / MIB for p in memory]
    extra = [max(0.0, p.peak_mb - base) for p in memory]
    factor = sum(a * e for a, e in zip(analytic, extra)) / sum(a * a for a in analytic)
    param = next(iter(ex.model.parameters()))
    return BackendProfile(
        name="torch", dtype=str(param.dtype).removeprefix("torch."), gflops=round(gflops, 2), overhead_ms=round(overhead_ms, 4),
        perturb_melems_s=round(perturb_rate, 1), update_melems_s=round(update_rate, 1), call_us=round(call_us, 2),
        runtime_mb=round(runtime_mb, 1), bytes_per_param=float(param.element_size()),
        activation_factor=round(max(factor, 0.05), 3),
        measured=ModelMeasurement(model=shape.name, digest=shape.digest, layers=shape.layers, split=shape.split, trainable=trainable,
                                  load_mb=round(load_mb, 1), step_s=round(step_s, 4), forwards=rows, memory=memory),
    )


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
