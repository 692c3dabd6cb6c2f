"""The LLaMA family: llama (SmolLM, LLaMA-3.x), mistral, qwen2, qwen3.

``*ForCausalLM`` with ``model.embed_tokens``, ``model.layers``, ``model.norm``,
``model.rotary_emb`` and ``lm_head`` (the layout transformers uses for all four). The units are
declared once (:data:`LAYOUT`, :func:`layer_types`) for every backend: the torch adapter below runs
transformers' modules, the mlx executor runs mlx-lm's modules of the same names.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from edgezo.backends.hf.arch.base import Hidden, SplitAdapter, build_mask, checked_targets, first_output, gather_rows, wrong_head
from edgezo.backends.hf.units import UnitLayout
from edgezo.errors import EdgezoError

MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
KIND = "causal"
LAYOUT = UnitLayout(embed=("model.embed_tokens",), layers="model.layers", head=("model.norm", "lm_head"))
FULL_ATTENTION = "full_attention"
SLIDING_ATTENTION = "sliding_attention"


def layer_types(config, num_layers: int) -> list[str]:
    """Attention type per layer: the config's ``layer_types``; Mistral (and LLaMA) have none, and
    Mistral uses a sliding-window mask everywhere when ``sliding_window`` is set, as
    ``MistralModel.forward`` does."""
    declared = getattr(config, "layer_types", None)
    if declared:
        return list(declared[:num_layers])
    if config.model_type == "mistral" and getattr(config, "sliding_window", None) is not None:
        return [SLIDING_ATTENTION] * num_layers
    return [FULL_ATTENTION] * num_layers


class LlamaAdapter(SplitAdapter):
    """The torch forward of a LLaMA-family causal LM, unit by unit."""

    kind = KIND
    model_types = MODEL_TYPES
    units = LAYOUT

    def __init__(self, model: nn.Module):
        super().__init__(model)
        base = getattr(model, "model", None)
        lm_head = getattr(model, "lm_head", None)
        if base is None or lm_head is None or not hasattr(base, "layers") or not hasattr(base, "embed_tokens"):
            raise wrong_head(model, "causal LM", "AutoModelForCausalLM")
        self._base = base
        self._lm_head = lm_head
        self._layers = base.layers
        self.num_layers = len(base.layers[: model.config.num_hidden_layers])
        self._layer_types = layer_types(model.config, self.num_layers)

    def embed(self, input_ids, attention_mask, target_positions) -> Hidden:
        from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

        target_positions = checked_targets(input_ids, attention_mask, target_positions)
        inputs_embeds = self._base.embed_tokens(input_ids)
        # Right padding: positions 0..T-1 for every row, as the HF forward builds them.
        position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device).unsqueeze(0)
        mask_kwargs = dict(
            config=self._base.config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
        )
        builders: dict[str, Callable] = {
            FULL_ATTENTION: create_causal_mask,
            SLIDING_ATTENTION: create_sliding_window_causal_mask,
        }
        masks = {}
        for kind in dict.fromkeys(self._layer_types):
            if kind not in builders:
                raise EdgezoError(f"layer type {kind!r} of {self.model.config.model_type} is not supported")
            masks[kind] = build_mask(builders[kind], **mask_kwargs)
        position_embeddings = self._base.rotary_emb(inputs_embeds, position_ids=position_ids)
        return Hidden(
            inputs_embeds,
            {
                "masks": masks,
                "position_embeddings": position_embeddings,
                "position_ids": position_ids,
                "target_positions": target_positions,
            },
        )

    def layer(self, index: int, h: Hidden) -> Hidden:
        ctx = h.context
        out = self._layers[index](
            h.hidden,
            attention_mask=ctx["masks"][self._layer_types[index]],
            position_embeddings=ctx["position_embeddings"],
            position_ids=ctx["position_ids"],
        )
        return Hidden(first_output(out), ctx)

    def head(self, h: Hidden) -> torch.Tensor:
        rows = gather_rows(h.hidden, h.context["target_positions"])
        return self._lm_head(self._base.norm(rows))
