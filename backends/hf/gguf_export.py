"""A trained LLaMA-family model folder as a GGUF file with Q8_0 weights, through the ``gguf``
package (the writer llama.cpp's own converter uses), so the int8 executor, transformers and
llama.cpp can all load the result.

What llama.cpp's ``convert_hf_to_gguf.py`` does for ``LlamaForCausalLM``, and only that: the
architecture's hyper-parameters as ``llama.*`` metadata; the BPE vocabulary (tokens by id, token
types, merges and special tokens via ``gguf.SpecialVocab``, the chat template); tensors renamed by
``gguf.get_tensor_name_map``; ``attn_q``/``attn_k`` rows permuted to llama.cpp's rope layout (the
int8 backend and transformers undo it); 2-D weights quantized to Q8_0 (blocks of 32 int8 values
and one fp16 scale), norms kept float32. The tied output head is not written (llama.cpp reuses
``token_embd`` as llama.cpp's own files do).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edgezo.errors import EdgezoError

SUPPORTED = ("llama",)


def _permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row order (``LlamaModel.permute``)."""
    return weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def _read_weights(folder: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise EdgezoError(f"{folder} has no .safetensors weights: export a folder written by an edgezo job or save_pretrained")
    weights: dict[str, np.ndarray] = {}
    for f in files:
        weights.update(load_file(str(f)))
    return weights


def _vocab(folder: Path, n_vocab: int):
    """Tokens by id and their llama.cpp types (1 normal, 3 control, 4 user-defined, 5 unused)."""
    from transformers import AutoTokenizer

    import gguf

    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added = tokenizer.get_added_vocab()
    special = set(tokenizer.all_special_tokens)
    tokens, types = [], []
    for i in range(n_vocab):
        token = by_id.get(i)
        if token is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif token in added:
            tokens.append(token)
            types.append(gguf.TokenType.CONTROL if token in special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(token)
            types.append(gguf.TokenType.NORMAL)
    return tokenizer, tokens, types


def export_gguf(folder: str | Path, out: str | Path, name: str | None = None) -> Path:
    """Write ``out`` (a .gguf) from the transformers folder ``folder``; returns its path."""
    import gguf

    folder, out = Path(folder), Path(out)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise EdgezoError(f"{folder} has no config.json: pass a model folder (an edgezo job's OUT/model)")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if config.get("model_type") not in SUPPORTED:
        raise EdgezoError(f"GGUF export writes LLaMA-family models (SmolLM2, LLaMA); {folder} is a {config.get('model_type')!r} model")
    weights = _read_weights(folder)
    layers = int(config["num_hidden_layers"])
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    hidden = int(config["hidden_size"])
    head_dim = int(config.get("head_dim") or hidden // heads)
    n_vocab = int(weights["model.embed_tokens.weight"].shape[0])
    _, tokens, types = _vocab(folder, n_vocab)

    writer = gguf.GGUFWriter(str(out), "llama")
    writer.add_name(name or folder.resolve().name)
    writer.add_context_length(int(config.get("max_position_embeddings", 2048)))
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_rope_dimension_count(head_dim)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-5)))
    writer.add_rope_freq_base(float(config.get("rope_theta", 10000.0)))
    writer.add_vocab_size(n_vocab)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm" if "smollm" in str(config.get("_name_or_path", "")).lower() else "default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_scores([0.0] * len(tokens))  # transformers' GGUF tokenizer reader wants them (llama.cpp ignores them for BPE)
    gguf.SpecialVocab(folder, load_merges=True, n_vocab=n_vocab).add_to_gguf(writer, quiet=True)

    _add_tensors(writer, weights, layers, heads, kv_heads, bool(config.get("tie_word_embeddings", False)))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def _add_tensors(writer, weights: dict, layers: int, heads: int, kv_heads: int, tied: bool) -> None:
    """Every tensor under its GGUF name: q/k rows permuted to llama.cpp's rotary layout, 2-D
    matrices whose rows split into 32-blocks as Q8_0, the rest float32."""
    import gguf
    from gguf.quants import quantize

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, layers)
    for hf_name, array in weights.items():
        if "rotary_emb" in hf_name or (tied and hf_name == "lm_head.weight"):
            continue
        gname = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gname is None:
            raise EdgezoError(f"no GGUF name for tensor {hf_name}: this folder is not a plain LLaMA model (LoRA left unmerged?)")
        data = np.asarray(array, dtype=np.float32)
        if hf_name.endswith("q_proj.weight"):
            data = _permute(data, heads)
        elif hf_name.endswith("k_proj.weight"):
            data = _permute(data, kv_heads)
        if data.ndim == 2 and data.shape[-1] % 32 == 0:
            writer.add_tensor(gname, quantize(data, gguf.GGMLQuantizationType.Q8_0), raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(gname, np.ascontiguousarray(data))
