"""Build an MLX executor for a job, mirroring ``build_torch_executor``.

The trainable set is chosen by the torch backend's own rules (``parse_trainable``,
``add_lora``, ``select_trainable``, input embeddings frozen) run on a meta-device transformers
model of the same configuration (no memory, no weights): the names, their order (Hugging Face
``named_parameters``, the fingerprint's order) and the LoRA targets are therefore exactly the torch
executor's, and LoRA ``lora_A`` comes from the same canonical ``lora_init`` with ``cfg.seed``.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgezo.backends.mlx.executor import MLXExecutor, _flat_parameters, add_lora
from edgezo.backends.mlx.loading import check_supported, hf_config, hf_meta_model, load_mlx_model, load_tokenizer
from edgezo.backends.torch.factory import default_split
from edgezo.backends.torch.loading import ModelInfo, resolve_model
from edgezo.backends.torch.trainable import TrainableSpec
from edgezo.config import JobConfig
from edgezo.errors import EdgezoError
from edgezo.tasks import Task


def hf_layer_types(config, num_layers: int) -> list[str]:
    """Attention type per layer, as the torch adapter resolves it (``LlamaFamilyAdapter``)."""
    layer_types = getattr(config, "layer_types", None)
    if layer_types:
        return list(layer_types[:num_layers])
    if config.model_type == "mistral" and getattr(config, "sliding_window", None) is not None:
        return ["sliding_attention"] * num_layers
    return ["full_attention"] * num_layers


@dataclass(frozen=True)
class TrainableLayout:
    """What the torch rules select for a configuration, computed on a meta-device model."""

    spec: TrainableSpec
    names: list[str]  # trainable parameter names, Hugging Face named_parameters order
    lora_modules: list[str]  # modules wrapped in LoRA adapters (empty unless spec.kind == "lora")
    parameter_names: list[str]  # every parameter name, LoRA adapters included


def trainable_layout(config, spec_text: str, seed: int) -> TrainableLayout:
    """The torch executor's trainable set for ``config`` and ``--trainable spec_text``."""
    from edgezo.backends.torch.adapters import make_adapter
    from edgezo.backends.torch.trainable import add_lora as torch_add_lora
    from edgezo.backends.torch.trainable import parse_trainable, select_trainable

    spec = parse_trainable(spec_text)
    meta = hf_meta_model(config)
    lora_modules: list[str] = []
    if spec.kind == "lora":
        new = torch_add_lora(meta, spec.rank, spec.alpha, spec.targets, seed)
        lora_modules = [n[: -len(".lora_A")] for n in new if n.endswith(".lora_A")]
    adapter = make_adapter(meta)
    names = select_trainable(meta, spec, frozen_names=adapter.input_embedding_names())
    return TrainableLayout(spec, names, lora_modules, [n for n, _ in meta.named_parameters()])


def build_mlx_executor(cfg: JobConfig, task: Task) -> tuple[MLXExecutor, ModelInfo]:
    source = resolve_model(cfg.model)
    config = hf_config(source.folder)
    check_supported(config.model_type)
    layout = trainable_layout(config, cfg.trainable, cfg.seed)
    model, config = load_mlx_model(source.folder, config)
    if layout.lora_modules:
        add_lora(model, layout.lora_modules, layout.spec.rank, layout.spec.alpha, cfg.seed)
    mlx_names = set(_flat_parameters(model))
    if mlx_names != set(layout.parameter_names):
        odd = sorted(mlx_names.symmetric_difference(layout.parameter_names))
        raise EdgezoError(
            f"mlx-lm's {config.model_type} model names its weights differently from transformers ({odd[:3]}); "
            "use --backend torch for this model"
        )
    tokenizer = load_tokenizer(source.folder)
    num_layers = len(model.model.layers)
    split = cfg.split if cfg.split is not None else default_split(num_layers)
    executor = MLXExecutor(
        model,
        tokenizer,
        split=split,
        trainable=layout.names,
        verbalizers=task.verbalizers("causal"),
        max_length=cfg.max_length,
        distribution=cfg.distribution,
        layer_types=hf_layer_types(config, num_layers),
        sliding_window=getattr(config, "sliding_window", None),
    )
    return executor, source.info
