"""Modules holding quantized weights as buffers and dequantizing them in ``forward``.

``QuantLinear`` replaces ``nn.Linear``: its weight lives only as quantized blocks (``qs``, ``d``,
``m`` buffers), dequantized to float32 for the length of one call, so at most one layer's float
weights exist at a time; the bias stays a float32 ``nn.Parameter`` (BitFit can train it).
``QuantEmbedding`` dequantizes only the rows its input ids gather. A tied LM head is a
``QuantLinear`` over the embedding's own buffers. ``QuantLoRALinear`` adds float32 LoRA factors
to a ``QuantLinear`` with the same names and formula as ``edgezo.backends.hf.lora.LoRALinear``.

Kernel: the whole layer is dequantized, then one ``F.linear`` (benchmarks/int8_kernels.py on the
development machine's CPU: AMD EPYC, 2 cores, AVX2/FMA, no AVX-512/VNNI; ms per call, median of 15,
at 272 tokens / 1 token; 1 thread, as a concurrent job held both cores and two-thread timings were
then scheduler waits in multiples of 16 ms):

    shape      fp32 weight  a:dequant Q8_0  a:dequant Q4_1  b:row chunks  b:col chunks  c:_int_mm  d:bf16
    576x576    1.93/0.036   2.03/0.137      4.21/0.306      2.62/0.204    2.20/0.244    58.7/6.9   18.3/0.23
    1536x576   5.10/0.089   5.36/0.334      5.88/0.845      6.75/0.510    6.06/0.892    158/18.4   49.1/0.57
    576x1536   5.13/0.078   5.38/0.328      5.95/0.657      7.63/0.481    5.77/0.620    155/18.2   50.7/0.57

Whole-layer dequantization costs 5% (Q8_0) to 15% (Q4_1) over a float32 weight at batch size; chunking
(rows or columns) only adds overhead at these sizes; torch's int8 GEMM (``_int_mm``, even with one
scale per row, i.e. not Q8_0) is 30x slower and bfloat16 10x slower on this CPU, as neither has
hardware support here. The one matrix large enough for chunking to pay is the tied LM head
(49152x576: 169 ms whole, 31 ms in row chunks); the executor avoids it altogether by computing only
the verbalizer rows (``select_rows``, 0.03 ms), and chunks when the full vocabulary is asked for.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from edgezo.backends.hf.lora import LoRAModule, linear_lora_wrappers
from edgezo.backends.int8.quant import QuantTensor, dequantize

CHUNK_ABOVE = 1 << 21  # weights above which a full-width forward dequantizes in row chunks
CHUNK = 1 << 20  # weights dequantized per chunk then (4 MiB of float32)


class _QuantWeight(nn.Module):
    """Registers a ``QuantTensor``'s storage as buffers ``qs``, ``d`` (and ``m``)."""

    qtype: str

    def _set_quant(self, qt: QuantTensor) -> None:
        self.qtype = qt.qtype
        self.register_buffer("qs", qt.qs)
        self.register_buffer("d", qt.d)
        self.register_buffer("m", qt.m)  # None for Q8_0 / Q4_0

    @property
    def quant(self) -> QuantTensor:
        return QuantTensor(self.qtype, self.qs, self.d, self.m)

    def weight_numel(self) -> int:
        rows, cols = self.quant.shape
        return rows * cols


class QuantLinear(_QuantWeight):
    """``y = x W^T + b`` with ``W`` stored quantized; ``bias`` a float32 parameter or None."""

    def __init__(self, qt: QuantTensor, bias: nn.Parameter | None = None):
        super().__init__()
        self._set_quant(qt)
        self.out_features, self.in_features = qt.shape
        self.bias = bias
        self.rows: torch.Tensor | None = None  # output rows to compute (select_rows), None: all

    @contextlib.contextmanager
    def select_rows(self, rows: torch.Tensor):
        """Within the block, ``forward`` computes only output features ``rows`` (in that order)."""
        self.rows = rows
        try:
            yield
        finally:
            self.rows = None

    def _bias(self, rows: torch.Tensor | slice | None):
        if self.bias is None or rows is None:
            return self.bias
        return self.bias[rows]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qt = self.quant
        if self.rows is not None:
            return F.linear(x, dequantize(qt.rows(self.rows), x.dtype), self._bias(self.rows))
        if self.out_features * self.in_features <= CHUNK_ABOVE:
            return F.linear(x, dequantize(qt, x.dtype), self.bias)
        step = max(1, CHUNK // self.in_features)
        parts = []
        for start in range(0, self.out_features, step):
            rows = slice(start, min(start + step, self.out_features))
            parts.append(F.linear(x, dequantize(qt.rows(rows), x.dtype), self._bias(rows)))
        return torch.cat(parts, dim=-1)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, {self.qtype}, bias={self.bias is not None}"


class QuantLoRALinear(QuantLinear, LoRAModule):
    """A ``QuantLinear`` plus ``(x A^T B^T) * alpha/r`` with float32 ``lora_A``/``lora_B``."""

    def __init__(self, base: QuantLinear, rank: int, alpha: float):
        super().__init__(base.quant, base.bias)
        self._add_factors(rank, alpha, self.in_features, self.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lora_b = self.lora_B if self.rows is None else self.lora_B[self.rows]
        return super().forward(x) + self.lora_term(x, lora_b)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, r={self.rank}, alpha={self.alpha:g}"


class QuantEmbedding(_QuantWeight):
    """A token embedding stored quantized: ``forward`` dequantizes only the looked-up rows."""

    def __init__(self, qt: QuantTensor, padding_idx: int | None = None):
        super().__init__()
        self._set_quant(qt)
        self.num_embeddings, self.embedding_dim = qt.shape
        self.padding_idx = padding_idx

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        flat = input_ids.reshape(-1)
        rows = dequantize(self.quant.rows(flat))
        return rows.reshape(*input_ids.shape, self.embedding_dim)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, {self.qtype}"


def quant_modules(model: nn.Module):
    """``(name, module)`` of every quantized module, in ``named_modules`` order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _QuantWeight)]


def quant_lora_wrappers():
    """LoRA on the quantized model: a ``QuantLinear`` becomes a ``QuantLoRALinear``, a linear
    layer kept in float32 a plain ``LoRALinear`` (``edgezo.backends.hf.lora.add_lora``)."""
    return {QuantLinear: QuantLoRALinear, **linear_lora_wrappers()}
