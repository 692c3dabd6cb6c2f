"""The MLX executor: an mlx-lm LLaMA-family model split at a layer index into two blocks.

Same semantics as the torch executor (``edgezo.backends.torch.executor``), so devices on either
backend follow one global model:

* units are ``embed``, ``layers.0`` .. ``layers.n-1`` and ``head`` (final norm + LM head on the
  target rows); block 1 is embed + ``layers[:split]``, block 2 ``layers[split:]`` + head;
* a perturbed forward swaps each trainable tensor of a unit for a perturbed copy (the sum of
  ``scale * z`` over the directions covering the unit's block, in the given order) only while that
  unit runs; the stored weights are never perturbed, so restoration is exact;
* ``apply_update`` adds ``coefficient * z`` per tensor in sorted direction order, in float32, with
  the same canonical generator: Rademacher updates are bit-identical to torch's;
* tensor names (and so perturbation keys) are the Hugging Face names; the fingerprint hashes the
  trainable tensors in Hugging Face ``named_parameters`` order (as the caller lists them).

MLX arrays are immutable and evaluated lazily: a perturbed or updated tensor is a new array that
replaces the old one in its module, and every unit is evaluated before the next one runs, so at
most one unit's perturbed copies are alive at a time. Batches are right-padded, so the causal mask
alone keeps real tokens from seeing pads (the only rows read are real tokens').
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Sequence

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from edgezo.backends.mlx import perturb as mz
from edgezo.backends.tokenize import tokenize_right_padded, verbalizer_token_ids
from edgezo.errors import EdgezoError
from edgezo.executor import Perturbation
from edgezo.perturb import DISTRIBUTIONS, RADEMACHER

FULL_ATTENTION = "full_attention"
SLIDING_ATTENTION = "sliding_attention"


@dataclass
class MLXBatch:
    input_ids: mx.array  # [B, T] int32, right-padded
    attention_mask: np.ndarray  # [B, T] int64
    target_positions: mx.array  # [B]: last real token
    labels: mx.array  # [B]: index into the verbalizers

    @property
    def size(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class Activation:
    """Block 1's output (hidden [B, T, H]) and what block 2's layers need: the attention mask per
    layer type and the target rows. Depends on no trainable weight, so block 2 reuses it."""

    hidden: mx.array
    masks: dict[str, Any]
    target_positions: mx.array


class LoRALinear(nn.Module):
    """``y = x W^T + b + (x A^T B^T) * alpha/r``, holding the wrapped layer's ``weight``/``bias``
    under their own names (as the torch ``LoRALinear`` does), so base names and keys do not move."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.weight = base.weight
        if "bias" in base:
            self.bias = base.bias
        out_features, in_features = base.weight.shape
        self.scaling = alpha / rank
        self.lora_A = mx.zeros((rank, in_features), dtype=base.weight.dtype)
        self.lora_B = mx.zeros((out_features, rank), dtype=base.weight.dtype)

    def __call__(self, x: mx.array) -> mx.array:
        if "bias" in self:
            y = mx.addmm(self.bias, x, self.weight.T)
        else:
            y = x @ self.weight.T
        return y + ((x @ self.lora_A.T) @ self.lora_B.T) * self.scaling


def _child(node, part: str):
    if isinstance(node, (list, tuple)):
        return node[int(part)]
    return node[part]


def _resolve(model: nn.Module, dotted: str):
    """The module or array at a dotted path (``model.layers.3.self_attn.q_proj``)."""
    node = model
    for part in dotted.split("."):
        try:
            node = _child(node, part)
        except (KeyError, IndexError, ValueError, TypeError):
            raise KeyError(dotted) from None
    return node


def add_lora(model: nn.Module, module_names: Sequence[str], rank: int, alpha: float, seed: int) -> list[str]:
    """Wrap the named ``nn.Linear`` modules in :class:`LoRALinear`: ``lora_B = 0``, ``lora_A`` from
    the torch backend's canonical ``lora_init`` (same run seed and name, so the same values).
    Returns the new parameter names, ``<module>.lora_A`` and ``<module>.lora_B``."""
    from edgezo.backends.torch.trainable import lora_init

    new = []
    for name in module_names:
        parent_name, _, child = name.rpartition(".")
        try:
            parent = _resolve(model, parent_name) if parent_name else model
            base = _child(parent, child)
        except (KeyError, IndexError, ValueError, TypeError):
            raise EdgezoError(f"LoRA target {name} is not a layer of the mlx model; pick other --trainable lora targets") from None
        if not isinstance(base, nn.Linear) or isinstance(base, LoRALinear):
            raise EdgezoError(f"LoRA target {name} is a {type(base).__name__}, not a plain linear layer, in the mlx model")
        lora = LoRALinear(base, rank, alpha)
        a_name = f"{name}.lora_A"
        lora.lora_A = mx.array(lora_init(a_name, tuple(lora.lora_A.shape), seed).numpy()).astype(base.weight.dtype)
        if isinstance(parent, list):
            parent[int(child)] = lora
        else:
            parent[child] = lora
        new += [a_name, f"{name}.lora_B"]
    mx.eval(model.parameters())
    return new


def _flat_parameters(model: nn.Module) -> dict[str, mx.array]:
    from mlx.utils import tree_flatten

    return dict(tree_flatten(model.parameters()))


class MLXExecutor:
    """The executor protocol (``edgezo.executor.Executor``) over an mlx-lm LLaMA-family model.

    ``model``: an mlx-lm ``Model`` (llama, mistral, qwen2, qwen3) with float32 weights, LoRA already
    added if wanted (:func:`add_lora`). ``trainable``: Hugging Face parameter names, in Hugging Face
    ``named_parameters`` order (the fingerprint's order). ``layer_types``: per layer,
    ``full_attention`` or ``sliding_attention`` (window ``sliding_window``); None: all full.
    """

    backend = "mlx"

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        split: int,
        trainable: Sequence[str],
        verbalizers: Sequence[str],
        max_length: int = 128,
        distribution: str = RADEMACHER,
        layer_types: Sequence[str] | None = None,
        sliding_window: int | None = None,
    ):
        if distribution not in DISTRIBUTIONS:
            raise EdgezoError(f"unknown perturbation distribution {distribution!r}; use one of {', '.join(DISTRIBUTIONS)}")
        self.model = model
        self.tokenizer = tokenizer
        self.kind = "causal"
        self.distribution = distribution
        self.max_length = max_length
        self._base = model.model
        self._layers = model.model.layers
        n = len(self._layers)
        if not 0 < split < n:
            raise EdgezoError(f"split index {split} is outside the model: it has {n} layers, so use --split 1..{n - 1}")
        self.split = split
        self.layer_types = list(layer_types) if layer_types is not None else [FULL_ATTENTION] * n
        if len(self.layer_types) != n or any(t not in (FULL_ATTENTION, SLIDING_ATTENTION) for t in self.layer_types):
            raise EdgezoError(f"layer types {self.layer_types[:3]}... are not supported by the mlx backend (full or sliding attention, one per layer)")
        self.sliding_window = sliding_window
        self.verbalizer_ids = mx.array(verbalizer_token_ids(tokenizer, verbalizers))
        params = _flat_parameters(model)
        unknown = [t for t in trainable if t not in params]
        if unknown:
            raise EdgezoError(f"trainable parameters not in the model: {sorted(unknown)[:5]}")
        if len(set(trainable)) != len(trainable):
            raise EdgezoError("trainable parameter names repeat")
        self.names = list(trainable)
        # name -> (owning module, attribute): a perturbed forward swaps the attribute.
        self._slots: dict[str, tuple[nn.Module, str]] = {}
        for name in self.names:
            owner, _, attr = name.rpartition(".")
            self._slots[name] = (_resolve(model, owner), attr)
        self.unit_tensors: dict[str, list[str]] = {}
        self.unit_block: dict[str, int] = {}
        self.name_block: dict[str, int] = {}
        self._unit_numel: dict[str, int] = {}
        for unit in self.unit_names():
            block = 1 if unit == "embed" or (unit.startswith("layers.") and int(unit.split(".")[1]) < split) else 2
            prefixes = self._unit_prefixes(unit)
            owned = [nm for nm in self.names if nm.startswith(prefixes)]
            self.unit_tensors[unit] = owned
            self.unit_block[unit] = block
            for nm in owned:
                self.name_block[nm] = block
            self._unit_numel[unit] = sum(int(p.size) for nm, p in params.items() if nm.startswith(prefixes))
        self.hidden_size = int(self._base.embed_tokens.weight.shape[1])
        self.vocab_size = int(self._base.embed_tokens.weight.shape[0])

    # -- units ------------------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return len(self._layers)

    def unit_names(self) -> list[str]:
        return ["embed", *(f"layers.{i}" for i in range(self.num_layers)), "head"]

    def _unit_prefixes(self, unit: str) -> tuple[str, ...]:
        if unit == "embed":
            return ("model.embed_tokens.",)
        if unit == "head":
            return ("model.norm.", "lm_head.")
        return (f"model.layers.{int(unit.split('.')[1])}.",)

    def _head_is_tied(self) -> bool:
        return "lm_head" not in self.model

    # -- tokenisation -----------------------------------------------------------------------------
    def encode(self, prompts: Sequence[str], labels: Sequence[int]) -> MLXBatch:
        enc = tokenize_right_padded(self.tokenizer, prompts, self.max_length, "np")
        ids = np.asarray(enc["input_ids"])
        mask = np.asarray(enc["attention_mask"]).astype(np.int64)
        target = mask.sum(axis=1) - 1
        return MLXBatch(
            mx.array(ids.astype(np.int32)),
            mask,
            mx.array(target.astype(np.int32)),
            mx.array(np.asarray(list(labels), dtype=np.int32)),
        )

    # -- forwards ---------------------------------------------------------------------------------
    def trainable_numel(self, block: int) -> int:
        return sum(int(self._slot_value(n).size) for n in self.names if self.name_block[n] == block)

    def _slot_value(self, name: str) -> mx.array:
        owner, attr = self._slots[name]
        return owner[attr]

    def _set_slot(self, name: str, value: mx.array) -> None:
        owner, attr = self._slots[name]
        owner[attr] = value

    def _run_unit(self, unit: str, perturbation: Perturbation, fn, *args):
        """``fn(*args)`` with the unit's trainable tensors perturbed, evaluated before returning."""
        names = self.unit_tensors[unit]
        dirs = [(d, s) for d, s in perturbation if d.covers(self.unit_block[unit])]
        if not names or not dirs:
            out = fn(*args)
            mx.eval(out)
            return out
        saved = {}
        try:
            for name in names:
                value = self._slot_value(name)
                new = value
                for d, scale in dirs:
                    new = mz.add_scaled(new, d.tensor_key(name), scale, self.distribution)
                saved[name] = value
                self._set_slot(name, new)
            out = fn(*args)
            mx.eval(out)
            return out
        finally:
            for name, value in saved.items():
                self._set_slot(name, value)

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

    def _embed(self, input_ids: mx.array) -> mx.array:
        return self._base.embed_tokens(input_ids)

    def _layer(self, index: int, h: mx.array, masks: dict[str, Any]) -> mx.array:
        return self._layers[index](h, masks[self.layer_types[index]], None)

    def _head(self, h: mx.array, target_positions: mx.array) -> mx.array:
        rows = h[mx.arange(h.shape[0]), target_positions]
        rows = self._base.norm(rows)
        if self._head_is_tied():
            return self._base.embed_tokens.as_linear(rows)
        return self.model.lm_head(rows)

    def _block1(self, batch: MLXBatch, perturbation: Perturbation) -> Activation:
        masks = self._masks(int(batch.input_ids.shape[1]))
        h = self._run_unit("embed", perturbation, self._embed, batch.input_ids)
        for i in range(self.split):
            h = self._run_unit(f"layers.{i}", perturbation, self._layer, i, h, masks)
        return Activation(h, masks, batch.target_positions)

    def _block2_logits(self, a: Activation, perturbation: Perturbation) -> mx.array:
        h = a.hidden
        for i in range(self.split, self.num_layers):
            h = self._run_unit(f"layers.{i}", perturbation, self._layer, i, h, a.masks)
        logits = self._run_unit("head", perturbation, self._head, h, a.target_positions)
        return logits[:, self.verbalizer_ids].astype(mx.float32)

    def forward_block1(self, batch: MLXBatch, perturbation: Perturbation = ()) -> Activation:
        return self._block1(batch, perturbation)

    def verbalizer_logits(self, batch: MLXBatch, perturbation: Perturbation = ()) -> np.ndarray:
        """[B, n_labels] float32 logits of the verbalizer tokens (both blocks, one perturbation)."""
        return np.array(self._block2_logits(self._block1(batch, perturbation), perturbation))

    def forward_block2(self, activation: Activation, batch: MLXBatch, perturbation: Perturbation = ()) -> float:
        logits = self._block2_logits(activation, perturbation)
        picked = mx.take_along_axis(logits, batch.labels[:, None], axis=1)[:, 0]
        loss = mx.mean(mx.logsumexp(logits, axis=1) - picked)
        return float(loss.item())

    def predict(self, batch: MLXBatch) -> list[int]:
        logits = self._block2_logits(self._block1(batch, ()), ())
        return np.array(mx.argmax(logits, axis=1)).tolist()

    def forward_flops(self, batch: MLXBatch) -> tuple[float, float]:
        """Multiply-adds x 2 over the real tokens (the torch executor's formula): weights of each
        unit, plus attention scores; embedding lookups are free, the head runs on one row each."""
        lengths = batch.attention_mask.sum(axis=1).astype(np.float64)
        tokens = float(lengths.sum())
        attn = 4.0 * float((lengths**2).sum()) * self.hidden_size
        layer_cost = [2.0 * self._unit_numel[f"layers.{i}"] * tokens + attn for i in range(self.num_layers)]
        head = 2.0 * self._unit_numel["head"] * batch.size
        if head == 0 or self._head_is_tied():
            head += 2.0 * self.hidden_size * self.vocab_size * batch.size
        return sum(layer_cost[: self.split]), sum(layer_cost[self.split :]) + head

    # -- updates and state ------------------------------------------------------------------------
    def apply_update(self, update: Perturbation) -> None:
        ordered = sorted(update)
        for name in self.names:
            block = self.name_block[name]
            value = self._slot_value(name)
            changed = False
            for d, coeff in ordered:
                if d.covers(block):
                    value = mz.add_scaled(value, d.tensor_key(name), coeff, self.distribution)
                    changed = True
            if changed:
                mx.eval(value)
                self._set_slot(name, value)

    def snapshot(self) -> dict[str, mx.array]:
        """The trainable arrays themselves: MLX arrays are immutable (updates make new ones), so
        holding them is a copy in effect."""
        return {n: self._slot_value(n) for n in self.names}

    def restore(self, snapshot: dict[str, mx.array]) -> None:
        for n in self.names:
            self._set_slot(n, snapshot[n])

    def trainable_arrays(self) -> dict[str, np.ndarray]:
        """The trainable parameters as float32 NumPy arrays (checkpoints), by Hugging Face name."""
        return {n: np.array(self._slot_value(n).astype(mx.float32), copy=True) for n in self.names}

    def load_trainable(self, arrays: dict[str, np.ndarray]) -> None:
        """Overwrite the trainable parameters from a checkpoint; names and shapes must match."""
        missing = sorted(set(self.names) - set(arrays))
        if missing:
            raise EdgezoError(f"checkpoint lacks trainable tensors {missing[:3]}{'...' if len(missing) > 3 else ''}: it is for another trainable set")
        for n in self.names:
            current = self._slot_value(n)
            if tuple(arrays[n].shape) != tuple(current.shape):
                raise EdgezoError(f"checkpoint tensor {n} has shape {tuple(arrays[n].shape)}, the model {tuple(current.shape)}")
        for n in self.names:
            current = self._slot_value(n)
            value = mx.array(np.ascontiguousarray(arrays[n], dtype=np.float32)).astype(current.dtype)
            mx.eval(value)
            self._set_slot(n, value)

    def fingerprint(self) -> str:
        """SHA-256 over names and float32 bytes in Hugging Face order: equal to the torch
        executor's for equal weights."""
        h = hashlib.sha256()
        for n in self.names:
            h.update(n.encode())
            h.update(np.ascontiguousarray(np.array(self._slot_value(n).astype(mx.float32))).tobytes())
        return h.hexdigest()

    def trainable_vector(self) -> np.ndarray:
        return np.concatenate([np.array(self._slot_value(n)).reshape(-1) for n in self.names])
