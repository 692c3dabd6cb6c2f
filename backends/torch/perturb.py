"""Canonical perturbations in PyTorch, equal to the NumPy reference in ``edgezo.perturb``.

torch has no usable uint32 arithmetic (no shifts), so words are computed in int64 and masked to
32 bits after every multiplication: the low 32 bits of an int64 product are the uint32 product.
Rademacher signs are expanded through a 256x8 lookup table indexed by the words' bytes, so the
per-element cost is one gather (the hash runs once per 32 elements). Work is done in chunks of
``CHUNK`` elements so no full-size temporary of a large tensor is ever allocated.

On a GPU (``--device cuda``) Rademacher signs are generated on the device (integer arithmetic:
bit-exact anywhere); Gaussian values are computed on the CPU and moved (see :func:`gaussian`).
"""

from __future__ import annotations

import math
import os

import torch

from edgezo.perturb import BITS_PER_WORD, GAUSSIAN, RADEMACHER, split_key

CHUNK = 1 << 22  # elements per generated chunk (a multiple of 32)
_M32 = 0xFFFFFFFF
_SIGN_TABLES: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}


def _lowbias32(x: torch.Tensor) -> torch.Tensor:
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _M32
    return x ^ (x >> 16)


def words(key: int, start: int, count: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint32 words (held in int64) for counters ``start .. start+count-1``."""
    k0, k1 = split_key(key)
    counters = torch.arange(start, start + count, dtype=torch.int64, device=device) & _M32
    return _lowbias32(_lowbias32(counters ^ k0) ^ k1)


def _sign_table(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Row b holds the 8 signs of byte b, least significant bit first."""
    table = _SIGN_TABLES.get((dtype, device))
    if table is None:
        bits = (torch.arange(256).unsqueeze(1) >> torch.arange(8).unsqueeze(0)) & 1
        table = (1 - 2 * bits).to(dtype=dtype, device=device)
        _SIGN_TABLES[(dtype, device)] = table
    return table


def rademacher(key: int, start: int, count: int, dtype=torch.float32, device="cpu") -> torch.Tensor:
    first_word = start // BITS_PER_WORD
    last_word = (start + count - 1) // BITS_PER_WORD
    w = words(key, first_word, last_word - first_word + 1, device)
    # Little-endian bytes of each word: element 32*w + 8*b + k is bit k of byte b.
    as_bytes = w.to(torch.int32).view(torch.uint8).to(torch.int64)
    signs = _sign_table(dtype, torch.device(device)).index_select(0, as_bytes).reshape(-1)
    offset = start - first_word * BITS_PER_WORD
    return signs[offset : offset + count]


def gaussian(key: int, start: int, count: int, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """Computed on the CPU whatever ``device`` is, then moved there: a GPU's float64 ``log`` and
    ``cos`` may differ from the CPU's in the last bit, which can tip the rounding to float32, so a
    GPU replica gets exactly the CPU's values (the hash words are cheap; the transfer is the cost)."""
    w = words(key, 2 * start, 2 * count).to(torch.float64).reshape(count, 2)
    u1 = (w[:, 0] + 1.0) / 4294967296.0
    u2 = w[:, 1] / 4294967296.0
    return (torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)).to(dtype).to(device)


def generate(key: int, start: int, count: int, distribution: str = RADEMACHER, dtype=torch.float32, device="cpu"):
    if distribution == RADEMACHER:
        return rademacher(key, start, count, dtype, device)
    if distribution == GAUSSIAN:
        return gaussian(key, start, count, dtype, device)
    raise ValueError(f"unknown perturbation distribution {distribution!r}")


def _rademacher_add_rows(rows: torch.Tensor, start_word: int, k0: int, k1: int, scale: torch.Tensor):
    """``rows += scale * z`` in place, for rows of 32 elements starting at word ``start_word``.

    Written so that ``torch.compile`` fuses hash, sign expansion and add into one loop (about the
    cost of a plain add); eager it is correct but slow. ``scale`` is a 0-d tensor of the weights'
    dtype, so the arithmetic is float32 exactly as in the reference (a Python float would be
    folded in as a double and round differently). In place only: inductor dropped writes into a
    separate output view in our tests.
    """
    counters = (torch.arange(rows.shape[0], dtype=torch.int64, device=rows.device) + start_word) & _M32
    w = _lowbias32(_lowbias32(counters ^ k0) ^ k1)
    bits = (w.unsqueeze(1) >> torch.arange(BITS_PER_WORD, dtype=torch.int64, device=rows.device)) & 1
    rows.add_((1 - 2 * bits).to(rows.dtype) * scale)


_compiled_kernel = None


def use_compiled_kernel(enabled: bool = True) -> bool:
    """Switch the fused ``torch.compile`` kernel for Rademacher on or off; returns whether it is on.

    Compilation costs tens of seconds once per process (less with inductor's disk cache), so the
    executor turns it on only for large trainable sets. Set ``EDGEZO_COMPILE=0`` to forbid it.
    """
    global _compiled_kernel
    if not enabled or os.environ.get("EDGEZO_COMPILE", "1") == "0":
        _compiled_kernel = None
        return False
    if _compiled_kernel is None:
        try:
            _compiled_kernel = torch.compile(_rademacher_add_rows, dynamic=True)
        except Exception:  # no compiler toolchain on this device: stay eager
            _compiled_kernel = None
    return _compiled_kernel is not None


def _add_chunk(piece: torch.Tensor, start: int, key: int, scale: float, distribution: str) -> None:
    count = piece.numel()
    # The fused kernel is the CPU's fast path; on a GPU the eager ops (integer hash, table gather,
    # one add of +-scale) are already bit-exact and fast, and inductor's GPU code is left untried.
    if (distribution == RADEMACHER and _compiled_kernel is not None and piece.device.type == "cpu"
            and start % BITS_PER_WORD == 0 and count % BITS_PER_WORD == 0):
        k0, k1 = split_key(key)
        try:
            scale_t = torch.tensor(scale, dtype=piece.dtype, device=piece.device)
            _compiled_kernel(piece.view(-1, BITS_PER_WORD), start // BITS_PER_WORD, k0, k1, scale_t)
            return
        except Exception:  # compilation failed at first call (no C compiler, ...): fall back for good
            use_compiled_kernel(False)
    piece.add_(generate(key, start, count, distribution, piece.dtype, piece.device), alpha=scale)


def add_scaled(flat: torch.Tensor, key: int, scale: float, distribution: str = RADEMACHER) -> None:
    """``flat += scale * z(key)`` in place, chunk by chunk (``flat`` is a contiguous 1-D view)."""
    for start in range(0, flat.numel(), CHUNK):
        _add_chunk(flat[start : start + CHUNK], start, key, scale, distribution)


def perturbed_copy(flat: torch.Tensor, key: int, scale: float, distribution: str = RADEMACHER) -> torch.Tensor:
    """A new tensor ``flat + scale * z(key)``; ``flat`` is untouched (exact restoration for free)."""
    out = flat.clone()
    add_scaled(out, key, scale, distribution)
    return out
