"""Tokenization every backend shares: all of them use the model's Hugging Face tokenizer, so a
batch is the same tokens on torch, mlx and int8 (the first condition for equal losses)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from edgezo.errors import EdgezoError


def load_tokenizer(folder: Path):
    """The model's tokenizer, with a pad token for causal models that lack one (SmolLM2, LLaMA:
    the end-of-sequence token; right padding keeps it out of every real token's attention)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(Path(folder), local_files_only=True)
    except Exception as error:  # noqa: BLE001 - missing or corrupt tokenizer files
        raise EdgezoError(f"could not read the tokenizer in {folder} ({type(error).__name__}: {error}); re-save the model") from error
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def verbalizer_token_ids(tokenizer, verbalizers: Sequence[str]) -> list[int]:
    """The first token of each verbalizer word: the logits a prompt-based loss compares."""
    ids = []
    for word in verbalizers:
        tokens = tokenizer.encode(word, add_special_tokens=False)
        if not tokens:
            raise EdgezoError(f"verbalizer {word!r} encodes to no token with this tokenizer")
        ids.append(tokens[0])
    if len(set(ids)) != len(ids):
        raise EdgezoError(f"verbalizers {list(verbalizers)} share a first token with this tokenizer; pick other words")
    return ids


@dataclass(frozen=True)
class Encoded:
    """A tokenised batch as int64 NumPy arrays; each backend wraps them in its own arrays."""

    input_ids: np.ndarray  # [B, T], right-padded
    attention_mask: np.ndarray  # [B, T]
    target_positions: np.ndarray  # [B]: the last real token (causal) or the mask token (masked LM)


def encode_prompts(tokenizer, prompts: Sequence[str], max_length: int, kind: str) -> Encoded:
    """Right padding (the target is the last real token, and causal attention never sees the
    pads), truncation from the left (the end of the prompt is where the answer goes)."""
    tokenizer.padding_side = "right"
    tokenizer.truncation_side = "left"
    enc = tokenizer(list(prompts), padding=True, truncation=True, max_length=max_length, return_tensors="np")
    ids = np.asarray(enc["input_ids"], dtype=np.int64)
    mask = np.asarray(enc["attention_mask"], dtype=np.int64)
    if kind == "mlm":
        is_mask = ids == tokenizer.mask_token_id
        if not bool(is_mask.any(axis=1).all()):
            raise EdgezoError("a prompt lost its mask token to truncation: raise --max-length")
        target = is_mask.astype(np.int64).argmax(axis=1)
    else:
        target = mask.sum(axis=1) - 1
    return Encoded(ids, mask, target)
