"""One module per architecture: each declares its units (``UnitLayout``) once and holds the torch
forward of transformers' modules unit by unit (its ``SplitAdapter``). ``llama`` (llama, mistral,
qwen2, qwen3), ``opt``, ``bert`` (bert, roberta); ``base`` what their adapters share.

A new architecture is one module here and one entry in :data:`ADAPTERS`.
"""

from __future__ import annotations

from edgezo.backends.hf.arch.base import SplitAdapter
from edgezo.backends.hf.arch.bert import BertAdapter
from edgezo.backends.hf.arch.llama import LlamaAdapter
from edgezo.backends.hf.arch.opt import OPTAdapter
from edgezo.errors import EdgezoError

ADAPTERS: dict[str, type[SplitAdapter]] = {t: cls for cls in (LlamaAdapter, OPTAdapter, BertAdapter) for t in cls.model_types}
SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(ADAPTERS)


def adapter_class(model_type: str | None) -> type[SplitAdapter]:
    """The adapter class for ``model_type``, or a one-line error naming those supported."""
    cls = ADAPTERS.get(model_type)
    if cls is None:
        raise EdgezoError(f"model type {model_type} is not supported; supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
    return cls


def make_adapter(model) -> SplitAdapter:
    """The adapter for a transformers model (chosen by ``model.config.model_type``)."""
    config = getattr(model, "config", None)
    return adapter_class(getattr(config, "model_type", None))(model)
