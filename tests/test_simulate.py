"""`edgezo simulate` end to end on a tiny model and the real SST-2 files; replay; bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict

import numpy as np
import pytest
from transformers import AutoModelForCausalLM

from edgezo.backends.torch.factory import build_torch_executor
from edgezo.config import JobConfig
from edgezo.costmodel import Work
from edgezo.estimators import ProbeConfig
from edgezo.seedlog import SeedLog, replay
from edgezo.simulation import SimulatedDevice, run_simulation
from edgezo.tasks import get_task, load_examples

KEYS = {"round", "method", "train_loss", "forwards_block1", "forwards_block2", "flops", "bytes_up", "bytes_down", "wall_s"}


def run_cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "edgezo.app.cli", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def simulated(tiny_llama, sst2_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("sim")
    args = ["simulate", "--model", str(tiny_llama), "--data", str(sst2_dir), "--clients", "3", "--rounds", "3",
            "--local-steps", "2", "--p1", "2", "--p2", "3", "--split", "2", "--trainable", "full", "--lr", "1e-3",
            "--batch-size", "4", "--eval-samples", "40", "--train-samples", "300", "--eval-every", "2", "--out", str(out), "--quiet"]
    done = run_cli(*args)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done


def test_metrics_jsonl_is_well_formed(simulated):
    out, done = simulated
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1, 2, 3]
    for r in rows:
        assert KEYS <= set(r)
        assert r["method"] == "spzo"
    assert "eval_accuracy" in rows[0] and "eval_accuracy" in rows[2] and "eval_accuracy" in rows[3]
    assert "eval_accuracy" not in rows[1]
    for a, b in zip(rows, rows[1:]):
        assert b["flops"] > a["flops"] and b["bytes_up"] > a["bytes_up"] and b["forwards_block2"] > a["forwards_block2"]
    # joint SPZO forward counts: per step 2*P1 block-1 and 2*P1*P2 block-2, 3 devices x 2 steps per round
    assert rows[1]["forwards_block1"] == 3 * 2 * 2 * 2 and rows[1]["forwards_block2"] == 3 * 2 * 2 * 2 * 3
    # bytes: a device uploads K*P1*P2 float32 scalars (+ header), not a model
    assert rows[1]["bytes_up"] == 32 + 4 * 2 * 2 * 3
    assert "accuracy" in done.stdout


def test_outputs_written(simulated):
    out, _ = simulated
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["fingerprint"]) == 64 and summary["settings"]["rounds"] == 3
    assert 0.0 <= summary["final_accuracy"] <= 1.0
    assert (out / "accuracy_vs_flops.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    assert model.config.num_hidden_layers == 4


def test_replaying_the_seed_log_reproduces_the_global_model(simulated, tiny_llama):
    out, _ = simulated
    summary = json.loads((out / "summary.json").read_text())
    cfg = JobConfig(**summary["settings"])
    replica, _ = build_torch_executor(cfg, get_task("sst2"))
    before = replica.fingerprint()
    entries = list(SeedLog(out / "seedlog.jsonl").entries())
    assert [e.round for e in entries] == [1, 2, 3]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["fingerprint"] == before
    for entry, row in zip(entries, rows[1:]):  # a device replica after every round: bit-identical
        assert replay(replica, [entry]) == 1
        assert replica.fingerprint() == row["fingerprint"]
    assert replica.fingerprint() != before
    assert replica.fingerprint() == summary["fingerprint"]


def _fit_one_batch(ex, train, method, probe, lr, rounds=6, works=None):
    """Devices that all hold the same 16 examples: the loss on them must go down."""
    prompts = [get_task("sst2").prompt(e, ex.kind) for e in train]

    def make_batch(ix):
        return ex.encode([prompts[k] for k in ix], [train[k].label for k in ix])

    fixed = make_batch(list(range(16)))
    losses = []

    def evaluate():
        losses.append(ex.forward_block2(ex.forward_block1(fixed), fixed))
        return 0.0

    works = works or [None] * 2
    counts = {} if probe is None else {k: v for k, v in asdict(probe).items() if k != "method"}
    cfg = JobConfig(method=method, clients=len(works), rounds=rounds, local_steps=2, lr=lr, lr_schedule="constant", batch_size=16,
                    seed=1, eval_every=1, **counts).validate()
    run_simulation(cfg, [SimulatedDevice(list(range(16)), ex, make_batch, w) for w in works], ex, evaluate)
    return losses


def test_a_job_with_mixed_p2_decreases_the_loss_of_a_tiny_model(tiny_llama, sst2_dir):
    """Three devices planned to P2 = 1, 4 and 8 (one with K 1, one with P1 2) train one model."""
    cfg = JobConfig(model=str(tiny_llama), trainable="norm", split=2)
    ex, _ = build_torch_executor(cfg, get_task("sst2"))
    train = load_examples(get_task("sst2"), sst2_dir, "train")[:16]
    works = [Work(1, 1, 1, 16), Work(2, 1, 4, 16), Work(2, 2, 8, 16)]
    losses = _fit_one_batch(ex, train, "spzo", ProbeConfig("spzo", 1, 4, 1e-2), 5.0, works=works)
    assert losses[-1] < losses[0] - 0.03, losses


@pytest.mark.parametrize(
    "method,probe,lr",
    [
        ("spzo", ProbeConfig("spzo", 2, 4, 1e-2), 5.0),
        ("spzo", ProbeConfig("spzo", 2, 4, 1e-2, variant="clean"), 5.0),
        ("mezo", ProbeConfig("mezo", 4, 1, 1e-2), 5.0),
        ("decomfl", ProbeConfig("decomfl", 4, 1, 1e-2, difference="forward"), 5.0),
        ("fedzo", ProbeConfig("fedzo", 4, 1, 1e-2, difference="forward"), 5.0),
        ("fedavg", None, 5.0),
    ],
    ids=["spzo-joint", "spzo-clean", "mezo", "decomfl", "fedzo", "fedavg"],
)
def test_each_method_decreases_the_loss_of_a_tiny_model(method, probe, lr, tiny_llama, sst2_dir):
    cfg = JobConfig(model=str(tiny_llama), trainable="norm", split=2)
    ex, _ = build_torch_executor(cfg, get_task("sst2"))
    train = load_examples(get_task("sst2"), sst2_dir, "train")[:16]
    losses = _fit_one_batch(ex, train, method, probe, lr)
    assert losses[-1] < losses[0] - 0.03, losses


BAD = [
    (["--task", "nope"], "nope"),
    (["--method", "sgd"], "sgd"),
    (["--data", "/nonexistent/sst2"], "/nonexistent/sst2"),
    (["--model", "./no/such/model"], "no/such/model"),
    (["--split", "99"], "split"),
    (["--p1", "0"], "P1"),
    (["--p2", "0"], "P2"),
    (["--lr", "1e38", "--eps", "1e30"], "NaN"),
    (["--aggregation", "trimmed", "--trim", "0.7"], "--trim"),
]


@pytest.mark.parametrize("extra,needle", BAD, ids=[b[1] for b in BAD])
def test_bad_input_is_one_line_and_non_zero(extra, needle, tiny_llama, sst2_dir, tmp_path):
    args = ["simulate", "--model", str(tiny_llama), "--data", str(sst2_dir), "--rounds", "1", "--clients", "2",
            "--train-samples", "20", "--eval-samples", "8", "--out", str(tmp_path), "--quiet", *extra]
    done = run_cli(*args)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert any(needle in line for line in lines), done.stderr
    assert len([line for line in lines if "rror" in line]) == 1, done.stderr
