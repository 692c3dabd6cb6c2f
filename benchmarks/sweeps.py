"""The comparison sweeps of issue 16 (FedSPZO against MeZO, DeComFL, FedZO and FedAvg), as data.

Everything a sweep depends on lives here, with the reason for each number: the model, the tasks
(sequence length, evaluation examples, compute budget, seeds), the shared federated settings, the
methods, the lr/eps grid and its fallback values, and the ablation. ``compare.py`` runs the runs
these functions return; ``compare_report.py`` reads the rows back through the same functions, so
a run and its place in the report cannot drift apart.

Equal compute. Every method of a task gets the number of rounds that spends about the task's
forward-FLOPs budget, from the forward-count model of DESIGN section 3, in units of one full
forward of one batch: an SPZO step costs 2*P1*(F1 + P2*F2) (``clean``: F1 + 2*P1*(F1 + F2) +
2*P1*P2*F2), a central single-block step 2*P, a forward-difference step P + 1, a FedAvg step 3
(the CLI counts a backward pass as two forwards: ``3 * (f1 + f2)`` in ``_fedavg_local``). F1 and F2
are the fractions of a full forward in blocks 1 and 2: the layers split at ``--split`` and the
output head (one position per sequence) in block 2. The rows record the FLOPs each run really
spent (the CLI counts them over the real tokens of every batch), so the report shows how equal
the compute was.

Cost. The whole required sweep (grid + main + ablation + dirichlet) is sized to about 10
CPU-hours on this project's 2-core x86 machine, run two at a time with one thread each. The
estimate is (training FLOPs + evaluation FLOPs) / CPU rate + a fixed start-up cost. The rates
below come from one-thread SmolLM2 runs two at a time (3 rounds of SPZO, K=1, batch 8, 64-160
evaluation examples): SST-2 measured 42-69 G counted FLOPs per CPU second depending on what else
the shared machine ran, so the constants take about the middle of that range;
``compare.py`` replaces them by the rates of the rows already cached.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field, replace
from typing import Callable

HARNESS_VERSION = "compare-1"  # part of every run's cache key: bump it to invalidate all rows
# compare-2 (benchmarks/compare_regime.py): one evaluation set for every seed (--eval-seed), per-example
# scores and eval_loss in the rows, a tuning seed never reported, lr tuned per method and probe
# setting, FedAvg charged the backward autograd runs. compare-1's rows stay as the record they are.
PAIRED_HARNESS_VERSION = "compare-2"


@dataclass(frozen=True)
class TaskSettings:
    """One task's share of the sweep."""

    name: str
    max_length: int  # --max-length (tokens, cut from the left)
    eval_samples: int  # --eval-samples; the CLI draws them with the run's seed
    budget_flops: float  # forward FLOPs (all devices) each method may spend on this task
    seeds: tuple[int, ...]
    train_flops_per_example: float  # one full forward of one training prompt (SmolLM2, real tokens)
    eval_flops_per_example: float  # the same for a validation prompt
    cpu_flops_per_s: float  # counted FLOPs per CPU second (one thread, padding included)
    train_samples: int | None = None  # --train-samples (None: the whole training split)
    rounds: int | None = None  # fixed rounds for every method (tests, smoke runs); None: from the budget


@dataclass(frozen=True)
class Method:
    """A row of the comparison: one ``--method`` with its probe counts."""

    label: str  # unique name in rows and tables (decomfl-p10)
    method: str  # --method
    p: int = 1  # --p1: SPZO's P1, or a single-block method's P
    p2: int = 4  # SPZO only
    split: int | None = None  # SPZO only (None: the CLI's default, passed explicitly from Settings)
    variant: str = "joint"  # SPZO only
    clients: int | None = None  # None: the shared number of devices (MeZO: 1)
    tuned_as: str | None = None  # take the lr/eps of this label's grid winner (DeComFL P=10 uses P=5's)
    zero_order: bool = True
    probe_difference: str | None = None  # --difference; None: the method's own (decomfl-fwd: forward, as its paper runs)
    trainable: str | None = None  # --trainable; None: the sweep's (an estimator that probes a subset, e.g. LoRA's B factors)

    @property
    def tuning_label(self) -> str:
        return self.tuned_as or self.label

    @property
    def difference(self) -> str | None:
        return self.probe_difference or {"fedzo": "forward", "mezo": "central", "decomfl": "central", "bforward": "forward"}.get(self.method)

    def step_forwards(self, f1: float, f2: float, backward_forwards: float = 2.0) -> float:
        """Forward cost of one local step in full forwards of one batch (the forward-count model);
        a backpropagating step is a forward and a backward of ``backward_forwards`` forwards."""
        if self.method == "spzo":
            if self.variant == "clean":
                return f1 + 2 * self.p * (f1 + f2) + 2 * self.p * self.p2 * f2
            return 2 * self.p * (f1 + self.p2 * f2)
        if self.method == "fedavg":
            return 1.0 + backward_forwards
        return self.p + 1.0 if self.difference == "forward" else 2.0 * self.p


@dataclass(frozen=True)
class GridSpec:
    """A method's lr/eps grid: every lr at ``eps[0]``, the other eps values at the middle lr, and
    ``extra`` (lr, eps) points added where a winner sat on the grid's edge."""

    lrs: tuple[float, ...]
    eps: tuple[float, ...] = (1e-3,)
    extra: tuple[tuple[float, float], ...] = ()

    def points(self) -> list[tuple[float, float]]:
        pts = [(lr, self.eps[0]) for lr in self.lrs]
        return pts + [(self.lrs[len(self.lrs) // 2], e) for e in self.eps[1:]] + list(self.extra)


@dataclass(frozen=True)
class Settings:
    """All settings of the comparison. Shared settings are the same for every method of a task."""

    model: str | None = None  # --model; None: the CLI's default SmolLM2-135M-Instruct
    device: str | None = None  # --device; None: not passed (the CLI's auto), so the CPU rows' keys stay
    unit: str = "CPU"  # what the cost estimate counts: CPU (one-thread) or GPU seconds
    layers: int = 30  # SmolLM2-135M's decoder layers (F1/F2 of the forward-count model)
    default_split: int = 20  # the CLI's default split (two thirds), given explicitly to SPZO
    head_flops_per_example: float = 2 * 576 * 49152  # tied output head, one position per sequence
    clients: int = 4
    # K = 1 and batch 8: the costliest method (DeComFL P=10: 4 devices x 20 forwards a round)
    # still gets 6 rounds of SST-2's budget; K = 2 at batch 16 (the CLI's defaults) would leave it
    # 1-2 rounds, too few for a curve. The grid re-tunes lr for these settings.
    local_steps: int = 1
    batch_size: int = 8
    trainable: str = "norm"  # the CLI's default: the RMSNorm weights (35k parameters)
    lr_schedule: str = "cosine"  # decays to lr/10 by each run's own last round
    eval_points: int = 6  # evaluations per main run (round 0 included)
    grid_eval_points: int = 3  # the grid only needs the accuracy at the budget
    grid_task: str = "sst2"
    grid_seed: int = 0
    grid_budget_fraction: float = 0.5  # the grid runs half of the main budget
    startup_cpu_s: float = 20.0  # import, model load, saving model/ (measured 14-16 s wall)
    tasks: dict[str, TaskSettings] = field(default_factory=dict)
    methods: tuple[Method, ...] = ()
    grid: dict[str, GridSpec] = field(default_factory=dict)
    fallback: dict[str, tuple[float, float]] = field(default_factory=dict)  # label -> (lr, eps)
    ablation_task: str = "sst2"
    ablation_seed: int = 0
    ablation: tuple[tuple[str, dict], ...] = ()  # (name, Method fields over spzo's)
    dirichlet_task: str = "sst2"
    dirichlet_seed: int = 0
    dirichlet_alpha: float = 0.5
    dirichlet_methods: tuple[str, ...] = ()
    # labels run once before the sweep at the full budget and curve, on the tuning seed at their
    # fallback step size: does the regime start low enough and still rise at half the budget?
    pilot: tuple[str, ...] = ()
    # the labels the paired report treats as edgezo's estimators (each against every other label);
    # empty: the FedSPZO labels
    estimators: tuple[str, ...] = ()
    main_only_on: dict[str, tuple[str, ...]] = field(default_factory=dict)  # label -> tasks it runs on
    harness: str = HARNESS_VERSION  # part of every run's key
    eval_seed: int | None = None  # --eval-seed: one evaluation subset for every run (None: each seed its own)
    # FedAvg's backward in forwards: the CLI charges 2; what autograd runs for the trainable set is
    # measured by benchmarks/flops_check.py (1.01 for norm or LoRA on SmolLM2). The rows charge it.
    fedavg_backward_forwards: float = 2.0
    # how the grid's winner is chosen from its rows (higher is better; ties: the smaller lr)
    tuning_score: Callable[[dict], tuple] = field(default=lambda row: (row["final_accuracy"], row["best_accuracy"]))

    def method(self, label: str) -> Method:
        return next(m for m in self.methods if m.label == label)


# Token counts are SmolLM2-tokenizer means over 800 random prompts of each split at these
# max-lengths; a forward costs 2 x 3.54M weights x 30 layers = 212 MFLOPs a token, plus the head.
def _per_example(tokens: float) -> float:
    return 212.3e6 * tokens + 2 * 576 * 49152


# Mean prompt tokens (train, validation) of each task at the max-lengths of TASKS below; the GPU
# presets (sweeps_gpu.py) reuse them for their models' FLOPs per example.
PROMPT_TOKENS = {"sst2": (17.2, 29.3), "rte": (68.5, 66.9), "boolq": (91.0, 91.6), "wic": (38.3, 39.0)}


def _task(name: str, max_length: int, eval_samples: int, budget: float, seeds: tuple[int, ...], rate: float) -> TaskSettings:
    train, dev = PROMPT_TOKENS[name]
    return TaskSettings(name, max_length, eval_samples, budget, seeds, _per_example(train), _per_example(dev), rate)


TASKS = {
    # SST-2: no prompt is longer than 62 tokens, so 64 cuts nothing (train 17, dev 29 tokens).
    # 300 of the 872 validation examples (+-2.3 points binomial noise; all methods of a seed share
    # the same 300, so their differences are less noisy than that). The budget is ~20% of the
    # 30-round default job (5.8e13): SPZO 31 rounds, FedZO 21, DeComFL 13 (P=10: 6), MeZO 253,
    # FedAvg 42.
    "sst2": _task("sst2", 64, 300, 1.5e13, (0, 1, 2), 55e9),
    # RTE: 96 tokens keep the hypothesis and the end of the premise (mean 68.5 of 75 tokens at
    # 128; batches pad to the longest, 95 instead of 126 tokens). 200 of the 277 validation
    # examples (the whole split would cost 0.5 CPU-h more). Budget: SPZO 10 rounds, DeComFL 4.
    "rte": _task("rte", 96, 200, 1.9e13, (0, 1, 2), 61e9),
    # BoolQ: passages are long (median 138 tokens); 96 keeps the question and the end of the
    # passage. No train split here: the CLI splits val.jsonl (idx % 5 == 0 -> 654 dev, 2,616
    # train). 200 validation examples. Budget: SPZO 8 rounds, DeComFL 3.
    "boolq": _task("boolq", 96, 200, 1.9e13, (0,), 77e9),
    # WiC: prompts are at most 81 tokens (mean 38); 64 cuts almost none. 300 of 638 validation.
    # Budget: SPZO 12 rounds, DeComFL 5.
    "wic": _task("wic", 64, 300, 1.3e13, (0,), 66e9),
}

METHODS = (
    Method("spzo", "spzo", p=1, p2=4),  # FedSPZO at the CLI's defaults P1=1, P2=4, split 20 of 30
    Method("fedzo", "fedzo", p=5),  # forward difference, per-device directions, P=5
    Method("decomfl", "decomfl", p=5),  # central difference, shared seeds, P=5
    Method("decomfl-p10", "decomfl", p=10, tuned_as="decomfl"),
    Method("mezo", "mezo", p=1, clients=1),  # one device, central difference, P=1
    Method("fedavg", "fedavg", zero_order=False),  # backpropagation (first-order reference)
)

# lr around the CLI's 5e-4 (chosen for K=2, batch 16 and 30 rounds; shorter budgets tend to want
# more); eps 1e-2 is tried once at the middle lr. FedAvg's exact gradient tolerates larger steps.
ZO_GRID = GridSpec((5e-4, 1e-3, 2e-3), (1e-3, 1e-2))
# MeZO takes one direction per step on one device for ~8x the steps of the federated methods: at
# the shared grid's rates it diverged (lr 5e-4: 79.0% -> 50.3% on SST-2), so its rates are lower.
MEZO_GRID = GridSpec((2.5e-5, 5e-5, 1e-4), (1e-3, 1e-2))
# DeComFL's winner sat on the shared grid's top lr (2e-3: 82.3% vs 81.3% at 1e-3), so its grid
# goes one step further; SPZO's won at eps 1e-2, so it gets the next lr at that eps too.
DECOMFL_GRID = GridSpec(ZO_GRID.lrs, ZO_GRID.eps, extra=((4e-3, 1e-3),))
SPZO_GRID = GridSpec(ZO_GRID.lrs, ZO_GRID.eps, extra=((2e-3, 1e-2),))
GRID = {"spzo": SPZO_GRID, "fedzo": ZO_GRID, "decomfl": DECOMFL_GRID, "mezo": MEZO_GRID, "fedavg": GridSpec((1e-3, 5e-3, 2.5e-2))}
# Used when a method's grid rows are missing: the CLI's defaults (tuned for SPZO on SST-2) and,
# for FedAvg, the middle of its grid.
FALLBACK = {"spzo": (5e-4, 1e-3), "fedzo": (5e-4, 1e-3), "decomfl": (5e-4, 1e-3), "mezo": (5e-4, 1e-3), "fedavg": (5e-3, 1e-3)}

ABLATION = (
    *((f"P2={p2}", {"p2": p2}) for p2 in (1, 2, 4, 8, 16)),
    *((f"P1={p1}", {"p": p1}) for p1 in (1, 2)),
    *((f"split={s}", {"split": s}) for s in (10, 15, 20, 25)),
    *((f"variant={v}", {"variant": v}) for v in ("joint", "clean")),
)

SETTINGS = Settings(
    tasks=TASKS,
    methods=METHODS,
    grid=GRID,
    fallback=FALLBACK,
    ablation=ABLATION,
    # MeZO is a single device (no partition to skew); DeComFL P=10 is the P=5 row at twice the probes.
    dirichlet_methods=("spzo", "fedzo", "decomfl", "fedavg"),
    # DeComFL P=10 is a row on SST-2 only: on the longer tasks the budget leaves it 2-3 rounds.
    main_only_on={"decomfl-p10": ("sst2",)},
)

SWEEPS = ("pilot", "grid", "main", "ablation", "dirichlet")


@dataclass(frozen=True)
class RunSpec:
    """One run: the exact ``edgezo simulate`` arguments (less --out and --quiet), and what it is."""

    sweep: str
    name: str  # the row's label in its sweep (method label, or ablation setting)
    task: str
    method: Method
    seed: int
    lr: float
    eps: float
    rounds: int
    eval_every: int
    budget_flops: float
    args: tuple[str, ...]
    est_cpu_s: float
    eval_count: int  # evaluations the run makes (round 0 included)
    eval_samples: int
    harness: str = HARNESS_VERSION

    @property
    def key(self) -> str:
        """The cache key: the harness version and the exact argument list, nothing else (the
        edgezo commit is recorded in the row, not keyed, so a sweep survives unrelated commits)."""
        blob = json.dumps({"harness": self.harness, "args": list(self.args)}, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:20]

    def describe(self) -> str:
        return f"{self.sweep} {self.task} {self.name} seed {self.seed}"


def block_fractions(s: Settings, task: TaskSettings, split: int) -> tuple[float, float]:
    """(F1, F2): the fractions of a full forward in blocks 1 and 2 (the head is in block 2)."""
    head = s.head_flops_per_example / task.train_flops_per_example
    f1 = split / s.layers * (1 - head)
    return f1, 1 - f1


def round_flops(s: Settings, task: TaskSettings, m: Method) -> float:
    """Predicted forward FLOPs of one round (all devices) from the forward-count model."""
    f1, f2 = block_fractions(s, task, m.split or s.default_split)
    clients = m.clients or s.clients
    return clients * s.local_steps * m.step_forwards(f1, f2, s.fedavg_backward_forwards) * s.batch_size * task.train_flops_per_example


def rounds_for(s: Settings, task: TaskSettings, m: Method, budget: float) -> int:
    """Rounds that spend about ``budget`` forward FLOPs (at least 1)."""
    if task.rounds is not None:
        return task.rounds
    return max(1, round(budget / round_flops(s, task, m)))


def eval_schedule(rounds: int, points: int) -> tuple[int, int]:
    """(--eval-every, evaluations made): about ``points`` evaluations, round 0 and the last included."""
    every = max(1, math.ceil(rounds / max(1, points - 1)))
    return every, 1 + rounds // every + (1 if rounds % every else 0)


def simulate_args(s: Settings, task: TaskSettings, m: Method, seed: int, lr: float, eps: float, rounds: int,
                  eval_every: int, partition: tuple[str, float] | None = None) -> tuple[str, ...]:
    """The ``edgezo simulate`` argument list of a run. Every setting is explicit, so a changed CLI
    default never silently changes a cached run's meaning."""
    args = ["--task", task.name, "--method", m.method, "--clients", str(m.clients or s.clients),
            "--rounds", str(rounds), "--local-steps", str(s.local_steps), "--batch-size", str(s.batch_size),
            "--max-length", str(task.max_length), "--trainable", m.trainable or s.trainable, "--lr", f"{lr:g}",
            "--lr-schedule", s.lr_schedule, "--seed", str(seed), "--eval-every", str(eval_every),
            "--eval-samples", str(task.eval_samples)]
    if m.zero_order:
        args += ["--eps", f"{eps:g}", "--p1", str(m.p)]
    if m.method == "spzo":
        args += ["--p2", str(m.p2), "--split", str(m.split or s.default_split), "--variant", m.variant]
    if m.difference:
        args += ["--difference", m.difference]
    if partition:
        args += ["--partition", partition[0], "--alpha", f"{partition[1]:g}"]
    if task.train_samples is not None:
        args += ["--train-samples", str(task.train_samples)]
    if s.model:
        args += ["--model", s.model]
    if s.device:
        args += ["--device", s.device]
    if s.eval_seed is not None:
        args += ["--eval-seed", str(s.eval_seed)]
    return tuple(args)


def make_run(s: Settings, sweep: str, name: str, task: TaskSettings, m: Method, seed: int, lr: float, eps: float,
             budget: float, points: int, partition: tuple[str, float] | None = None,
             rates: dict[str, float] | None = None) -> RunSpec:
    rounds = rounds_for(s, task, m, budget)
    every, evals = eval_schedule(rounds, points)
    rate = (rates or {}).get(task.name, task.cpu_flops_per_s)
    flops = rounds * round_flops(s, task, m) + evals * task.eval_samples * task.eval_flops_per_example
    return RunSpec(sweep, name, task.name, m, seed, lr, eps, rounds, every, budget,
                   simulate_args(s, task, m, seed, lr, eps, rounds, every, partition),
                   s.startup_cpu_s + flops / rate, evals, task.eval_samples, s.harness)


def grid_runs(s: Settings, rates=None) -> list[RunSpec]:
    """Every tuned method at every grid point, on one task and seed, at a fraction of the budget."""
    task = s.tasks[s.grid_task]
    budget = task.budget_flops * s.grid_budget_fraction
    return [make_run(s, "grid", m.label, task, m, s.grid_seed, lr, eps, budget, s.grid_eval_points, rates=rates)
            for m in s.methods if m.label in s.grid for lr, eps in s.grid[m.label].points()]


def choose_winners(s: Settings, rows: dict[str, dict]) -> dict[str, dict]:
    """Each tuned method's (lr, eps): the grid point with the best ``s.tuning_score`` at the
    grid's budget (compare-1: the final accuracy, ties by the best along the run; then the
    smaller lr), or its stated fallback when none of its grid rows exists yet. ``rows`` maps
    cache keys to rows."""
    out = {}
    for label, grid in s.grid.items():
        done = [(r, rows[r.key]) for r in grid_runs(s) if r.name == label and r.key in rows]
        if not done:
            lr, eps = s.fallback[label]
            out[label] = {"lr": lr, "eps": eps, "source": "fallback", "grid_done": 0, "grid_size": len(grid.points())}
            continue
        spec, row = max(done, key=lambda d: (*s.tuning_score(d[1]), -d[0].lr))
        out[label] = {"lr": spec.lr, "eps": spec.eps, "source": "grid", "grid_done": len(done),
                      "grid_size": len(grid.points()), "final_accuracy": row["final_accuracy"]}
    return out


def _tuned(winners: dict[str, dict], m: Method) -> tuple[float, float]:
    w = winners[m.tuning_label]
    return w["lr"], w["eps"]


def main_runs(s: Settings, winners: dict[str, dict], rates=None) -> list[RunSpec]:
    """Methods x tasks x seeds at equal compute, seed-major so an interrupted sweep has every
    method of the first seeds."""
    out = []
    for seed in sorted({sd for t in s.tasks.values() for sd in t.seeds}):
        for task in s.tasks.values():
            if seed not in task.seeds:
                continue
            for m in s.methods:
                if task.name in s.main_only_on.get(m.label, (task.name,)):
                    out.append(make_run(s, "main", m.label, task, m, seed, *_tuned(winners, m), task.budget_flops,
                                        s.eval_points, rates=rates))
    return out


def ablation_runs(s: Settings, winners: dict[str, dict], rates=None) -> list[RunSpec]:
    """SPZO's P2, P1, split and variant, one at a time from the defaults, at the task's budget.
    The default point (P1=1, P2=4, split 20, joint) is the main sweep's SPZO run (same key)."""
    if not s.ablation:
        return []  # a sweep without one (compare-2 tunes every probe setting as a label of its own)
    task, spzo = s.tasks[s.ablation_task], s.method("spzo")
    lr, eps = _tuned(winners, spzo)
    return [make_run(s, "ablation", name, task, replace(spzo, **change), s.ablation_seed, lr, eps,
                     task.budget_flops, s.eval_points, rates=rates) for name, change in s.ablation]


def dirichlet_runs(s: Settings, winners: dict[str, dict], rates=None) -> list[RunSpec]:
    """The federated methods on label-skewed devices (Dirichlet alpha), one task and seed."""
    task = s.tasks[s.dirichlet_task]
    return [make_run(s, "dirichlet", label, task, s.method(label), s.dirichlet_seed, *_tuned(winners, s.method(label)),
                     task.budget_flops, s.eval_points, ("dirichlet", s.dirichlet_alpha), rates=rates)
            for label in s.dirichlet_methods]


def pilot_runs(s: Settings, rates=None) -> list[RunSpec]:
    """The pilot: each of ``s.pilot``'s labels once, at the task's whole budget and evaluation
    schedule, on the tuning seed (never reported) at its fallback (lr, eps), so looking at its
    curves before the sweep reads no reported seed."""
    task = s.tasks[s.grid_task]
    return [make_run(s, "pilot", label, task, s.method(label), s.grid_seed, *s.fallback[label], task.budget_flops,
                     s.eval_points, rates=rates) for label in s.pilot]


def build_sweep(s: Settings, sweep: str, rows: dict[str, dict], rates=None) -> list[RunSpec]:
    """The runs of one sweep; those after the grid use the winners of the grid rows in ``rows``."""
    if sweep == "grid":
        return grid_runs(s, rates)
    if sweep == "pilot":
        return pilot_runs(s, rates)
    builders = {"main": main_runs, "ablation": ablation_runs, "dirichlet": dirichlet_runs}
    if sweep not in builders:
        raise ValueError(f"unknown sweep {sweep!r}; use one of {', '.join(SWEEPS)} or all")
    return builders[sweep](s, choose_winners(s, rows), rates)
