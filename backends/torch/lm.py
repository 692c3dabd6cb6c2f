"""The torch executor for generation (instruction-tuning) tasks: the loss is the causal-LM
cross-entropy over the response tokens only, the prompt's tokens being context.

Everything else is :class:`TorchExecutor`'s (and so ``SplitExecutor``'s): the same units, blocks,
perturbation keys, updates and fingerprint. Only the head differs: instead of the logits of the
label words at one position, the LM head runs on the rows that predict a response token (never on
the whole [B, T, vocabulary] tensor: 49k logits per prompt token would dwarf the model's own
activations), and the loss compares them with the next tokens. Only the LLaMA family (SmolLM2,
LLaMA, Qwen, Mistral) is wired; other architectures and other backends refuse with one line.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from edgezo.backends.hf.arch.base import Hidden
from edgezo.backends.hf.split_executor import Batch
from edgezo.backends.torch.device import model_device
from edgezo.backends.torch.executor import TorchExecutor
from edgezo.errors import EdgezoError

IGNORE = -100  # next-token targets that are not response tokens (prompt, padding)


def encode_pairs(tokenizer, prompts: Sequence[str], responses: Sequence[str], max_length: int):
    """Token ids of ``prompt + response`` (right-padded) and the next-token targets: the response's
    tokens where position t+1 is one, else IGNORE. Too long a pair loses the start of its prompt
    (the end is where the answer goes), then the end of its response."""
    rows, targets = [], []
    for prompt, response in zip(prompts, responses):
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        r = tokenizer(response, add_special_tokens=False)["input_ids"]
        if not r:
            raise EdgezoError(f"a response encodes to no token: {response[:60]!r}")
        r = r[: max_length - 1]
        p = p[max(0, len(p) - (max_length - len(r))):]
        if not p:
            raise EdgezoError("a prompt lost all its tokens to --max-length: raise --max-length")
        ids = p + r
        rows.append(ids)
        targets.append([IGNORE] * (len(p) - 1) + r + [IGNORE])
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = np.full((len(rows), width), pad, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    target = np.full((len(rows), width), IGNORE, dtype=np.int64)
    for b, (ids, t) in enumerate(zip(rows, targets)):
        input_ids[b, : len(ids)] = ids
        mask[b, : len(ids)] = 1
        target[b, : len(t)] = t
    return input_ids, mask, target


class TorchLMExecutor(TorchExecutor):
    """A :class:`TorchExecutor` whose batches are (prompt, response) pairs and whose loss is the
    mean next-token cross-entropy over the response tokens of the batch."""

    language_modelling = True

    def __init__(self, model, *args, **kwargs):
        super().__init__(model, *args, **kwargs)
        if self.kind != "causal" or not hasattr(self.adapter, "_lm_head") or not hasattr(self.adapter, "_base"):
            raise EdgezoError(f"generation tasks train causal LMs of the LLaMA family (SmolLM2, LLaMA, Qwen, Mistral); "
                              f"{type(model).__name__} is not one")

    def encode(self, prompts: Sequence[str], responses: Sequence[str]) -> Batch:
        input_ids, mask, target = encode_pairs(self.tokenizer, prompts, responses, self.max_length)
        arrays = (input_ids, mask, mask.sum(axis=1) - 1, target)
        return Batch(*(torch.from_numpy(a).to(self.device) for a in arrays))

    def _embed(self, batch: Batch) -> Hidden:
        h = super()._embed(batch)
        h.context["lm_targets"] = batch.labels
        return h

    def _head(self, h: Hidden):
        """Logits of the rows that predict a response token, with those tokens."""
        targets = h.context["lm_targets"].to(h.hidden.device)
        rows = targets != IGNORE
        logits = self.adapter._lm_head(self.adapter._base.norm(h.hidden[rows]))
        return logits, targets[rows]

    def _verbalizer_columns(self, out):
        logits, targets = out
        return logits.float(), targets

    def _mean_cross_entropy(self, out, labels) -> float:
        logits, targets = out
        return float(F.cross_entropy(logits, targets))

    @torch.no_grad()
    def response_scores(self, batch: Batch) -> tuple[float, int, int]:
        """(summed cross-entropy, response tokens, tokens predicted right) of the unperturbed model:
        validation loss and teacher-forced token accuracy."""
        logits, targets = self._block2_logits(self._block1(batch, ()), ())
        loss = float(F.cross_entropy(logits, targets, reduction="sum"))
        return loss, int(targets.numel()), int((logits.argmax(dim=1) == targets).sum())

    def predict(self, batch: Batch) -> list[int]:
        raise EdgezoError("a generation task has no labels to predict: evaluate it with edgezo.evaluate.make_evaluator")

    def loss_and_grad(self, batch: Batch):
        params = [self.params[n] for n in self.names]
        for p in params:
            p.requires_grad_(True)
        try:
            with torch.enable_grad():
                logits, targets = self._block2_logits(self._block1(batch, ()), ())
                loss = F.cross_entropy(logits, targets)
                grads = torch.autograd.grad(loss, params)
        finally:
            for p in params:
                p.requires_grad_(False)
        return float(loss.detach()), dict(zip(self.names, grads))

    def forward_flops(self, batch: Batch) -> tuple[float, float]:
        """As a classification batch, but the head runs on every response token."""
        f1, f2 = super().forward_flops(batch)
        rows = int((batch.labels != IGNORE).sum())
        per_row = 2.0 * (self.unit_numel["head"] + (self.hidden_size * self.vocab_size if self.head_is_tied() or self.unit_numel["head"] == 0 else 0))
        return f1, f2 + per_row * (rows - batch.size)


def generate(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 64) -> list[str]:
    """Greedy completions of ``prompts`` (one at a time: no padding subtleties, and edge-sized
    models are fast enough), special tokens dropped."""
    out = []
    eos = tokenizer.eos_token_id
    stops = [i for i in {eos, tokenizer.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tokenizer.get_vocab() else None} if i is not None]
    device = model_device(model)
    with torch.no_grad():
        for prompt in prompts:
            ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]], device=device)
            new = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
                                 eos_token_id=stops or None, pad_token_id=tokenizer.pad_token_id)
            out.append(tokenizer.decode(new[0, ids.shape[1]:], skip_special_tokens=True).strip())
    return out
