"""LoRA adapters on mlx-lm's linear layers, initialised as on every other backend.

The layers to wrap are the ones the shared trainable rules chose (``edgezo.backends.hf.trainable``
on the meta-device transformers model), and ``lora_A`` comes from the shared canonical
``lora_init`` (same run seed and name, so the same values): mlx devices hold the adapters torch
and int8 devices hold.
"""

from __future__ import annotations

from typing import Sequence

import mlx.core as mx
import mlx.nn as nn

from edgezo.backends.hf.lora import lora_init
from edgezo.errors import EdgezoError


class LoRALinear(nn.Module):
    """``y = x W^T + b + (x A^T B^T) * alpha/r``, holding the wrapped layer's ``weight``/``bias``
    under their own names (as ``edgezo.backends.hf.lora.LoRALinear`` does), so base names and keys do not move."""

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


def child(node, part: str):
    """``node[part]`` for a module (by attribute) or a list of layers (by index)."""
    if isinstance(node, (list, tuple)):
        return node[int(part)]
    return node[part]


def resolve(model: nn.Module, dotted: str):
    """The module or array at a dotted path (``model.layers.3.self_attn.q_proj``)."""
    node = model
    for part in dotted.split("."):
        try:
            node = child(node, part)
        except (KeyError, IndexError, ValueError, TypeError):
            raise KeyError(dotted) from None
    return node


def add_lora(model: nn.Module, module_names: Sequence[str], rank: int, alpha: float, seed: int) -> list[str]:
    """Wrap the named ``nn.Linear`` modules in :class:`LoRALinear`: ``lora_B = 0``, ``lora_A`` from
    the canonical ``lora_init``. Returns the new parameter names, ``<module>.lora_A`` and ``<module>.lora_B``."""
    new = []
    for name in module_names:
        parent_name, _, leaf = name.rpartition(".")
        try:
            parent = resolve(model, parent_name) if parent_name else model
            base = child(parent, leaf)
        except (KeyError, IndexError, ValueError, TypeError):
            raise EdgezoError(f"LoRA target {name} is not a layer of the mlx model; pick other --trainable lora targets") from None
        if not isinstance(base, nn.Linear) or isinstance(base, LoRALinear):
            raise EdgezoError(f"LoRA target {name} is a {type(base).__name__}, not a plain linear layer, in the mlx model")
        lora = LoRALinear(base, rank, alpha)
        a_name = f"{name}.lora_A"
        lora.lora_A = mx.array(lora_init(a_name, tuple(lora.lora_A.shape), seed).numpy()).astype(base.weight.dtype)
        if isinstance(parent, list):
            parent[int(leaf)] = lora
        else:
            parent[leaf] = lora
        new += [a_name, f"{name}.lora_B"]
    mx.eval(model.parameters())
    return new
