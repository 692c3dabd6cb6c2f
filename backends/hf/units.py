"""The units a split model runs in: ``embed``, ``layers.0`` .. ``layers.n-1``, ``head``.

A :class:`UnitLayout` names, by Hugging Face module name, where each unit keeps its weights. It is
declared once per architecture (``edgezo.backends.hf.arch``) and read by every backend (torch and
int8 through their adapters, mlx directly): a tensor belongs to the same unit, and so to the same
block, on every backend, which is what makes perturbation keys and updates agree.
"""

from __future__ import annotations

from dataclasses import dataclass

EMBED = "embed"
HEAD = "head"
LAYER = "layers."


@dataclass(frozen=True)
class UnitLayout:
    """Module names of each unit's weights (a parameter ``p`` is the unit's when ``p`` starts
    with one of them followed by a dot). ``layers``: the layer list; layer i is ``{layers}.{i}``."""

    embed: tuple[str, ...]
    layers: str
    head: tuple[str, ...]

    def unit_names(self, num_layers: int) -> list[str]:
        return [EMBED, *(f"{LAYER}{i}" for i in range(num_layers)), HEAD]

    def prefixes(self, unit: str, num_layers: int) -> tuple[str, ...]:
        """Prefixes of the parameter names ``unit`` owns (each ends with '.', so ``layers.1``
        never catches ``layers.10``)."""
        if unit == EMBED:
            modules = self.embed
        elif unit == HEAD:
            modules = self.head
        elif unit.startswith(LAYER):
            modules = (f"{self.layers}.{layer_index(unit, num_layers)}",)
        else:
            raise ValueError(f"unknown unit {unit!r}; units are {self.unit_names(num_layers)}")
        return tuple(m + "." for m in modules)


def layer_index(unit: str, num_layers: int) -> int:
    """``layers.i`` -> i, checked against the model's layer count."""
    try:
        index = int(unit[len(LAYER):])
    except ValueError:
        raise ValueError(f"unknown unit {unit!r}; units are embed, layers.0..{num_layers - 1}, head") from None
    if not 0 <= index < num_layers:
        raise ValueError(f"unit {unit!r} out of range: the model has {num_layers} layers")
    return index


def unit_block(unit: str, split: int) -> int:
    """Block 1 is the embedding and ``layers[:split]``; block 2 the other layers and the head."""
    if unit == EMBED:
        return 1
    if unit.startswith(LAYER):
        return 1 if int(unit[len(LAYER):]) < split else 2
    return 2
