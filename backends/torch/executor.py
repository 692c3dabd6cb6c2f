"""The torch executor: a Hugging Face model split at a layer index into two blocks.

Perturbed forwards never modify the stored weights: while a unit (embeddings, one layer, the head)
runs, each of its trainable tensors is swapped for a perturbed copy made by the canonical
generator, and swapped back when the unit is done. So at most one unit's trainable tensors are
copied at a time (inference-level memory), restoration is exact, and replicas that apply the same
updates stay bit-identical. Updates are added in place, chunk by chunk, in sorted direction order.
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from edgezo.backends.torch import perturb as tz
from edgezo.backends.torch.adapters import Hidden, make_adapter
from edgezo.backends.tokenize import tokenize_right_padded, verbalizer_token_ids
from edgezo.errors import EdgezoError
from edgezo.executor import Perturbation
from edgezo.perturb import DISTRIBUTIONS, RADEMACHER

COMPILE_THRESHOLD = 1 << 21  # trainable elements above which the fused compiled kernel pays off


@dataclass
class TorchBatch:
    input_ids: torch.Tensor  # [B, T], right-padded
    attention_mask: torch.Tensor  # [B, T]
    target_positions: torch.Tensor  # [B]: last real token (causal) or the mask token (MLM)
    labels: torch.Tensor  # [B]: index into the verbalizers

    @property
    def size(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class Activation:
    """Block 1's output, kept so block 2 can be probed many times on it (SPZO's saving)."""

    hidden: Hidden


class TorchExecutor:
    backend = "torch"

    def __init__(
        self,
        model,
        tokenizer,
        split: int,
        trainable: Sequence[str],
        verbalizers: Sequence[str],
        max_length: int = 128,
        distribution: str = RADEMACHER,
    ):
        if distribution not in DISTRIBUTIONS:
            raise EdgezoError(f"unknown perturbation distribution {distribution!r}; use one of {', '.join(DISTRIBUTIONS)}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.adapter = make_adapter(model)
        self.kind = self.adapter.kind
        self.distribution = distribution
        self.max_length = max_length
        n = self.adapter.num_layers
        if not 0 < split < n:
            raise EdgezoError(f"split index {split} is outside the model: it has {n} layers, so use --split 1..{n - 1}")
        self.split = split
        self.verbalizer_ids = torch.tensor(verbalizer_token_ids(tokenizer, verbalizers))
        self.params = dict(model.named_parameters())
        wanted = set(trainable)
        self.names = [n for n in self.params if n in wanted]
        unknown = wanted - set(self.params)
        if unknown:
            raise EdgezoError(f"trainable parameters not in the model: {sorted(unknown)[:5]}")
        for name, p in self.params.items():
            p.requires_grad_(False)
        self.unit_tensors: dict[str, list[str]] = {}
        self.unit_block: dict[str, int] = {}
        self.name_block: dict[str, int] = {}
        for unit in self.adapter.unit_names():
            block = 1 if unit == "embed" or (unit.startswith("layers.") and int(unit.split(".")[1]) < split) else 2
            prefixes = self.adapter.unit_param_prefixes(unit)
            owned = [nm for nm in self.names if nm.startswith(prefixes)]
            self.unit_tensors[unit] = owned
            self.unit_block[unit] = block
            for nm in owned:
                self.name_block[nm] = block
        self._unit_numel = {unit: self._weight_numel(self.adapter.unit_param_prefixes(unit)) for unit in self.adapter.unit_names()}
        if self.trainable_numel(1) + self.trainable_numel(2) >= COMPILE_THRESHOLD:
            tz.use_compiled_kernel(True)

    @property
    def num_layers(self) -> int:
        return self.adapter.num_layers

    def _weight_numel(self, prefixes: tuple[str, ...]) -> int:
        """Scalars of the weights under ``prefixes`` (what ``forward_flops`` counts): the model's
        parameters; a backend holding weights as buffers (int8's quantized blocks) adds those."""
        return sum(p.numel() for nm, p in self.params.items() if nm.startswith(prefixes))

    # -- tokenisation -------------------------------------------------------------------------
    def encode(self, prompts: Sequence[str], labels: Sequence[int]) -> TorchBatch:
        tok = self.tokenizer
        enc = tokenize_right_padded(tok, prompts, self.max_length, "pt")
        ids, mask = enc["input_ids"], enc["attention_mask"]
        if self.kind == "mlm":
            is_mask = ids == tok.mask_token_id
            if not bool(is_mask.any(dim=1).all()):
                raise EdgezoError("a prompt lost its mask token to truncation: raise --max-length")
            target = is_mask.int().argmax(dim=1)
        else:
            target = mask.sum(dim=1) - 1
        return TorchBatch(ids, mask, target, torch.tensor(list(labels), dtype=torch.long))

    # -- forwards -----------------------------------------------------------------------------
    def trainable_numel(self, block: int) -> int:
        return sum(self.params[n].numel() for n in self.names if self.name_block[n] == block)

    @contextmanager
    def _perturbed(self, unit: str, perturbation: Perturbation):
        names = self.unit_tensors[unit]
        dirs = [(d, s) for d, s in perturbation if d.covers(self.unit_block[unit])]
        if not names or not dirs:
            yield
            return
        saved = {}
        try:
            for name in names:
                p = self.params[name]
                flat = p.data.reshape(-1)
                new = None
                for d, scale in dirs:
                    key = d.tensor_key(name)
                    if new is None:
                        new = tz.perturbed_copy(flat, key, scale, self.distribution)
                    else:
                        tz.add_scaled(new, key, scale, self.distribution)
                saved[name] = p.data
                p.data = new.view_as(p)
            yield
        finally:
            for name, data in saved.items():
                self.params[name].data = data

    def _run_unit(self, unit: str, perturbation: Perturbation, fn, *args):
        with self._perturbed(unit, perturbation):
            return fn(*args)

    def _block1(self, batch: TorchBatch, perturbation: Perturbation) -> Hidden:
        a = self.adapter
        h = self._run_unit("embed", perturbation, a.embed, batch.input_ids, batch.attention_mask, batch.target_positions)
        for i in range(self.split):
            h = self._run_unit(f"layers.{i}", perturbation, a.layer, i, h)
        return h

    def _block2_logits(self, h: Hidden, perturbation: Perturbation) -> torch.Tensor:
        a = self.adapter
        for i in range(self.split, a.num_layers):
            h = self._run_unit(f"layers.{i}", perturbation, a.layer, i, h)
        logits = self._run_unit("head", perturbation, a.head, h)
        return logits[:, self.verbalizer_ids].float()

    @torch.no_grad()
    def forward_block1(self, batch: TorchBatch, perturbation: Perturbation = ()) -> Activation:
        return Activation(self._block1(batch, perturbation))

    @torch.no_grad()
    def forward_block2(self, activation: Activation, batch: TorchBatch, perturbation: Perturbation = ()) -> float:
        logits = self._block2_logits(activation.hidden, perturbation)
        return float(F.cross_entropy(logits, batch.labels))

    @torch.no_grad()
    def predict(self, batch: TorchBatch) -> list[int]:
        logits = self._block2_logits(self._block1(batch, ()), ())
        return logits.argmax(dim=1).tolist()

    def forward_flops(self, batch: TorchBatch) -> tuple[float, float]:
        """Multiply-adds x 2 over the real tokens: weights of each unit, plus attention scores.

        Embedding lookups cost nothing; the head runs on one position per sequence.
        """
        lengths = batch.attention_mask.sum(dim=1).double()
        tokens = float(lengths.sum())
        attn = 4.0 * float((lengths**2).sum()) * self.model.config.hidden_size
        layer_cost = [2.0 * self._unit_numel[f"layers.{i}"] * tokens + attn for i in range(self.adapter.num_layers)]
        head = 2.0 * self._unit_numel["head"] * batch.size
        if head == 0 or self._head_is_tied():
            head += 2.0 * self.model.config.hidden_size * self.model.config.vocab_size * batch.size
        return sum(layer_cost[: self.split]), sum(layer_cost[self.split :]) + head

    def _head_is_tied(self) -> bool:
        out = self.model.get_output_embeddings()
        return out is not None and out.weight is self.model.get_input_embeddings().weight

    # -- updates and state --------------------------------------------------------------------
    @torch.no_grad()
    def apply_update(self, update: Perturbation) -> None:
        ordered = sorted(update)
        for name in self.names:
            block = self.name_block[name]
            flat = self.params[name].data.view(-1)
            for d, coeff in ordered:
                if d.covers(block):
                    tz.add_scaled(flat, d.tensor_key(name), coeff, self.distribution)

    def snapshot(self) -> dict[str, torch.Tensor]:
        return {n: self.params[n].detach().clone() for n in self.names}

    @torch.no_grad()
    def restore(self, snapshot: dict[str, torch.Tensor]) -> None:
        for n in self.names:
            self.params[n].data.copy_(snapshot[n])

    def trainable_arrays(self) -> dict[str, np.ndarray]:
        """The trainable parameters as float32 NumPy arrays (checkpoints)."""
        return {n: self.params[n].detach().float().cpu().numpy().copy() for n in self.names}

    @torch.no_grad()
    def load_trainable(self, arrays: dict[str, np.ndarray]) -> None:
        """Overwrite the trainable parameters from a checkpoint; names and shapes must match."""
        missing = sorted(set(self.names) - set(arrays))
        if missing:
            raise EdgezoError(f"checkpoint lacks trainable tensors {missing[:3]}{'...' if len(missing) > 3 else ''}: it is for another trainable set")
        for n in self.names:
            p = self.params[n]
            if tuple(arrays[n].shape) != tuple(p.shape):
                raise EdgezoError(f"checkpoint tensor {n} has shape {tuple(arrays[n].shape)}, the model {tuple(p.shape)}")
            p.data.copy_(torch.from_numpy(np.ascontiguousarray(arrays[n])).to(p.dtype))

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for n in self.names:
            h.update(n.encode())
            h.update(self.params[n].detach().contiguous().numpy().tobytes())
        return h.hexdigest()

    def trainable_vector(self) -> np.ndarray:
        return np.concatenate([self.params[n].detach().reshape(-1).numpy() for n in self.names])

    # -- first-order reference (FedAvg with backpropagation) ----------------------------------
    def loss_and_grad(self, batch: TorchBatch) -> tuple[float, dict[str, torch.Tensor]]:
        params = [self.params[n] for n in self.names]
        for p in params:
            p.requires_grad_(True)
        try:
            with torch.enable_grad():
                logits = self._block2_logits(self._block1(batch, ()), ())
                loss = F.cross_entropy(logits, batch.labels)
                grads = torch.autograd.grad(loss, params)
        finally:
            for p in params:
                p.requires_grad_(False)
        return float(loss.detach()), dict(zip(self.names, grads))

    @torch.no_grad()
    def add_to_trainable(self, deltas: dict[str, torch.Tensor], scale: float = 1.0) -> None:
        for n, delta in deltas.items():
            self.params[n].data.add_(delta, alpha=scale)
