"""Accuracy of the current model on a labelled set (prompt-based: argmax over verbalizers), with
the mean cross-entropy of the correct label word (``eval_loss``) and each example's hit and
correct-label log-probability from the same forward (a comparison pairs methods example by
example); for a generation task, validation loss and token accuracy over the response tokens
(teacher-forced: one forward per batch, cheap enough for every evaluation round), and exact match
and ROUGE-L of greedy generations (``generation_metrics``: slower, for ``edgezo evaluate``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from tqdm.auto import tqdm

from edgezo.errors import EdgezoError
from edgezo.jobdata import make_batcher, prompts_for


def length_ordered_batches(lengths: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    """Example indices in batches of similar length, so padding (wasted compute) stays small."""
    order = sorted(range(len(lengths)), key=lambda k: lengths[k])
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def accuracy(
    predict: Callable[[Any], list[int]],
    make_batch: Callable[[list[int]], Any],
    labels: Sequence[int],
    lengths: Sequence[int],
    batch_size: int = 32,
    progress: Callable[[int], None] = lambda n: None,
) -> float:
    """Examples (by index) are batched in order of length so padding (wasted compute) stays small."""
    correct = 0
    for chunk in length_ordered_batches(lengths, batch_size):
        predictions = predict(make_batch(chunk))
        correct += sum(int(p == labels[k]) for p, k in zip(predictions, chunk))
        progress(len(chunk))
    return correct / max(1, len(labels))


@dataclass
class ExampleScores:
    """One evaluation of a classification task, per example in the evaluation set's order:
    whether the argmax label was right, and the log-probability of the correct label word
    (softmax over the verbalizers, as the training loss)."""

    hits: np.ndarray  # bool [N]
    label_logprobs: np.ndarray  # float64 [N]

    @property
    def accuracy(self) -> float:
        return float(self.hits.mean()) if len(self.hits) else 0.0

    @property
    def loss(self) -> float:
        """Mean cross-entropy of the correct label word (what ``eval_loss`` records)."""
        return float(-self.label_logprobs.mean()) if len(self.label_logprobs) else 0.0


def label_scores(logits: np.ndarray, labels: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(hits, correct-label log-probabilities) of [B, labels] verbalizer logits, in float64 so
    a loss averaged over a thousand examples does not drift with float32 rounding."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    shifted = z - z.max(axis=1, keepdims=True)
    logprobs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    rows = np.arange(len(y))
    return z.argmax(axis=1) == y, logprobs[rows, y]


def score_examples(
    logits_of: Callable[[Any], np.ndarray],
    make_batch: Callable[[list[int]], Any],
    labels: Sequence[int],
    lengths: Sequence[int],
    batch_size: int = 32,
    progress: Callable[[int], None] = lambda n: None,
) -> ExampleScores:
    """Batched in order of length (as ``accuracy``), results put back in the examples' order."""
    hits = np.zeros(len(labels), dtype=bool)
    logprobs = np.zeros(len(labels), dtype=np.float64)
    for chunk in length_ordered_batches(lengths, batch_size):
        hit, lp = label_scores(logits_of(make_batch(chunk)), [labels[k] for k in chunk])
        hits[chunk], logprobs[chunk] = hit, lp
        progress(len(chunk))
    return ExampleScores(hits, logprobs)


class ClassificationEvaluation:
    """A classification task's evaluator: calling it returns the accuracy (what a job's rounds
    record as ``eval_accuracy``); ``last`` holds that call's per-example scores, and
    ``metrics()`` the extra fields of the round's metrics row (``eval_loss``). An executor
    without ``label_logits`` is evaluated by ``predict`` alone (no loss, no per-example scores)."""

    def __init__(self, ex, task, dev, quiet: bool, batch_size: int):
        self.ex, self.quiet, self.batch_size = ex, quiet, batch_size
        self.lengths = [len(p) for p in prompts_for(ex, task, dev)]
        self.labels = [e.label for e in dev]
        self.make_batch = make_batcher(ex, task, dev)
        self.last: ExampleScores | None = None

    def __call__(self) -> float:
        with tqdm(total=len(self.labels), desc="evaluating", unit="ex", leave=False, disable=self.quiet) as bar:
            if not hasattr(self.ex, "label_logits"):
                return accuracy(self.ex.predict, self.make_batch, self.labels, self.lengths, self.batch_size, bar.update)
            self.last = score_examples(self.ex.label_logits, self.make_batch, self.labels, self.lengths, self.batch_size, bar.update)
        return self.last.accuracy

    def metrics(self) -> dict[str, float]:
        return {} if self.last is None else {"eval_loss": self.last.loss}

    def examples(self) -> dict[str, list] | None:
        """The last evaluation per example (hits as 0/1, log-probs to 6 decimals), or None."""
        if self.last is None:
            return None
        return {"hits": self.last.hits.astype(int).tolist(), "label_logprobs": np.round(self.last.label_logprobs, 6).tolist()}


def make_evaluator(ex, task, dev, quiet: bool = False, batch_size: int = 32) -> Callable[[], float]:
    """A no-argument callable giving the executor's current accuracy on ``dev`` (with a
    transient progress bar); its ``metrics()`` and ``examples()`` give what else that
    evaluation measured."""
    if getattr(task, "kind", "classification") == "generation":
        return make_lm_evaluator(ex, task, dev, quiet, batch_size)
    return ClassificationEvaluation(ex, task, dev, quiet, batch_size)


class LMEvaluation:
    """A generation task's evaluator: calling it returns the response-token accuracy (what a
    job's rounds record as ``eval_accuracy``); ``last`` holds that call's validation loss too."""

    def __init__(self, ex, task, dev, quiet: bool, batch_size: int):
        self.ex, self.dev, self.quiet, self.batch_size = ex, dev, quiet, batch_size
        self.lengths = [len(p) for p in prompts_for(ex, task, dev)]
        self.make_batch = make_batcher(ex, task, dev)
        self.last: dict[str, float] = {}

    def __call__(self) -> float:
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

    def metrics(self) -> dict[str, float]:
        return {"eval_loss": self.last["loss"]} if self.last else {}

    def examples(self) -> None:
        return None  # per-token scores are not kept


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
        raise EdgezoError("ROUGE-L needs the rouge-score package: pip install rouge-score") from None
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    scores = [scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references)]
    return sum(scores) / max(1, len(scores))
