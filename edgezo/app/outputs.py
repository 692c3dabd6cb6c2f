"""What a job writes to its output folder, shared by ``simulate`` and ``coordinate``:
``metrics.jsonl`` (one JSON object per round), ``summary.json``, ``accuracy_vs_flops.png`` and
``model/`` (safetensors that ``from_pretrained`` loads); a classification job's simulate run also
writes ``eval_examples.jsonl``: one line per evaluation (every evaluated round), each example's
hit and correct-label log-probability in the evaluation set's order, so two runs that scored the
same examples (``--eval-seed``, or the whole split) can be compared example by example."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

from edgezo.app.plot import plot_accuracy_vs_flops
from edgezo.config import JobConfig
from edgezo.engine import RoundRecord


def round_line(record: RoundRecord, rounds: int, extra: str = "") -> str:
    """The one-line status of a round (logged by simulate and coordinate)."""
    acc = f"  acc {100 * record.eval_accuracy:.1f}%" if record.eval_accuracy is not None else ""
    loss = f"loss {record.train_loss:.4f}" if record.train_loss is not None else "before training"
    simulated = f"  simulated {record.sim_time_s:,.0f}s" if record.sim_time_s is not None else ""
    return (
        f"round {record.round:>3}/{rounds}{extra}  {loss}{acc}  "
        f"flops {record.flops:.3g}  up {record.bytes_up:,.0f} B  down {record.bytes_down:,.0f} B  {record.wall_s:.0f}s{simulated}"
    )


class RunOutputs:
    """Appends metrics as rounds finish and writes the final artefacts. With ``resume_round``,
    metrics of rounds after it (written before a crash, then redone) are dropped."""

    def __init__(self, out: str | Path, resume_round: int | None = None):
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.out / "metrics.jsonl"
        self.examples_path = self.out / "eval_examples.jsonl"
        self.records: list[dict] = []
        examples: list[dict] = []
        if resume_round is not None:
            self.records = [d for d in self.read_rows(self.metrics_path) if d.get("round", 1 << 30) <= resume_round]
            examples = [d for d in self.read_rows(self.examples_path) if d.get("round", 1 << 30) <= resume_round]
        self.metrics_path.write_text("".join(json.dumps(d) + "\n" for d in self.records), encoding="utf-8")
        self.examples_path.unlink(missing_ok=True)
        if examples:
            self.examples_path.write_text("".join(json.dumps(d) + "\n" for d in examples), encoding="utf-8")

    @staticmethod
    def read_rows(path: Path) -> list[dict]:
        """The rows of a metrics.jsonl (none when it does not exist; a torn last line is skipped)."""
        if not path.exists():
            return []
        rows = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue  # a torn last line
        return rows

    def add(self, record: RoundRecord, metrics: dict | None = None, examples: dict | None = None) -> None:
        """The round's metrics row, with the evaluation's other ``metrics`` (``eval_loss``), and
        its per-example scores as a line of eval_examples.jsonl."""
        d = {**record.to_dict(), **(metrics or {})}
        self.records.append(d)
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(d) + "\n")
        if examples is not None:
            with open(self.examples_path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"round": record.round, **examples}) + "\n")

    def finish(self, cfg: JobConfig, ex, info, started: float, save: Callable[[Path], None], extra: dict | None = None) -> dict:
        """``save(folder)`` writes the trained model (``model/``)."""
        save(self.out / "model")
        plot_accuracy_vs_flops(self.records, self.out / "accuracy_vs_flops.png", f"{cfg.method} on {cfg.task}")
        evaluated = [r for r in self.records if r.get("eval_accuracy") is not None]
        last = self.records[-1] if self.records else {}
        summary = {
            "settings": cfg.to_dict(),
            "model": {"name": info.name, "revision": info.revision, "digest": info.digest},
            "split": ex.split,
            "trainable_parameters": ex.trainable_numel(1) + ex.trainable_numel(2),
            "initial_accuracy": evaluated[0]["eval_accuracy"] if evaluated else None,
            "final_accuracy": evaluated[-1]["eval_accuracy"] if evaluated else None,
            "rounds_completed": last.get("round", 0),
            "flops": last.get("flops", 0.0),
            "bytes_up_per_device": last.get("bytes_up", 0.0),
            "bytes_down_per_device": last.get("bytes_down", 0.0),
            "wall_s": round(time.perf_counter() - started, 1),
            "fingerprint": ex.fingerprint(),
            **(extra or {}),
        }
        (self.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        return summary
