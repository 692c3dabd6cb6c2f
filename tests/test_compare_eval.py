"""What the comparison harness pairs on: one evaluation set for every seed (``--eval-seed``),
``eval_loss`` from the same forward as the accuracy, and per-example scores written by simulate
(eval_examples.jsonl), on a tiny model and real SST-2."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edgezo.backends.choice import build_executor
from edgezo.config import JobConfig
from edgezo.evaluate import ClassificationEvaluation, label_scores, make_evaluator
from edgezo.jobdata import load_job_data
from edgezo.app.jobs.simulate import SimulateJob
from edgezo.app.settings import SimulateSettings


def _cfg(model, seed: int, **kw) -> JobConfig:
    return JobConfig(model=str(model), task="sst2", seed=seed, eval_samples=24, max_length=32, **kw).validate()


def test_an_eval_seed_gives_every_run_seed_the_same_examples(tiny_llama):
    fixed = [load_job_data(_cfg(tiny_llama, seed), need_train=False, eval_seed=7).dev for seed in (0, 1, 2)]
    assert len(fixed[0]) == 24 and fixed[0] == fixed[1] == fixed[2]
    drawn = [load_job_data(_cfg(tiny_llama, seed), need_train=False).dev for seed in (0, 1)]
    assert drawn[0] != drawn[1]  # without it each seed scores its own subset (the old behaviour, kept)
    assert drawn[0] == load_job_data(_cfg(tiny_llama, 0), need_train=False, eval_seed=1).dev  # seed 0 drew with seed + 1


def test_eval_loss_is_the_cross_entropy_of_the_correct_label_word(tiny_llama):
    cfg = _cfg(tiny_llama, 0)
    data = load_job_data(cfg, need_train=False, eval_seed=3)
    ex, _ = build_executor("torch", cfg, data.task)
    evaluate = make_evaluator(ex, data.task, data.dev, quiet=True, batch_size=5)
    assert isinstance(evaluate, ClassificationEvaluation)
    acc = evaluate()
    prompts = [data.task.prompt(e, ex.kind, ex.tokenizer.mask_token) for e in data.dev]
    labels = torch.tensor([e.label for e in data.dev])
    batch = ex.encode(prompts, labels.tolist())
    with torch.no_grad():  # by hand: the verbalizer logits of both blocks, all examples at once
        logits = ex._block2_logits(ex._block1(batch, ()), ()).double()
    assert evaluate.metrics()["eval_loss"] == pytest.approx(float(F.cross_entropy(logits, labels)), rel=1e-5)
    assert acc == pytest.approx(float((logits.argmax(1) == labels).double().mean()))
    assert acc == pytest.approx(np.mean(np.array(ex.predict(batch)) == labels.numpy()))
    scores = evaluate.examples()  # per example, in the evaluation set's order (not the batches' length order)
    expected = torch.log_softmax(logits, 1)[torch.arange(len(labels)), labels].numpy()
    assert np.allclose(scores["label_logprobs"], expected, atol=2e-6)
    assert scores["hits"] == (logits.argmax(1) == labels).int().tolist()


def test_label_scores_by_hand():
    hits, lp = label_scores(np.array([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0 + 1e-9]]), [0, 0, 1])
    assert hits.tolist() == [True, False, True]
    assert lp[0] == pytest.approx(-np.log1p(np.exp(-2.0))) and lp[1] == pytest.approx(-np.log1p(np.e))
    assert lp[2] == pytest.approx(-np.log(2))


def test_simulate_writes_paired_per_example_scores(tiny_llama, tmp_path):
    """Two seeds with one --eval-seed: round 0 is the same base model on the same examples, so
    its scores agree example for example; training moves them apart; metrics carry eval_loss."""
    runs = {}
    for seed in (0, 1):
        out = tmp_path / f"seed{seed}"
        job = SimulateJob(_cfg(tiny_llama, seed, method="spzo", clients=2, rounds=2, local_steps=1, batch_size=4,
                               eval_every=1, out=str(out), lr=5e-2, eps=1e-2),
                          SimulateSettings(train_samples=32, eval_seed=5, quiet=True))
        job.run()
        lines = [json.loads(x) for x in (out / "eval_examples.jsonl").read_text().splitlines()]
        metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        runs[seed] = lines
        assert [x["round"] for x in lines] == [0, 1, 2] and all(len(x["hits"]) == 24 for x in lines)
        for row, scores in zip(metrics, lines):
            assert row["eval_accuracy"] == pytest.approx(np.mean(scores["hits"]))
            assert row["eval_loss"] == pytest.approx(-np.mean(scores["label_logprobs"]), abs=1e-5)
        assert metrics[1]["train_loss"] is not None
    assert runs[0][0] == runs[1][0]
    assert runs[0][-1]["label_logprobs"] != runs[1][-1]["label_logprobs"]


def test_a_negative_eval_seed_is_refused():
    from edgezo.errors import ConfigError

    with pytest.raises(ConfigError, match="--eval-seed must be at least 0"):
        SimulateSettings(eval_seed=-1).validate()


def test_a_resumed_run_keeps_one_line_per_evaluated_round(tiny_llama, tmp_path):
    from edgezo.errors import JobStopped

    out = tmp_path / "run"
    cfg = _cfg(tiny_llama, 0, method="spzo", clients=2, rounds=3, local_steps=1, batch_size=4, eval_every=1, out=str(out))

    def stop_after_one(record):
        if record.round == 1:
            raise JobStopped("enough for now")

    assert SimulateJob(cfg, SimulateSettings(train_samples=32, eval_seed=5, quiet=True), callbacks=stop_after_one).run().stopped
    with open(out / "eval_examples.jsonl", "a") as f:  # a line of a round redone after the crash
        f.write(json.dumps({"round": 2, "hits": [], "label_logprobs": []}) + "\n")
    SimulateJob.from_options(out=str(out), resume=True, quiet=True).run()
    lines = [json.loads(x) for x in (out / "eval_examples.jsonl").read_text().splitlines()]
    assert [x["round"] for x in lines] == [0, 1, 2, 3] and all(len(x["hits"]) == 24 for x in lines)
