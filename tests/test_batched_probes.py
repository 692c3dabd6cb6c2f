"""Batched block-2 probes (backends/torch/batched_probes.py) against the sequential ones, on tiny
real models built from configs and real SST-2 examples.

Measured on this machine (one thread, B = 8, max length 32, after a random update so LoRA's B is
not zero): every loss within 1.2e-7 of the sequential one (1-2 ulp of a loss near 0.7), hence
scalars within 6e-6 at eps = 1e-2; the tolerances below are four times that.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from edgezo.backends.torch import batched_probes as bp
from edgezo.backends.torch.factory import build_torch_executor
from edgezo.config import JobConfig
from edgezo.estimators import ProbeConfig
from edgezo.keys import Direction
from edgezo.methods import method_of
from edgezo.methods.fzoo import population_std
from edgezo.tasks import get_task, load_examples

sys.path.append(str(Path(__file__).resolve().parents[1] / "benchmarks"))
import batched_probes as bench  # noqa: E402  (benchmarks/batched_probes.py)

EPS = 1e-2
LOSS_TOLERANCE = 5e-7
SCALAR_TOLERANCE = 2.5e-5


def executor(folder, trainable: str, batched: bool | None = None):
    cfg = JobConfig(model=str(folder), trainable=trainable, max_length=32).validate()
    torch.set_num_threads(1)
    ex, _ = build_torch_executor(cfg, get_task("sst2"))
    if batched is not None:
        ex.block2_losses = bp.block2_losses_for(ex, batched)
    ex.apply_update([(Direction(9, 0, 0, 0, 0), 0.05)])  # away from B = 0 and unit norms
    return ex


def sst2_batch(ex, sst2_dir, n: int = 8):
    task = get_task("sst2")
    train = load_examples(task, sst2_dir, "train")[:n]
    return ex.encode([task.prompt(e, ex.kind, mask_token=ex.tokenizer.mask_token) for e in train], [e.label for e in train])


def probes(ex, batch, p2: int = 4):
    """SPZO joint's block-2 probes of one block-1 index: (a+, +z2_j), (a-, -z2_j)."""
    d1 = Direction(1, 0, 0, 1, 0)
    plus, minus = ex.forward_block1(batch, [(d1, EPS)]), ex.forward_block1(batch, [(d1, -EPS)])
    return [(a, [(Direction(1, 0, 0, 2, 0, j), s)]) for j in range(p2) for a, s in ((plus, EPS), (minus, -EPS))]


@pytest.mark.parametrize("arch,trainable", [("llama", "norm"), ("llama", "lora:r=2"), ("opt", "bitfit"), ("roberta", "norm")])
def test_batched_losses_equal_the_sequential_ones_and_leave_the_weights_alone(tiny_models, sst2_dir, arch, trainable):
    ex = executor(tiny_models[arch], trainable)
    batch = sst2_batch(ex, sst2_dir)
    ps = probes(ex, batch)
    before = ex.fingerprint()
    sequential = bp.sequential_block2_losses(ex, ps, batch)
    batched = bp.batched_block2_losses(ex, ps, batch)
    assert ex.fingerprint() == before
    assert max(abs(a - b) for a, b in zip(sequential, batched)) <= LOSS_TOLERANCE
    assert len(set(sequential)) > 1  # the probes really differ: a batched forward must tell them apart
    scalars = [(sequential[2 * j] - sequential[2 * j + 1]) / (2 * EPS) for j in range(4)]
    batched_scalars = [(batched[2 * j] - batched[2 * j + 1]) / (2 * EPS) for j in range(4)]
    assert max(abs(a - b) for a, b in zip(scalars, batched_scalars)) <= SCALAR_TOLERANCE


def test_an_spzo_step_gives_the_same_scalars_and_counts_either_way(tiny_llama, sst2_dir):
    sequential, batched = executor(tiny_llama, "norm", False), executor(tiny_llama, "norm", True)
    assert batched.block2_losses is bp.batched_block2_losses and sequential.block2_losses is bp.sequential_block2_losses
    batch = sst2_batch(sequential, sst2_dir)
    probe = ProbeConfig("spzo", 2, 3, EPS)
    a = method_of("spzo").step(sequential, batch, probe, 1, 0, 0)
    b = method_of("spzo").step(batched, batch, probe, 1, 0, 0)
    assert sorted(a.scalars) == sorted(b.scalars) and len(a.scalars) == 6
    assert max(abs(a.scalars[d] - b.scalars[d]) for d in a.scalars) <= SCALAR_TOLERANCE
    assert (a.forwards1, a.forwards2, a.flops) == (b.forwards1, b.forwards2, b.flops)


def test_forwards_over_more_rows_than_allowed_are_split_without_changing_the_losses(tiny_llama, sst2_dir, monkeypatch):
    ex = executor(tiny_llama, "norm")
    batch = sst2_batch(ex, sst2_dir)
    ps = probes(ex, batch, p2=3)
    whole = bp.batched_block2_losses(ex, ps, batch)
    calls = []
    forward = bp._grouped_forward
    monkeypatch.setattr(bp, "_grouped_forward", lambda *a: calls.append(len(a[1])) or forward(*a))
    monkeypatch.setattr(bp, "MAX_TOKENS", 4 * batch.input_ids.numel() + 1)
    assert bp.batched_block2_losses(ex, ps, batch) == whole
    assert calls == [4, 2]


def test_a_trainable_set_that_does_not_enter_affinely_keeps_the_sequential_probes(tiny_llama):
    ex = executor(tiny_llama, "full", batched=True)
    assert "q_proj.weight" in bp.batching_refusal(ex)
    assert ex.block2_losses is bp.sequential_block2_losses
    assert bp.default_batched(ex) is bp.BATCHED_BY_DEFAULT["cpu"]


@pytest.mark.parametrize("trainable", ["lora:r=2"])
def test_whole_model_probes_batched_equal_the_sequential_ones_and_fzoo_steps_agree(tiny_llama, sst2_dir, trainable):
    sequential, batched = executor(tiny_llama, trainable, False), executor(tiny_llama, trainable, True)
    batched.full_losses = bp.full_losses_for(batched, True)
    assert batched.full_losses is bp.batched_full_losses and sequential.full_losses is bp.sequential_full_losses
    batch = sst2_batch(sequential, sst2_dir)
    perturbations = [()] + [[(Direction(1, 0, 0, 0, i), EPS)] for i in range(4)]
    a = bp.sequential_full_losses(sequential, perturbations, batch)
    b = bp.batched_full_losses(batched, perturbations, batch)
    assert max(abs(x - y) for x, y in zip(a, b)) <= LOSS_TOLERANCE and len(set(a)) == 5
    probe = ProbeConfig("fzoo", 4, 1, EPS, difference="forward")
    step_a, step_b = (method_of("fzoo").step(ex, batch, probe, 1, 0, 0) for ex in (sequential, batched))
    assert step_a.loss == a[0]  # the sequential path is the one every other executor runs
    # scalars are differences over the losses' spread sigma: a loss off by delta moves one by ~delta/sigma
    bound = 4 * LOSS_TOLERANCE / population_std(a[1:])
    assert max(abs(step_a.scalars[d] - step_b.scalars[d]) for d in step_a.scalars) <= bound < 0.01
    assert (step_a.forwards1, step_a.forwards2) == (step_b.forwards1, step_b.forwards2) == (5, 5)


def test_the_benchmark_gives_paired_ratios_and_says_when_they_are_not_resolved():
    run = bench.summarise({"sequential_s": [2.0, 4.0, 6.0], "batched_s": [1.0, 2.0, 3.0],
                           "sequential_cpu_s": [1.0, 3.0, 1.0], "batched_cpu_s": [2.0, 1.0, 1.0]})
    assert run["speedup"] == 2.0 and run["speedup_interval"] == [2.0, 2.0] and run["resolved"]
    assert run["cpu_speedup"] == 1.0 and not run["cpu_resolved"]  # paired ratios 0.5, 3 and 1: the interval holds 1
