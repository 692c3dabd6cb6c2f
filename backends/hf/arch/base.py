"""What every architecture's split adapter shares: the torch forward of a transformers model run
unit by unit (embed, layers.0 .. layers.n-1, head).

A forward run unit by unit gives the same logits as the unsplit Hugging Face forward; the torch
and int8 executors group the units into block 1 (embed + layers[:split]) and block 2
(layers[split:] + head).

Each architecture's adapter (one module per architecture in this package) calls the model's own
submodules with the arguments its ``forward`` would pass them (written against transformers
5.x): masks and position embeddings are built once in :meth:`SplitAdapter.embed` and carried in
:attr:`Hidden.context`, so they are not rebuilt per layer and depend on no trainable parameter
(block 2 can reuse them for every perturbation).

Inputs are right-padded with an ``attention_mask``; ``target_positions`` ([B], long) is the index of
the last real token (causal models) or of the mask token (masked LMs). :meth:`SplitAdapter.head`
applies the final norm and the LM head to the gathered target rows only.

Nothing here depends on autograd being off: the same code runs under ``torch.inference_mode`` (ZO
estimators) and with gradients (the first-order FedAvg baseline).
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from edgezo.backends.hf.units import UnitLayout
from edgezo.errors import EdgezoError


@dataclass
class Hidden:
    """Activations between two units.

    ``hidden``: [B, T, H]. ``context``: what the following units need besides ``hidden`` (attention
    masks, position embeddings, position ids, ``target_positions`` [B]); it depends only on the
    inputs, never on trainable weights, and units pass it on unchanged (shared, not copied).
    """

    hidden: torch.Tensor
    context: dict[str, Any] = field(default_factory=dict)


def build_mask(builder: Callable, *, inputs_embeds: torch.Tensor, **kwargs):
    """Call a ``transformers.masking_utils`` mask builder for a forward without a KV cache.

    Its cache argument is required and has been renamed within 5.x (``past_key_values`` until
    5.23, ``cache`` from 5.24, and 5.0 also takes ``cache_position`` and ``input_embeds``); we
    pass whichever the installed release names, so no deprecated keyword is used and no private
    one is needed. Layers and embeddings get no cache arguments at all (their defaults mean none).
    """
    params = _mask_params(builder)
    kwargs["input_embeds" if "input_embeds" in params else "inputs_embeds"] = inputs_embeds
    for cache_name in ("cache", "past_key_values"):
        if cache_name in params:
            kwargs[cache_name] = None
    if "cache_position" in params:
        kwargs["cache_position"] = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device)
    return builder(**kwargs)


@functools.cache
def _mask_params(builder: Callable) -> frozenset[str]:
    return frozenset(inspect.signature(builder).parameters)


def gather_rows(hidden: torch.Tensor, target_positions: torch.Tensor) -> torch.Tensor:
    """[B, T, H] -> [B, H]: the row of each sequence at its target position."""
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    return hidden[rows, target_positions.to(hidden.device)]


def checked_targets(input_ids, attention_mask, target_positions) -> torch.Tensor:
    """``target_positions`` as a long tensor on the inputs' device, after checking the shapes."""
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [B, T], got shape {tuple(input_ids.shape)}")
    if attention_mask is not None and attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask shape {tuple(attention_mask.shape)} != input_ids shape {tuple(input_ids.shape)}"
        )
    target_positions = torch.as_tensor(target_positions, dtype=torch.long, device=input_ids.device)
    if target_positions.shape != (input_ids.shape[0],):
        raise ValueError(
            f"target_positions must be [B]={input_ids.shape[0]}, got shape {tuple(target_positions.shape)}"
        )
    return target_positions


def wrong_head(model: nn.Module, kind: str, auto_class: str) -> EdgezoError:
    """The error for a model of a supported type without the language-modelling head it needs."""
    return EdgezoError(f"{type(model).__name__} is not a {kind} with a language-modelling head; load the model with {auto_class}")


class SplitAdapter:
    """Common part of the per-architecture adapters. A subclass declares ``kind``, the
    ``model_types`` it serves and its units (``units``, or :meth:`layout_for` where they depend on
    the configuration), sets the module handles in ``__init__`` (refusing a model without them)
    and runs each unit."""

    kind: str  # "causal" or "mlm"
    model_types: tuple[str, ...]  # the transformers model types this adapter runs
    units: UnitLayout  # where the units' weights are, when the same for every model of the family
    num_layers: int
    model: nn.Module
    layout: UnitLayout

    def __init__(self, model: nn.Module):
        self.model = model
        self.layout = self.layout_for(model.config)

    @classmethod
    def layout_for(cls, config) -> UnitLayout:
        """Where the units' weights are in a model of ``config``."""
        return cls.units

    # -- units ---------------------------------------------------------------------------------

    def unit_names(self) -> list[str]:
        return self.layout.unit_names(self.num_layers)

    def unit_param_prefixes(self, unit: str) -> tuple[str, ...]:
        """Prefixes of ``model.named_parameters()`` names owned by ``unit`` (each ends with '.')."""
        return self.layout.prefixes(unit, self.num_layers)

    def input_embedding_names(self) -> tuple[str, ...]:
        """Names (as ``model.named_parameters()`` lists them) of the token embedding and anything
        tied to it; "full" fine-tuning leaves these frozen. A quantized embedding (int8) holds no
        parameter, so there is nothing to freeze."""
        weight = getattr(self.model.get_input_embeddings(), "weight", None)
        return tuple(n for n, p in self.model.named_parameters() if p is weight)

    # -- forward (per architecture) --------------------------------------------------------------

    def embed(self, input_ids, attention_mask, target_positions) -> Hidden:  # pragma: no cover
        raise NotImplementedError

    def layer(self, index: int, h: Hidden) -> Hidden:  # pragma: no cover
        raise NotImplementedError

    def head(self, h: Hidden) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


def first_output(out):
    """A layer's hidden states (older transformers layer signatures returned a tuple)."""
    return out[0] if isinstance(out, tuple) else out
