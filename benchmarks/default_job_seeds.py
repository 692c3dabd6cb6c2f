"""The default job on five seeds: what ``edgezo simulate`` with no options does, with an interval.

The README once quoted one run (seed 0: 78.6% -> 81.5% on SST-2), picked from about fifteen
30-round settings (issue 24). This runs the default job unchanged on seeds 0-4 (only ``--seed``
and ``--out`` are given) and reports the accuracy and the correct-label loss before and after,
the gain seed by seed with an interval over the evaluation examples, and pooled over seeds with a
crossed bootstrap (seeds and examples, ``compare_stats``). The default job evaluates the whole
SST-2 validation split (872 examples) at round 0 and at its end, so every seed scores the same
examples and the gains are paired.

    python benchmarks/default_job_seeds.py run [--jobs 2] [--seeds 0 1 2 3 4] [--pin]   # resumable
    python benchmarks/default_job_seeds.py report   # results/default_job_seeds.json + the RESULTS section

Each run is a child process with one compute thread (two at a time on 2 cores); a finished run
(its ``summary.json``) is never rerun, an unfinished one continues (``--resume``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import Child, pinned_child, working_tree_child  # noqa: E402
from compare_stats import RunScores, paired_difference, percentile_interval, resampled_curves, resamples  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RUNS = REPO / "runs" / "default-job-seeds"
RESULT = REPO / "benchmarks" / "results" / "default_job_seeds.json"
RESULTS_MD = REPO / "benchmarks" / "RESULTS.md"
BEGIN, END = "<!-- default-job-seeds:begin -->", "<!-- default-job-seeds:end -->"
SEEDS = (0, 1, 2, 3, 4)
THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def run_folder(seed: int, runs: Path = RUNS) -> Path:
    return runs / f"seed-{seed}"


def command(seed: int, out: Path) -> list[str]:
    """The default job's options: nothing but the seed and where it writes; a run stopped part way
    (its job.json written) continues from its seed log to the model the whole run would reach."""
    again = ["--resume"] if (out / "job.json").is_file() else ["--overwrite"]
    return ["--seed", str(seed), "--out", str(out), *again, "--quiet"]


def run_one(seed: int, runs: Path, child: Child) -> str:
    out = run_folder(seed, runs)
    if (out / "summary.json").is_file():
        return f"seed {seed}: done already"
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with open(out.parent / f"seed-{seed}.log", "w") as log:
        rc = subprocess.run([*child.prefix, *command(seed, out.resolve())], cwd=child.cwd, env={**child.env, **THREAD_ENV},
                            stdout=log, stderr=subprocess.STDOUT).returncode
    if rc == 0:
        (out / "provenance.json").write_text(json.dumps(child.provenance()) + "\n")
    took = (time.time() - started) / 60
    return f"seed {seed}: {'finished' if rc == 0 else f'FAILED (exit {rc}, see {out.parent}/seed-{seed}.log)'} in {took:.1f} min"


def run(seeds: list[int], jobs: int, runs: Path = RUNS, pin: bool = False) -> int:
    """Each seed not finished yet; ``pin``: the committed code (git archive HEAD), not the working tree."""
    child = pinned_child(runs) if pin else working_tree_child()
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for line in pool.map(lambda s: run_one(s, runs, child), seeds):
            print(line, flush=True)
    return 0


# -- report -------------------------------------------------------------------------------------
def scores(out: Path, seed: int) -> tuple[RunScores, RunScores, dict]:
    """(round 0, last round) of one run as RunScores, and its summary."""
    lines = [json.loads(x) for x in (out / "eval_examples.jsonl").read_text().splitlines() if x.strip()]
    first, last = min(lines, key=lambda d: d["round"]), max(lines, key=lambda d: d["round"])
    summary = json.loads((out / "summary.json").read_text())

    def one(d: dict, flops: float) -> RunScores:
        return RunScores(seed, np.array([flops]), np.array([d["hits"]], dtype=float), np.array([d["label_logprobs"]], dtype=float))

    return one(first, 0.0), one(last, summary["flops"]), summary


def summarise(seeds: list[int], runs: Path = RUNS) -> dict:
    done = [s for s in seeds if (run_folder(s, runs) / "summary.json").is_file()]
    if not done:
        raise SystemExit(f"no finished run under {runs}: run `python benchmarks/default_job_seeds.py run` first")
    before, after, summaries = zip(*(scores(run_folder(s, runs), s) for s in done))
    out = {"seeds": done, "examples": int(before[0].hits.shape[1]), "per_seed": [], "command": "edgezo simulate --seed S"}
    for metric, scale in (("accuracy", 1.0), ("eval_loss", -1.0)):  # eval_loss: RunScores carry -loss
        gain = paired_difference(after, before, metric)
        seed_counts, example_counts = resamples(len(done), out["examples"])
        final = (seed_counts.T * resampled_curves(after, metric, example_counts)[:, :, -1]).sum(axis=0) / seed_counts.sum(axis=1)
        lo, hi = sorted(scale * x for x in percentile_interval(final))
        out[metric] = {
            "before": scale * float(np.mean([r.metric(metric)[0].mean() for r in before])),
            "after_mean": scale * float(final[0]), "after_low": lo, "after_high": hi,
            "gain": scale * gain.pooled.value, "gain_low": min(scale * gain.pooled.low, scale * gain.pooled.high),
            "gain_high": max(scale * gain.pooled.low, scale * gain.pooled.high), "gain_resolved": gain.resolved,
            "per_seed_gain": {str(s): [scale * i.value, *sorted((scale * i.low, scale * i.high))] for s, i in gain.per_seed.items()},
        }
    for s, b, a, summ in zip(done, before, after, summaries):
        out["per_seed"].append({"seed": s, "accuracy_before": float(b.hits.mean()), "accuracy_after": float(a.hits.mean()),
                                "eval_loss_before": float(-b.logprobs.mean()), "eval_loss_after": float(-a.logprobs.mean()),
                                "flops": summ["flops"], "wall_s": summ.get("wall_s"), "rounds": summ.get("rounds"),
                                "hits_before": "".join(str(int(h)) for h in b.hits[0]),
                                "hits_after": "".join(str(int(h)) for h in a.hits[0])})
    return out


def render(r: dict) -> str:
    acc, loss = r["accuracy"], r["eval_loss"]
    verdict = "resolved" if acc["gain_resolved"] else "not resolved"
    lines = [
        BEGIN, "## The default job on five seeds", "",
        *([] if len(r["seeds"]) >= len(SEEDS) else [f"**{len(r['seeds'])} of the {len(SEEDS)} seeds run so far.**", ""]),
        f"`edgezo simulate --seed S` for S in {', '.join(map(str, r['seeds']))} (the defaults otherwise: SmolLM2-135M-Instruct, "
        f"SST-2, 4 devices, FedSPZO P1 1 P2 4 split 20, norm weights, 30 rounds), each scored on the whole validation "
        f"split ({r['examples']} examples) before and after. Command: `python benchmarks/default_job_seeds.py run --jobs 2 && "
        "python benchmarks/default_job_seeds.py report`; per-seed rows and hits in `benchmarks/results/default_job_seeds.json`.", "",
        f"- Accuracy: {100 * acc['before']:.1f}% before; after, {100 * acc['after_mean']:.1f}% mean over seeds "
        f"(95% interval {100 * acc['after_low']:.1f}–{100 * acc['after_high']:.1f}%, seeds and examples resampled).",
        f"- Gain: {100 * acc['gain']:+.1f} points (95% {100 * acc['gain_low']:+.1f} to {100 * acc['gain_high']:+.1f}; {verdict}).",
        f"- Correct-label loss: {loss['before']:.4f} before, {loss['after_mean']:.4f} after "
        f"(change {loss['gain']:+.4f}, 95% {loss['gain_low']:+.4f} to {loss['gain_high']:+.4f}).", "",
        "| seed | accuracy before | after | gain (95% over examples) | loss before | loss after |", "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in r["per_seed"]:
        g = acc["per_seed_gain"][str(row["seed"])]
        lines.append(f"| {row['seed']} | {100 * row['accuracy_before']:.1f}% | {100 * row['accuracy_after']:.1f}% | "
                     f"{100 * g[0]:+.1f} ({100 * g[1]:+.1f} to {100 * g[2]:+.1f}) | {row['eval_loss_before']:.4f} | {row['eval_loss_after']:.4f} |")
    return "\n".join(lines + ["", END])


def write_section(text: str, path: Path = RESULTS_MD) -> None:
    old = path.read_text()
    if BEGIN in old:
        head, rest = old.split(BEGIN, 1)
        new = head + text + rest.split(END, 1)[1]
    else:
        new = old.rstrip("\n") + "\n\n" + text + "\n"
    path.write_text(new)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run the default job on each seed not done yet")
    r.add_argument("--jobs", type=int, default=2, help="runs at once, one thread each")
    r.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    r.add_argument("--runs", type=Path, default=RUNS)
    r.add_argument("--pin", action="store_true", help="run the committed code (git archive HEAD), not the working tree")
    p = sub.add_parser("report", help="write results/default_job_seeds.json and the RESULTS.md section")
    p.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    p.add_argument("--runs", type=Path, default=RUNS)
    args = ap.parse_args(argv)
    if args.command == "run":
        return run(args.seeds, args.jobs, args.runs, args.pin)
    result = summarise(args.seeds, args.runs)
    RESULT.write_text(json.dumps(result, indent=1) + "\n")
    text = render(result)
    write_section(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
