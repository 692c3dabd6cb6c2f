"""llama.cpp block formats Q8_0, Q4_0 and Q4_1 in torch, bit-exact to ``gguf.quants``.

A weight matrix ``[rows, cols]`` is cut along ``cols`` into blocks of ``BLOCK`` = 32 values; each
block keeps its own fp16 scale (and, for Q4_1, an fp16 minimum):

* **Q8_0**: ``d = max|x| / 127``, ``q = roundf(x / d)`` (int8, round half away from zero),
  ``x ~ q * d``: 34 bytes per 32 values (8.5 bits per weight);
* **Q4_0**: ``d = x[argmax|x|] / -8``, ``q = trunc(x / d + 8.5)`` clipped to 0..15,
  ``x ~ (q - 8) * d``: 18 bytes per 32 values;
* **Q4_1**: ``d = (max - min) / 15``, ``q = trunc((x - min) / d + 0.5)`` clipped to 0..15,
  ``x ~ q * d + min``: 20 bytes per 32 values.

The arithmetic (float32 reciprocal, multiply, rounding, fp16 conversion) is done in the same order
as llama.cpp's ``ggml-quants.c`` and gguf-py's NumPy port, so quantizing the same input gives the
same bytes and dequantizing gives the same float32 values (tests check both against
``gguf.quants``). The 4-bit formats keep GGUF's packing: byte ``j`` of a block holds value ``j`` in
its low nibble and value ``j + 16`` in its high nibble, so GGUF blocks are used as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from edgezo.errors import EdgezoError

BLOCK = 32
FORMATS = ("q8_0", "q4_0", "q4_1")
GGML_TYPES = {"q4_0": 2, "q4_1": 3, "q8_0": 8}  # ggml_type ids, as GGUF files store them
BLOCK_BYTES = {"q8_0": 2 + BLOCK, "q4_0": 2 + BLOCK // 2, "q4_1": 4 + BLOCK // 2}
QUANTIZE_CHUNK = 1 << 20  # values quantized at a time: bounds the float32 temporaries


@dataclass
class QuantTensor:
    """A ``[rows, cols]`` matrix in one of ``FORMATS``, as torch tensors.

    ``qs``: Q8_0 int8 ``[rows, cols]``; Q4_0/Q4_1 uint8 ``[rows, cols // 2]`` (GGUF nibble packing).
    ``d``: fp16 scales ``[rows, cols // 32]``; ``m``: fp16 block minima (Q4_1 only).
    """

    qtype: str
    qs: torch.Tensor
    d: torch.Tensor
    m: torch.Tensor | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.d.shape[0]), int(self.d.shape[1]) * BLOCK

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.qs, self.d, self.m) if t is not None)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The storage, by buffer name (``m`` only for Q4_1)."""
        out = {"qs": self.qs, "d": self.d}
        if self.m is not None:
            out["m"] = self.m
        return out

    def rows(self, index: torch.Tensor | slice) -> "QuantTensor":
        """The rows ``index`` (a slice is a view; an index tensor gathers a copy)."""
        pick = (lambda t: t[index]) if isinstance(index, slice) else (lambda t: t.index_select(0, index))
        return QuantTensor(self.qtype, pick(self.qs), pick(self.d), None if self.m is None else pick(self.m))

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize(self, dtype)

    # -- GGUF byte layout ----------------------------------------------------------------------------
    @classmethod
    def from_blocks(cls, qtype: str, blocks: np.ndarray | torch.Tensor, cols: int) -> "QuantTensor":
        """Split GGUF blocks (uint8, ``rows x (cols // 32 * block_bytes)``) into a ``QuantTensor``.

        The result owns its memory (a copy), so the source (e.g. a memory-mapped file) can go.
        """
        check_format(qtype)
        raw = torch.as_tensor(np.ascontiguousarray(blocks)) if isinstance(blocks, np.ndarray) else blocks
        if cols % BLOCK:
            raise EdgezoError(f"a {qtype} tensor needs a row length that is a multiple of {BLOCK}, got {cols}")
        nb, size = cols // BLOCK, BLOCK_BYTES[qtype]
        if raw.dtype != torch.uint8 or raw.numel() % (nb * size):
            raise EdgezoError(f"{qtype} data of {raw.numel()} bytes ({raw.dtype}) does not hold whole rows of {cols} values")
        blk = raw.reshape(-1, nb, size)
        rows = blk.shape[0]
        d = blk[:, :, 0:2].contiguous().view(torch.float16).reshape(rows, nb)
        if qtype == "q4_1":
            m = blk[:, :, 2:4].contiguous().view(torch.float16).reshape(rows, nb)
            qs = blk[:, :, 4:].reshape(rows, nb * BLOCK // 2).clone()
            return cls(qtype, qs, d, m)
        if qtype == "q4_0":
            return cls(qtype, blk[:, :, 2:].reshape(rows, nb * BLOCK // 2).clone(), d)
        return cls(qtype, blk[:, :, 2:].contiguous().view(torch.int8).reshape(rows, cols), d)


def check_format(qtype: str) -> None:
    if qtype not in FORMATS:
        raise EdgezoError(f"unknown quantization format {qtype!r}; use one of {', '.join(FORMATS)}")


def _roundf(x: torch.Tensor) -> torch.Tensor:
    """Round half away from zero, with the same float32 operations as gguf-py's ``np_roundf``."""
    a = x.abs()
    floored = torch.floor(a)
    return torch.sign(x) * (floored + torch.floor(2 * (a - floored)))


def _inverse(d: torch.Tensor) -> torch.Tensor:
    return torch.where(d == 0, torch.zeros_like(d), 1.0 / d)


def _pack_nibbles(q: torch.Tensor) -> torch.Tensor:
    """[n, 32] values 0..15 -> [n, 16] bytes: value j in the low nibble, value j+16 in the high."""
    return q[:, : BLOCK // 2] | (q[:, BLOCK // 2 :] << 4)


def _quantize_blocks(blocks: torch.Tensor, qtype: str):
    """[n, 32] float32 blocks -> (qs [n, 32] int8 or [n, 16] uint8, d [n], m [n] or None)."""
    if qtype == "q8_0":
        d = blocks.abs().amax(dim=1, keepdim=True) / 127
        return _roundf(blocks * _inverse(d)).to(torch.int8), d.to(torch.float16), None
    if qtype == "q4_0":
        imax = blocks.abs().argmax(dim=1, keepdim=True)  # first of equal maxima, as NumPy
        d = torch.gather(blocks, 1, imax) / -8
        q = torch.trunc(blocks * _inverse(d) + 8.5).clamp(0, 15).to(torch.uint8)
        return _pack_nibbles(q), d.to(torch.float16), None
    low = blocks.amin(dim=1, keepdim=True)
    d = (blocks.amax(dim=1, keepdim=True) - low) / 15
    q = torch.trunc((blocks - low) * _inverse(d) + 0.5).clamp(0, 15).to(torch.uint8)
    return _pack_nibbles(q), d.to(torch.float16), low.to(torch.float16)


def quantize_rows(read, rows: int, cols: int, qtype: str = "q8_0") -> QuantTensor:
    """Quantize a ``[rows, cols]`` matrix given by ``read(start, stop)`` (its rows ``start:stop``
    as a float tensor), a few rows at a time, so the float matrix never needs to exist whole."""
    check_format(qtype)
    if cols % BLOCK:
        raise EdgezoError(f"can only quantize a matrix whose rows are a multiple of {BLOCK} long, got {rows}x{cols}")
    nb = cols // BLOCK
    qs = torch.empty(rows, cols if qtype == "q8_0" else cols // 2, dtype=torch.int8 if qtype == "q8_0" else torch.uint8)
    d = torch.empty(rows, nb, dtype=torch.float16)
    m = torch.empty(rows, nb, dtype=torch.float16) if qtype == "q4_1" else None
    step = max(1, QUANTIZE_CHUNK // cols)
    for start in range(0, rows, step):
        stop = min(start + step, rows)
        blocks = read(start, stop).detach().to(torch.float32).reshape((stop - start) * nb, BLOCK)
        q, scale, low = _quantize_blocks(blocks, qtype)
        qs[start:stop] = q.reshape(stop - start, -1)
        d[start:stop] = scale.reshape(stop - start, nb)
        if m is not None:
            m[start:stop] = low.reshape(stop - start, nb)
    return QuantTensor(qtype, qs, d, m)


def quantize(x: torch.Tensor, qtype: str = "q8_0") -> QuantTensor:
    """Quantize a ``[rows, cols]`` float tensor (cols a multiple of 32) as llama.cpp does."""
    check_format(qtype)
    if x.dim() != 2 or x.shape[1] % BLOCK:
        raise EdgezoError(f"can only quantize a matrix whose rows are a multiple of {BLOCK} long, got shape {tuple(x.shape)}")
    return quantize_rows(lambda start, stop: x[start:stop], x.shape[0], x.shape[1], qtype)


def _unpack_nibbles(qs: torch.Tensor, rows: int, nb: int) -> torch.Tensor:
    """[rows, nb*16] bytes -> [rows, nb, 32] uint8 values 0..15."""
    packed = qs.reshape(rows, nb, BLOCK // 2)
    return torch.cat((packed & 0x0F, packed >> 4), dim=2)


def dequantize(qt: QuantTensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The ``[rows, cols]`` values; in float32 exactly ``gguf.quants.dequantize``'s."""
    rows, cols = qt.shape
    nb = cols // BLOCK
    d = qt.d.to(torch.float32).unsqueeze(2)
    if qt.qtype == "q8_0":
        w = qt.qs.reshape(rows, nb, BLOCK).to(torch.float32) * d
    elif qt.qtype == "q4_0":
        w = d * (_unpack_nibbles(qt.qs, rows, nb).to(torch.int8) - 8).to(torch.float32)
    elif qt.qtype == "q4_1":
        w = d * _unpack_nibbles(qt.qs, rows, nb).to(torch.float32) + qt.m.to(torch.float32).unsqueeze(2)
    else:
        check_format(qt.qtype)
    w = w.reshape(rows, cols)
    return w if dtype == torch.float32 else w.to(dtype)
