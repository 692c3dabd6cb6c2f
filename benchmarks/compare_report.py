"""The comparison report: a markdown section of benchmarks/RESULTS.md (between the markers
``<!-- compare:begin -->`` and ``<!-- compare:end -->``, so other generated sections can share the
file) and one PNG per task, all from the cached rows of ``compare.py``.

Target. Each task's target is a gain over the run's own round-0 accuracy: ``TARGET_FRACTION`` of
the best mean gain (final minus round 0, mean over seeds) of the zero-order methods in the main
sweep. An absolute target such as "95% of the best final accuracy" lies below the zero-shot
accuracy on every task here (SST-2 starts near 79%), so every run would reach it at round 0; a
gain also removes the seed's evaluation subset (the CLI draws it with the run's seed) from the
comparison. FLOPs to target are interpolated linearly between the two evaluations that bracket
it; a run that never reaches it gives a bound (its whole budget), shown as ">x" in a ratio.

A task gets no target when the best mean gain is within the evaluation subset's noise, one
binomial standard error at 50% (``0.5 / sqrt(eval_samples)``: 3.5 points on 200 examples): a
"target" of +0.4 points is reached or missed by one example's luck, and a ratio of FLOPs to it
would measure that luck, not compute.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from statistics import mean, stdev

from compare import write_atomic
from sweeps import SWEEPS, RunSpec, Settings, build_sweep, choose_winners

BEGIN, END = "<!-- compare:begin -->", "<!-- compare:end -->"
TARGET_FRACTION = 0.8  # of the best zero-order method's mean gain over round 0
SPZO = "spzo"


# -- numbers ------------------------------------------------------------------------------------
@dataclass
class Reach:
    """FLOPs at which a run first reached the target (``reached``), or the FLOPs it spent."""

    flops: float
    reached: bool


def gain(row: dict) -> float:
    return row["final_accuracy"] - row["initial_accuracy"]


def flops_to_target(row: dict, target_gain: float) -> Reach:
    curve = row["curve"]
    a0 = curve[0]["accuracy"]
    for prev, point in zip(curve, curve[1:]):
        g_prev, g = prev["accuracy"] - a0, point["accuracy"] - a0
        if g >= target_gain:
            t = (target_gain - g_prev) / (g - g_prev) if g > g_prev else 1.0
            return Reach(prev["flops"] + max(0.0, t) * (point["flops"] - prev["flops"]), True)
    return Reach(row["flops"], False)


def targets(s: Settings, main: list[tuple[RunSpec, dict | None]], seed: int | None = None) -> dict[str, float | None]:
    """Each task's target gain (None where no zero-order method gained beyond the noise); with
    ``seed``, the same rule over that seed's runs alone (the seed-level target)."""
    out = {}
    for task in s.tasks:
        gains = {}
        for spec, row in main:
            if row and spec.task == task and spec.method.zero_order and seed in (None, spec.seed):
                gains.setdefault(spec.method.label, []).append(gain(row))
        best = max((mean(g) for g in gains.values()), default=0.0)
        out[task] = TARGET_FRACTION * best if best > noise_floor(s.tasks[task].eval_samples) else None
    return out


def noise_floor(eval_samples: int) -> float:
    """One binomial standard error of an accuracy near 50% on ``eval_samples`` examples."""
    return 0.5 / eval_samples ** 0.5


def ratio(spzo: Reach, base: Reach) -> tuple[float, str] | None:
    """Baseline FLOPs over FedSPZO FLOPs to the target: (value, "" exact | ">" | "<"), None if
    neither reached it."""
    if spzo.reached and base.reached:
        return base.flops / spzo.flops, ""
    if spzo.reached:
        return base.flops / spzo.flops, ">"
    if base.reached:
        return base.flops / spzo.flops, "<"
    return None


def spread(values: list[float], fmt: str = "{:.1f}", scale: float = 1.0) -> str:
    """mean ± sample std (n), or the single value."""
    if not values:
        return "—"
    v = [scale * x for x in values]
    if len(v) == 1:
        return fmt.format(v[0])
    return f"{fmt.format(mean(v))} ± {fmt.format(stdev(v))} ({len(v)})"


def ratio_cell(ratios: list[tuple[float, str] | None]) -> str:
    """Mean ± std when every seed gives an exact ratio; otherwise each seed's value or bound."""
    if not ratios:
        return "—"
    if all(r is not None and r[1] == "" for r in ratios):
        return spread([r[0] for r in ratios], "{:.2f}") + "×"
    return ", ".join("n/a" if r is None else f"{r[1]}{r[0]:.2f}×" for r in ratios)


def pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


# -- the sweeps, joined with their rows ---------------------------------------------------------
def joined(s: Settings, rows: dict[str, dict]) -> dict[str, list[tuple[RunSpec, dict | None]]]:
    return {name: [(spec, rows.get(spec.key)) for spec in build_sweep(s, name, rows)] for name in SWEEPS}


def by_label(pairs, task: str) -> dict[str, list[tuple[RunSpec, dict]]]:
    out: dict[str, list] = {}
    for spec, row in pairs:
        if spec.task == task:
            out.setdefault(spec.name, [])
            if row:
                out[spec.name].append((spec, row))
    return out


def spzo_reach_by_seed(groups, target: float) -> dict[int, Reach]:
    return {spec.seed: flops_to_target(row, target) for spec, row in groups.get(SPZO, [])}


# -- figures ------------------------------------------------------------------------------------
def plot_task(task: str, groups: dict, target: float | None, eval_samples: int, path: Path) -> None:
    """Accuracy against cumulative FLOPs, every method, mean over seeds with a ±1 std band."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.8), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    starts = []
    for label, done in groups.items():
        if not done:
            continue
        curves = [row["curve"] for _, row in done]
        n = min(len(c) for c in curves)
        x = [mean(c[i]["flops"] for c in curves) for i in range(n)]
        y = [100 * mean(c[i]["accuracy"] for c in curves) for i in range(n)]
        (line,) = ax.plot(x, y, marker="o", ms=3.5, lw=1.6, label=f"{label} ({len(curves)} seed{'s' * (len(curves) > 1)})")
        if len(curves) > 1:
            sd = [100 * stdev(c[i]["accuracy"] for c in curves) for i in range(n)]
            ax.fill_between(x, [a - b for a, b in zip(y, sd)], [a + b for a, b in zip(y, sd)], color=line.get_color(), alpha=0.15, lw=0)
        starts += [row["initial_accuracy"] for _, row in done]
    if target is not None and starts:
        ax.axhline(100 * (mean(starts) + target), color="gray", ls="--", lw=1, label=f"target (+{100 * target:.1f} points)")
    ax.set_xlabel("cumulative forward FLOPs, all devices (FedAvg: forward + backward)")
    ax.set_ylabel(f"validation accuracy, % ({eval_samples} examples)")
    ax.set_title(f"{task}: accuracy against compute (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    if starts:
        ax.legend(fontsize=8, loc="best")
    else:
        ax.text(0.5, 0.5, "no finished runs yet", transform=ax.transAxes, ha="center", color="gray")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


# -- markdown -----------------------------------------------------------------------------------
def table(header: list[str], body: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"] + ["| " + " | ".join(r) + " |" for r in body]


def settings_lines(s: Settings) -> list[str]:
    tasks = ", ".join(f"{t.name} (max-length {t.max_length}, {t.eval_samples} evaluation examples, budget {t.budget_flops:.2g} "
                      f"FLOPs, seeds {', '.join(map(str, t.seeds))})" for t in s.tasks.values())
    probes = ", ".join(f"{m.label} P = {m.p}" for m in s.methods if m.zero_order and m.method != SPZO)
    return [
        f"Model {s.model or 'SmolLM2-135M-Instruct (the CLI default)'}; {s.clients} devices IID (MeZO: 1 device), "
        f"K = {s.local_steps} local step{'s' * (s.local_steps > 1)} of batch {s.batch_size}, trainable `{s.trainable}`, "
        f"lr schedule {s.lr_schedule}; {spzo_point(s)}; {probes}. Tasks: {tasks}.",
        "",
        "Equal compute: each method gets the rounds that spend about the task's budget of forward FLOPs by the "
        "forward-count model (an SPZO step 2·P1·(F1 + P2·F2) block forwards, a central single-block step 2·P, a "
        "forward-difference step P + 1; see `benchmarks/sweeps.py`). FLOPs are those the CLI counts over the real "
        "tokens of every batch; evaluation is not counted. **FedAvg's FLOPs include its backward pass**, which the "
        "CLI counts as two forwards (3 × the forward FLOPs per step).",
        "",
        f"Target: a gain over the run's own round-0 accuracy of {TARGET_FRACTION:.0%} of the best zero-order "
        "method's mean gain (main sweep); no target where that gain is within one binomial standard error of the evaluation subset (0.5/√n). "
        "Where a task has none, the same rule over one seed's runs gives a seed-level target (listed under the task's table, and used by "
        "the one-seed ablation and Dirichlet tables). Ratios are baseline FLOPs ÷ FedSPZO FLOPs to the target, per seed "
        "(> : the baseline never reached it, so its whole budget is a lower bound; <: FedSPZO did not). "
        "The evaluation subsets are small (binomial noise ±2-3.5 points at 50-80% accuracy), but all methods of a "
        "seed share theirs.",
    ]


def spzo_point(s: Settings) -> str:
    m = s.method(SPZO)
    return f"FedSPZO P1 = {m.p}, P2 = {m.p2}, split {m.split or s.default_split} of {s.layers} layers, {m.variant}"


def grid_lines(s: Settings, grid: list, winners: dict) -> list[str]:
    body = []
    for spec, row in grid:
        w = winners[spec.name]
        win = w["source"] == "grid" and (w["lr"], w["eps"]) == (spec.lr, spec.eps)
        lrs = s.grid[spec.name].lrs
        edge = " (edge of the grid)" if win and spec.lr in (min(lrs), max(lrs)) else ""
        mark = (lambda t: f"**{t}**") if win else (lambda t: t)
        body.append([spec.name, mark(f"{spec.lr:g}") + edge, f"{spec.eps:g}" if spec.method.zero_order else "—",
                     str(spec.rounds), pct(row and row["final_accuracy"]), pct(row and row["best_accuracy"]),
                     f"{row['flops']:.3g}" if row else "not run"])
    fallbacks = [f"{k} (lr {w['lr']:g}, eps {w['eps']:g})" for k, w in winners.items() if w["source"] == "fallback"]
    tuned = [f"{m.label} uses {m.tuned_as}'s" for m in s.methods if m.tuned_as]
    task = s.tasks[s.grid_task]
    out = [f"### lr/eps grid ({task.name}, seed {s.grid_seed}, {s.grid_budget_fraction:g} × the budget)", "",
           "Every lr at the first eps, the other eps at the middle lr; the winner (bold) has the best final accuracy. "
           + ("; ".join(tuned) + ". " if tuned else "")
           + (f"Not tuned yet, using the stated fallbacks: {', '.join(fallbacks)}." if fallbacks else ""), ""]
    return out + table(["method", "lr", "eps", "rounds", "final", "best", "FLOPs"], body)


def task_lines(s: Settings, task: str, main: list, target: float | None, png: str) -> tuple[list[str], dict]:
    """The task's figure and its table; returns the ratios per baseline (for the summary table)."""
    groups = by_label(main, task)
    spzo = spzo_reach_by_seed(groups, target) if target is not None else {}
    body, ratios = [], {}
    for label, done in groups.items():
        reaches = [flops_to_target(row, target) for _, row in done] if target is not None else []
        if label != SPZO and target is not None:
            ratios[label] = [ratio(spzo[spec.seed], flops_to_target(row, target)) for spec, row in done if spec.seed in spzo]
        body.append([
            label, str(done[0][0].rounds) if done else "—", spread([r["flops"] for _, r in done], "{:.3g}"),
            spread([r["initial_accuracy"] for _, r in done], scale=100), spread([r["final_accuracy"] for _, r in done], scale=100),
            spread([r["best_accuracy"] for _, r in done], scale=100),
            (f"{spread([x.flops for x in reaches if x.reached], '{:.3g}')} ({sum(x.reached for x in reaches)}/{len(reaches)} reached)"
             if reaches else "—"),
            "1" if label == SPZO and done else ratio_cell(ratios.get(label, [])),
        ])
    t = s.tasks[task]
    head = [f"### {task}", "", f"![{task}: accuracy against cumulative FLOPs]({png})", "",
            f"Target: {f'none (no zero-order method gained more than the noise of {s.tasks[task].eval_samples} examples, {100 * noise_floor(s.tasks[task].eval_samples):.1f} points, on average)' if target is None else f'+{100 * target:.1f} points over round 0'}. "
            f"Budget {t.budget_flops:.2g} forward FLOPs; accuracy in % on {t.eval_samples} validation examples, mean ± std (seeds).", ""]
    return head + table(["method", "rounds", "FLOPs spent", "round 0", "final", "best", "FLOPs to target", "baseline ÷ FedSPZO"], body), ratios


def seed_level_lines(s: Settings, task: str, main: list) -> list[str]:
    """Where a task has no target over all its seeds: each seed whose own best zero-order gain
    clears the noise, with that seed's target and each baseline's FLOPs ratio on it."""
    groups = by_label(main, task)
    parts = []
    for seed in s.tasks[task].seeds:
        one = [(spec, row) for spec, row in main if spec.seed == seed]
        target = targets(s, one, seed)[task]
        spzo = spzo_reach_by_seed(groups, target).get(seed) if target is not None else None
        if spzo is None:
            continue
        cells = []
        for label, done in groups.items():
            r = next((ratio(spzo, flops_to_target(row, target)) for spec, row in done if spec.seed == seed), None)
            if label != SPZO:
                cells.append(f"{label} {'n/a' if r is None else f'{r[1]}{r[0]:.2f}×'}")
        parts.append(f"seed {seed} (target +{100 * target:.1f} points; FedSPZO {'reached it' if spzo.reached else 'did not'}): " + ", ".join(cells))
    if not parts:
        return ["No seed alone has a zero-order gain beyond the noise either."]
    return ["Seed-level targets (the same rule over one seed's runs; baseline ÷ FedSPZO FLOPs): " + "; ".join(parts) + ". "
            f"Seeds not listed had no zero-order gain beyond the noise."]


def ratio_summary(s: Settings, ratios: dict[str, dict]) -> list[str]:
    labels = [m.label for m in s.methods if m.label != SPZO]
    body = [[label] + [ratio_cell(ratios[t].get(label, [])) for t in s.tasks] for label in labels]
    return ["### FLOPs to target: each baseline ÷ FedSPZO", "",
            "Above 1: FedSPZO needs less compute to reach the target. Mean ± std over seeds (n), or each seed's value.", ""] \
        + table(["baseline"] + list(s.tasks), body)


def memory_lines(s: Settings, main: list) -> list[str]:
    body, gpu = [], s.unit == "GPU"
    peak = "peak_gpu_mib" if gpu else "peak_rss_mib"  # on a GPU the model's memory is not in the RSS
    for m in s.methods:
        done = [(spec, row) for spec, row in main if row and spec.name == m.label]
        per_task = [spread([r[peak] for sp, r in done if sp.task == t and r.get(peak) is not None], "{:.0f}") for t in s.tasks]
        per_round = [(r["bytes_up_per_device"] / r["rounds"], r["bytes_down_per_device"] / r["rounds"]) for _, r in done]
        up_down = f"{mean(u for u, _ in per_round):,.0f} / {mean(d for _, d in per_round):,.0f}" if per_round else "—"
        cpu = spread([r["cpu_s"] / 60 for _, r in done], "{:.1f}")
        body.append([m.label] + per_task + [up_down, cpu])
    memory = ("Peak GPU memory of the run (MiB, `torch.cuda.max_memory_allocated`)" if gpu
              else "Peak RSS of the whole `edgezo simulate` process (MiB, from `os.wait4`)")
    return ["### Memory, bytes and time per method", "",
            f"{memory}, payload bytes per device per round "
            "(up / down, averaged over tasks), and CPU minutes per run (one thread).", ""] \
        + table(["method"] + [f"peak {'GPU ' * gpu}MiB {t}" for t in s.tasks] + ["bytes/round up / down", "CPU min/run"], body)


def single_seed_lines(title: str, note: str, pairs: list, target: float | None, base_reach: Reach | None) -> list[str]:
    """Ablation and Dirichlet tables: one seed per setting, FLOPs to the task's target."""
    body = []
    for spec, row in pairs:
        reach = flops_to_target(row, target) if row and target is not None else None
        rel = "—"
        if reach and base_reach:
            r = ratio(base_reach, reach)
            rel = "n/a" if r is None else f"{r[1]}{r[0]:.2f}×"
        body.append([spec.name, str(spec.rounds), f"{row['flops']:.3g}" if row else "not run",
                     pct(row and row["initial_accuracy"]), pct(row and row["final_accuracy"]), pct(row and row["best_accuracy"]),
                     "—" if reach is None else (f"{reach.flops:.3g}" if reach.reached else f"not reached (> {reach.flops:.3g})"), rel])
    return [title, "", note, ""] + table(["setting", "rounds", "FLOPs spent", "round 0", "final", "best", "FLOPs to target", "÷ reference"], body)


def command_lines(s: Settings, sweeps: dict, pngs: dict[str, str]) -> list[str]:
    out = ["### Commands", "", "Each figure and table comes from the cached rows; to (re)produce them:", ""]
    for task, png in pngs.items():
        out.append(f"- `{png}`: `python benchmarks/compare.py run --sweep main --only task={task}` then `python benchmarks/compare.py report`")
    out += ["- grid / ablation / Dirichlet tables: `python benchmarks/compare.py run --sweep grid|ablation|dirichlet`",
            "- everything, two runs at a time: `python benchmarks/compare.py run --jobs 2` (resumes where it stopped)", "",
            "<details><summary>the <code>edgezo simulate</code> command of every finished main run (seed "
            f"{min(t.seeds[0] for t in s.tasks.values())} shown per task and method)</summary>", ""]
    shown = set()
    for spec, row in sweeps["main"]:
        if row and (spec.task, spec.name) not in shown:
            shown.add((spec.task, spec.name))
            out.append(f"- `{row['command']}`")
    return out + ["", "</details>"]


def coverage_lines(sweeps: dict) -> list[str]:
    parts, commits, digests = [], set(), set()
    for name, pairs in sweeps.items():
        unique = {spec.key: row for spec, row in pairs}  # the ablation lists its default point per axis
        done = [row for row in unique.values() if row]
        parts.append(f"{name} {len(done)}/{len(unique)}")
        commits |= {r.get("edgezo_commit", "?") for r in done}
        digests |= {(r.get("model") or {}).get("digest", "?") for r in done}
    line = f"Runs with a row: {', '.join(parts)}."
    if len(digests) > 1:
        line += f" **The rows come from {len(digests)} different model digests.**"
    if commits:
        line += f" edgezo commits: {', '.join(sorted(c[:12] + ('+dirty' if c.endswith('+dirty') else '') for c in commits))}."
    return [line]


def single_seed_target(s: Settings, main: list, goal: dict, task: str, seed: int) -> tuple[float | None, str]:
    """The target of a one-seed table (ablation, Dirichlet) and how it was set: the task's, or,
    where the task has none, that seed's own from the main sweep."""
    if goal[task] is not None:
        return goal[task], f"target: the {task} target (+{100 * goal[task]:.1f} points)"
    own = targets(s, [(spec, row) for spec, row in main if spec.seed == seed], seed)[task]
    if own is None:
        return None, f"no target ({task} has none, nor has seed {seed} alone)"
    return own, f"target: seed {seed}'s own (+{100 * own:.1f} points; {task} has none over all its seeds)"


CPU_ROWS_SHOWN = "benchmarks/results/compare/rows/"  # how the header names the committed CPU sweep's rows


def render(s: Settings, rows: dict[str, dict], figures: Path, md_dir: Path,
           source: str = CPU_ROWS_SHOWN) -> str:
    """The whole section (markdown), drawing each task's PNG under ``figures`` on the way;
    ``source`` names the rows' folder in the header, so a GPU preset's report says where its rows are."""
    sweeps = joined(s, rows)
    winners = choose_winners(s, rows)
    goal = targets(s, sweeps["main"])
    out = [f"_Generated by `python benchmarks/compare.py report` from {source}; do not edit by hand._", ""]
    out += coverage_lines(sweeps) + [""] + settings_lines(s) + [""]
    pngs, ratios = {}, {}
    for task in s.tasks:
        path = figures / f"compare_{task}.png"
        plot_task(task, by_label(sweeps["main"], task), goal[task], s.tasks[task].eval_samples, path)
        pngs[task] = os.path.relpath(path, md_dir)
        lines, ratios[task] = task_lines(s, task, sweeps["main"], goal[task], pngs[task])
        out += lines + [""]
        if goal[task] is None and len(s.tasks[task].seeds) > 1:
            out += seed_level_lines(s, task, sweeps["main"]) + [""]
    out += ratio_summary(s, ratios) + [""] + memory_lines(s, sweeps["main"]) + [""] + grid_lines(s, sweeps["grid"], winners) + [""]
    at = s.tasks[s.ablation_task]
    at_goal, at_says = single_seed_target(s, sweeps["main"], goal, at.name, s.ablation_seed)
    base = next((row for spec, row in sweeps["main"] if row and spec.task == at.name and spec.name == SPZO and spec.seed == s.ablation_seed), None)
    base_reach = flops_to_target(base, at_goal) if base and at_goal is not None else None
    out += single_seed_lines(f"### Ablation: FedSPZO on {at.name} (seed {s.ablation_seed})",
                             f"One change at a time from {spzo_point(s)} (that point is the main sweep's run), "
                             f"each at the task's budget; {at_says}; ÷ reference: the setting's FLOPs to target over the default's.",
                             sweeps["ablation"], at_goal, base_reach) + [""]
    dt = s.tasks[s.dirichlet_task]
    dt_goal, dt_says = single_seed_target(s, sweeps["main"], goal, dt.name, s.dirichlet_seed)
    pairs = sweeps["dirichlet"]
    dir_spzo = next((row for spec, row in pairs if row and spec.name == SPZO), None)
    dir_reach = flops_to_target(dir_spzo, dt_goal) if dir_spzo and dt_goal is not None else None
    out += single_seed_lines(f"### Dirichlet(α = {s.dirichlet_alpha:g}) label skew on {dt.name} (seed {s.dirichlet_seed})",
                             f"{dt_says[0].upper()}{dt_says[1:]}, from the IID runs; ÷ reference: the method's FLOPs to target over FedSPZO's.",
                             pairs, dt_goal, dir_reach) + [""]
    out += command_lines(s, sweeps, pngs)
    return "\n".join(out) + "\n"


def replace_section(path: Path, body: str) -> None:
    """Put ``body`` between the markers, creating the file (or the markers) if absent."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# Measured results\n"
    if BEGIN in text and END in text and text.index(BEGIN) < text.index(END):
        head, rest = text.split(BEGIN, 1)
        text = head + BEGIN + "\n" + body + END + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n## Comparison sweep\n\n" + BEGIN + "\n" + body + END + "\n"
    write_atomic(path, text)


def write_report(s: Settings, rows: dict[str, dict], results_md: Path, figures: Path,
                 source: str = CPU_ROWS_SHOWN) -> str:
    body = render(s, rows, Path(figures), Path(results_md).resolve().parent, source)
    replace_section(Path(results_md), body)
    return body
