"""Load a Hugging Face safetensors folder into mlx-lm's model definitions, in float32.

The folder is the one ``edgezo.backends.hf.source.resolve_model`` gives for a ``--model``
argument (a converted GGUF, a saved folder or a hub snapshot), so every backend reads the same
bytes and reports the same ``ModelInfo``. The model's configuration is transformers'
(``edgezo.backends.hf.configs.hf_config``: its defaults, not mlx-lm's, decide missing fields such
as ``tie_word_embeddings``), and transformers 5's ``rope_parameters`` are translated to the
``rope_theta``/``rope_scaling`` fields mlx-lm 0.32 reads. mlx-lm names its parameters as
transformers does (``model.layers.N.self_attn.q_proj.weight``), which is what makes perturbation
keys agree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlx.core as mx

from edgezo.backends.hf.configs import hf_config
from edgezo.errors import EdgezoError

# model_type -> the mlx-lm module that defines it (a layer is called as ``layer(x, mask, cache)``).
SUPPORTED_MODEL_TYPES = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}


def check_supported(model_type: str) -> None:
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise EdgezoError(
            f"the mlx backend does not support model type {model_type!r}; it runs "
            f"{', '.join(sorted(SUPPORTED_MODEL_TYPES))} (use --backend torch for other models)"
        )


def mlx_model_args(config) -> dict[str, Any]:
    """mlx-lm ``ModelArgs`` fields from a transformers config (defaults filled in by transformers)."""
    args = config.to_dict()
    rope = args.get("rope_parameters") or {}
    if "rope_theta" in rope:
        args["rope_theta"] = rope["rope_theta"]
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope and rope_type != "default":
        args["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
    if "quantization" in args or "quantization_config" in args:
        raise EdgezoError("quantized checkpoints are not supported by the mlx backend; pass a float16/bfloat16/float32 model")
    args["tie_word_embeddings"] = bool(getattr(config, "tie_word_embeddings", False))
    return args


def load_mlx_model(folder: Path, config=None):
    """``(mlx model, transformers config)`` with float32 weights from ``folder``'s safetensors."""
    import importlib

    folder = Path(folder)
    config = config if config is not None else hf_config(folder)
    check_supported(config.model_type)
    args = mlx_model_args(config)
    arch = importlib.import_module(f"mlx_lm.models.{SUPPORTED_MODEL_TYPES[config.model_type]}")
    model = arch.Model(arch.ModelArgs.from_dict(args))
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise EdgezoError(f"{folder} has no *.safetensors weights: the mlx backend reads safetensors only (re-save the model)")
    weights: dict[str, mx.array] = {}
    for file in files:
        try:
            weights.update(mx.load(str(file)))
        except Exception as error:  # noqa: BLE001 - truncated or corrupt file
            raise EdgezoError(f"could not read {file} ({type(error).__name__}: {error}); re-save or re-download the model") from error
    if hasattr(model, "sanitize"):
        weights = model.sanitize(weights)
    weights = {k: v.astype(mx.float32) for k, v in weights.items()}
    try:
        model.load_weights(list(weights.items()), strict=True)
    except ValueError as error:
        raise EdgezoError(f"the weights in {folder} do not fit mlx-lm's {config.model_type} model ({error}); re-save the model") from error
    mx.eval(model.parameters())
    return model, config
