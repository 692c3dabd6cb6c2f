"""Tokenization every backend shares: all of them use the model's Hugging Face tokenizer, so a
batch is the same tokens on torch, mlx and int8 (the first condition for equal losses)."""

from __future__ import annotations

from typing import Sequence

from edgezo.errors import EdgezoError


def verbalizer_token_ids(tokenizer, verbalizers: Sequence[str]) -> list[int]:
    """The first token of each verbalizer word: the logits a prompt-based loss compares (shared
    by every backend, which all tokenize with the Hugging Face tokenizer)."""
    ids = []
    for word in verbalizers:
        tokens = tokenizer.encode(word, add_special_tokens=False)
        if not tokens:
            raise EdgezoError(f"verbalizer {word!r} encodes to no token with this tokenizer")
        ids.append(tokens[0])
    if len(set(ids)) != len(ids):
        raise EdgezoError(f"verbalizers {list(verbalizers)} share a first token with this tokenizer; pick other words")
    return ids


def tokenize_right_padded(tokenizer, prompts: Sequence[str], max_length: int, return_tensors: str):
    """Right padding (the target is the last real token, and causal attention never sees the
    pads), truncation from the left (the end of the prompt is where the answer goes)."""
    tokenizer.padding_side = "right"
    tokenizer.truncation_side = "left"
    return tokenizer(list(prompts), padding=True, truncation=True, max_length=max_length, return_tensors=return_tensors)

