"""Slow and fast devices under one round deadline: profile-planned work against one fixed
P1/P2 for everyone, in accuracy against simulated wall-clock time.

Devices come from the reference profiles (two Raspberry Pi 5, two x86 laptops by default); the
model and data are real (SmolLM2-135M-Instruct, SST-2). Three runs of `edgezo simulate`:

* planned: each device's K, P1, P2, batch from its profile for the deadline (--plan);
* fixed, deadline: the job's K=2, P1=1, P2=4, batch 16 for everyone, same deadline; devices that
  cannot finish in time are left out of every round (the round waits the whole deadline);
* fixed, wait (optional, --runs): the same fixed work with no deadline: every round waits for
  the slowest device.

Prints accuracy against simulated seconds and when each run first reaches the fixed runs'
final accuracy; writes heterogeneous.png and the three run folders under --out.

    python benchmarks/heterogeneous.py [--devices pi5:2,laptop-x86:2] [--deadline 15] [--rounds 20] [--runs planned,fixed-deadline,fixed-wait]

A run whose folder holds a finished run with the same arguments is reused, not repeated.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


def run(name: str, out: Path, common: list[str], extra: list[str]) -> list[dict]:
    folder = out / name
    done_before = folder / "summary.json"
    if done_before.exists() and json.loads(done_before.read_text()).get("argv") == [*common, *extra]:
        print(f"[{name}] reusing the finished run in {folder}", flush=True)
        return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    cmd = [sys.executable, "-m", "edgezo", "simulate", *common, *extra, "--out", str(folder), "--quiet"]
    print(f"[{name}] {' '.join(cmd[3:])}", flush=True)
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{name} failed:\n{done.stderr[-3000:]}")
    print(f"[{name}] {done.stdout.strip().splitlines()[-1]}", flush=True)
    summary = json.loads(done_before.read_text())
    done_before.write_text(json.dumps({**summary, "argv": [*common, *extra]}, indent=2))  # lets a re-run reuse it
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def first_reaching(rows: list[dict], target: float) -> float | None:
    for r in rows:
        if r.get("eval_accuracy") is not None and r["eval_accuracy"] >= target:
            return r["sim_time_s"]
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", default="pi5:2,laptop-x86:2")
    ap.add_argument("--deadline", type=float, default=15.0)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--eval-every", type=int, default=2)
    ap.add_argument("--eval-samples", type=int, default=0, help="Validation examples (0: all 872).")
    ap.add_argument("--out", default="runs/heterogeneous")
    ap.add_argument("--runs", default="planned,fixed-deadline", help="Any of planned, fixed-deadline, fixed-wait.")
    args = ap.parse_args()
    out = Path(args.out)
    common = ["--devices", args.devices, "--rounds", str(args.rounds), "--eval-every", str(args.eval_every),
              "--eval-samples", str(args.eval_samples)]
    variants = {
        "planned": ["--round-seconds", str(args.deadline), "--plan"],
        "fixed-deadline": ["--round-seconds", str(args.deadline)],
        "fixed-wait": [],
    }
    results = {name: run(name, out, common, variants[name]) for name in args.runs.split(",")}

    evaluated = args.eval_samples or "all 872"
    print(f"\n{args.devices}, deadline {args.deadline:g} s, {args.rounds} rounds; accuracy on {evaluated} SST-2 validation examples")
    print(f"{'run':>15} " + " ".join(f"{'r' + str(r['round']):>13}" for r in next(iter(results.values())) if r.get("eval_accuracy") is not None))
    for name, rows in results.items():
        cells = [f"{100 * r['eval_accuracy']:5.1f}%@{r['sim_time_s']:>5.0f}s" for r in rows if r.get("eval_accuracy") is not None]
        print(f"{name:>15} " + " ".join(f"{c:>13}" for c in cells))
    targets = [(f"{fixed}'s final", results[fixed][-1]["eval_accuracy"]) for fixed in results if fixed.startswith("fixed")]
    targets += [("", t) for t in (0.80, 0.805, 0.81)]
    for label, target in targets:
        line = f"simulated time to reach {100 * target:.1f}%{f' ({label})' if label else ''}: "
        line += ", ".join(f"{n} {t:,.0f} s" if (t := first_reaching(rows, target)) is not None else f"{n} not within its run"
                          for n, rows in results.items())
        print(line)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, rows in results.items():
        pts = [(r["sim_time_s"], 100 * r["eval_accuracy"]) for r in rows if r.get("eval_accuracy") is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
    ax.set_xlabel("simulated wall-clock time (s)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(f"SST-2, {args.devices}, deadline {args.deadline:g} s")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "heterogeneous.png", dpi=120)
    print(f"wrote {out / 'heterogeneous.png'}")


if __name__ == "__main__":
    main()
