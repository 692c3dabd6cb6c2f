"""Which executor a device runs: torch (fp32), mlx (Apple MLX) or int8 (llama.cpp-style blocks).

``--backend auto`` takes the first backend, in this device's order of preference, that is
installed and whose estimated peak memory fits the device's budget:

* Apple silicon: mlx, torch, int8 (MLX runs on the GPU through unified memory there);
* elsewhere: torch, int8. MLX also runs on Linux CPUs (``mlx[cpu]``), but more slowly than torch
  (``benchmarks/backends.py`` measures it), so auto never picks it there; ask for it by name.

The memory estimate needs only the weight files' headers (no weights are loaded): the runtime
plus a multiple of the fp32 weight bytes, calibrated on SmolLM2-135M at batch 16
(``benchmarks/backends.py``: a step's peak above the 366 MiB runtime was 1.32x the fp32 weights
on torch, 1.49x on mlx, 0.45x on int8 from the GGUF and 0.57x on int8 Q8_0). A named backend that
is not installed is a one-line error naming the extra that installs it.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import platform
import struct
from dataclasses import dataclass
from pathlib import Path

from edgezo.errors import EdgezoError

BACKENDS = ("torch", "mlx", "int8")
CHOICES = ("auto", *BACKENDS)
DEVICES = ("auto", "cpu", "cuda")  # --device (edgezo.backends.torch.device resolves it; kept here without torch)
INSTALL = {
    "torch": 'pip install edgezo (torch is a core dependency; reinstall it: pip install "torch==2.13.0")',
    "mlx": 'pip install "edgezo[mlx]" (installs mlx[cpu] on Linux, mlx on macOS)',
    "int8": 'pip install edgezo (int8 needs torch and gguf, both core dependencies; reinstall them)',
}
RUNTIME_MB = {"torch": 370.0, "mlx": 370.0, "int8": 370.0}  # interpreter, framework, transformers: before any weight
WEIGHT_FACTOR = {"torch": 1.35, "mlx": 1.5, "int8": 0.6}  # a step's peak above the runtime, per fp32 weight byte
MIB = 1024 * 1024


def is_apple_silicon() -> bool:
    return platform.system() == "Darwin" and platform.machine() == "arm64"


def preference() -> tuple[str, ...]:
    return ("mlx", "torch", "int8") if is_apple_silicon() else ("torch", "int8")


def is_installed(backend: str) -> bool:
    """Whether ``backend`` can run here (plain ``mlx`` installs on Linux but does not import, so
    mlx is imported, not just found)."""
    if backend in ("torch", "int8"):
        needs = ("torch",) if backend == "torch" else ("torch", "gguf")
        return all(importlib.util.find_spec(m) is not None for m in needs)
    if backend == "mlx":
        try:
            importlib.import_module("mlx.core")
            importlib.import_module("mlx_lm")
        except Exception:  # ImportError, or a native library missing on this platform
            return False
        return True
    raise EdgezoError(f"unknown backend {backend!r}; use one of {', '.join(CHOICES)}")


def require(backend: str) -> None:
    """A one-line error naming the extra to install when ``backend`` cannot run here."""
    if backend not in BACKENDS:
        raise EdgezoError(f"unknown backend {backend!r}; use one of {', '.join(CHOICES)}")
    if not is_installed(backend):
        raise EdgezoError(f"the {backend} backend is not installed here: {INSTALL[backend]}")


def fp32_weight_mb(folder: str | Path) -> float:
    """The model's weights in MB at float32, from the safetensors headers (nothing is loaded)."""
    total = 0
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise EdgezoError(f"{folder} has no .safetensors weights; --backend auto needs them to size the model")
    for file in files:
        with open(file, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
        for name, entry in header.items():
            if name != "__metadata__":
                n = 1
                for d in entry["shape"]:
                    n *= d
                total += n
    return 4.0 * total / MIB


def estimated_peak_mb(backend: str, weights_mb: float) -> float:
    return RUNTIME_MB[backend] + WEIGHT_FACTOR[backend] * weights_mb


@dataclass(frozen=True)
class Choice:
    backend: str
    reason: str


def choose_backend(requested: str, weights_mb: float, memory_mb: float | None) -> Choice:
    """The backend to run: ``requested`` if named (it must be installed), else the first of
    :func:`preference` that is installed and fits ``memory_mb`` (None: no limit)."""
    if requested != "auto":
        require(requested)
        return Choice(requested, "as asked")
    installed = [b for b in preference() if is_installed(b)]
    if not installed:
        raise EdgezoError(f"no backend is installed here: {INSTALL['torch']}")
    for backend in installed:
        need = estimated_peak_mb(backend, weights_mb)
        if memory_mb is None or need <= memory_mb:
            budget = "no memory limit" if memory_mb is None else f"needs ~{need:,.0f} of {memory_mb:,.0f} MB"
            return Choice(backend, f"auto: first of {'/'.join(installed)} that fits ({budget})")
    smallest = min(installed, key=lambda b: estimated_peak_mb(b, weights_mb))
    raise EdgezoError(
        f"the model does not fit this device's {memory_mb:,.0f} MB: even {smallest} needs about "
        f"{estimated_peak_mb(smallest, weights_mb):,.0f} MB; use a smaller model or raise --memory-gb"
    )


def available_memory_mb() -> float | None:
    try:
        import psutil
    except ImportError:
        return None
    return psutil.virtual_memory().available / MIB


def parse_device(requested: str | None) -> str:
    """``--device`` checked and lower-cased (None: auto)."""
    text = "auto" if requested is None else str(requested).strip().lower()
    if text not in DEVICES:
        raise EdgezoError(f"unknown --device {requested!r}; use one of {', '.join(DEVICES)}")
    return text


def check_device(backend: str, device: str | None) -> None:
    """``--device`` only places the torch backend: int8 runs on the CPU (``cpu`` is accepted, as
    true), mlx chooses its own device (only ``auto``); anything else is a one-line error."""
    text = parse_device(device)
    if backend == "torch" or text == "auto" or (backend == "int8" and text == "cpu"):
        return
    where = "runs on the CPU only" if backend == "int8" else "chooses its own device (the GPU on Apple silicon)"
    raise EdgezoError(f"--device {text} places the torch backend only; the {backend} backend {where}: "
                      f"drop --device (or use --backend torch)")


def build_executor(backend: str, cfg, task, device: str | None = None):
    """``(executor, ModelInfo)`` for a named backend (not "auto": see :func:`resolve_backend`);
    ``device``: ``--device`` (None: the CPU, for callers that do not offer the option)."""
    require(backend)
    check_device(backend, device)
    if backend == "torch":
        from edgezo.backends.torch.factory import build_torch_executor

        return build_torch_executor(cfg, task, device=device or "cpu")
    if backend == "mlx":
        from edgezo.backends.mlx.factory import build_mlx_executor

        return build_mlx_executor(cfg, task)
    from edgezo.backends.int8.factory import build_int8_executor

    return build_int8_executor(cfg, task)


def resolve_backend(requested: str, model: str | None, memory_mb: float | None = None) -> Choice:
    """``choose_backend`` for a ``--model`` argument; ``memory_mb`` defaults to what is free now."""
    if requested != "auto":
        return choose_backend(requested, 0.0, None)
    from edgezo.backends.hf.source import resolve_model

    weights = fp32_weight_mb(resolve_model(model).folder)
    return choose_backend("auto", weights, memory_mb if memory_mb is not None else available_memory_mb())


def parse_backends(spec: str) -> list[str]:
    """``--backend`` of simulate: one name, or a comma-separated list given to the devices in turn
    (device d runs the (d mod n)-th), e.g. ``torch,mlx,int8``."""
    names = [s.strip().lower() for s in spec.split(",") if s.strip()]
    if not names:
        raise EdgezoError(f"--backend {spec!r} names no backend; use one of {', '.join(CHOICES)}, or a comma-separated list")
    for n in names:
        if n not in CHOICES:
            raise EdgezoError(f"unknown backend {n!r} in --backend {spec!r}; use one of {', '.join(CHOICES)}")
    if "auto" in names and len(names) > 1:
        raise EdgezoError(f"--backend {spec!r}: auto cannot be mixed with named backends")
    return names
