"""What every job shares: splitting option values between the job and the command's settings,
the result of a run, per-round callbacks, and the shell of a training job's rounds (``JobShell``:
what simulate and coordinate do with each round's record and at the end)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from edgezo.app.outputs import RunOutputs, round_line
from edgezo.config import JobConfig, load_toml
from edgezo.engine import RoundRecord
from edgezo.errors import ConfigError
from edgezo.schema import checked, keys_of


class Callback:
    """Per-round hooks of a job (the shape of mlx-lm's ``TrainingCallback``): subclass and
    override what you need, or pass plain functions, which are called as ``on_round``. Raise
    ``edgezo.JobStopped`` from ``on_round`` to stop the job after that round (it stays resumable)."""

    def on_round(self, record: RoundRecord) -> None:
        """After each round's record is written (round 0: the evaluation before training)."""

    def on_job_end(self, result: "JobResult") -> None:
        """After the job wrote its outputs."""


class _FunctionCallback(Callback):
    def __init__(self, fn: Callable[[RoundRecord], Any]):
        self.fn = fn

    def on_round(self, record: RoundRecord) -> None:
        self.fn(record)


def callbacks_of(items: Iterable[Callback | Callable] | Callback | Callable | None) -> list[Callback]:
    if items is None:
        return []
    if isinstance(items, Callback) or callable(items):
        items = [items]
    out = []
    for item in items:
        if isinstance(item, Callback):
            out.append(item)
        elif callable(item):
            out.append(_FunctionCallback(item))
        else:
            raise ConfigError(f"callbacks must be edgezo.Callback objects or functions of a round record (got {item!r})")
    return out


@dataclass
class JobResult:
    """What a job produced: every round's record, the summary (None when the job was stopped
    before its end) and the paths of its outputs."""

    out: Path
    records: list[RoundRecord] = field(default_factory=list)
    summary: dict | None = None
    stopped: bool = False

    @property
    def metrics_path(self) -> Path:
        return self.out / "metrics.jsonl"

    @property
    def summary_path(self) -> Path:
        return self.out / "summary.json"

    @property
    def seedlog_path(self) -> Path:
        return self.out / "seedlog.jsonl"

    @property
    def model_path(self) -> Path:
        return self.out / "model"

    @property
    def plot_path(self) -> Path:
        return self.out / "accuracy_vs_flops.png"

    @property
    def fingerprint(self) -> str | None:
        """The final global model's fingerprint (of the last round run when stopped)."""
        if self.summary is not None:
            return self.summary["fingerprint"]
        return self.records[-1].fingerprint if self.records else None

    @property
    def final_accuracy(self) -> float | None:
        return None if self.summary is None else self.summary["final_accuracy"]


def record_of(row: dict) -> RoundRecord:
    """A metrics.jsonl row as a RoundRecord."""
    return RoundRecord(**{"eval_accuracy": None, **{k: v for k, v in row.items() if k in keys_of(RoundRecord)}})


def split_options(values: dict, *classes, where: str) -> list[dict]:
    """``values`` (option name -> value) split by the dataclass each key belongs to, every value
    type-checked; a key none of ``classes`` knows is a ConfigError naming it."""
    known = [set(keys_of(cls)) for cls in classes]
    unknown = sorted(set(values) - set().union(*known))
    if unknown:
        every = [k for cls in classes for k in keys_of(cls)]
        raise ConfigError(f"{where}: unknown {'key' if len(unknown) == 1 else 'keys'} {', '.join(unknown)}; "
                          f"known keys: {', '.join(dict.fromkeys(every))}")
    return [checked(cls, {k: v for k, v in values.items() if k in keys}, where) for cls, keys in zip(classes, known)]


def file_and_options(config_file: str | Path | None, options: dict, *classes, prepare: Callable[[dict], dict] = dict) -> list[dict]:
    """Per class: the TOML file's values, then the given options over them (options win);
    ``prepare`` rewrites each source's raw values first (``calibrated_settings``)."""
    every = list(dict.fromkeys(k for cls in classes for k in keys_of(cls)))
    where = f"config file {config_file}"
    from_file = split_options(prepare(load_toml(config_file, every)), *classes, where=where) if config_file else [{} for _ in classes]
    given = split_options(prepare(options), *classes, where="options")
    return [{**f, **g} for f, g in zip(from_file, given)]


def calibrated_settings(values: dict) -> dict:
    """``p2``/``split`` given as ``auto`` (on the command line or in the TOML file) become the
    ``p2_auto``/``split_auto`` settings: a calibration before round 0 chooses the number
    (edgezo.app.jobs.calibrating), so the job's own field keeps its default until then. A
    source that gives a number sets ``*_auto`` false, so the command line's number beats the
    file's ``auto``."""
    out = dict(values)
    for key in ("p2", "split"):
        if key not in out:
            continue
        auto = isinstance(out[key], str) and out[key].strip().lower() == "auto"
        if auto:
            del out[key]
        out[f"{key}_auto"] = auto
    return out


def save_model(cfg: JobConfig, task, ex, folder: Path, info) -> None:
    """The trained model written to ``folder`` (safetensors that ``from_pretrained`` loads);
    torch is imported only here, when a job ends."""
    from edgezo.backends.torch.factory import save_trained_model

    save_trained_model(cfg, task, ex, folder, info)


def job_config(values: dict) -> JobConfig:
    return JobConfig(**values).validate()


class JobShell:
    """The per-round shell simulate and coordinate share, so both write the same rows and report
    the same way: a round's record goes to metrics.jsonl (with the evaluation's other metrics,
    ``eval_loss``, and its per-example scores when the round was evaluated), then, once the job
    has made it durable its own way (simulate's seed log, the coordinator's state), to the
    progress line and the callbacks; ``finish`` writes the model, plot and summary and tells the
    callbacks. ``evaluator`` is the job's (its last call measured the round being written)."""

    def __init__(self, outputs: RunOutputs, evaluator, rounds: int, callbacks: list[Callback],
                 say: Callable[[str], None], progress: bool):
        self.outputs, self.evaluator, self.rounds = outputs, evaluator, rounds
        self.callbacks, self.say, self.progress = callbacks, say, progress

    def write(self, record: RoundRecord) -> None:
        """The round's metrics row (and per-example scores) appended to the output folder."""
        evaluated = record.eval_accuracy is not None  # the evaluator's last call measured this round
        self.outputs.add(record, self.evaluator.metrics() if evaluated else None,
                         self.evaluator.examples() if evaluated else None)

    def report(self, record: RoundRecord, line_extra: str = "") -> None:
        """The round's progress line (with ``progress``), then the callbacks (which may raise
        JobStopped: the round is written and durable by then, so the job stays resumable)."""
        if self.progress:
            self.say(round_line(record, self.rounds, line_extra))
        for callback in self.callbacks:
            callback.on_round(record)

    def records(self) -> list[RoundRecord]:
        return [record_of(r) for r in self.outputs.records]

    def stopped(self) -> JobResult:
        """The result of a job a callback stopped (no summary: it is resumable)."""
        return JobResult(self.outputs.out, self.records(), None, stopped=True)

    def finish(self, cfg: JobConfig, ex, info, started: float, save: Callable[[Path], None], extra: dict) -> JobResult:
        """The model (``save(folder)``), plot and summary written; the callbacks told."""
        summary = self.outputs.finish(cfg, ex, info, started, save, extra)
        result = JobResult(self.outputs.out, self.records(), summary)
        for callback in self.callbacks:
            callback.on_job_end(result)
        return result
