"""Accuracy of the current model on a labelled set (prompt-based: argmax over verbalizers)."""

from __future__ import annotations

from typing import Any, Callable, Sequence


def accuracy(
    predict: Callable[[Any], list[int]],
    make_batch: Callable[[list[int]], Any],
    labels: Sequence[int],
    lengths: Sequence[int],
    batch_size: int = 32,
    progress: Callable[[int], None] = lambda n: None,
) -> float:
    """Examples (by index) are batched in order of length so padding (wasted compute) stays small."""
    order = sorted(range(len(labels)), key=lambda k: lengths[k])
    correct = 0
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        predictions = predict(make_batch(chunk))
        correct += sum(int(p == labels[k]) for p, k in zip(predictions, chunk))
        progress(len(chunk))
    return correct / max(1, len(labels))


def make_evaluator(ex, task, dev, quiet: bool = False, batch_size: int = 32) -> Callable[[], float]:
    """A no-argument function giving the executor's current accuracy on ``dev``, with a
    transient progress bar."""
    from tqdm.auto import tqdm

    from edgezo.jobdata import make_batcher, prompts_for

    lengths = [len(p) for p in prompts_for(ex, task, dev)]
    labels = [e.label for e in dev]
    make_batch = make_batcher(ex, task, dev)

    def evaluate() -> float:
        with tqdm(total=len(dev), desc="evaluating", unit="ex", leave=False, disable=quiet) as bar:
            return accuracy(ex.predict, make_batch, labels, lengths, batch_size, bar.update)

    return evaluate
