"""Golden tokenisation for the browser device (web/test/): SST-2 prompts -> token ids, as the
Python executors tokenise them (PROTOCOL.md 9.4: the task's template, the model's Hugging Face
tokenizer, right padding, truncation from the left), so the page's JavaScript tokenisation
(@huggingface/tokenizers over /job/tokenizer.json) is checked against it without Python.

Two tokenizers: SmolLM2-135M-Instruct's (a byte-level BPE; its tokenizer.json, 3.5 MB, is not
committed: it is in the converted model folder, ``tokenizer_json`` below, and its SHA-256 is
recorded) and the tiny test models' (a WordLevel vocabulary over SST-2 words, committed beside this
file as tiny_tokenizer.json; it is what the end-to-end Chromium test's page loads).

Run from the repository root:  OMP_NUM_THREADS=1 python tests/golden/make_web_tokens.py
tests/test_web_golden.py checks that the committed file still equals what the code gives.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

OUT = HERE / "web_tokens_sst2.json"
TINY_TOKENIZER = HERE / "tiny_tokenizer.json"
EXAMPLES = 40  # SST-2 validation examples, in file order
TRUNCATED_MAX_LENGTH = 12  # one batch encoded with a short max_length shows the left truncation


def tokenizer_record(tokenizer, tokenizer_json: Path, examples) -> dict:
    from edgezo.backends.hf.tokenize import encode_prompts, verbalizer_token_ids
    from edgezo.tasks import get_task

    task = get_task("sst2")
    prompts = [task.prompt(e, "causal") for e in examples]
    single = [encode_prompts(tokenizer, [p], 128, "causal") for p in prompts]
    batch = encode_prompts(tokenizer, prompts[:4], 128, "causal")
    short = encode_prompts(tokenizer, prompts[:4], TRUNCATED_MAX_LENGTH, "causal")
    return {
        "tokenizer_json": str(tokenizer_json),
        "tokenizer_sha256": hashlib.sha256(tokenizer_json.read_bytes()).hexdigest(),
        "pad_token_id": tokenizer.pad_token_id,
        "verbalizer_ids": verbalizer_token_ids(tokenizer, task.causal_verbalizers),
        "examples": [{"sentence": e.fields["sentence"], "label": e.label, "prompt": p, "ids": enc.input_ids[0].tolist(),
                      "target": int(enc.target_positions[0])} for e, p, enc in zip(examples, prompts, single)],
        "batch": {"max_length": 128, "prompts": prompts[:4], "input_ids": batch.input_ids.tolist(),
                  "attention_mask": batch.attention_mask.tolist(), "target_positions": batch.target_positions.tolist()},
        "truncated_batch": {"max_length": TRUNCATED_MAX_LENGTH, "prompts": prompts[:4], "input_ids": short.input_ids.tolist(),
                            "attention_mask": short.attention_mask.tolist(), "target_positions": short.target_positions.tolist()},
    }


def golden(tiny_tokenizer_path: Path = TINY_TOKENIZER) -> dict:
    """The fixture; writes the tiny tokenizer's tokenizer.json to ``tiny_tokenizer_path``."""
    from tiny import data_dir, sst2_vocab, tiny_tokenizer

    from edgezo.backends.hf.source import resolve_model
    from edgezo.backends.hf.tokenize import load_tokenizer
    from edgezo.tasks import get_task, load_examples

    examples = load_examples(get_task("sst2"), data_dir() / "sst2", "dev")[:EXAMPLES]
    smol = resolve_model(None).folder
    tiny = tiny_tokenizer(sst2_vocab())
    tiny.backend_tokenizer.save(str(tiny_tokenizer_path))
    return {
        "about": "make_web_tokens.py: SST-2 validation prompts tokenised as PROTOCOL.md 9.4 says (template "
                 "'Review: {sentence}\\nSentiment:', sentence stripped; right padding; left truncation)",
        "template": get_task("sst2").causal_template,
        "verbalizers": list(get_task("sst2").causal_verbalizers),
        "smollm2": tokenizer_record(load_tokenizer(smol), smol / "tokenizer.json", examples),
        "tiny": {**tokenizer_record(tiny, tiny_tokenizer_path, examples), "tokenizer_json": TINY_TOKENIZER.name},
    }


if __name__ == "__main__":
    OUT.write_text(json.dumps(golden(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {OUT} and {TINY_TOKENIZER}")
