"""The browser device's golden tokenisation (tests/golden/web_tokens_sst2.json: real SST-2 prompts for the page's JavaScript,
incl. the tiny tokenizer its end-to-end test loads) still equals what the Python executors give."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

GOLDEN = Path(__file__).parent / "golden"


def load_maker():
    spec = importlib.util.spec_from_file_location("make_web_tokens", GOLDEN / "make_web_tokens.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_golden_tokens_are_what_the_executors_tokenise(tmp_path, sst2_dir):
    fresh = load_maker().golden(tmp_path / "tiny_tokenizer.json")
    committed = json.loads((GOLDEN / "web_tokens_sst2.json").read_text(encoding="utf-8"))
    fresh["smollm2"].pop("tokenizer_json"), committed["smollm2"].pop("tokenizer_json")  # where this machine keeps it
    assert fresh == committed, "re-run tests/golden/make_web_tokens.py and commit its output"
    assert (tmp_path / "tiny_tokenizer.json").read_bytes() == (GOLDEN / "tiny_tokenizer.json").read_bytes()
    smol = committed["smollm2"]
    assert smol["verbalizer_ids"] == [3524, 2731] and smol["pad_token_id"] == 2  # PROTOCOL.md 9.4's golden values
    assert len(smol["examples"]) == 40 and all(e["target"] == len(e["ids"]) - 1 for e in smol["examples"])
