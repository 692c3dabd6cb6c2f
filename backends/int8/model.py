"""Build a Hugging Face model whose linear layers and token embedding hold quantized blocks.

The model is created from its config with ``accelerate.init_empty_weights`` (parameters on the
meta device: no float32 weights are allocated; buffers such as rope frequencies are real). Then,
tensor by tensor from a weight source (``sources``):

* every ``nn.Linear`` becomes a ``QuantLinear``: the source's native blocks (GGUF), or its float
  weight quantized (Q8_0 by default) a slice of rows at a time as it is read. Layers named by
  ``keep_float`` (the ``names:REGEX`` trainable set), layers whose input width is not a multiple
  of 32 and GGUF tensors stored as F32/F16 stay float32;
* the token embedding becomes a ``QuantEmbedding``; an LM head tied to it becomes a ``QuantLinear``
  over the same buffers (so the tie holds, and the matrix is stored once);
* every other parameter (norms, biases, position embeddings, kept layers) is read as float32.
  Parameters tied to each other stay one object.

So peak memory while loading is the quantized model plus one float32 slice (or one float32
parameter: norms, biases, layers kept float).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from edgezo.backends.hf.configs import model_class
from edgezo.backends.hf.trainable import TrainableSpec
from edgezo.backends.int8.modules import QuantEmbedding, QuantLinear, quant_modules
from edgezo.backends.int8.quant import BLOCK, check_format
from edgezo.errors import EdgezoError


@dataclass
class WeightMemory:
    """Bytes the model's weights take: quantized storage against the same weights in float32."""

    quantized_bytes: int = 0  # qs + scales (+ minima) of every quantized matrix, each counted once
    quantized_fp32_bytes: int = 0  # what those matrices would take in float32
    float_bytes: int = 0  # parameters and buffers kept in float32 (norms, biases, LoRA, kept layers)
    formats: dict[str, int] = field(default_factory=dict)  # quantized matrices per format

    @property
    def total_bytes(self) -> int:
        return self.quantized_bytes + self.float_bytes

    @property
    def fp32_total_bytes(self) -> int:
        return self.quantized_fp32_bytes + self.float_bytes

    def summary(self) -> str:
        mib = 1 << 20
        kinds = ", ".join(f"{n} {k.upper()}" for k, n in sorted(self.formats.items()))
        return (
            f"weights {self.total_bytes / mib:.1f} MiB ({kinds}: {self.quantized_bytes / mib:.1f} MiB "
            f"instead of {self.quantized_fp32_bytes / mib:.1f} MiB in float32; {self.float_bytes / mib:.1f} MiB float32); "
            f"float32 model {self.fp32_total_bytes / mib:.1f} MiB"
        )


def weight_memory(model: nn.Module) -> WeightMemory:
    mem = WeightMemory()
    seen: set[int] = set()
    formats: Counter[str] = Counter()
    for _, module in quant_modules(model):
        if id(module.qs) in seen:
            continue  # a tied head shares its embedding's blocks
        seen.add(id(module.qs))
        qt = module.quant
        mem.quantized_bytes += qt.nbytes
        mem.quantized_fp32_bytes += 4 * module.weight_numel()
        formats[qt.qtype] += 1
        seen.update(id(t) for t in qt.tensors().values())
    for tensor in list(model.parameters()) + list(model.buffers()):
        if id(tensor) not in seen:
            seen.add(id(tensor))
            mem.float_bytes += tensor.numel() * tensor.element_size()
    mem.formats = dict(formats)
    return mem


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def _is_meta(t: torch.Tensor | None) -> bool:
    return t is not None and t.device.type == "meta"


def keep_float_for(spec: TrainableSpec) -> Callable[[str], bool]:
    """Which weights stay float32: for ``names:REGEX`` the matching ones (they are trained)."""
    if spec.kind == "full":
        raise EdgezoError(
            "--trainable full is not possible on the int8 backend: its weights are quantized and frozen. "
            "Use norm, bitfit, lora or names:REGEX (named linear layers stay float32 and train)"
        )
    if spec.kind != "names":
        return lambda name: False
    regexes = [re.compile(p) for p in spec.patterns]
    return lambda name: any(r.search(name) for r in regexes)


def build_quantized_model(
    config,
    source,
    keep_float: Callable[[str], bool] = lambda name: False,
    qtype: str = "q8_0",
) -> nn.Module:
    """The model of ``config`` with weights from ``source``, quantized as the module docstring says.

    ``qtype``: the format float weights are quantized to (native GGUF blocks are kept as they are).
    """
    from accelerate import init_empty_weights

    check_format(qtype)
    with init_empty_weights(include_buffers=False):
        model = model_class(config).from_config(config, dtype=torch.float32)
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    model.eval()
    embedding = model.get_input_embeddings()
    head = model.get_output_embeddings()
    tied = head is not None and head.weight is embedding.weight
    names = {id(m): n for n, m in model.named_modules()}

    def load_quant(name: str, shape: tuple[int, ...]):
        qt = source.quantized(name, qtype)  # None: stored as floats in a GGUF, stays float32
        if qt is not None and tuple(qt.shape) != tuple(shape):
            raise EdgezoError(f"{source}: tensor {name} has shape {tuple(qt.shape)}, the model expects {tuple(shape)}")
        return qt

    emb_name = names[id(embedding)]
    emb_quant = None
    if type(embedding) is nn.Embedding and embedding.embedding_dim % BLOCK == 0:  # not subclasses with their own forward
        emb_quant = load_quant(f"{emb_name}.weight", tuple(embedding.weight.shape))
        if emb_quant is not None:
            _set_module(model, emb_name, QuantEmbedding(emb_quant, embedding.padding_idx))
    if tied and emb_quant is not None:
        _set_module(model, names[id(head)], QuantLinear(emb_quant, head.bias))
    for name, module in list(model.named_modules()):
        if type(module) is not nn.Linear or not _is_meta(module.weight):
            continue
        if module is head and tied:
            continue  # stays tied to a float embedding
        weight_name = f"{name}.weight"
        if keep_float(weight_name) or module.in_features % BLOCK:
            continue
        qt = load_quant(weight_name, tuple(module.weight.shape))
        if qt is not None:
            _set_module(model, name, QuantLinear(qt, module.bias))
    _materialize(model, source)
    return model


def _checked(tensor: torch.Tensor, name: str, shape) -> torch.Tensor:
    if tuple(tensor.shape) != tuple(shape):
        raise EdgezoError(f"tensor {name} has shape {tuple(tensor.shape)}, the model expects {tuple(shape)}")
    return tensor


def _materialize(model: nn.Module, source) -> None:
    """Read every parameter still on the meta device as float32, keeping tied parameters tied."""
    owners: dict[int, list[tuple[str, nn.Module, str]]] = {}
    params: dict[int, nn.Parameter] = {}
    for mname, module in model.named_modules(remove_duplicate=False):
        for pname, p in module.named_parameters(recurse=False):
            if _is_meta(p):
                full = f"{mname}.{pname}" if mname else pname
                owners.setdefault(id(p), []).append((full, module, pname))
                params[id(p)] = p
    for key, refs in owners.items():
        names = [full for full, _, _ in refs]
        found = next((n for n in names if source.has(n)), None)
        if found is None:
            raise EdgezoError(f"{source} has no tensor for {' / '.join(dict.fromkeys(names))}: it does not hold this model's weights")
        value = _checked(source.fp32(found), found, params[key].shape)
        new = nn.Parameter(value, requires_grad=False)
        for _, module, pname in refs:
            setattr(module, pname, new)
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if _is_meta(t)]
    if left:
        raise EdgezoError(f"the int8 model still has unloaded tensors {left[:3]}")  # pragma: no cover - a bug
