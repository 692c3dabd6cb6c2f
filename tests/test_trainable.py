"""Trainable selection and LoRA (edgezo.backends.hf.trainable, edgezo.backends.hf.lora) on tiny offline models."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, OPTConfig, OPTForCausalLM, RobertaConfig, RobertaForMaskedLM

from edgezo import perturb
from edgezo.backends.hf.lora import LoRALinear, add_lora, lora_init, merge_lora
from edgezo.backends.hf.trainable import TrainableSpec, parse_trainable, prepare_trainable, select_trainable
from edgezo.errors import EdgezoError
from edgezo.keys import Direction

IDS = torch.tensor([[2, 5, 6, 7, 8, 9]])
TIE = ("model.embed_tokens.weight",)


def tiny(kind: str, seed: int = 0):
    torch.manual_seed(seed)
    common = dict(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=40)
    if kind == "llama":
        return LlamaForCausalLM(LlamaConfig(intermediate_size=32, num_key_value_heads=1, tie_word_embeddings=True, **common)).eval()
    if kind == "opt":
        return OPTForCausalLM(OPTConfig(ffn_dim=32, word_embed_proj_dim=16, **common)).eval()
    if kind == "roberta":
        return RobertaForMaskedLM(RobertaConfig(intermediate_size=32, pad_token_id=0, **common)).eval()
    if kind == "gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=16, n_layer=2, n_head=2, n_positions=40)).eval()
    raise ValueError(kind)


# -- parsing ---------------------------------------------------------------------------------------


def test_parse_forms():
    assert parse_trainable("full") == TrainableSpec("full")
    assert parse_trainable(" BitFit ").kind == "bitfit"
    assert parse_trainable("norm").kind == "norm"
    lora = parse_trainable("lora")
    assert (lora.kind, lora.rank, lora.alpha) == ("lora", 8, 16.0)
    spec = parse_trainable("lora:r=4,alpha=8,targets=q_proj+v_proj")
    assert (spec.rank, spec.alpha, spec.targets) == (4, 8.0, ("q_proj", "v_proj"))
    assert parse_trainable("lora:r=4").alpha == 8.0  # alpha defaults to 2r
    assert parse_trainable("names:norm,layers\\.1\\.").patterns == ("norm", "layers\\.1\\.")
    assert parse_trainable(str(spec)) == spec


@pytest.mark.parametrize(
    "bad", ["", "everything", "full:x", "names:", "names:(", "lora:r=0", "lora:r=x", "lora:rank=4", "lora:targets=", "lora:alpha=nan"]
)
def test_bad_specs(bad):
    with pytest.raises(EdgezoError, match="use one of: full"):
        parse_trainable(bad)


# -- selection -------------------------------------------------------------------------------------


def test_norm_on_llama_selects_only_norm_weights():
    model = tiny("llama")
    names = select_trainable(model, parse_trainable("norm"), TIE)
    assert names and all("norm" in n and n.endswith(".weight") for n in names)
    assert len(names) == 2 * 2 + 1  # two per layer plus the final norm
    assert select_trainable(model, parse_trainable("bitfit"), TIE) == names  # LLaMA has no biases


def test_bitfit_on_opt_includes_biases_and_layer_norms():
    model = tiny("opt")
    names = select_trainable(model, parse_trainable("bitfit"))
    biases = [n for n, _ in model.named_parameters() if n.endswith(".bias")]
    assert set(biases) <= set(names)
    assert "model.decoder.layers.0.self_attn_layer_norm.weight" in names
    assert not any(n.endswith("proj.weight") or "embed" in n for n in names)
    order = [n for n, _ in model.named_parameters()]
    assert names == [n for n in order if n in set(names)]
    norm = select_trainable(model, parse_trainable("norm"))
    assert set(norm) < set(names) and "model.decoder.layers.0.fc1.bias" not in norm


def test_full_excludes_frozen_names():
    model = tiny("llama")
    names = select_trainable(model, parse_trainable("full"), TIE)
    assert TIE[0] not in names
    assert names == [n for n, _ in model.named_parameters() if n != TIE[0]]


def test_names_regex_and_empty_selection():
    model = tiny("llama")
    names = select_trainable(model, parse_trainable("names:layers\\.1\\.mlp"), TIE)
    assert names == [f"model.layers.1.mlp.{p}_proj.weight" for p in ("gate", "up", "down")]
    with pytest.raises(EdgezoError, match="selects no parameter"):
        select_trainable(model, parse_trainable("names:nothing_like_this"))
    with pytest.raises(EdgezoError, match="selects no parameter"):
        select_trainable(model, parse_trainable("lora"))  # adapters not added yet
    with pytest.raises(EdgezoError, match="selects no parameter"):
        select_trainable(model, parse_trainable("norm"), [n for n, _ in model.named_parameters()])


# -- LoRA ------------------------------------------------------------------------------------------


def test_lora_names_and_selection():
    model = tiny("llama")
    new = add_lora(model, 2, 4.0, ("q_proj", "v_proj"), seed=1)
    assert new == [f"model.layers.{i}.self_attn.{m}.lora_{ab}" for i in (0, 1) for m in ("q_proj", "v_proj") for ab in "AB"]
    assert select_trainable(model, parse_trainable("lora"), TIE) == new
    # the base weights keep their names, so perturbation keys and the layer split do not change
    assert "model.layers.0.self_attn.q_proj.weight" in dict(model.named_parameters())
    assert not any("lora" in n for n in select_trainable(model, parse_trainable("full"), TIE))


def test_lora_init_is_canonical_and_identical_across_models():
    a, b = tiny("llama", seed=0), tiny("llama", seed=123)  # different base weights, same run seed
    names = add_lora(a, 4, 8.0, ("q_proj", "v_proj"), seed=7)
    assert add_lora(b, 4, 8.0, ("q_proj", "v_proj"), seed=7) == names
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    for n in names:
        assert torch.equal(pa[n], pb[n]), n
    A = pa["model.layers.0.self_attn.q_proj.lora_A"]
    key = Direction(run_seed=7, round=-1, step=0, block=0, i=0).tensor_key("model.layers.0.self_attn.q_proj.lora_A")
    want = perturb.gaussian(key, 0, A.numel()).reshape(A.shape) / math.sqrt(A.shape[1])
    np.testing.assert_array_equal(A.detach().numpy(), want.astype(np.float32))
    assert torch.equal(lora_init("model.layers.0.self_attn.q_proj.lora_A", tuple(A.shape), 7), A.detach())
    assert not pa["model.layers.0.self_attn.q_proj.lora_B"].any()
    c = tiny("llama")
    add_lora(c, 4, 8.0, ("q_proj", "v_proj"), seed=8)
    assert not torch.equal(dict(c.named_parameters())["model.layers.0.self_attn.q_proj.lora_A"], A)


@pytest.mark.parametrize("kind,targets", [("llama", ("q_proj", "v_proj")), ("opt", ("q_proj", "fc1")), ("roberta", ("query", "value")), ("gpt2", ("c_attn",))])
def test_lora_with_zero_b_equals_base(kind, targets):
    model = tiny(kind)
    with torch.no_grad():
        want = model(IDS).logits
    add_lora(model, 2, 4.0, targets, seed=0)
    with torch.inference_mode():
        assert torch.equal(model(IDS).logits, want)


def test_lora_autograd_and_merge():
    model = tiny("opt")
    names = add_lora(model, 2, 4.0, ("q_proj", "v_proj"), seed=0)
    params = dict(model.named_parameters())
    for p in model.parameters():
        p.requires_grad_(False)
    for n in names:
        params[n].requires_grad_(True)
    model(IDS).logits.square().mean().backward()
    assert params[names[1]].grad is not None and params[names[1]].grad.abs().sum() > 0  # dL/dB != 0 at B = 0
    with torch.no_grad():
        for n in names:
            if n.endswith("lora_B"):
                params[n].normal_()
        want = model(IDS).logits
    base_before = params["model.decoder.layers.0.self_attn.q_proj.weight"].detach().clone()
    with merge_lora(model) as merged:
        assert not any(isinstance(m, LoRALinear) for m in merged.modules())
        assert not any("lora" in n for n, _ in merged.named_parameters())
        with torch.no_grad():
            torch.testing.assert_close(merged(IDS).logits, want, atol=1e-5, rtol=0)
    assert sum(isinstance(m, LoRALinear) for m in model.modules()) == 4
    assert torch.equal(params["model.decoder.layers.0.self_attn.q_proj.weight"], base_before)
    with torch.no_grad():
        assert torch.equal(model(IDS).logits, want)


def test_lora_errors():
    model = tiny("llama")
    with pytest.raises(EdgezoError, match="match no linear layer.*q_proj"):
        add_lora(model, 2, 4.0, ("query",), seed=0)
    add_lora(model, 2, 4.0, ("q_proj",), seed=0)
    with pytest.raises(EdgezoError, match="already has LoRA"):
        add_lora(model, 2, 4.0, ("v_proj",), seed=0)


def test_prepare_trainable_adds_lora_once():
    model = tiny("roberta")
    names = prepare_trainable(model, parse_trainable("lora:r=2"), seed=5)  # default targets: query+value
    assert len(names) == 2 * 2 * 2 and all(".attention.self." in n for n in names)
    assert prepare_trainable(model, parse_trainable("lora:r=2"), seed=5) == names
    assert prepare_trainable(model, parse_trainable("norm"), seed=5)
