"""The per-round shell simulate and coordinate share (``edgezo.app.jobs.common.JobShell``): an
evaluated round's row carries the evaluation's other metrics (``eval_loss``) and its per-example
scores whichever job wrote it, and the callbacks hear of a round only after it is written.

A unit test of the shell alone: the evaluator is a stand-in that returns fixed figures (the
real ones are exercised by the jobs' own tests and tests/test_invariant.py)."""

from __future__ import annotations

import json

import pytest

from edgezo.app.jobs.common import Callback, JobShell
from edgezo.app.outputs import RunOutputs
from edgezo.engine import RoundRecord
from edgezo.errors import JobStopped


class FixedEvaluator:
    def metrics(self) -> dict:
        return {"eval_loss": 0.25}

    def examples(self) -> dict:
        return {"hit": [1, 0], "logprob": [-0.1, -2.0]}


def record(rnd: int, accuracy: float | None) -> RoundRecord:
    return RoundRecord(rnd, "spzo", None if rnd == 0 else 0.5, accuracy, 4, 16, 1e6, 40.0, 80.0, 0.1)


def test_an_evaluated_round_is_written_with_its_loss_and_examples(tmp_path):
    shell = JobShell(RunOutputs(tmp_path), FixedEvaluator(), 2, [], say=lambda msg: None, progress=False)
    shell.write(record(0, 0.5))
    shell.write(record(1, None))  # not evaluated: no figures of another round's evaluation
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["eval_loss"] == 0.25 and rows[0]["eval_accuracy"] == 0.5
    assert "eval_loss" not in rows[1] and "eval_accuracy" not in rows[1]
    examples = [json.loads(line) for line in (tmp_path / "eval_examples.jsonl").read_text().splitlines()]
    assert examples == [{"round": 0, "hit": [1, 0], "logprob": [-0.1, -2.0]}]


def test_callbacks_hear_a_written_round_and_may_stop_the_job(tmp_path):
    seen, lines = [], []

    class StopAfterOne(Callback):
        def on_round(self, rec):
            seen.append(len(shell.outputs.records))  # the row is written before the callback runs
            if rec.round == 1:
                raise JobStopped("enough")

    shell = JobShell(RunOutputs(tmp_path), FixedEvaluator(), 2, [StopAfterOne()], say=lines.append, progress=True)
    for rnd in (0, 1):
        shell.write(record(rnd, 0.5 if rnd == 0 else None))
        if rnd == 0:
            shell.report(record(rnd, 0.5), "  devices 2/2")
        else:
            with pytest.raises(JobStopped):
                shell.report(record(rnd, None))
    assert seen == [1, 2]
    assert lines[0].startswith("round   0/2  devices 2/2  before training  acc 50.0%")
    stopped = shell.stopped()
    assert stopped.stopped and stopped.summary is None and [r.round for r in stopped.records] == [0, 1]
