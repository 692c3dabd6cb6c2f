"""The comparison harness of issue 16: FedSPZO against MeZO, DeComFL, FedZO and FedAvg at equal
forward compute, run as ``edgezo simulate`` subprocesses and cached run by run.

    python benchmarks/compare.py run [--sweep all|grid|main|ablation|dirichlet] [--jobs 2]
                                     [--only task=sst2,method=spzo] [--dry-run] [--pin]
    python benchmarks/compare.py report
    python benchmarks/compare.py --preset roberta-large|opt-1.3b|llama-3.2-3b run|report  (a GPU)

The GPU presets (the paper's models, ``benchmarks/sweeps_gpu.py``) keep their rows and report
under ``benchmarks/results/compare-<preset>/``; see docs/comparison.md. The compare-2 presets
(``benchmarks/compare_regime.py``: ``lora-sst2``) do too, and their report is the paired one
(``compare_paired.py``: intervals over seeds and examples, and ``summary.json`` beside the rows).

The sweeps and every setting are in ``benchmarks/sweeps.py``. Each run's cache key hashes the
harness version and its exact ``edgezo simulate`` arguments. A finished run leaves a small JSON row
in ``benchmarks/results/compare/rows/<key>.json`` (meant to be committed); its folder
``runs/compare/<key>/`` (gitignored) keeps metrics.jsonl, summary.json, the seed log and the
child's log, without the 540 MB ``model/``. A run with a row is never recomputed. A folder without a
row is a stopped run: a zero-order one continues from its seed log (``simulate --resume``, to the
model the uninterrupted run reaches; each attempt's CPU time is kept in ``attempts.jsonl`` and the
row sums them), while a failed one, or FedAvg's (no seed log), is removed and redone, so a sweep
stopped at any point resumes where it stopped. ``--sweep all`` runs the grid first: the later sweeps use its winners (or the
stated fallbacks for a method whose grid rows are missing).

Children run with one thread each (OMP_NUM_THREADS=1, MKL_NUM_THREADS=1); ``--jobs 2`` runs two at
once. Peak memory is the child's max RSS from ``os.wait4``. ``--pin`` runs the committed code
(``git archive HEAD``, unpacked under runs/compare/) instead of the working tree, so a days-long
sweep is not changed or broken by edits in progress.
"""

from __future__ import annotations

import argparse
import fcntl
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
import tomllib
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Callable

if str(Path(__file__).resolve().parent) not in sys.path:  # imported (by the tests): find the sibling modules
    sys.path.append(str(Path(__file__).resolve().parent))

import compare_regime  # noqa: E402
import sweeps  # noqa: E402
import sweeps_gpu  # noqa: E402
from sweeps import SWEEPS, RunSpec, Settings  # noqa: E402

PRESETS = (*sweeps_gpu.PRESETS, *compare_regime.PRESETS)


def preset(name: str) -> Settings:
    """A preset's settings: the CPU sweep, a GPU model (sweeps_gpu), or a compare-2 regime (compare_regime)."""
    return compare_regime.PRESETS[name] if name in compare_regime.PRESETS else sweeps_gpu.preset(name)

REPO = Path(__file__).resolve().parents[1]
ROWS = REPO / "benchmarks" / "results" / "compare" / "rows"
RUNS = REPO / "runs" / "compare"
THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


# -- rows ---------------------------------------------------------------------------------------
def load_rows(rows_dir: Path) -> dict[str, dict]:
    """Every cached row, by key (a torn or foreign file is skipped, not fatal)."""
    out = {}
    for path in sorted(Path(rows_dir).glob("*.json")):
        try:
            row = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            continue
        if row.get("key") == path.stem:
            out[path.stem] = row
    return out


def write_atomic(path: Path, text: str) -> None:
    """Write then rename, so a crash never leaves a half-written row that reads as cached."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def measured_rates(s: Settings, rows: dict[str, dict]) -> dict[str, float]:
    """Counted FLOPs per CPU second (a GPU preset: per wall second) per task, from cached rows
    (their median): the cost estimate of the runs still to do follows this machine rather than the
    constants in sweeps.py."""
    per_task: dict[str, list[float]] = {}
    for row in rows.values():
        task = s.tasks.get(row.get("task"))
        busy = row.get("wall_s" if s.unit == "GPU" else "cpu_s", 0) - s.startup_cpu_s * row.get("attempts", 1)
        if task is None or busy <= 0 or not row.get("usage_complete", True):
            continue
        flops = row["flops"] + row["eval_count"] * row["eval_samples"] * task.eval_flops_per_example
        per_task.setdefault(task.name, []).append(flops / busy)
    return {t: median(v) for t, v in per_task.items()}


def read_examples(out: Path) -> dict | None:
    """A run's eval_examples.jsonl, compactly: per evaluation its round, the hits as a string of
    0/1 and the correct-label log-probabilities to 4 decimals (what the paired report resamples);
    None when the run wrote none (compare-1's CLI, a generation task)."""
    path = out / "eval_examples.jsonl"
    if not path.is_file():
        return None
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {"rounds": [x["round"] for x in lines], "hits": ["".join(map(str, x["hits"])) for x in lines],
            "label_logprobs": [[round(v, 4) for v in x["label_logprobs"]] for x in lines]}


def curve_point(r: dict) -> dict:
    """One evaluated round of the row's curve (FLOPs as the CLI charges them: FedAvg's backward as
    autograd runs it for the trainable set, ``backward_flops``)."""
    point = {"round": r["round"], "accuracy": r["eval_accuracy"], "flops": r["flops"],
             "forwards_block1": r["forwards_block1"], "forwards_block2": r["forwards_block2"],
             "bytes_up": r["bytes_up"], "bytes_down": r["bytes_down"], "wall_s": r["wall_s"]}
    for k in ("eval_loss", "train_loss"):
        if r.get(k) is not None:
            point[k] = r[k]
    return point


def build_row(spec: RunSpec, out: Path, usage: dict, provenance: dict) -> dict:
    """The row of a finished run, from its metrics.jsonl and summary.json (and, where written,
    eval_examples.jsonl)."""
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    curve = [curve_point(r) for r in records if r.get("eval_accuracy") is not None]
    last = records[-1]
    first = next((r for r in records if r["round"] == 1), last)
    trained = [p["accuracy"] for p in curve if p["round"] > 0]
    extra = {}
    if spec.harness != sweeps.HARNESS_VERSION:  # compare-2 on: what the paired report needs
        extra = {"train_loss": [[r["round"], r["train_loss"]] for r in records if r.get("train_loss") is not None],
                 "initial_eval_loss": curve[0].get("eval_loss") if curve else None,
                 "final_eval_loss": curve[-1].get("eval_loss") if curve else None,
                 "examples": read_examples(out)}
    return {
        "key": spec.key, "harness_version": spec.harness,
        "sweep": spec.sweep, "name": spec.name, "task": spec.task, "method": spec.method.method,
        "label": spec.method.label, "seed": spec.seed, "lr": spec.lr, "eps": spec.eps if spec.method.zero_order else None,
        "rounds": spec.rounds, "eval_every": spec.eval_every, "budget_flops": spec.budget_flops,
        "eval_count": len(curve), "eval_samples": spec.eval_samples,
        "args": list(spec.args), "command": "edgezo simulate " + " ".join(spec.args),
        "initial_accuracy": curve[0]["accuracy"] if curve else None,
        "final_accuracy": curve[-1]["accuracy"] if curve else None,
        "best_accuracy": max(trained) if trained else None,
        "curve": curve,
        "first_round": {k: first[k] for k in ("forwards_block1", "forwards_block2", "flops", "bytes_up", "bytes_down")},
        "flops": last["flops"], "forwards_block1": last["forwards_block1"], "forwards_block2": last["forwards_block2"],
        "bytes_up_per_device": last["bytes_up"], "bytes_down_per_device": last["bytes_down"],
        "peak_rss_mib": round(usage["maxrss_kib"] / 1024, 1), "peak_gpu_mib": summary.get("peak_gpu_mib"),
        "wall_s": round(usage["wall_s"], 1),
        "cpu_s": round(usage["cpu_s"], 1), "simulate_wall_s": summary.get("wall_s"),
        "attempts": usage.get("attempts", 1), "usage_complete": usage.get("usage_complete", True),
        "trainable_parameters": summary.get("trainable_parameters"), "split": summary.get("split"),
        "model": summary.get("model"), "fingerprint": summary.get("fingerprint"),
        **extra, **provenance, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


# -- the code the children run ------------------------------------------------------------------
@dataclass
class Child:
    """How to start ``edgezo simulate``: the command prefix, its working folder and environment."""

    prefix: list[str]
    cwd: Path
    env: dict[str, str]
    commit: str | None = None  # a pinned snapshot's commit (None: read the working tree's per run)

    def provenance(self) -> dict:
        return {"edgezo_commit": self.commit or working_tree_commit(), "pinned": self.commit is not None}


def working_tree_commit() -> str:
    """HEAD, marked +dirty when the package's source has uncommitted changes."""
    git = ["git", "-C", str(REPO)]
    try:
        head = subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(git + ["status", "--porcelain", "--", "edgezo", "backends", "coordinator"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def child_env() -> dict[str, str]:
    env = {**os.environ, **THREAD_ENV, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    data = REPO.parent / "shared" / "data"
    if "EDGEZO_DATA" not in env and data.is_dir():
        env["EDGEZO_DATA"] = str(data)  # a pinned child runs elsewhere than the repository
    return env


def working_tree_child() -> Child:
    return Child([sys.executable, "-m", "edgezo", "simulate"], REPO, child_env())


def pinned_child(runs_dir: Path) -> Child:
    """The committed code, unpacked once per commit with pyproject's package-dir layout (backends/
    becomes edgezo/backends, ...), run from its own folder so the working tree is not imported."""
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    root = runs_dir / f"edgezo-{commit[:12]}"
    if not (root / "edgezo" / "__main__.py").is_file():
        shutil.rmtree(root, ignore_errors=True)
        blob = subprocess.run(["git", "-C", str(REPO), "archive", "HEAD"], capture_output=True, check=True).stdout
        src = root / "src"
        with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
            tar.extractall(src, filter="data")
        layout = tomllib.loads((src / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
        for package, folder in sorted(layout.items(), key=lambda kv: kv[0].count(".")):
            shutil.copytree(src / folder, root / package.replace(".", "/"), dirs_exist_ok=True)
    env = child_env()
    env["PYTHONPATH"] = str(root)
    return Child([sys.executable, "-m", "edgezo", "simulate"], root, env, commit)


# -- running ------------------------------------------------------------------------------------
def status(spec: RunSpec, rows: dict, runs_dir: Path) -> str:
    if spec.key in rows:
        return "cached"
    folder = runs_dir / spec.key
    if (folder / "FAILED").is_file():
        return "failed"
    if resumable(folder):
        return "resumes"
    return "unfinished" if folder.exists() else "todo"


def resumable(out: Path) -> bool:
    """A stopped run (not a failed one) that ``simulate --resume`` can continue: its job.json and
    seed log written and at least one round in its metrics. FedAvg writes no seed log (its update
    is dense), so its stopped runs are redone from scratch."""
    if (out / "FAILED").exists() or not (out / "job.json").is_file() or not (out / "seedlog.jsonl").is_file():
        return False
    try:
        lines = (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    except OSError:
        return False
    for line in lines:
        try:
            if json.loads(line).get("round", 0) >= 1:
                return True
        except ValueError:  # a line torn by the stop
            continue
    return False


ATTEMPTS = "attempts.jsonl"


def record_attempt(out: Path, resumed: bool, usage, wall_s: float, commit: str | None) -> None:
    """One child's resources, appended whether it finished or was stopped: the row of a run done in
    several attempts charges their sum."""
    line = {"resumed": resumed, "wall_s": round(wall_s, 1), "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
            "maxrss_kib": usage.ru_maxrss, "edgezo_commit": commit, "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    with open(out / ATTEMPTS, "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")


def total_usage(out: Path) -> dict:
    """The attempts' resources summed (peak memory: the largest); ``usage_complete`` is False when
    the first attempt predates attempts.jsonl (a run resumed from a folder of an older harness)."""
    attempts = [json.loads(x) for x in (out / ATTEMPTS).read_text(encoding="utf-8").splitlines() if x.strip()]
    return {"wall_s": sum(a["wall_s"] for a in attempts), "cpu_s": sum(a["cpu_s"] for a in attempts),
            "maxrss_kib": max(a["maxrss_kib"] for a in attempts), "attempts": len(attempts),
            "usage_complete": not attempts[0]["resumed"]}


@dataclass
class Runner:
    """Runs specs as children, at most ``jobs`` at once, and keeps count of what it launched."""

    rows_dir: Path
    runs_dir: Path
    child: Child
    jobs: int = 1
    say: Callable[[str], None] = print
    unit: str = "CPU"  # what the estimates count (Settings.unit)
    launched: int = 0
    failed: list[str] = field(default_factory=list)
    _live: dict = field(default_factory=dict)
    _stop: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def execute(self, spec: RunSpec) -> dict | None:
        """One child, from scratch or continuing a stopped run: its row, or None when it failed
        (its folder keeps the log) or was stopped."""
        out = self.runs_dir / spec.key
        resume = resumable(out)
        if not resume:
            shutil.rmtree(out, ignore_errors=True)  # a failed run, or one without a seed log: redone from the start
            out.mkdir(parents=True)
            (out / "spec.json").write_text(json.dumps({"sweep": spec.sweep, "name": spec.name, "args": spec.args}, indent=1))
        argv = self.child.prefix + list(spec.args) + ["--out", str(out), "--quiet"] + (["--resume"] if resume else [])
        provenance = self.child.provenance()
        started = time.monotonic()
        with open(out / "log.txt", "ab" if resume else "wb") as log:
            with self._lock:
                if self._stop:
                    return None
                proc = subprocess.Popen(argv, cwd=self.child.cwd, env=self.child.env, stdout=log, stderr=subprocess.STDOUT)
                self._live[proc.pid] = proc
                self.launched += 1
            _, wstatus, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(wstatus)  # reaped here: Popen must not wait again
            with self._lock:
                self._live.pop(proc.pid, None)
        record_attempt(out, resume, usage, time.monotonic() - started, provenance["edgezo_commit"])
        shutil.rmtree(out / "model", ignore_errors=True)  # a full copy of the model: ~540 MB a run
        if self._stop:
            return None  # stopped by a signal: continued (or redone) next time
        if proc.returncode != 0 or not (out / "summary.json").is_file():
            tail = (out / "log.txt").read_text(encoding="utf-8", errors="replace")[-2000:]
            return self._failed(spec, out, f"exit status {proc.returncode}", tail)
        try:
            row = build_row(spec, out, total_usage(out), provenance)
        except (KeyError, ValueError, StopIteration, IndexError) as e:  # the CLI's outputs changed shape
            return self._failed(spec, out, "unreadable outputs", f"{type(e).__name__}: {e}")
        write_atomic(self.rows_dir / f"{spec.key}.json", json.dumps(row, indent=1) + "\n")
        return row

    def _failed(self, spec: RunSpec, out: Path, why: str, detail: str) -> None:
        """Mark the folder (the run is retried by the next invocation) and say why."""
        (out / "FAILED").write_text(f"{why}\n{detail}")
        self.failed.append(spec.key)
        self.say(f"FAILED ({why}) {spec.describe()} [{spec.key}]; log: {out / 'log.txt'}\n{detail[-800:]}")

    @property
    def stopped(self) -> bool:
        return self._stop

    def stop(self, *_):
        """SIGINT/SIGTERM: start nothing more and end the children (continued or redone next time)."""
        with self._lock:
            self._stop = True
            for proc in self._live.values():
                proc.terminate()

    def run(self, specs: list[RunSpec], later_cpu_s: float = 0.0) -> list[dict]:
        """Run the specs (already filtered to those without a row), printing a line per finished run."""
        left = list(specs)
        remaining_cpu = sum(s.est_cpu_s for s in left) + later_cpu_s
        rows, done = [], 0
        with ThreadPoolExecutor(max_workers=self.jobs) as pool:
            pending = {pool.submit(self.execute, spec): spec for spec in left}
            while pending:
                finished, _ = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
                for fut in finished:
                    spec = pending.pop(fut)
                    row = fut.result()
                    done += 1
                    remaining_cpu -= spec.est_cpu_s
                    if row is not None:
                        rows.append(row)
                    if not self._stop:
                        self.say(progress_line(spec, row, done, len(left), remaining_cpu, self.jobs, self.unit))
        return rows


def progress_line(spec: RunSpec, row: dict | None, done: int, total: int, cpu_left: float, jobs: int, unit: str = "CPU") -> str:
    head = f"[{done}/{total}, {total - done} left, ~{cpu_left / 3600:.1f} {unit}-h left (~{cpu_left / 3600 / jobs:.1f} h at --jobs {jobs})]"
    if row is None:
        return f"{head} {spec.describe()}: failed"
    return (f"{head} {spec.describe()}: {100 * row['initial_accuracy']:.1f}% -> {100 * row['final_accuracy']:.1f}% "
            f"(best {100 * row['best_accuracy']:.1f}%), {row['rounds']} rounds, {row['flops']:.3g} FLOPs, "
            f"{row['cpu_s']:.0f} CPU-s (est. {spec.est_cpu_s:.0f} {unit}-s), {row['wall_s']:.0f} s wall, {row['peak_rss_mib']:.0f} MiB"
            + (f", {row['peak_gpu_mib']:.0f} MiB on the GPU" if row.get("peak_gpu_mib") else ""))


# -- selection and planning ---------------------------------------------------------------------
def parse_only(text: str | None) -> dict[str, set[str]]:
    """``task=sst2,method=spzo`` -> {task: {sst2}, method: {spzo}}; a field given twice means either."""
    out: dict[str, set[str]] = {}
    for part in filter(None, (text or "").split(",")):
        name, sep, value = part.partition("=")
        if not sep or name not in ("sweep", "task", "method", "name", "seed"):
            raise SystemExit(f"--only {text!r}: use FIELD=VALUE,... with FIELD one of sweep, task, method, name, seed")
        out.setdefault(name, set()).add(value)
    return out


def selected(spec: RunSpec, only: dict[str, set[str]]) -> bool:
    values = {"sweep": {spec.sweep}, "task": {spec.task}, "method": {spec.method.label, spec.method.method},
              "name": {spec.name}, "seed": {str(spec.seed)}}
    return all(values[f] & wanted for f, wanted in only.items())


def expand(sweep: str) -> list[str]:
    return list(SWEEPS) if sweep == "all" else [sweep]


def plan(s: Settings, names: list[str], rows: dict, only: dict, rates: dict) -> list[tuple[str, list[RunSpec]]]:
    """Each sweep's selected runs, first occurrence of a key only (the ablation's default point is
    the main sweep's SPZO run). Sweeps after the grid use the winners in ``rows``."""
    seen, out = set(), []
    for name in names:
        specs = [r for r in sweeps.build_sweep(s, name, rows, rates) if selected(r, only) and r.key not in seen]
        seen |= {r.key for r in specs}
        out.append((name, specs))
    return out


def winner_notes(s: Settings, rows: dict) -> list[str]:
    notes = []
    for label, w in sweeps.choose_winners(s, rows).items():
        if w["source"] == "fallback":
            notes.append(f"{label}: no grid rows yet; using the fallback lr {w['lr']:g}, eps {w['eps']:g}")
        else:
            notes.append(f"{label}: grid winner lr {w['lr']:g}, eps {w['eps']:g} ({w['grid_done']}/{w['grid_size']} grid runs done)")
    return notes


def dry_run(s: Settings, names: list[str], rows: dict, only: dict, runs_dir: Path, jobs: int, say=print) -> float:
    """List every run with its state and estimated cost; returns the CPU (or GPU) seconds still to spend."""
    rates = measured_rates(s, rows)
    if set(names) - {"grid"}:
        say("lr/eps per method (main, ablation and dirichlet runs use these):")
        for note in winner_notes(s, rows):
            say("  " + note)
        if any(w["source"] == "fallback" for w in sweeps.choose_winners(s, rows).values()):
            say("  (runs listed with a fallback get a new key, and run again, once that method's grid rows exist)")
    u = s.unit
    say(f"{u} rate per task (counted FLOPs per {u}-s): " + ", ".join(
        f"{t} {rates.get(t, ts.cpu_flops_per_s) / 1e9:.0f}G ({'measured from rows' if t in rates else 'sweeps.py'})"
        for t, ts in s.tasks.items()))
    todo_total = all_total = 0.0
    for name, specs in plan(s, names, rows, only, rates):
        say(f"\n== {name}: {len(specs)} runs")
        todo = 0.0
        for r in specs:
            state = status(r, rows, runs_dir)
            todo += r.est_cpu_s if state != "cached" else 0.0
            eps = f"{r.eps:<7g}" if r.method.zero_order else "-      "
            say(f"  {state:<11} {r.key[:10]}  {r.task:<5} {r.name:<14} seed {r.seed}  lr {r.lr:<7g} eps {eps} "
                f"{r.rounds:>4} rounds (eval every {r.eval_every})  ~{r.est_cpu_s / 60:5.1f} {u}-min")
        full = sum(r.est_cpu_s for r in specs)
        say(f"  {name}: ~{full / 3600:.2f} {u}-h in all, ~{todo / 3600:.2f} {u}-h still to run")
        todo_total += todo
        all_total += full
    say(f"\nestimated: ~{all_total / 3600:.2f} {u}-h for these sweeps, ~{todo_total / 3600:.2f} {u}-h still to run "
        f"(~{todo_total / 3600 / jobs:.1f} h wall at --jobs {jobs})")
    return todo_total


@contextmanager
def exclusive(runs_dir: Path):
    """One harness per runs folder: two would run (or delete) each other's unfinished runs."""
    with open(runs_dir / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SystemExit(f"another compare.py is running on {runs_dir} (lock {runs_dir / '.lock'})") from None
        yield


@contextmanager
def stopping_on_signals(handler):
    """SIGINT and SIGTERM call ``handler`` while the block runs (signals need the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def run_sweeps(s: Settings, names: list[str], rows_dir: Path = ROWS, runs_dir: Path = RUNS, jobs: int = 1,
               only: dict | None = None, child: Child | None = None, say=print) -> Runner:
    """Run the sweeps in order; each is built from the rows cached when it starts (the grid's
    winners for the ones after it). Returns the runner (launched count, failures). The folders are
    made absolute: a pinned child runs in its own folder, where a relative --out would land."""
    rows_dir, runs_dir = Path(rows_dir).resolve(), Path(runs_dir).resolve()
    runs_dir.mkdir(parents=True, exist_ok=True)
    runner = Runner(rows_dir, runs_dir, child or working_tree_child(), jobs, say, s.unit)
    with exclusive(runs_dir), stopping_on_signals(runner.stop):
        for i, name in enumerate(names):
            rows = load_rows(rows_dir)
            planned = plan(s, names[i:], rows, only or {}, measured_rates(s, rows))
            specs = [r for r in planned[0][1] if r.key not in rows]
            later = sum(r.est_cpu_s for _, rs in planned[1:] for r in rs if r.key not in rows)
            if name != "grid":
                for note in winner_notes(s, rows):
                    say("  " + note)
            say(f"== {name}: {len(planned[0][1])} runs, {len(specs)} to run (~{sum(r.est_cpu_s for r in specs) / 3600:.2f} {s.unit}-h)")
            runner.run(specs, later)
            if runner.stopped:
                break
    return runner


# -- command line -------------------------------------------------------------------------------
def report(settings: Settings, args) -> int:
    """compare-1: the old report (kept for its rows); compare-2 on: the paired report, with
    summary.json beside the rows."""
    if settings.harness == sweeps.HARNESS_VERSION:
        import compare_report

        compare_report.write_report(settings, load_rows(args.rows), args.results, args.figures, shown_path(args.rows))
        print(f"wrote {args.results} (section compare) and figures under {args.figures}")
        return 0
    import compare_paired

    summary = Path(args.rows).parent / "summary.json"
    compare_paired.write_report(settings, load_rows(args.rows), args.results, args.figures, summary, shown_path(args.rows))
    print(f"wrote {args.results} (section compare), {summary} and figures under {args.figures}")
    return 0


def preset_paths(name: str) -> dict[str, Path]:
    """Where a preset keeps its rows, run folders, report and figures: the CPU sweep's are the
    committed ones of this repository; a GPU preset's have their own folders and RESULTS.md."""
    if name == "cpu":
        return {"rows": ROWS, "runs": RUNS, "results": REPO / "benchmarks" / "RESULTS.md", "figures": REPO / "benchmarks" / "results"}
    folder = REPO / "benchmarks" / "results" / f"compare-{name}"
    return {"rows": folder / "rows", "runs": REPO / "runs" / f"compare-{name}", "results": folder / "RESULTS.md", "figures": folder}


def shown_path(path: Path) -> str:
    """``path`` relative to the repository where it lies inside it (as the report names it), else as given."""
    try:
        return f"{Path(path).resolve().relative_to(REPO)}/"
    except ValueError:
        return f"{path}/"


def main(argv: list[str] | None = None, settings: Settings | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="cpu", choices=PRESETS,
                    help="cpu: SmolLM2-135M on this CPU (the committed compare-1 sweep); a model of the paper on a GPU "
                         "(benchmarks/sweeps_gpu.py); or a compare-2 paired regime (benchmarks/compare_regime.py: lora-sst2); "
                         "each but cpu with its own rows and report under benchmarks/results/compare-NAME/")
    sub = ap.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run (or resume) sweeps")
    run.add_argument("--sweep", default="all", choices=("all",) + SWEEPS)
    run.add_argument("--jobs", type=int, default=2, help="children at once, one thread each")
    run.add_argument("--only", help="FIELD=VALUE,... over sweep, task, method, name, seed (e.g. task=sst2,method=spzo)")
    run.add_argument("--dry-run", action="store_true", help="list the runs, cached or not, and the estimated cost")
    run.add_argument("--pin", action="store_true", help="run the committed code (git archive HEAD), not the working tree")
    rep = sub.add_parser("report", help="write the RESULTS.md section and the PNGs from the cached rows")
    rep.add_argument("--results", type=Path, help="the markdown file of the report (default: the preset's)")
    rep.add_argument("--figures", type=Path, help="the folder of its PNGs (default: the preset's)")
    for p in (run, rep):
        p.add_argument("--rows", type=Path, help=argparse.SUPPRESS)
        p.add_argument("--runs", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    for name, path in preset_paths(args.preset).items():
        if getattr(args, name, None) is None:
            setattr(args, name, path)
    settings = settings or preset(args.preset)
    if args.command == "report":
        return report(settings, args)
    names, only = expand(args.sweep), parse_only(args.only)
    if args.dry_run:
        dry_run(settings, names, load_rows(args.rows), only, args.runs, args.jobs)
        return 0
    child = pinned_child(args.runs) if args.pin else working_tree_child()
    runner = run_sweeps(settings, names, args.rows, args.runs, args.jobs, only, child)
    if runner.stopped:
        print("stopped: the next `run` continues the stopped zero-order runs from their seed logs and redoes the others")
        return 130
    print(f"done: {runner.launched} runs launched, {len(runner.failed)} failed")
    return 1 if runner.failed else 0


if __name__ == "__main__":
    sys.exit(main())
