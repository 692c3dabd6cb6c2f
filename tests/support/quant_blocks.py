"""The GGUF byte layout of a ``QuantTensor``, to compare edgezo's quantization with gguf-py's."""

from __future__ import annotations

import numpy as np
import torch

from edgezo.backends.int8.quant import BLOCK, QuantTensor


def to_blocks(qt: QuantTensor) -> np.ndarray:
    """The GGUF/gguf-py byte layout: uint8 ``[rows, cols // 32 * block_bytes]`` (the inverse of
    ``QuantTensor.from_blocks``)."""
    rows, cols = qt.shape
    nb = cols // BLOCK
    parts = [qt.d.reshape(rows, nb, 1).view(torch.uint8)]
    if qt.m is not None:
        parts.append(qt.m.reshape(rows, nb, 1).view(torch.uint8))
    parts.append(qt.qs.reshape(rows, nb, -1).view(torch.uint8))
    return torch.cat(parts, dim=2).reshape(rows, -1).numpy()
