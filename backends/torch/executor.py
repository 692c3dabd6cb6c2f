"""The torch executor: a Hugging Face transformers model split at a layer index into two blocks.

``SplitExecutor`` (``edgezo.backends.hf.split_executor``) holds the rules; this module holds the
torch arrays and kernels. A perturbed forward swaps each trainable parameter's ``data`` of the
running unit for a perturbed copy made by the canonical generator (``edgezo.backends.torch.perturb``)
and swaps it back when the unit is done; updates are added in place, chunk by chunk. The units
themselves run through the architecture's adapter (``edgezo.backends.hf.arch``).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from edgezo.backends.hf.arch import make_adapter
from edgezo.backends.hf.arch.base import Hidden
from edgezo.backends.hf.split_executor import Batch, SplitExecutor
from edgezo.backends.hf.tokenize import Encoded
from edgezo.backends.torch import perturb as tz
from edgezo.backends.torch.batched_probes import block2_losses_for, default_batched, full_losses_for
from edgezo.backends.torch.device import model_device

COMPILE_THRESHOLD = 1 << 21  # trainable elements above which the fused compiled kernel pays off


class TorchExecutor(SplitExecutor):
    backend = "torch"

    def __init__(self, model, *args, batched_probes: bool | None = None, **kwargs):
        """``SplitExecutor``'s arguments, ``model`` a transformers model; ``batched_probes``: run
        a step's probes as one forward over their rows (None: the device type's default)."""
        self.adapter = make_adapter(model)
        self.layout, self.kind, self.num_layers = self.adapter.layout, self.adapter.kind, self.adapter.num_layers
        self.hidden_size = model.config.hidden_size
        self.vocab_size = model.config.vocab_size
        self.params = dict(model.named_parameters())
        for p in self.params.values():
            p.requires_grad_(False)
        self.device = model_device(model)  # batches and checkpoints are moved here (the model is already)
        super().__init__(model.eval(), *args, **kwargs)
        if self.trainable_numel(1) + self.trainable_numel(2) >= COMPILE_THRESHOLD:
            tz.use_compiled_kernel(True)
        batched = default_batched(self) if batched_probes is None else batched_probes
        self.block2_losses, self.full_losses = block2_losses_for(self, batched), full_losses_for(self, batched)

    # Autograd stays off in the zero-order paths (the first-order ones below turn it on).
    forward_block1 = torch.no_grad()(SplitExecutor.forward_block1)
    forward_block2 = torch.no_grad()(SplitExecutor.forward_block2)
    predict = torch.no_grad()(SplitExecutor.predict)
    label_logits = torch.no_grad()(SplitExecutor.label_logits)
    apply_update = torch.no_grad()(SplitExecutor.apply_update)

    @torch.no_grad()
    def forward_block2_many(self, probes, batch) -> list[float]:
        """Block 2's loss for each (activation, perturbation) probe (``batched_probes``)."""
        return self.block2_losses(self, probes, batch)

    @torch.no_grad()
    def forward_full_many(self, perturbations, batch) -> list[float]:
        """The whole model's loss under each perturbation (``batched_probes``: FZOO's N probes)."""
        return self.full_losses(self, perturbations, batch)

    # -- the hooks of SplitExecutor -------------------------------------------------------------
    def head_is_tied(self) -> bool:
        out = self.model.get_output_embeddings()
        return out is not None and out.weight is self.model.get_input_embeddings().weight

    def _parameter_numel(self) -> dict[str, int]:
        return {n: p.numel() for n, p in self.params.items()}

    def _index_array(self, ids: list[int]) -> torch.Tensor:
        return torch.tensor(ids, device=self.device)

    def _batch(self, encoded: Encoded, labels: Sequence[int]) -> Batch:
        return Batch(
            torch.from_numpy(encoded.input_ids).to(self.device),
            torch.from_numpy(encoded.attention_mask).to(self.device),
            torch.from_numpy(encoded.target_positions).to(self.device),
            torch.tensor(list(labels), dtype=torch.long, device=self.device),
        )

    def _token_lengths(self, batch: Batch) -> np.ndarray:
        return batch.attention_mask.sum(dim=1).cpu().numpy()

    def _embed(self, batch: Batch) -> Hidden:
        return self.adapter.embed(batch.input_ids, batch.attention_mask, batch.target_positions)

    def _layer(self, index: int, h: Hidden) -> Hidden:
        return self.adapter.layer(index, h)

    def _head(self, h: Hidden) -> torch.Tensor:
        return self.adapter.head(h)

    def _verbalizer_columns(self, logits: torch.Tensor) -> torch.Tensor:
        return logits[:, self.verbalizer_ids].float()

    def _mean_cross_entropy(self, logits: torch.Tensor, labels: torch.Tensor) -> float:
        return float(F.cross_entropy(logits, labels))

    def _argmax(self, logits: torch.Tensor) -> list[int]:
        return logits.argmax(dim=1).tolist()

    def _numpy(self, logits: torch.Tensor) -> np.ndarray:
        return logits.detach().float().cpu().numpy()

    def _get(self, name: str) -> torch.Tensor:
        return self.params[name].data

    def _put(self, name: str, value: torch.Tensor) -> None:
        self.params[name].data = value

    def _perturbed_copy(self, value: torch.Tensor, pairs: list[tuple[int, float]]) -> torch.Tensor:
        (key, scale), rest = pairs[0], pairs[1:]
        new = tz.perturbed_copy(value.reshape(-1), key, scale, self.distribution)
        for key, scale in rest:
            tz.add_scaled(new, key, scale, self.distribution)
        return new.view_as(value)

    def _add_in_order(self, name: str, pairs: list[tuple[int, float]]) -> None:
        flat = self.params[name].data.view(-1)
        for key, coeff in pairs:
            tz.add_scaled(flat, key, coeff, self.distribution)

    def _copy(self, name: str) -> torch.Tensor:
        return self.params[name].detach().clone()

    def _write(self, name: str, value: torch.Tensor) -> None:
        self.params[name].data.copy_(value)

    def _from_numpy(self, name: str, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(array).to(dtype=self.params[name].dtype, device=self.device)

    def _shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.params[name].shape)

    def _float32(self, name: str) -> np.ndarray:
        return self.params[name].detach().float().cpu().numpy()

    # -- first-order reference (FedAvg with backpropagation: edgezo.executor.FirstOrderExecutor) --
    def loss_and_grad(self, batch: Batch) -> tuple[float, dict[str, torch.Tensor]]:
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
