"""Wall time of one SPZO step at P2 = 8 with batched against sequential block-2 probes.

The default job's model (SmolLM2-135M), batch (16), max length (128), split (two thirds) and
trainable set (norm), P1 = 1: each step runs 2 block-1 forwards and 16 block-2 probes, either as
16 forwards of B rows (sequential) or as one forward of 16·B rows (batched,
``edgezo.backends.torch.batched_probes``). Both ways run on the same executor and the same batch,
alternating within each repetition (which goes first alternates too), so load on a shared
machine hits both alike; the figures are medians. Also records how far the two ways' scalars are
apart (float rounding of differently shaped matrix products), and the machine's load.

    python benchmarks/batched_probes.py [--threads 1 2] [--repeats 7] [--device cpu|cuda]

writes ``benchmarks/results/batched_probes.json`` (``--out``), with ``speedup`` (sequential over
batched wall time, the first thread count's) at the top level, and per thread count the CPU
time's ratio too (``cpu_speedup``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from edgezo.backends.torch.batched_probes import batched_block2_losses, batching_refusal, sequential_block2_losses
from edgezo.backends.torch.factory import build_torch_executor
from edgezo.config import JobConfig
from edgezo.estimators import ProbeConfig
from edgezo.methods import method_of
from edgezo.tasks import get_task, load_examples

RESULT = Path(__file__).parent / "results" / "batched_probes.json"
WAYS = {"sequential": sequential_block2_losses, "batched": batched_block2_losses}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1], help="torch thread counts to time, in turn")
    ap.add_argument("--repeats", type=int, default=7, help="timed steps per way and thread count")
    ap.add_argument("--p2", type=int, default=8)
    ap.add_argument("--trainable", default="norm")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--out", type=Path, default=RESULT)
    return ap.parse_args(argv)


def job_batch(ex, cfg: JobConfig):
    """The default job's batch size of SST-2 training examples (seeded), encoded."""
    task = get_task(cfg.task)
    train = load_examples(task, None, "train")
    ix = np.random.default_rng(0).choice(len(train), cfg.batch_size, replace=False)
    return ex.encode([task.prompt(train[k], ex.kind) for k in ix], [train[k].label for k in ix])


def time_step(ex, batch, probe: ProbeConfig, way: str, sync) -> tuple[float, float, dict]:
    """Wall and CPU seconds of one SPZO step run ``way``, and its scalars. CPU seconds (this
    process's, all threads) are what a busy shared machine distorts least."""
    ex.block2_losses = WAYS[way]
    sync()
    start, cpu = time.perf_counter(), time.process_time()
    result = method_of("spzo").step(ex, batch, probe, 0, 1, 0)
    sync()
    return time.perf_counter() - start, time.process_time() - cpu, result.scalars


def time_both(ex, batch, probe: ProbeConfig, repeats: int, sync) -> dict:
    """Alternating repetitions of both ways (one warm-up each); medians and every time."""
    for way in WAYS:
        time_step(ex, batch, probe, way, sync)
    times: dict[str, list[float]] = {way: [] for way in WAYS}
    cpu: dict[str, list[float]] = {way: [] for way in WAYS}
    scalars = {}
    for rep in range(repeats):
        for way in list(WAYS)[:: 1 if rep % 2 == 0 else -1]:
            seconds, cpu_seconds, scalars[way] = time_step(ex, batch, probe, way, sync)
            times[way].append(round(seconds, 4))
            cpu[way].append(round(cpu_seconds, 4))
    difference = max(abs(scalars["batched"][d] - scalars["sequential"][d]) for d in scalars["sequential"])
    return summarise({"sequential_s": times["sequential"], "batched_s": times["batched"],
                      "sequential_cpu_s": cpu["sequential"], "batched_cpu_s": cpu["batched"], "max_scalar_difference": difference})


def paired_interval(sequential: list[float], batched: list[float], draws: int = 10000) -> tuple[float, float]:
    """95% bootstrap interval of the geometric mean of the paired ratios sequential/batched (the
    two ways of one repetition ran back to back, so load hits a pair alike)."""
    logs = np.log(np.asarray(sequential) / np.asarray(batched))
    means = logs[np.random.default_rng(0).integers(0, len(logs), (draws, len(logs)))].mean(axis=1)
    low, high = np.exp(np.percentile(means, [2.5, 97.5]))
    return round(float(low), 3), round(float(high), 3)


def summarise(run: dict) -> dict:
    """Medians, ratios (sequential over batched: above 1, batching is faster) and their paired
    intervals, wall and CPU, from a run's recorded times; "not resolved" where an interval holds 1."""
    for kind, suffix in (("", "_s"), ("cpu_", "_cpu_s")):
        seq, bat = run["sequential" + suffix], run["batched" + suffix]
        run[f"sequential_{kind}median_s"] = round(statistics.median(seq), 4)
        run[f"batched_{kind}median_s"] = round(statistics.median(bat), 4)
        run[f"{kind}speedup"] = round(statistics.median(seq) / statistics.median(bat), 3)
        low, high = paired_interval(seq, bat)
        run[f"{kind}speedup_interval"] = [low, high]
        run[f"{kind}resolved"] = not low <= 1.0 <= high
    return run


def main(argv=None) -> dict:
    args = parse_args(argv)
    cfg = JobConfig(trainable=args.trainable, p1=1, p2=args.p2).validate()
    ex, info = build_torch_executor(cfg, get_task(cfg.task), device=args.device)
    refusal = batching_refusal(ex)
    if refusal:
        sys.exit(f"batched probes do not apply to --trainable {args.trainable}: {refusal}")
    batch = job_batch(ex, cfg)
    probe = ProbeConfig("spzo", 1, args.p2, cfg.eps)
    sync = torch.cuda.synchronize if ex.device.type == "cuda" else (lambda: None)
    runs = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        run = {"threads": threads, "load_average_before": os.getloadavg()[0], **time_both(ex, batch, probe, args.repeats, sync)}
        run["load_average_after"] = os.getloadavg()[0]
        runs.append(run)
        print(f"{threads} thread(s): sequential {run['sequential_median_s']:.3f} s, batched {run['batched_median_s']:.3f} s, "
              f"speedup {run['speedup']:.2f}x {run['speedup_interval']} (CPU time {run['cpu_speedup']:.2f}x "
              f"{run['cpu_speedup_interval']}; load {run['load_average_before']:.1f}); "
              f"max scalar difference {run['max_scalar_difference']:.2e}")
    out = {"model": info.name, "device": ex.device.type, "device_name": device_name(ex.device), "torch": torch.__version__,
           "trainable": args.trainable, "batch": cfg.batch_size, "tokens": int(batch.input_ids.shape[1]),
           "max_length": cfg.max_length, "split": f"{ex.split}/{ex.num_layers}", "p1": 1, "p2": args.p2, "eps": cfg.eps,
           "repeats": args.repeats, "speedup": runs[0]["speedup"], "speedup_interval": runs[0]["speedup_interval"],
           "cpu_speedup": runs[0]["cpu_speedup"], "cpu_speedup_interval": runs[0]["cpu_speedup_interval"], "runs": runs,
           "command": "python benchmarks/batched_probes.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")
    return out


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    main()
