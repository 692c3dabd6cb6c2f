"""Build an MLX executor for a job, as the torch and int8 factories build theirs.

The trainable set is the shared model layer's (``edgezo.backends.hf.trainable.trainable_layout``:
the rules every backend applies, run on a meta-device transformers model of the same
configuration, so no memory and no weights): the names, their order (Hugging Face
``named_parameters``, the fingerprint's order) and the LoRA targets are therefore exactly the torch
executor's, and LoRA ``lora_A`` comes from the same canonical ``lora_init`` with ``cfg.seed``.
"""

from __future__ import annotations

from edgezo.backends.hf.arch.llama import KIND, layer_types
from edgezo.backends.hf.configs import hf_config
from edgezo.backends.hf.factory import build_split_executor
from edgezo.backends.hf.source import ModelInfo, resolve_model
from edgezo.backends.hf.tokenize import load_tokenizer
from edgezo.backends.hf.trainable import trainable_layout
from edgezo.backends.mlx.executor import MLXExecutor, flat_parameters
from edgezo.backends.mlx.loading import check_supported, load_mlx_model
from edgezo.backends.mlx.lora import add_lora
from edgezo.config import JobConfig
from edgezo.errors import EdgezoError
from edgezo.tasks import Task


def build_mlx_executor(cfg: JobConfig, task: Task) -> tuple[MLXExecutor, ModelInfo]:
    source = resolve_model(cfg.model)
    config = hf_config(source.folder)
    check_supported(config.model_type)
    layout = trainable_layout(config, cfg.trainable, cfg.seed)
    model, config = load_mlx_model(source.folder, config)
    if layout.lora_modules:
        add_lora(model, layout.lora_modules, layout.spec.rank, layout.spec.alpha, cfg.seed)
    mlx_names = set(flat_parameters(model))
    if mlx_names != set(layout.parameter_names):
        odd = sorted(mlx_names.symmetric_difference(layout.parameter_names))
        raise EdgezoError(
            f"mlx-lm's {config.model_type} model names its weights differently from transformers ({odd[:3]}); "
            "use --backend torch for this model"
        )
    num_layers = len(model.model.layers)
    executor = build_split_executor(
        MLXExecutor, model, load_tokenizer(source.folder), layout.names, cfg, task, kind=KIND, num_layers=num_layers,
        layer_types=layer_types(config, num_layers), sliding_window=getattr(config, "sliding_window", None),
    )
    return executor, source.info
