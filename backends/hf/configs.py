"""A model's transformers configuration, and the transformers class that builds it.

Every backend reads the configuration with transformers' ``AutoConfig`` (its defaults, not a
framework's, decide missing fields such as ``tie_word_embeddings``), so all of them see the same
model; torch and int8 build the transformers model itself, mlx only its meta-device twin (to name
and select the trainable tensors as torch does).
"""

from __future__ import annotations

from pathlib import Path

from edgezo.errors import EdgezoError

MASKED_LM_TYPES = frozenset(
    {"bert", "roberta", "xlm-roberta", "camembert", "distilbert", "albert", "electra", "deberta", "deberta-v2", "modernbert"}
)


def hf_config(folder: Path):
    """transformers' configuration of the model in ``folder``."""
    from transformers import AutoConfig

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise EdgezoError(f"{folder} has no config.json: pass a folder saved by save_pretrained, a .gguf file or a hub id")
    try:
        return AutoConfig.from_pretrained(folder, local_files_only=True)
    except Exception as error:  # noqa: BLE001 - unknown model type, bad JSON
        raise EdgezoError(f"could not read {folder / 'config.json'} ({type(error).__name__}: {error}); re-save the model") from error


def model_class(config):
    """AutoModelForMaskedLM for BERT-family encoders, AutoModelForCausalLM for everything else."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    return AutoModelForMaskedLM if config.model_type in MASKED_LM_TYPES else AutoModelForCausalLM


def meta_model(config):
    """transformers' model for ``config`` on the meta device (no memory): its parameter names, in
    ``named_parameters`` order, are the canonical order (fingerprints), and the trainable rules
    (``edgezo.backends.hf.trainable``) run on it unchanged."""
    import torch

    with torch.device("meta"):
        return model_class(config).from_config(config)
