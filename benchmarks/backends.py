"""Every executor against torch fp32 on SmolLM2-135M: peak memory and time of an SPZO step,
and (with --accuracy) SST-2 accuracy after the same FedSPZO budget.

Each executor is measured in a fresh process (peak RSS only grows): it loads the model, encodes
one SST-2 batch, resets the peak-RSS mark (loading is not a step), runs one warm-up step, then
times ``--steps`` SPZO steps (P1=1, P2=4, norm weights trained, with their local update) and reads
the peak RSS. "model + step" is the peak
minus the RSS before the weights were loaded (the interpreter, the framework, edgezo, and
transformers with its model machinery, which reading the config imports: about 340 MiB here,
paid whatever the executor), which is what the choice of executor changes; the weights' own
bytes are printed too. Rows:

* torch     fp32 weights (the GGUF converted once to a safetensors folder);
* int8      the GGUF's own blocks (Q4_1 linears, Q8_0 embedding), dequantized per layer;
* int8-q8   every linear and the embedding quantized to Q8_0 from the fp32 folder;
* mlx       fp32 on MLX (Linux: the CPU build, mlx[cpu]).

    python benchmarks/backends.py [--steps 3] [--mlx-steps 1] [--accuracy --rounds 10]
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = ("torch", "int8", "int8-q8", "mlx")


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        import os

        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def model_arg(variant: str) -> str | None:
    """int8-q8 quantizes the fp32 folder; the others load the default model (its GGUF)."""
    if variant != "int8-q8":
        return None
    from edgezo.backends.hf.source import resolve_model

    return str(resolve_model(None).folder)


def child(variant: str, steps: int, batch_size: int) -> None:
    import numpy as np

    import edgezo.backends.choice as choice
    from edgezo.config import JobConfig
    from edgezo.estimators import ProbeConfig
    from edgezo.methods import method_of
    from edgezo.tasks import get_task, load_examples

    task = get_task("sst2")
    train = load_examples(task, None, "train")
    backend = variant.split("-")[0]
    importlib.import_module(f"edgezo.backends.{backend}.factory")  # the framework and its model code
    from transformers import AutoConfig

    from edgezo.backends.hf.source import resolve_model

    AutoConfig.from_pretrained(resolve_model(model_arg(variant)).folder)  # imports transformers' model machinery (~90 MiB)
    before = _rss_mib()  # the runtime: interpreter, framework, transformers, edgezo; no weights yet
    ex, _ = choice.build_executor(backend, JobConfig(model=model_arg(variant), trainable="norm"), task)
    loaded = _rss_mib()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the high-water mark: the peak below is the steps', not the loading's
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(steps + 1):
        ix = rng.choice(len(train), batch_size, replace=False)
        batches.append(ex.encode([task.prompt(train[k], ex.kind) for k in ix], [train[k].label for k in ix]))
    probe = ProbeConfig("spzo", 1, 4, 1e-3)
    start = ex.snapshot()
    if variant != "mlx":  # MLX on a Linux CPU takes minutes a step: its first step is timed too
        method_of("spzo").local_round(ex, batches[:1], probe, 1e-4, 0, 1)  # warm-up
    times = []
    for b in batches[1:]:
        ex.restore(start)
        t = time.perf_counter()
        method_of("spzo").local_round(ex, [b], probe, 1e-4, 0, 1)
        times.append(time.perf_counter() - t)
    mem = getattr(ex, "memory", None)  # int8: its quantized and float32 weight bytes
    weights = mem.total_bytes / 2**20 if mem else 4 * sum(_numel(a) for a in _all_weights(ex)) / 2**20
    print(json.dumps({"variant": variant, "runtime_mib": before, "loaded_mib": loaded, "peak_mib": _peak_mib(),
                      "step_s": float(np.median(times)), "weights_mib": weights}))


def _numel(array) -> int:
    return array.size if isinstance(array.size, int) else array.numel()  # mlx: .size; torch: .numel()


def _all_weights(ex):
    """Every distinct fp32 weight tensor of a torch or mlx executor (a tied head counted once)."""
    if ex.backend == "mlx":
        from mlx.utils import tree_flatten

        return list({id(v): v for _, v in tree_flatten(ex.model.parameters())}.values())
    return list({id(p): p for p in ex.model.parameters()}.values())


def measure(variant: str, steps: int, batch_size: int) -> dict | None:
    done = subprocess.run([sys.executable, __file__, "--child", variant, "--steps", str(steps), "--batch-size", str(batch_size)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        print(f"{variant}: failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}")
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def accuracy(rounds: int, out: Path) -> None:
    """The same FedSPZO budget (4 devices, ``rounds`` rounds, the defaults otherwise) on torch
    fp32 and on int8 Q8_0 from the same fp32 weights, evaluated on the full SST-2 dev split."""
    folder = model_arg("int8-q8")
    results = {}
    for backend in ("torch", "int8"):
        run = out / f"acc-{backend}"
        cmd = ["edgezo", "simulate", "--model", folder, "--backend", backend, "--rounds", str(rounds), "--out", str(run), "--quiet"]
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
        results[backend] = json.loads((run / "summary.json").read_text())
    t, q = results["torch"], results["int8"]
    print(f"\nSST-2 dev (872), 4 devices x {rounds} rounds, norm weights trained:")
    for name, s in (("torch fp32", t), ("int8 Q8_0", q)):
        print(f"  {name:10s}  round 0 {100 * s['initial_accuracy']:.1f}%  after {100 * s['final_accuracy']:.1f}%  wall {s['wall_s'] / 60:.1f} min")
    gap = 100 * (q["final_accuracy"] - t["final_accuracy"])
    print(f"  int8 - fp32 after training: {gap:+.1f} points (aim: within 1 point)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--mlx-steps", type=int, default=1, help="Timed steps on mlx (slow on Linux CPUs).")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--variants", default=",".join(VARIANTS), help="Executors to measure (empty: none, e.g. with --accuracy).")
    ap.add_argument("--child", choices=VARIANTS)
    ap.add_argument("--accuracy", action="store_true", help="Also run the same FedSPZO budget on torch and int8 Q8_0.")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--out", type=Path, default=Path("runs/bench-backends"))
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.steps, args.batch_size)
    rows = [r for v in args.variants.split(",") if v and (r := measure(v, args.mlx_steps if v == "mlx" else args.steps, args.batch_size))]
    if rows:
        table(rows, args)
    if args.accuracy:
        accuracy(args.rounds, args.out)


def table(rows: list[dict], args) -> None:
    base = next((r for r in rows if r["variant"] == "torch"), None)
    print(f"SmolLM2-135M-Instruct, SST-2 batch {args.batch_size}, SPZO step P1=1 P2=4, norm weights trained "
          f"(median of {args.steps} steps after a warm-up, mlx {args.mlx_steps} without; each executor in a fresh process)")
    print(f"{'executor':9s} {'weights MiB':>11s} {'runtime MiB':>11s} {'peak MiB':>9s} {'vs torch':>8s} "
          f"{'model+step MiB':>14s} {'vs torch':>8s} {'step s':>7s} {'vs torch':>8s}")
    for r in rows:
        own = r["peak_mib"] - r["runtime_mib"]
        peak_x = r["peak_mib"] / base["peak_mib"] if base else float("nan")
        own_x = own / (base["peak_mib"] - base["runtime_mib"]) if base else float("nan")
        step_x = r["step_s"] / base["step_s"] if base else float("nan")
        print(f"{r['variant']:9s} {r['weights_mib']:11.0f} {r['runtime_mib']:11.0f} {r['peak_mib']:9.0f} {peak_x:8.2f} "
              f"{own:14.0f} {own_x:8.2f} {r['step_s']:7.2f} {step_x:8.2f}")
    print("aim: int8 peak memory of a step at most 0.4x torch fp32 (model+step: the peak above the runtime)")


if __name__ == "__main__":
    main()
