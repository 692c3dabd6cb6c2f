"""Block-2 probes run together: G perturbed block-2 forwards as one forward over G·B rows.

FedSPZO probes block 2 P2 times per block-1 activation. Run one after another, each probe is a
small forward (B rows) that leaves a GPU (or a browser's WebGPU) mostly idle; run together, the
G = 2·P2 probes of one block-1 index are one forward over G·B rows that reuses block 1's
activations, with each group of B rows seeing its own perturbed block-2 tensors. The FLOPs are
the same; what changes is how well the device is used.

How the groups see their own tensors without G copies of the model: the trainable sets this
serves (norm, bitfit, LoRA) enter a unit's output *affinely*, so the unit runs once on all G·B rows
with the trainable tensors set to a neutral value (norm weight 1, bias 0, LoRA B 0: the unit's
output is then exactly its unperturbed-weight-free part), and a forward hook adds each group's own
contribution to its rows: ``out·w_g + b_g`` for a norm or a bias, ``out + (x A_gᵀ) B_gᵀ·s`` for
LoRA, as batched matrix products. Each group's perturbed tensor is made by the executor's own
``_perturbed_copy`` (the same bits as a sequential probe's), so the losses equal the sequential
ones up to the float rounding of differently shaped matrix products (measured in
``tests/test_batched_probes.py``). A trainable tensor of another kind (full fine-tuning, a
causal-LM loss) makes the executor keep the sequential probes (:func:`block2_losses_for`).

The choice between the two is an executor option, decided here for every executor of a device
type (:data:`BATCHED_BY_DEFAULT`), so ``simulate`` and ``join`` run the same code on the same
kind of device and a job's result does not depend on where it ran. The default is measured:
``benchmarks/batched_probes.py`` (``benchmarks/results/batched_probes.json``).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from edgezo.backends.hf.arch.base import Hidden
from edgezo.backends.hf.lora import LoRALinear
from edgezo.executor import Perturbation

Probe = tuple[Any, Perturbation]  # (block-1 activation, block-2 perturbation)
Block2Losses = Callable[[Any, Sequence[Any], Any], list[float]]  # (executor, probes, batch) -> losses

# The CPU: measured (benchmarks/results/batched_probes.json): an SPZO step at P2 = 8 on SmolLM2-135M,
# one thread, ran 0.89x as fast batched (95% 0.89-0.92): a CPU runs a body forward near its GEMM
# peak already and the hooks add work (two threads on a busy machine: batched faster, to recheck). CUDA: the same code, NOT measured yet (no GPU was
# lent); batched because small forwards leave a GPU idle: measure with --device cuda and revise.
BATCHED_BY_DEFAULT = {"cpu": False, "cuda": True}
MAX_TOKENS = 1 << 14  # token rows of one batched forward: activation memory grows with G·B·T, bounded here
RMS_NORM_FAMILIES = ("llama", "mistral", "qwen2", "qwen3")  # their RMSNorm is ``weight * normalized(x)``
BATCH_FIELDS = ("input_ids", "attention_mask", "target_positions", "labels")  # a Batch's per-example tensors
AFFINE_ATTRS = {"norm": ("weight", "bias"), "linear": ("bias",), "lora": ("lora_A", "lora_B")}


def sequential_block2_losses(ex, probes: Sequence[Probe], batch) -> list[float]:
    """One block-2 forward per probe, in order: the reference every other way must equal."""
    return [ex.forward_block2(act, batch, perturbation) for act, perturbation in probes]


def batched_block2_losses(ex, probes: Sequence[Probe], batch) -> list[float]:
    """The probes' losses from forwards over G·B rows, G as many probes as ``MAX_TOKENS`` allows
    (at least one)."""
    per_forward = max(1, MAX_TOKENS // max(1, batch.input_ids.numel()))
    out: list[float] = []
    for start in range(0, len(probes), per_forward):
        out += _grouped_forward(ex, probes[start : start + per_forward], batch)
    return out


def block2_losses_for(ex, batched: bool) -> Block2Losses:
    """The executor's way of running block-2 probes: batched where asked for and where its
    trainable set allows (:func:`batching_refusal`), else one forward per probe."""
    return batched_block2_losses if batched and batching_refusal(ex) is None else sequential_block2_losses


def sequential_full_losses(ex, perturbations: Sequence[Perturbation], batch) -> list[float]:
    """One whole-model forward per perturbation (FZOO's N probes), in order."""
    return [ex.forward_block2(ex.forward_block1(batch, p), batch, p) for p in perturbations]


def batched_full_losses(ex, perturbations: Sequence[Perturbation], batch) -> list[float]:
    """Whole-model probes as forwards over G·B rows (FZOO's batched forward): the batch tiled G
    times, every block's trainable tensors per group."""
    per_forward = max(1, MAX_TOKENS // max(1, batch.input_ids.numel()))
    out: list[float] = []
    for start in range(0, len(perturbations), per_forward):
        chunk = perturbations[start : start + per_forward]
        tiled = type(batch)(*(_tile(getattr(batch, f), len(chunk), batch.size) for f in BATCH_FIELDS))
        with _grouped_tensors(ex, chunk, blocks=(1, 2)):
            logits = ex._block2_logits(ex._block1(tiled, ()), ())
        out += _group_losses(logits, tiled.labels, len(chunk))
    return out


def full_losses_for(ex, batched: bool) -> Block2Losses:
    """The executor's way of running whole-model probes (as :func:`block2_losses_for`)."""
    return batched_full_losses if batched and batching_refusal(ex, (1, 2)) is None else sequential_full_losses


def default_batched(ex) -> bool:
    """Whether an executor on ``ex.device`` batches its block-2 probes unless told otherwise."""
    return BATCHED_BY_DEFAULT.get(ex.device.type, False)


def batching_refusal(ex, blocks: tuple[int, ...] = (2,)) -> str | None:
    """Why this executor's probes of ``blocks`` cannot be batched (None: they can)."""
    if getattr(ex, "language_modelling", False):
        return "the causal-LM loss is per response token, not per example"
    for name in ex.names:
        if ex.name_block[name] in blocks and _kind_of(ex.model, name) is None:
            return f"trainable tensor {name} is none of a norm's weight or bias, a linear layer's bias, a LoRA factor"
    return None


def _kind_of(model: nn.Module, name: str) -> str | None:
    """How a group's own value of tensor ``name`` enters its module's output (None: not affinely)."""
    owner, _, attr = name.rpartition(".")
    module = model.get_submodule(owner)
    if isinstance(module, LoRALinear):
        return "lora" if attr in AFFINE_ATTRS["lora"] else None
    if _is_affine_norm(module):
        return "norm" if attr in AFFINE_ATTRS["norm"] else None
    if isinstance(module, nn.Linear) and attr == "bias":
        return "linear"
    return None


def _is_affine_norm(module: nn.Module) -> bool:
    """A norm whose output is ``normalized(x) * weight + bias`` (not Gemma's ``1 + weight``)."""
    if isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
        return True
    path = type(module).__module__
    return type(module).__name__.endswith("RMSNorm") and any(f"transformers.models.{f}." in path for f in RMS_NORM_FAMILIES)


def _grouped_forward(ex, probes: Sequence[Probe], batch) -> list[float]:
    """One block-2 forward over G·B rows; row g·B + b is example b under probe g."""
    groups = len(probes)
    first = probes[0][0]
    hidden = torch.cat([act.hidden for act, _ in probes])
    stacked = Hidden(hidden, _tile(first.context, groups, batch.size))
    with _grouped_tensors(ex, [perturbation for _, perturbation in probes]):
        logits = ex._block2_logits(stacked, ())
    return _group_losses(logits, batch.labels.repeat(groups), groups)


def _group_losses(logits: torch.Tensor, labels: torch.Tensor, groups: int) -> list[float]:
    """Each group's mean cross-entropy over its B rows."""
    return F.cross_entropy(logits, labels, reduction="none").view(groups, -1).mean(dim=1).tolist()


def _tile(value, groups: int, rows: int):
    """``value`` with every tensor whose first dimension is the batch repeated ``groups`` times
    (masks, target positions); other tensors (position embeddings [1, T, d]) broadcast as they are."""
    if isinstance(value, torch.Tensor):
        return value.repeat(groups, *([1] * (value.dim() - 1))) if value.dim() and value.shape[0] == rows else value
    if isinstance(value, dict):
        return {k: _tile(v, groups, rows) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_tile(v, groups, rows) for v in value)
    return value


def _group_values(ex, name: str, perturbations: Sequence[Perturbation]) -> torch.Tensor:
    """[G, *shape]: tensor ``name`` as each group's probe perturbs it (made as a sequential probe makes it)."""
    stored = ex._get(name)
    block = ex.name_block[name]
    values = []
    for perturbation in perturbations:
        pairs = [(d.tensor_key(name), s) for d, s in perturbation if d.covers(block)]
        values.append(ex._perturbed_copy(stored, pairs) if pairs else stored)
    return torch.stack(values)


@contextmanager
def _grouped_tensors(ex, perturbations: Sequence[Perturbation], blocks: tuple[int, ...] = (2,)) -> Iterator[None]:
    """The trainable tensors of ``blocks`` neutral, and a hook on each owning module adding every
    group's own contribution to its rows; everything is put back on the way out."""
    by_module: dict[str, dict[str, torch.Tensor]] = {}
    for name in ex.names:
        if ex.name_block[name] in blocks:
            owner, _, attr = name.rpartition(".")
            by_module.setdefault(owner, {})[attr] = _group_values(ex, name, perturbations)
    saved, handles = [], []
    try:
        for owner, values in by_module.items():
            module = ex.model.get_submodule(owner)
            hook, neutral = _hook_for(module, values, len(perturbations))
            for attr, value in neutral.items():
                param = getattr(module, attr)
                saved.append((param, param.data))
                param.data = value
            handles.append(module.register_forward_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()
        for param, data in saved:
            param.data = data


def _hook_for(module: nn.Module, values: dict[str, torch.Tensor], groups: int):
    """(forward hook, neutral values by attribute) for one module with per-group tensors."""
    if isinstance(module, LoRALinear):
        a = values.get("lora_A", module.lora_A.data.expand(groups, *module.lora_A.shape))
        b = values.get("lora_B", module.lora_B.data.expand(groups, *module.lora_B.shape))
        return _lora_hook(a, b, module.scaling), {"lora_B": torch.zeros_like(module.lora_B.data)}
    attrs = AFFINE_ATTRS["norm"] if _is_affine_norm(module) else AFFINE_ATTRS["linear"]
    present = [a for a in attrs if getattr(module, a, None) is not None]
    full = {a: values.get(a, getattr(module, a).data.expand(groups, *getattr(module, a).shape)) for a in present}
    neutral = {a: (torch.ones_like if a == "weight" else torch.zeros_like)(getattr(module, a).data) for a in present}
    return _affine_hook(full.get("weight"), full.get("bias")), neutral


def _affine_hook(weight: torch.Tensor | None, bias: torch.Tensor | None):
    """``out·w_g + b_g`` on each group's rows of a module run with weight 1 and bias 0."""
    def hook(module, args, out):
        width = out.shape[-1]
        y = out.reshape(weight.shape[0] if weight is not None else bias.shape[0], -1, width)
        if weight is not None:
            y = y * weight[:, None, :]
        if bias is not None:
            y = y + bias[:, None, :]
        return y.reshape(out.shape)
    return hook


def _lora_hook(a: torch.Tensor, b: torch.Tensor, scaling: float):
    """``out + (x A_gᵀ) B_gᵀ · s`` on each group's rows of a LoRA layer run with B = 0."""
    def hook(module, args, out):
        x = args[0]
        xg = x.reshape(a.shape[0], -1, x.shape[-1])
        term = torch.bmm(torch.bmm(xg, a.transpose(1, 2)), b.transpose(1, 2)) * scaling
        return out + term.reshape(out.shape)
    return hook
