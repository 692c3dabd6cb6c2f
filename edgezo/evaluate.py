"""Accuracy of the current model on a labelled set (prompt-based: argmax over verbalizers); for a
generation task, validation loss and token accuracy over the response tokens (teacher-forced: one
forward per batch, cheap enough for every evaluation round), and exact match and ROUGE-L of
greedy generations (``generation_metrics``: slower, for ``edgezo evaluate``)."""

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

    if getattr(task, "kind", "classification") == "generation":
        return make_lm_evaluator(ex, task, dev, quiet, batch_size)

    lengths = [len(p) for p in prompts_for(ex, task, dev)]
    labels = [e.label for e in dev]
    make_batch = make_batcher(ex, task, dev)

    def evaluate() -> float:
        with tqdm(total=len(dev), desc="evaluating", unit="ex", leave=False, disable=quiet) as bar:
            return accuracy(ex.predict, make_batch, labels, lengths, batch_size, bar.update)

    return evaluate


class LMEvaluation:
    """A generation task's evaluator: calling it returns the response-token accuracy (what a
    job's rounds record as ``eval_accuracy``); ``last`` holds that call's validation loss too."""

    def __init__(self, ex, task, dev, quiet: bool, batch_size: int):
        from edgezo.jobdata import make_batcher, prompts_for

        self.ex, self.dev, self.quiet, self.batch_size = ex, dev, quiet, batch_size
        self.lengths = [len(p) for p in prompts_for(ex, task, dev)]
        self.make_batch = make_batcher(ex, task, dev)
        self.last: dict[str, float] = {}

    def __call__(self) -> float:
        from tqdm.auto import tqdm

        order = sorted(range(len(self.dev)), key=lambda k: self.lengths[k])
        loss = tokens = correct = 0
        with tqdm(total=len(self.dev), desc="evaluating", unit="ex", leave=False, disable=self.quiet) as bar:
            for start in range(0, len(order), self.batch_size):
                chunk = order[start : start + self.batch_size]
                l, n, c = self.ex.response_scores(self.make_batch(chunk))
                loss, tokens, correct = loss + l, tokens + n, correct + c
                bar.update(len(chunk))
        self.last = {"loss": loss / max(1, tokens), "token_accuracy": correct / max(1, tokens), "tokens": tokens}
        return self.last["token_accuracy"]


def make_lm_evaluator(ex, task, dev, quiet: bool = False, batch_size: int = 32) -> LMEvaluation:
    return LMEvaluation(ex, task, dev, quiet, batch_size)


def normalize(text: str) -> str:
    """Exact match compares answers up to case and whitespace."""
    return " ".join(text.lower().split())


def exact_match(predictions, references) -> float:
    return sum(normalize(p) == normalize(r) for p, r in zip(predictions, references)) / max(1, len(references))


def rouge_l(predictions, references) -> float:
    """Mean ROUGE-L F1 (Google's rouge-score package, with stemming)."""
    try:
        from rouge_score import rouge_scorer
    except ImportError:
        from edgezo.errors import EdgezoError

        raise EdgezoError("ROUGE-L needs the rouge-score package: pip install rouge-score") from None
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    scores = [scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references)]
    return sum(scores) / max(1, len(scores))
