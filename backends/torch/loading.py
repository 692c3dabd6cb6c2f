"""Loading a base model as a float32 transformers model for the torch executor, and saving one.

Where the weights are (hub id, folder, GGUF converted once) is the shared model layer's business
(``edgezo.backends.hf.source``); this module loads that folder into torch.
"""

from __future__ import annotations

from pathlib import Path

import torch

from edgezo.backends.hf.configs import hf_config, model_class
from edgezo.backends.hf.lora import merge_lora
from edgezo.backends.hf.source import first_line, resolve_model
from edgezo.backends.hf.tokenize import load_tokenizer
from edgezo.errors import EdgezoError


def load_model(model: str | None, cache_dir: Path | None = None, dtype=torch.float32):
    """``(model, tokenizer, ModelInfo)`` for a ``--model`` argument (see ``resolve_model``), in eval mode."""
    source = resolve_model(model, cache_dir)
    folder = source.folder
    config = hf_config(folder)
    try:
        loaded = model_class(config).from_pretrained(folder, config=config, dtype=dtype, local_files_only=True)
    except Exception as error:  # noqa: BLE001 - safetensors, OSError, ValueError...: all mean "bad folder"
        raise EdgezoError(
            f"could not load the model in {folder} ({type(error).__name__}: {first_line(error)}): "
            "its weights may be truncated or corrupt; re-save or re-download it"
        ) from error
    return loaded.eval(), load_tokenizer(folder), source.info


def save_model(model, tokenizer, out_dir: Path) -> None:
    """Write a plain transformers folder (safetensors + tokenizer), LoRA merged into the base weights.

    The live model is left unchanged (``merge_lora`` swaps merged copies in only while saving).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with merge_lora(model) as plain:
        plain.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
