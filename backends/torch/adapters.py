"""Split Hugging Face models into consecutive units (embed, layers.0 .. layers.n-1, head).

A forward run unit by unit gives the same logits as the unsplit Hugging Face forward; the torch
executor groups the units into block 1 (embed + layers[:split]) and block 2 (layers[split:] + head).

Each family's adapter calls the model's own submodules with the arguments its ``forward`` would pass
them (written against transformers 5.x): masks and position embeddings are built once in
:meth:`SplitAdapter.embed` and carried in :attr:`Hidden.context`, so they are not rebuilt per layer and
depend on no trainable parameter (block 2 can reuse them for every perturbation).

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

from edgezo.errors import EdgezoError

__all__ = [
    "Hidden",
    "SplitAdapter",
    "LlamaFamilyAdapter",
    "OPTAdapter",
    "BertFamilyAdapter",
    "SUPPORTED_MODEL_TYPES",
    "make_adapter",
    "reference_logits",
]


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


def _gather_rows(hidden: torch.Tensor, target_positions: torch.Tensor) -> torch.Tensor:
    """[B, T, H] -> [B, H]: the row of each sequence at its target position."""
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    return hidden[rows, target_positions.to(hidden.device)]


def _check_inputs(input_ids, attention_mask, target_positions):
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


class SplitAdapter:
    """Common part of the per-family adapters. Subclasses set the module handles in ``__init__``."""

    kind: str  # "causal" or "mlm"
    num_layers: int
    model: nn.Module

    def __init__(self, model: nn.Module):
        self.model = model
        # module object -> its dotted name in model.named_modules(), to derive parameter prefixes
        self._module_names: dict[int, str] = {id(m): n for n, m in model.named_modules(remove_duplicate=False)}

    # -- units ---------------------------------------------------------------------------------

    def unit_names(self) -> list[str]:
        return ["embed", *(f"layers.{i}" for i in range(self.num_layers)), "head"]

    def unit_param_prefixes(self, unit: str) -> tuple[str, ...]:
        """Prefixes of ``model.named_parameters()`` names owned by ``unit`` (each ends with '.')."""
        if unit == "embed":
            modules = self._embed_modules()
        elif unit == "head":
            modules = self._head_modules()
        elif unit.startswith("layers."):
            index = self._layer_index(unit[len("layers."):], unit)
            modules = [self._layers[index]]
        else:
            raise ValueError(f"unknown unit {unit!r}; units are {self.unit_names()}")
        return tuple(self._prefix(m) for m in modules if m is not None)

    def _layer_index(self, text: str, unit: str) -> int:
        try:
            index = int(text)
        except ValueError:
            raise ValueError(f"unknown unit {unit!r}; units are {self.unit_names()}") from None
        if not 0 <= index < self.num_layers:
            raise ValueError(f"unit {unit!r} out of range: the model has {self.num_layers} layers")
        return index

    def _prefix(self, module: nn.Module) -> str:
        name = self._module_names.get(id(module))
        if name is None:
            # the model was modified after the adapter was built (e.g. a module replaced)
            self._module_names = {id(m): n for n, m in self.model.named_modules(remove_duplicate=False)}
            name = self._module_names[id(module)]
        return name + "."

    def input_embedding_names(self) -> tuple[str, ...]:
        """Names (as ``model.named_parameters()`` lists them) of the token embedding and anything
        tied to it; "full" fine-tuning leaves these frozen."""
        weight = self._token_embedding().weight
        return tuple(n for n, p in self.model.named_parameters() if p is weight)

    # -- forward -------------------------------------------------------------------------------

    def run(self, input_ids, attention_mask, target_positions) -> torch.Tensor:
        """All units in order: embed, every layer, head. Logits [B, vocab] at the target positions."""
        h = self.embed(input_ids, attention_mask, target_positions)
        for i in range(self.num_layers):
            h = self.layer(i, h)
        return self.head(h)

    def embed(self, input_ids, attention_mask, target_positions) -> Hidden:  # pragma: no cover
        raise NotImplementedError

    def layer(self, index: int, h: Hidden) -> Hidden:  # pragma: no cover
        raise NotImplementedError

    def head(self, h: Hidden) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    # -- per family ------------------------------------------------------------------------------

    _layers: nn.ModuleList

    def _embed_modules(self) -> list[nn.Module | None]:  # pragma: no cover
        raise NotImplementedError

    def _head_modules(self) -> list[nn.Module | None]:  # pragma: no cover
        raise NotImplementedError

    def _token_embedding(self) -> nn.Embedding:  # pragma: no cover
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------
# LLaMA family: llama (SmolLM, LLaMA-3.x), mistral, qwen2, qwen3
# ---------------------------------------------------------------------------------------------


class LlamaFamilyAdapter(SplitAdapter):
    """``*ForCausalLM`` with ``model.embed_tokens``, ``model.layers``, ``model.norm``,
    ``model.rotary_emb`` and ``lm_head`` (the layout transformers uses for LLaMA, Mistral, Qwen2/3)."""

    kind = "causal"

    def __init__(self, model: nn.Module):
        super().__init__(model)
        base = getattr(model, "model", None)
        lm_head = getattr(model, "lm_head", None)
        if base is None or lm_head is None or not hasattr(base, "layers") or not hasattr(base, "embed_tokens"):
            raise EdgezoError(
                f"{type(model).__name__} is not a causal LM with a language-modelling head; "
                "load the model with AutoModelForCausalLM"
            )
        self._base = base
        self._lm_head = lm_head
        self._layers = base.layers
        self.num_layers = len(base.layers[: model.config.num_hidden_layers])
        self._layer_types = self._resolve_layer_types(model.config)

    def _resolve_layer_types(self, config) -> list[str]:
        layer_types = getattr(config, "layer_types", None)
        if layer_types:
            return list(layer_types[: self.num_layers])
        # Mistral (and LLaMA) have no layer_types: Mistral uses a sliding-window mask everywhere when
        # config.sliding_window is set, as MistralModel.forward does.
        if config.model_type == "mistral" and getattr(config, "sliding_window", None) is not None:
            return ["sliding_attention"] * self.num_layers
        return ["full_attention"] * self.num_layers

    def _embed_modules(self):
        return [self._base.embed_tokens]

    def _head_modules(self):
        return [self._base.norm, self._lm_head]

    def _token_embedding(self):
        return self._base.embed_tokens

    def embed(self, input_ids, attention_mask, target_positions) -> Hidden:
        from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

        target_positions = _check_inputs(input_ids, attention_mask, target_positions)
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
            "full_attention": create_causal_mask,
            "sliding_attention": create_sliding_window_causal_mask,
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
        if isinstance(out, tuple):  # older layer signatures returned a tuple
            out = out[0]
        return Hidden(out, ctx)

    def head(self, h: Hidden) -> torch.Tensor:
        rows = _gather_rows(h.hidden, h.context["target_positions"])
        return self._lm_head(self._base.norm(rows))


# ---------------------------------------------------------------------------------------------
# OPT
# ---------------------------------------------------------------------------------------------


class OPTAdapter(SplitAdapter):
    """``OPTForCausalLM``: ``model.decoder.{embed_tokens, embed_positions, project_in, layers,
    final_layer_norm, project_out}`` and ``lm_head``."""

    kind = "causal"

    def __init__(self, model: nn.Module):
        super().__init__(model)
        base = getattr(model, "model", None)
        decoder = getattr(base, "decoder", None)
        lm_head = getattr(model, "lm_head", None)
        if decoder is None or lm_head is None:
            raise EdgezoError(
                f"{type(model).__name__} is not a causal LM with a language-modelling head; "
                "load the model with AutoModelForCausalLM"
            )
        self._decoder = decoder
        self._lm_head = lm_head
        self._layers = decoder.layers
        self.num_layers = len(decoder.layers)

    def _embed_modules(self):
        d = self._decoder
        return [d.embed_tokens, d.embed_positions, d.project_in]

    def _head_modules(self):
        d = self._decoder
        return [d.final_layer_norm, d.project_out, self._lm_head]

    def _token_embedding(self):
        return self._decoder.embed_tokens

    def embed(self, input_ids, attention_mask, target_positions) -> Hidden:
        from transformers.masking_utils import create_causal_mask

        target_positions = _check_inputs(input_ids, attention_mask, target_positions)
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
        if isinstance(out, tuple):
            out = out[0]
        return Hidden(out, ctx)

    def head(self, h: Hidden) -> torch.Tensor:
        d = self._decoder
        rows = _gather_rows(h.hidden, h.context["target_positions"])
        if d.final_layer_norm is not None:
            rows = d.final_layer_norm(rows)
        if d.project_out is not None:
            rows = d.project_out(rows)
        return self._lm_head(rows)


# ---------------------------------------------------------------------------------------------
# BERT / RoBERTa masked LMs
# ---------------------------------------------------------------------------------------------


class BertFamilyAdapter(SplitAdapter):
    """``BertForMaskedLM`` (``bert`` + ``cls``) and ``RobertaForMaskedLM`` (``roberta`` + ``lm_head``):
    ``embeddings``, ``encoder.layer`` and the MLM head; bidirectional padding mask."""

    kind = "mlm"

    def __init__(self, model: nn.Module):
        super().__init__(model)
        base_name = model.config.model_type  # "bert" or "roberta": the base model's attribute
        base = getattr(model, base_name, None)
        mlm_head = getattr(model, "cls", None) if base_name == "bert" else getattr(model, "lm_head", None)
        if base is None or mlm_head is None or not hasattr(base, "encoder"):
            raise EdgezoError(
                f"{type(model).__name__} is not a masked LM with a language-modelling head; "
                "load the model with AutoModelForMaskedLM"
            )
        if getattr(model.config, "is_decoder", False):
            raise EdgezoError(f"{type(model).__name__} is configured as a decoder (is_decoder=True); "
                              "masked-LM fine-tuning needs a bidirectional encoder")
        self._base = base
        self._mlm_head = mlm_head
        self._layers = base.encoder.layer
        self.num_layers = len(base.encoder.layer)

    def _embed_modules(self):
        return [self._base.embeddings]

    def _head_modules(self):
        # the base model's pooler (if loaded) is unused by the MLM head; it sits with the head so
        # that the units still partition the parameters
        return [getattr(self._base, "pooler", None), self._mlm_head]

    def _token_embedding(self):
        return self._base.embeddings.word_embeddings

    def embed(self, input_ids, attention_mask, target_positions) -> Hidden:
        from transformers.masking_utils import create_bidirectional_mask

        target_positions = _check_inputs(input_ids, attention_mask, target_positions)
        # Same call as BertModel/RobertaModel.forward without a cache (RoBERTa derives positions
        # from the pad id).
        embedding_output = self._base.embeddings(input_ids=input_ids)
        mask = build_mask(create_bidirectional_mask, config=self._base.config, inputs_embeds=embedding_output,
                          attention_mask=attention_mask)
        return Hidden(embedding_output, {"mask": mask, "target_positions": target_positions})

    def layer(self, index: int, h: Hidden) -> Hidden:
        ctx = h.context
        out = self._layers[index](h.hidden, attention_mask=ctx["mask"])
        if isinstance(out, tuple):
            out = out[0]
        return Hidden(out, ctx)

    def head(self, h: Hidden) -> torch.Tensor:
        rows = _gather_rows(h.hidden, h.context["target_positions"])
        return self._mlm_head(rows)


# ---------------------------------------------------------------------------------------------

_ADAPTERS: dict[str, type[SplitAdapter]] = {
    "llama": LlamaFamilyAdapter,
    "mistral": LlamaFamilyAdapter,
    "qwen2": LlamaFamilyAdapter,
    "qwen3": LlamaFamilyAdapter,
    "opt": OPTAdapter,
    "bert": BertFamilyAdapter,
    "roberta": BertFamilyAdapter,
}

SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(_ADAPTERS)


def make_adapter(model) -> SplitAdapter:
    """The adapter for ``model`` (chosen by ``model.config.model_type``)."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    cls = _ADAPTERS.get(model_type)
    if cls is None:
        raise EdgezoError(
            f"model type {model_type} is not supported; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    return cls(model)


def reference_logits(model, input_ids, attention_mask, target_positions) -> torch.Tensor:
    """The unsplit Hugging Face forward, logits gathered at the target positions: [B, vocab]."""
    target_positions = _check_inputs(input_ids, attention_mask, target_positions)
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    return _gather_rows(logits, target_positions)
