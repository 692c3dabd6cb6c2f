"""Tiny Hugging Face models built from configs (offline), saved as real safetensors folders.

The tokenizer is a WordLevel vocabulary over real SST-2 words, so tiny models run the real task
end to end (prompt, verbalizer, data files) at a fraction of the cost of a pretrained model.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    OPTConfig,
    OPTForCausalLM,
    PreTrainedTokenizerFast,
    RobertaConfig,
    RobertaForMaskedLM,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SPECIAL = ["[PAD]", "[UNK]", "<s>", "</s>", "<mask>"]
TEMPLATE_WORDS = ["Review", ":", "Sentiment", "It", "was", ".", "negative", "positive", "terrible", "great"]


def data_dir() -> Path:
    import os

    return Path(os.environ.get("EDGEZO_DATA", DATA))


def sst2_vocab(size: int = 400) -> list[str]:
    counts: Counter[str] = Counter()
    with open(data_dir() / "sst2" / "train.tsv", encoding="utf-8") as f:
        next(f)
        for n, line in zip(range(5000), f):
            counts.update(re.findall(r"\w+|[^\w\s]", line.split("\t")[0]))
    words = [w for w, _ in counts.most_common(size)]
    return SPECIAL + [w for w in dict.fromkeys(TEMPLATE_WORDS + words) if w not in SPECIAL]


def tiny_tokenizer(vocab: list[str]) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", bos_token="<s>", eos_token="</s>", pad_token="[PAD]", mask_token="<mask>"
    )


def tiny_model(arch: str, vocab_size: int, layers: int = 4, hidden: int = 32, seed: int = 0):
    torch.manual_seed(seed)
    common = dict(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4, max_position_embeddings=160)
    if arch == "llama":
        return LlamaForCausalLM(LlamaConfig(intermediate_size=2 * hidden, num_key_value_heads=2, tie_word_embeddings=True, **common))
    if arch == "opt":
        return OPTForCausalLM(OPTConfig(ffn_dim=2 * hidden, word_embed_proj_dim=hidden, pad_token_id=0, **common))
    if arch == "roberta":
        return RobertaForMaskedLM(RobertaConfig(intermediate_size=2 * hidden, pad_token_id=0, **common))
    raise ValueError(arch)


def save_tiny(folder: Path, arch: str = "llama", layers: int = 4, hidden: int = 32) -> Path:
    vocab = sst2_vocab()
    tiny_model(arch, len(vocab), layers, hidden).save_pretrained(folder)
    tiny_tokenizer(vocab).save_pretrained(folder)
    return folder
