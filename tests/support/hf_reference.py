"""References the split adapters are checked against: transformers' own unsplit forward, and all
units run in order."""

from __future__ import annotations

import torch

from edgezo.backends.hf.arch.base import SplitAdapter, checked_targets, gather_rows


def reference_logits(model, input_ids, attention_mask, target_positions) -> torch.Tensor:
    """The unsplit Hugging Face forward, logits gathered at the target positions: [B, vocab]."""
    target_positions = checked_targets(input_ids, attention_mask, target_positions)
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    return gather_rows(logits, target_positions)


def all_units_logits(adapter: SplitAdapter, input_ids, attention_mask, target_positions) -> torch.Tensor:
    """All units in order: embed, every layer, head. Logits [B, vocab] at the target positions."""
    h = adapter.embed(input_ids, attention_mask, target_positions)
    for i in range(adapter.num_layers):
        h = adapter.layer(i, h)
    return adapter.head(h)
