"""The backends, as the methods' and the architectures' registries keep theirs: one ``Backend``
record per executor, each defined in its own folder (``backends/<name>/backend.py``, which imports
no framework), listed once in ``_BACKENDS`` below.

Why a record and not code in ``choice.py``: everything the rest of edgezo asks of a backend before
its framework loads (is it installed, what installs it, what memory it needs, where ``--device``
may place it, whether ``--backend auto`` may pick it, and how to build its executor) is data, so a
new backend is its folder plus one line here, and ``choice.py`` never names a backend.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from typing import Any

from edgezo.errors import EdgezoError


@dataclass(frozen=True)
class Backend:
    """What edgezo knows of one executor before loading it.

    ``finds``: modules that must be installed (found, not imported: importing torch is slow);
    ``imports``: modules that must import (plain ``mlx`` installs on Linux but does not import);
    ``install``: the line that installs it; ``runtime_mb`` and ``weight_factor``: its estimated
    peak memory, runtime plus a multiple of the fp32 weight bytes (``choice.estimated_peak_mb``);
    ``devices``: the ``--device`` values besides ``auto`` it accepts, ``elsewhere``: what it says
    of any other; ``auto_rank``/``apple_rank``: its place in ``--backend auto``'s order elsewhere
    and on Apple silicon (None: auto never picks it there); ``factory``: ``module:function``
    building ``(executor, ModelInfo)`` from ``(cfg, task)``, with ``device=`` if ``takes_device``.
    """

    name: str
    install: str
    factory: str
    finds: tuple[str, ...] = ()
    imports: tuple[str, ...] = ()
    runtime_mb: float = 370.0
    weight_factor: float = 1.35
    devices: tuple[str, ...] = ()
    elsewhere: str = "chooses its own device"
    auto_rank: int | None = None
    apple_rank: int | None = None
    takes_device: bool = False

    def is_installed(self) -> bool:
        if not all(importlib.util.find_spec(m) is not None for m in self.finds):
            return False
        try:
            for module in self.imports:
                importlib.import_module(module)
        except Exception:  # ImportError, or a native library missing on this platform
            return False
        return True

    def build(self, cfg, task, device: str | None = None) -> tuple[Any, Any]:
        """``(executor, ModelInfo)``; the framework loads here, not before."""
        module, _, function = self.factory.partition(":")
        build = getattr(importlib.import_module(module), function)
        return build(cfg, task, device=device or "cpu") if self.takes_device else build(cfg, task)


def _registered() -> dict[str, Backend]:
    from edgezo.backends.int8.backend import INT8
    from edgezo.backends.mlx.backend import MLX
    from edgezo.backends.torch.backend import TORCH

    return {b.name: b for b in (TORCH, MLX, INT8)}


_BACKENDS = _registered()
BACKENDS = tuple(_BACKENDS)


def backend_of(name: str) -> Backend:
    """The registered backend called ``name``, or one line listing them."""
    try:
        return _BACKENDS[name]
    except KeyError:
        raise EdgezoError(f"unknown backend {name!r}; use one of auto, {', '.join(BACKENDS)}") from None


def auto_order(apple: bool) -> tuple[str, ...]:
    """``--backend auto``'s order of preference on this kind of machine."""
    ranked = [(b.apple_rank if apple else b.auto_rank, b.name) for b in _BACKENDS.values()]
    return tuple(name for rank, name in sorted((r, n) for r, n in ranked if r is not None))
