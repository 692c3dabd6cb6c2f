"""The MLX executor: an mlx-lm LLaMA-family model split at a layer index into two blocks.

``SplitExecutor`` (``edgezo.backends.hf.split_executor``) holds the rules every backend shares,
so devices on mlx, torch and int8 follow one global model; this module holds the MLX arrays and
kernels (``edgezo.backends.mlx.perturb``, equal to the canonical generator: Rademacher updates are
bit-identical to torch's). The units and their weights' names are the LLaMA family's
(``edgezo.backends.hf.arch.llama``): mlx-lm names its parameters as transformers does, which is
what makes perturbation keys agree.

MLX arrays are immutable and evaluated lazily: a perturbed or updated tensor is a new array that
replaces the old one in its module, and every unit evaluates its output before the next one runs
(and before its perturbed copies are dropped), so at most one unit's perturbed copies are alive at
a time. Batches are right-padded, so the causal mask alone keeps real tokens from seeing pads (the
only rows read are real tokens').
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from edgezo.backends.hf.arch.llama import FULL_ATTENTION, KIND, LAYOUT, SLIDING_ATTENTION
from edgezo.backends.hf.split_executor import Batch, SplitExecutor
from edgezo.backends.hf.tokenize import Encoded
from edgezo.backends.mlx import perturb as mz
from edgezo.backends.mlx.lora import resolve
from edgezo.errors import EdgezoError


@dataclass
class Activation:
    """A unit's output (hidden [B, T, H]) and what the next units need: the attention mask per
    layer type and the target rows. Depends on no trainable weight, so block 2 reuses it."""

    hidden: mx.array
    masks: dict[str, Any]
    target_positions: mx.array


def flat_parameters(model: nn.Module) -> dict[str, mx.array]:
    """Every parameter of an mlx model by dotted (Hugging Face) name."""
    from mlx.utils import tree_flatten

    return dict(tree_flatten(model.parameters()))


class MLXExecutor(SplitExecutor):
    """The executor protocol (``edgezo.executor.Executor``) over an mlx-lm LLaMA-family model.

    ``SplitExecutor``'s arguments, ``model`` an mlx-lm ``Model`` (llama, mistral, qwen2, qwen3) with
    float32 weights, LoRA already added if wanted (``edgezo.backends.mlx.lora.add_lora``), and
    ``trainable`` in Hugging Face ``named_parameters`` order (the fingerprint's order).
    ``layer_types``: per layer, ``full_attention`` or ``sliding_attention`` (window
    ``sliding_window``); None: all full.
    """

    backend = "mlx"

    def __init__(
        self, model: nn.Module, *args, layer_types: Sequence[str] | None = None, sliding_window: int | None = None, **kwargs
    ):
        self._base = model.model
        self._layers = model.model.layers
        n = len(self._layers)
        self.layout, self.kind, self.num_layers = LAYOUT, KIND, n
        self.hidden_size = int(self._base.embed_tokens.weight.shape[1])
        self.vocab_size = int(self._base.embed_tokens.weight.shape[0])
        super().__init__(model, *args, **kwargs)
        self.layer_types = list(layer_types) if layer_types is not None else [FULL_ATTENTION] * n
        if len(self.layer_types) != n or any(t not in (FULL_ATTENTION, SLIDING_ATTENTION) for t in self.layer_types):
            raise EdgezoError(f"layer types {self.layer_types[:3]}... are not supported by the mlx backend (full or sliding attention, one per layer)")
        self.sliding_window = sliding_window
        # name -> (owning module, attribute): swapping the attribute swaps the tensor a forward reads.
        self._slots: dict[str, tuple[nn.Module, str]] = {}
        for name in self.names:
            owner, _, attr = name.rpartition(".")
            self._slots[name] = (resolve(model, owner), attr)

    # -- the hooks of SplitExecutor ---------------------------------------------------------------
    def head_is_tied(self) -> bool:
        return "lm_head" not in self.model

    def _parameter_numel(self) -> dict[str, int]:
        return {n: int(p.size) for n, p in flat_parameters(self.model).items()}

    def _index_array(self, ids: list[int]) -> mx.array:
        return mx.array(ids)

    def _batch(self, encoded: Encoded, labels: Sequence[int]) -> Batch:
        return Batch(
            mx.array(encoded.input_ids.astype(np.int32)),
            encoded.attention_mask,
            mx.array(encoded.target_positions.astype(np.int32)),
            mx.array(np.asarray(list(labels), dtype=np.int32)),
        )

    def _token_lengths(self, batch: Batch) -> np.ndarray:
        return batch.attention_mask.sum(axis=1)

    def _masks(self, length: int) -> dict[str, Any]:
        masks: dict[str, Any] = {FULL_ATTENTION: "causal" if length > 1 else None}
        if SLIDING_ATTENTION in self.layer_types:
            from mlx_lm.models.base import create_causal_mask

            window = self.sliding_window
            if window is None or length <= window:
                masks[SLIDING_ATTENTION] = masks[FULL_ATTENTION]
            else:
                masks[SLIDING_ATTENTION] = create_causal_mask(length, window_size=window)
        return masks

    def _embed(self, batch: Batch) -> Activation:
        masks = self._masks(int(batch.input_ids.shape[1]))
        hidden = self._base.embed_tokens(batch.input_ids)
        mx.eval(hidden)
        return Activation(hidden, masks, batch.target_positions)

    def _layer(self, index: int, a: Activation) -> Activation:
        hidden = self._layers[index](a.hidden, a.masks[self.layer_types[index]], None)
        mx.eval(hidden)
        return Activation(hidden, a.masks, a.target_positions)

    def _head(self, a: Activation) -> mx.array:
        rows = a.hidden[mx.arange(a.hidden.shape[0]), a.target_positions]
        rows = self._base.norm(rows)
        logits = self._base.embed_tokens.as_linear(rows) if self.head_is_tied() else self.model.lm_head(rows)
        mx.eval(logits)
        return logits

    def _verbalizer_columns(self, logits: mx.array) -> mx.array:
        return logits[:, self.verbalizer_ids].astype(mx.float32)

    def _mean_cross_entropy(self, logits: mx.array, labels: mx.array) -> float:
        picked = mx.take_along_axis(logits, labels[:, None], axis=1)[:, 0]
        return float(mx.mean(mx.logsumexp(logits, axis=1) - picked).item())

    def _argmax(self, logits: mx.array) -> list[int]:
        return np.array(mx.argmax(logits, axis=1)).tolist()

    def _get(self, name: str) -> mx.array:
        owner, attr = self._slots[name]
        return owner[attr]

    def _put(self, name: str, value: mx.array) -> None:
        owner, attr = self._slots[name]
        owner[attr] = value

    def _perturbed_copy(self, value: mx.array, pairs: list[tuple[int, float]]) -> mx.array:
        for key, scale in pairs:
            value = mz.add_scaled(value, key, scale, self.distribution)
        return value

    def _add_in_order(self, name: str, pairs: list[tuple[int, float]]) -> None:
        value = self._perturbed_copy(self._get(name), pairs)
        mx.eval(value)
        self._put(name, value)

    def _copy(self, name: str) -> mx.array:
        """The array itself: MLX arrays are immutable (updates make new ones), so holding one is a
        copy in effect."""
        return self._get(name)

    def _write(self, name: str, value: mx.array) -> None:
        self._put(name, value)

    def _from_numpy(self, name: str, array: np.ndarray) -> mx.array:
        value = mx.array(array.astype(np.float32, copy=False)).astype(self._get(name).dtype)
        mx.eval(value)
        return value

    def _shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._get(name).shape)

    def _float32(self, name: str) -> np.ndarray:
        return np.array(self._get(name).astype(mx.float32))
