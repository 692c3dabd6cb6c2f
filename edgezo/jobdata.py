"""A job's data as every process of it sees it: the task, the training examples (optionally a
seeded subsample), the validation examples, and the per-device shards.

``simulate``, ``coordinate`` and ``join`` all call these, so a real device given ``--shard i/N``
holds exactly the examples simulated device ``i`` holds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgezo.config import JobConfig
from edgezo.errors import EdgezoError
from edgezo.partition import dirichlet, iid
from edgezo.tasks import Example, Task, get_task, load_examples


@dataclass
class JobData:
    task: Task
    train: list[Example]
    dev: list[Example]


def load_job_data(cfg: JobConfig, train_samples: int | None = None, need_train: bool = True, need_dev: bool = True,
                  eval_seed: int | None = None) -> JobData:
    """``cfg.eval_samples`` validation examples are drawn with ``eval_seed``, or, when it is None,
    with the run's seed (each seed then scores another subset). Runs that share an ``eval_seed``
    (or evaluate the whole split) score the same examples, so they can be compared example by
    example."""
    task = get_task(cfg.task)
    train = load_examples(task, cfg.data, "train") if need_train else []
    dev = load_examples(task, cfg.data, "dev") if need_dev else []
    if train_samples is not None and need_train:
        if train_samples < 1:
            raise EdgezoError(f"--train-samples must be at least 1 (got {train_samples})")
        keep = np.random.default_rng(cfg.seed).permutation(len(train))[:train_samples]
        train = [train[k] for k in sorted(keep)]
    if cfg.eval_samples and need_dev:
        keep = eval_subset(len(dev), cfg.eval_samples, cfg.seed + 1 if eval_seed is None else eval_seed)
        dev = [dev[k] for k in sorted(keep)]
    return JobData(task, train, dev)


def eval_subset(size: int, samples: int, seed: int) -> np.ndarray:
    """Which ``samples`` of ``size`` validation examples a run scores (indices, unsorted)."""
    return np.random.default_rng(seed).permutation(size)[:samples]


def device_shards(cfg: JobConfig, train: list[Example], devices: int | None = None) -> list[list[int]]:
    """Indices of each device's training examples (IID or Dirichlet over labels, seeded)."""
    n = devices or cfg.clients
    if len(train) < n:
        raise EdgezoError(f"{len(train)} training examples cannot be split over {n} devices; use more data or fewer devices")
    if cfg.partition == "iid":
        return iid(len(train), n, cfg.seed)
    return dirichlet([e.label for e in train], n, cfg.alpha, cfg.seed)


def parse_shard(text: str) -> tuple[int, int]:
    """'i/N' (0-based i) -> (i, N)."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise EdgezoError(f"--shard {text!r} must look like i/N, e.g. 0/4 for the first of 4 shards") from None
    if not (n >= 1 and 0 <= i < n):
        raise EdgezoError(f"--shard {text!r}: need 0 <= i < N")
    return i, n


def prompts_for(ex, task: Task, examples: list[Example]) -> list[str]:
    """Each example's prompt in the executor's model kind (causal or masked LM); for a generation
    task, prompt and response together (what the executor reads)."""
    if task.kind == "generation":
        return [p + r for p, r in pairs_for(ex, task, examples)]
    mask = ex.tokenizer.mask_token
    return [task.prompt(e, ex.kind, mask) for e in examples]


def pairs_for(ex, task, examples: list[Example]) -> list[tuple[str, str]]:
    """A generation task's (prompt, response) text per example, through the model's chat template."""
    return [task.render(ex.tokenizer, e) for e in examples]


def make_batcher(ex, task: Task, examples: list[Example]):
    """indices -> an executor batch (prompts are built once, tokenised per batch). A generation
    task's batch is (prompt, response) pairs."""
    if task.kind == "generation":
        pairs = pairs_for(ex, task, examples)
        return lambda indices: ex.encode([pairs[k][0] for k in indices], [pairs[k][1] for k in indices])
    prompts = prompts_for(ex, task, examples)
    labels = [e.label for e in examples]
    return lambda indices: ex.encode([prompts[k] for k in indices], [labels[k] for k in indices])
