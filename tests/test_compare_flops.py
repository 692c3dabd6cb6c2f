"""FLOPs from what really runs (benchmarks/flops_check.py): on a tiny model, every method's one
local step as edgezo charges it against torch's FlopCounterMode, and FedAvg's backward as
autograd executes it for the trainable set."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.append(str(Path(__file__).resolve().parents[1] / "benchmarks"))

import flops_check  # noqa: E402
from edgezo.backends.choice import build_executor  # noqa: E402
from edgezo.config import JobConfig  # noqa: E402
from edgezo.jobdata import load_job_data  # noqa: E402

# What edgezo counts and torch runs differ by the norm weights' products (edgezo counts every
# weight of a layer; torch's norms are elementwise): 0.6% on the tiny model, 0.03% on SmolLM2.
TOLERANCE = 0.01


def _executor(model, trainable: str):
    cfg = JobConfig(model=str(model), task="sst2", trainable=trainable, max_length=32, eval_samples=8, clients=1).validate()
    data = load_job_data(cfg, need_train=False)
    ex, _ = build_executor("torch", cfg, data.task)
    return cfg, ex, flops_check.one_batch(ex, data.task, data.dev, 4)


def test_every_methods_step_is_charged_what_torch_runs(tiny_llama):
    cfg, ex, batch = _executor(tiny_llama, "lora")
    steps = [(label, m, {**c, "p1": min(2, c.get("p1", 1))}) for label, m, c in flops_check.STEPS]  # P <= 2: time
    with torch.no_grad():
        checks = flops_check.check_steps(cfg, ex, batch, steps)
    assert [c.label for c in checks] == [label for label, _, _ in flops_check.STEPS]
    for c in checks:
        assert c.measured > 0 and c.ratio == pytest.approx(1.0, abs=TOLERANCE), c
    by = {c.label: c for c in checks}
    # central P=2: 4 forwards; forward difference P=2: 3 -- as measured, not only as charged
    assert by["decomfl"].measured / by["decomfl-fwd"].measured == pytest.approx(4 / 3, rel=1e-3)


def test_fedavgs_backward_follows_the_trainable_set(tiny_llama):
    """With norms trainable autograd skips the frozen matrices' weight gradients: the backward
    is about one forward (the tiny model's large attention share makes it 1.15), not two; with
    every weight trainable it is two."""
    partial = flops_check.check_backward(*_executor(tiny_llama, "norm")[1:])
    full = flops_check.check_backward(*_executor(tiny_llama, "full")[1:])
    assert partial.forward_measured == pytest.approx(partial.forward_counted, rel=TOLERANCE)
    assert 0.95 < partial.backward_forwards < 1.3
    assert full.backward_forwards == pytest.approx(2.0, abs=0.1)
    # the CLI charges the backward by the same rule (activation gradients + trainable matrices' share)
    for check, tolerance in ((partial, 0.2), (full, 0.1)):
        charged_backward = check.charged - check.forward_counted
        assert charged_backward == pytest.approx(check.backward_measured, rel=tolerance)
    assert full.charged / full.forward_counted == pytest.approx(3.0, abs=0.15)
    lora = flops_check.check_backward(*_executor(tiny_llama, "lora")[1:])
    assert lora.charged - lora.forward_counted == pytest.approx(lora.backward_measured, rel=0.2)
