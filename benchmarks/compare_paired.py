"""The paired report of a compare-2 sweep (``compare.py --preset lora-sst2 report``): a markdown
section (between the same markers as compare-1's, in the preset's own RESULTS.md), one PNG per
task and ``summary.json`` beside the rows.

What it claims is what ``compare_stats`` allows: every figure is paired (the same evaluation
examples, the same seeds) and has a 95% interval over seeds and examples; a ratio or a
difference whose interval includes no change is printed "not resolved".

Targets. Each task has one target per metric (accuracy and eval_loss), set from the *tuning
seed's* grid winners, which are never reported: ``TARGET_FRACTION`` of the way from the common
round-0 level to the median final level of the zero-order winners (at the grid's half budget).
No reported run is used to set the bar it is measured against. A metric whose median moved the
wrong way (or not at all) gets no target, and the report says so.

summary.json: one entry per task, edgezo estimator (``Settings.estimators``, else the FedSPZO
labels), baseline (every other label) and metric: ``{"task", "estimator", "baseline", "target", "metric", "ratio", "low",
"high", "resolved", "seeds", "censored"}`` with ``ratio`` the baseline's FLOPs to the target over
the estimator's (above 1: the estimator needs less), ``low``/``high`` its 95% interval (``null``:
unbounded, or no data), ``ratio`` null where a censored run leaves only a bound.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from statistics import mean, median

import numpy as np

import compare_stats as cs
from compare import write_atomic
from compare_report import replace_section, table
from sweeps import RunSpec, Settings, build_sweep, choose_winners

TARGET_FRACTION = 0.5
METRICS = ("accuracy", "eval_loss")
FINAL = {"accuracy": "final_accuracy", "eval_loss": "final_eval_loss"}
START = {"accuracy": "initial_accuracy", "eval_loss": "initial_eval_loss"}


# -- rows to scores -------------------------------------------------------------------------------
def run_scores(row: dict) -> cs.RunScores:
    """A row's per-example scores at each evaluation, with the FLOPs charged up to it."""
    ex = row.get("examples")
    if not ex:
        raise ValueError(f"row {row['key']} has no per-example scores (a compare-1 row?)")
    flops = {p["round"]: p["flops"] for p in row["curve"]}
    hits = np.array([[c == "1" for c in h] for h in ex["hits"]], dtype=np.int8)
    return cs.RunScores(row["seed"], np.array([flops[r] for r in ex["rounds"]]), hits, np.array(ex["label_logprobs"]))


def reported(s: Settings, rows: dict, task: str) -> dict[str, list[tuple[RunSpec, dict]]]:
    """The main sweep's finished runs of ``task`` by label, reported seeds only (never the tuning seed)."""
    out: dict[str, list] = {m.label: [] for m in s.methods}
    for spec in build_sweep(s, "main", rows):
        row = rows.get(spec.key)
        if spec.task == task and row and spec.seed != s.grid_seed and spec.seed in s.tasks[task].seeds:
            out[spec.name].append((spec, row))
    return out


def targets(s: Settings, rows: dict) -> dict[str, float | None]:
    """Each metric's target (for the grid's task) from the tuning seed's winners; None where the
    zero-order winners' median did not improve on round 0, or no winner has a row yet."""
    winners = choose_winners(s, rows)
    picked = [rows[spec.key] for spec in build_sweep(s, "grid", rows)
              if spec.key in rows and spec.method.zero_order and winners[spec.name]["source"] == "grid"
              and (spec.lr, spec.eps) == (winners[spec.name]["lr"], winners[spec.name]["eps"])]
    out = {}
    for metric in METRICS:
        levels = [(r[START[metric]], r[FINAL[metric]]) for r in picked if r.get(FINAL[metric]) is not None]
        if not levels:
            out[metric] = None
            continue
        start = levels[0][0]
        goal = cs.level_at_fraction(start, [f for _, f in levels], TARGET_FRACTION, median)
        better = cs.oriented(metric, goal) > cs.oriented(metric, start)
        out[metric] = goal if better else None
    return out


# -- the comparisons ------------------------------------------------------------------------------
def comparisons(s: Settings, rows: dict, task: str, goals: dict, estimators: tuple[str, ...]):
    """Per (estimator, baseline): the paired final differences and the FLOPs-to-target ratios."""
    runs = {label: [run_scores(row) for _, row in done] for label, done in reported(s, rows, task).items()}
    out = {}
    for est in estimators:
        for base in (m.label for m in s.methods if m.label != est):
            if not runs.get(est) or not runs.get(base) or not {r.seed for r in runs[est]} & {r.seed for r in runs[base]}:
                out[(est, base)] = None
                continue
            diffs = {m: cs.paired_difference(runs[est], runs[base], m) for m in METRICS}
            ratios = {m: cs.target_ratio(runs[est], runs[base], m, goals[m]) for m in METRICS if goals[m] is not None}
            out[(est, base)] = (diffs, ratios)
    return out


def summary_entries(task: str, goals: dict, found: dict) -> list[dict]:
    entries = []
    for (est, base), result in found.items():
        for metric in METRICS:
            ratio = None if result is None else result[1].get(metric)
            if ratio is not None:
                entries.append(cs.summary_entry(task, est, base, ratio))
            else:
                entries.append({"task": task, "estimator": est, "baseline": base, "target": goals[metric], "metric": metric,
                                "ratio": None, "low": None, "high": None, "resolved": False, "seeds": 0,
                                "note": "no target" if goals[metric] is None else "no paired runs yet"})
    return entries


# -- figures --------------------------------------------------------------------------------------
def plot_task(task: str, groups: dict, goals: dict, path: Path) -> None:
    """Accuracy and eval_loss against charged FLOPs: each method's mean over reported seeds."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    for ax, metric, key in zip(axes, METRICS, ("accuracy", "eval_loss")):
        for label, done in groups.items():
            curves = [row["curve"] for _, row in done]
            if not curves:
                continue
            n = min(len(c) for c in curves)
            x = [mean(c[i]["flops"] for c in curves) for i in range(n)]
            y = [mean(c[i].get(key, float("nan")) for c in curves) for i in range(n)]
            ax.plot(x, y, marker="o", ms=3, lw=1.4, label=f"{label} ({len(curves)})")
        if goals.get(metric) is not None:
            ax.axhline(goals[metric], color="gray", ls="--", lw=1, label="target")
        ax.set_xlabel("cumulative FLOPs charged, all devices")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no finished runs yet", transform=ax.transAxes, ha="center", color="gray")
    fig.suptitle(f"{task}: mean over reported seeds (the same evaluation examples for every run)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


# -- markdown -------------------------------------------------------------------------------------
def rise_cell(done: list) -> str:
    """The accuracy gained over the second half of the budget, with its interval (points)."""
    if not done:
        return "—"
    r = cs.late_rise([run_scores(row) for _, row in done], "accuracy")
    return f"{100 * r.value:+.1f} [{100 * r.low:+.1f}, {100 * r.high:+.1f}]" + ("" if r.excludes(0.0) else " (flat)")


def method_table(groups: dict) -> list[str]:
    body = []
    for label, done in groups.items():
        rows = [row for _, row in done]
        cell = (lambda k, f: f(mean(r[k] for r in rows)) if rows and all(r.get(k) is not None for r in rows) else "—")
        body.append([label, str(done[0][0].rounds) if done else "—", f"{done[0][0].lr:g}" if done else "—",
                     ", ".join(str(sp.seed) for sp, _ in done) or "none yet",
                     cell("initial_accuracy", lambda v: f"{100 * v:.1f}%"), cell("final_accuracy", lambda v: f"{100 * v:.1f}%"),
                     rise_cell(done), cell("final_eval_loss", lambda v: f"{v:.4f}"), cell("flops", lambda v: f"{v:.3g}")])
    return table(["method", "rounds", "lr", "seeds", "round 0", "final accuracy", "rise over the 2nd half (points)",
                  "final eval_loss", "FLOPs charged"], body)


def comparison_table(found: dict, goals: dict) -> list[str]:
    body = []
    for (est, base), result in found.items():
        if result is None:
            body.append([est, base, "no paired runs yet", "", "", "", ""])
            continue
        diffs, ratios = result
        body.append([est, base, cs.fmt_difference(diffs["accuracy"]), cs.fmt_per_seed(diffs["accuracy"]),
                     cs.fmt_difference(diffs["eval_loss"], 1.0, "", 4),
                     cs.fmt_ratio(ratios["accuracy"]) if "accuracy" in ratios else "no target",
                     cs.fmt_ratio(ratios["eval_loss"]) if "eval_loss" in ratios else "no target"])
    acc = "none" if goals["accuracy"] is None else f"{100 * goals['accuracy']:.1f}%"
    loss = "none" if goals["eval_loss"] is None else f"{goals['eval_loss']:.4f}"
    return table(["estimator", "baseline", "final accuracy, est − base (points)", "per seed (over examples)",
                  "final eval_loss, base − est", f"FLOPs to accuracy {acc}: base ÷ est",
                  f"FLOPs to eval_loss {loss}: base ÷ est"], body)


def render(s: Settings, rows: dict, figures: Path, md_dir: Path, source: str) -> tuple[str, list[dict]]:
    tuned = targets(s, rows)  # the grid runs on one task: the others get no target
    labels = [m.label for m in s.methods]
    estimators = tuple(e for e in s.estimators if e in labels) or tuple(m.label for m in s.methods if m.method == "spzo")  # each against every other label
    out = [f"_Generated by `python benchmarks/compare.py report` from {source}; do not edit by hand._", "",
           f"Harness {s.harness}: every run scores the same evaluation examples; intervals are 95% bootstrap intervals over "
           f"seeds and examples (crossed, {cs.REPLICATES} replicates), paired by seed and example; \"not resolved\": the interval "
           f"includes no difference. Reported seeds only (the tuning seed {s.grid_seed} is never reported). Targets: "
           f"{TARGET_FRACTION:.0%} of the way from round 0 to the median final level of the zero-order grid winners on the "
           "tuning seed. A run that never reaches a target is censored: its ratio is a bound, and the interval takes the bound's "
           "worst case at each end.", ""]
    entries = []
    for task in s.tasks:
        goals = tuned if task == s.grid_task else {m: None for m in METRICS}
        groups = reported(s, rows, task)
        png = figures / f"compare_{task}.png"
        plot_task(task, groups, goals, png)
        found = comparisons(s, rows, task, goals, estimators)
        entries += summary_entries(task, goals, found)
        out += [f"### {task}", "", f"![{task}]({os.path.relpath(png, md_dir)})", ""] + method_table(groups) + [""]
        out += comparison_table(found, goals) + [""]
    return "\n".join(out) + "\n", entries


def write_report(s: Settings, rows: dict, results_md: Path, figures: Path, summary_json: Path, source: str) -> list[dict]:
    body, entries = render(s, rows, Path(figures), Path(results_md).resolve().parent, source)
    Path(results_md).parent.mkdir(parents=True, exist_ok=True)
    replace_section(Path(results_md), body)
    write_atomic(Path(summary_json), json.dumps(entries, indent=1) + "\n")
    return entries
