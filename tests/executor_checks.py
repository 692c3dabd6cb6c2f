"""Checks every executor backend runs the same way, so a new backend's test file calls them
instead of copying them. They return what they measured; the tests assert on it."""

from __future__ import annotations

from edgezo.estimators import LocalRound, ProbeConfig
from edgezo.methods import method_of
from edgezo.tasks import get_task, load_examples


def sst2_loss_before_and_after_spzo(executor, sst2_dir, rounds: int = 3) -> tuple[float, float, list[LocalRound]]:
    """Three SPZO local rounds (P1 2, P2 4, two steps each) on 16 real SST-2 examples: the
    batch's loss before and after, and each round's result (losses, forward counts)."""
    task = get_task("sst2")
    train = load_examples(task, sst2_dir, "train")[:16]
    batch = executor.encode([task.prompt(e, "causal") for e in train], [e.label for e in train])
    start = executor.forward_block2(executor.forward_block1(batch), batch)
    cfg = ProbeConfig("spzo", 2, 4, 1e-2)
    outs = [method_of("spzo").local_round(executor, [batch, batch], cfg, 5.0, run_seed=1, rnd=rnd) for rnd in range(1, rounds + 1)]
    end = executor.forward_block2(executor.forward_block1(batch), batch)
    return start, end, outs
