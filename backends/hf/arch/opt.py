"""OPT: ``OPTForCausalLM`` with ``model.decoder.{embed_tokens, embed_positions, project_in,
layers, final_layer_norm, project_out}`` and ``lm_head`` (project_in/out only where
``word_embed_proj_dim`` differs from the hidden size, as in opt-350m)."""

from __future__ import annotations

import torch
from torch import nn

from edgezo.backends.hf.arch.base import Hidden, SplitAdapter, build_mask, checked_targets, first_output, gather_rows, wrong_head
from edgezo.backends.hf.units import UnitLayout

DECODER = "model.decoder"
LAYOUT = UnitLayout(
    embed=(f"{DECODER}.embed_tokens", f"{DECODER}.embed_positions", f"{DECODER}.project_in"),
    layers=f"{DECODER}.layers",
    head=(f"{DECODER}.final_layer_norm", f"{DECODER}.project_out", "lm_head"),
)


class OPTAdapter(SplitAdapter):
    """The torch forward of an OPT causal LM, unit by unit."""

    kind = "causal"
    model_types = ("opt",)
    units = LAYOUT

    def __init__(self, model: nn.Module):
        super().__init__(model)
        base = getattr(model, "model", None)
        decoder = getattr(base, "decoder", None)
        lm_head = getattr(model, "lm_head", None)
        if decoder is None or lm_head is None:
            raise wrong_head(model, "causal LM", "AutoModelForCausalLM")
        self._decoder = decoder
        self._lm_head = lm_head
        self._layers = decoder.layers
        self.num_layers = len(decoder.layers)

    def embed(self, input_ids, attention_mask, target_positions) -> Hidden:
        from transformers.masking_utils import create_causal_mask

        target_positions = checked_targets(input_ids, attention_mask, target_positions)
        d = self._decoder
        inputs_embeds = d.embed_tokens(input_ids)
        position_attention_mask = attention_mask
        if position_attention_mask is None:
            position_attention_mask = torch.ones(input_ids.shape, device=inputs_embeds.device, dtype=torch.long)
        # OPT's learned positions count real tokens (cumsum of the mask), as OPTDecoder.forward does.
        position_ids = torch.cumsum(position_attention_mask, dim=1)
        position_ids = (position_ids * position_attention_mask - 1).long()
        causal_mask = build_mask(create_causal_mask, config=d.config, inputs_embeds=inputs_embeds, attention_mask=attention_mask)
        pos_embeds = d.embed_positions(position_attention_mask, position_ids=position_ids)
        if d.project_in is not None:
            inputs_embeds = d.project_in(inputs_embeds)
        hidden = inputs_embeds + pos_embeds.to(inputs_embeds.device)
        return Hidden(
            hidden,
            {"mask": causal_mask, "position_ids": position_ids, "target_positions": target_positions},
        )

    def layer(self, index: int, h: Hidden) -> Hidden:
        ctx = h.context
        out = self._layers[index](
            h.hidden,
            attention_mask=ctx["mask"],
            position_ids=ctx["position_ids"],
        )
        return Hidden(first_output(out), ctx)

    def head(self, h: Hidden) -> torch.Tensor:
        d = self._decoder
        rows = gather_rows(h.hidden, h.context["target_positions"])
        if d.final_layer_norm is not None:
            rows = d.final_layer_norm(rows)
        if d.project_out is not None:
            rows = d.project_out(rows)
        return self._lm_head(rows)
