"""Which executor a device runs: one of the registered backends (``edgezo.backends.registry``:
torch (fp32), mlx (Apple MLX), int8 (llama.cpp-style blocks)).

``--backend auto`` takes the first backend, in this device's order of preference (each backend's
registered rank), that is installed and whose estimated peak memory fits the device's budget:

* Apple silicon: mlx, torch, int8 (MLX runs on the GPU through unified memory there);
* elsewhere: torch, int8. MLX also runs on Linux CPUs (``mlx[cpu]``), but more slowly than torch
  (``benchmarks/backends.py`` measures it), so auto never picks it there; ask for it by name.

The memory estimate needs only the weight files' headers (no weights are loaded): the runtime
plus a multiple of the fp32 weight bytes, each backend's own, calibrated on SmolLM2-135M at batch
16 (``benchmarks/backends.py``). A named backend that is not installed is a one-line error naming
the extra that installs it. Nothing here names a backend: a new one is its folder and one line in
the registry.
"""

from __future__ import annotations

import json
import platform
import struct
from dataclasses import dataclass
from pathlib import Path

from edgezo.backends.hf.source import resolve_model
from edgezo.backends.registry import BACKENDS, auto_order, backend_of
from edgezo.errors import EdgezoError

CHOICES = ("auto", *BACKENDS)
DEVICES = ("auto", "cpu", "cuda")  # --device (edgezo.backends.torch.device resolves it; kept here without torch)
MIB = 1024 * 1024


def is_apple_silicon() -> bool:
    return platform.system() == "Darwin" and platform.machine() == "arm64"


def preference() -> tuple[str, ...]:
    return auto_order(is_apple_silicon())


def is_installed(backend: str) -> bool:
    """Whether ``backend`` can run here (its registration says what it needs)."""
    return backend_of(backend).is_installed()


def require(backend: str) -> None:
    """A one-line error naming the extra to install when ``backend`` cannot run here."""
    spec = backend_of(backend)
    if not is_installed(backend):
        raise EdgezoError(f"the {backend} backend is not installed here: {spec.install}")


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
    spec = backend_of(backend)
    return spec.runtime_mb + spec.weight_factor * weights_mb


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
        raise EdgezoError(f"no backend is installed here: {backend_of(preference()[0]).install}")
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
    """``--device`` places a backend only where its registration accepts it (torch: cpu, cuda;
    int8 runs on the CPU, so ``cpu`` is accepted, as true; mlx chooses its own device, only
    ``auto``); anything else is a one-line error."""
    text = parse_device(device)
    spec = backend_of(backend)
    if text == "auto" or text in spec.devices:
        return
    raise EdgezoError(f"--device {text} places the torch backend only; the {backend} backend {spec.elsewhere}: "
                      f"drop --device (or use --backend torch)")


def build_executor(backend: str, cfg, task, device: str | None = None):
    """``(executor, ModelInfo)`` for a named backend (not "auto": see :func:`resolve_backend`);
    ``device``: ``--device`` (None: the CPU, for callers that do not offer the option)."""
    require(backend)
    check_device(backend, device)
    return backend_of(backend).build(cfg, task, device)


def resolve_backend(requested: str, model: str | None, memory_mb: float | None = None) -> Choice:
    """``choose_backend`` for a ``--model`` argument; ``memory_mb`` defaults to what is free now."""
    if requested != "auto":
        return choose_backend(requested, 0.0, None)
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
