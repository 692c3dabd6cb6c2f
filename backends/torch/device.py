"""Where the torch backend runs: ``--device auto|cpu|cuda``.

``auto`` (the default) takes the GPU when torch can use one and the CPU otherwise; ``cuda``
without a usable GPU is one line saying why, not a stack trace from the first tensor moved.
Only the torch backend has a device to choose: int8's kernels run on the CPU, and MLX picks its
own device (the GPU of Apple silicon through unified memory), so ``choice.check_device`` refuses
an explicit ``--device`` they cannot honour. The choice never changes what is computed on the
CPU: on the CPU every tensor stays where it was before this option existed.
"""

from __future__ import annotations

import itertools

import torch

from edgezo.backends.choice import DEVICES, parse_device  # noqa: F401 (DEVICES: the choices, re-exported)
from edgezo.errors import EdgezoError


def cuda_missing_reason() -> str:
    """Why torch cannot use a GPU here, in a few words."""
    if torch.version.cuda is None:
        return f"this torch ({torch.__version__}) is built without CUDA: install a CUDA build of torch from pytorch.org"
    return f"torch {torch.__version__} (CUDA {torch.version.cuda}) finds no usable GPU (driver missing, or CUDA_VISIBLE_DEVICES hides it)"


def resolve_device(requested: str | None) -> torch.device:
    """The torch device of ``--device``: ``auto`` is the GPU when one is usable, else the CPU."""
    text = parse_device(requested)
    if text == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if text == "cuda":
        raise EdgezoError(f"--device cuda: {cuda_missing_reason()}; or run on the CPU with --device cpu (or auto)")
    return torch.device("cpu")


def model_device(model) -> torch.device:
    """The device of a model's first parameter or buffer (the CPU for a model without any)."""
    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    return torch.device("cpu") if first is None else first.device


def describe(device: torch.device | str) -> str:
    """``cpu``, or ``cuda:0 (NVIDIA H200)``: what the summary and the log record."""
    device = torch.device(device)
    if device.type != "cuda":
        return device.type
    index = device.index if device.index is not None else torch.cuda.current_device()
    return f"cuda:{index} ({torch.cuda.get_device_name(index)})"


def peak_memory_mib(device: torch.device | str) -> float | None:
    """The most GPU memory torch held at once on ``device`` (MiB), or None on the CPU, where the
    process's peak RSS is the figure to read instead."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
