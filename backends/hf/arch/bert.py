"""BERT and RoBERTa masked LMs: ``BertForMaskedLM`` (``bert`` + ``cls``) and
``RobertaForMaskedLM`` (``roberta`` + ``lm_head``): ``embeddings``, ``encoder.layer`` and the MLM
head; bidirectional padding mask."""

from __future__ import annotations

import torch
from torch import nn

from edgezo.backends.hf.arch.base import Hidden, SplitAdapter, build_mask, checked_targets, first_output, gather_rows, wrong_head
from edgezo.backends.hf.units import UnitLayout
from edgezo.errors import EdgezoError

MLM_HEADS = {"bert": "cls", "roberta": "lm_head"}  # model type (= the base model's attribute) -> its MLM head


class BertAdapter(SplitAdapter):
    """The torch forward of a BERT-family masked LM, unit by unit."""

    kind = "mlm"
    model_types = tuple(MLM_HEADS)

    @classmethod
    def layout_for(cls, config) -> UnitLayout:
        base = config.model_type
        # the base model's pooler (if loaded) is unused by the MLM head; it sits with the head so
        # that the units still partition the parameters
        return UnitLayout(embed=(f"{base}.embeddings",), layers=f"{base}.encoder.layer", head=(f"{base}.pooler", MLM_HEADS[base]))

    def __init__(self, model: nn.Module):
        base_name = model.config.model_type
        base = getattr(model, base_name, None)
        mlm_head = getattr(model, MLM_HEADS.get(base_name, ""), None)
        if base is None or mlm_head is None or not hasattr(base, "encoder"):
            raise wrong_head(model, "masked LM", "AutoModelForMaskedLM")
        if getattr(model.config, "is_decoder", False):
            raise EdgezoError(f"{type(model).__name__} is configured as a decoder (is_decoder=True); "
                              "masked-LM fine-tuning needs a bidirectional encoder")
        super().__init__(model)
        self._base = base
        self._mlm_head = mlm_head
        self._layers = base.encoder.layer
        self.num_layers = len(base.encoder.layer)

    def embed(self, input_ids, attention_mask, target_positions) -> Hidden:
        from transformers.masking_utils import create_bidirectional_mask

        target_positions = checked_targets(input_ids, attention_mask, target_positions)
        # Same call as BertModel/RobertaModel.forward without a cache (RoBERTa derives positions
        # from the pad id).
        embedding_output = self._base.embeddings(input_ids=input_ids)
        mask = build_mask(create_bidirectional_mask, config=self._base.config, inputs_embeds=embedding_output,
                          attention_mask=attention_mask)
        return Hidden(embedding_output, {"mask": mask, "target_positions": target_positions})

    def layer(self, index: int, h: Hidden) -> Hidden:
        out = self._layers[index](h.hidden, attention_mask=h.context["mask"])
        return Hidden(first_output(out), h.context)

    def head(self, h: Hidden) -> torch.Tensor:
        rows = gather_rows(h.hidden, h.context["target_positions"])
        return self._mlm_head(rows)
