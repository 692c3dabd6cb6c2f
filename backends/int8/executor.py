"""The int8 executor: the torch executor over a model whose frozen weights are quantized.

Everything the torch executor does (unit-by-unit split forwards, perturbations swapped into the
trainable float32 parameters of one unit at a time, in-place updates in sorted order, snapshots,
checkpoints, fingerprints) applies unchanged, because the trainable tensors are ordinary float32
parameters with the same names as on the torch backend; the quantized weights are buffers the
generator never touches. Two things differ:

* ``forward_flops`` counts the quantized weights (buffers, not parameters) as weights too, so the
  FLOPs of a step equal the torch executor's on the same model;
* a quantized LM head computes only the verbalizer rows (the loss and predictions need nothing
  else), instead of dequantizing the whole vocabulary matrix on every block-2 forward.

SmolLM2-135M from its GGUF: 92 MiB of Q4_1/Q8_0 blocks instead of 513 MiB of float32 weights; one
SPZO step (P1=1, P2=4, batch 16, norm trainable) peaks at 553 MiB of process RSS against 976 MiB
on the torch executor, in the same time (5.4 s against 5.1 s on one core of the development
machine; ``benchmarks/int8_kernels.py --step``). ``memory`` holds the figures of a built executor.
"""

from __future__ import annotations

import torch

from edgezo.backends.hf.arch.base import Hidden
from edgezo.backends.int8.model import weight_memory
from edgezo.backends.int8.modules import QuantLinear, quant_modules
from edgezo.backends.torch.executor import TorchExecutor
from edgezo.executor import Perturbation


class Int8Executor(TorchExecutor):
    backend = "int8"

    def __init__(self, model, *args, **kwargs):
        """The torch executor's arguments, ``model`` a quantized model (``model.build_quantized_model``)."""
        # Logical size of each quantized matrix, under the first module that holds it (a tied head
        # shares the embedding's blocks, as named_parameters lists a tied weight once).
        self._quant_numel: dict[str, int] = {}
        seen: set[int] = set()
        for name, module in quant_modules(model):
            if id(module.qs) not in seen:
                seen.add(id(module.qs))
                self._quant_numel[f"{name}.weight"] = module.weight_numel()
        super().__init__(model, *args, **kwargs)
        head = model.get_output_embeddings()
        self._quant_head = head if isinstance(head, QuantLinear) else None
        self.memory = weight_memory(model)

    def _weight_numel(self) -> dict[str, int]:
        return {**self._parameter_numel(), **self._quant_numel}

    def head_is_tied(self) -> bool:
        out, emb = self.model.get_output_embeddings(), self.model.get_input_embeddings()
        if isinstance(out, QuantLinear):
            return getattr(emb, "qs", None) is out.qs
        return super().head_is_tied()

    def _verbalizer_logits(self, h: Hidden, perturbation: Perturbation) -> torch.Tensor:
        if self._quant_head is None:
            return super()._verbalizer_logits(h, perturbation)
        with self._quant_head.select_rows(self.verbalizer_ids):
            logits = self._run_unit("head", perturbation, self._head, h)
        return logits.float()
