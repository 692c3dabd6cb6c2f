"""Perturbation keys: what a seed means, computed in pure Python so every backend agrees.

A *direction* names one perturbation vector z over the trainable parameters. It is identified by
integers only (no device, no framework): the run seed, the round, the local step, the block, the
block-1 index ``i``, the block-2 index ``j`` and a ``stream`` (0 for the round's shared seeds; a
device's own stream ``1 + device`` only for methods with per-device seeds, such as FedZO).

Each trainable tensor gets its own 64-bit key: the direction's fields and the FNV-1a hash of the
tensor's name, folded with SplitMix64 in this order::

    h = 0
    for v in (run_seed, round, step, block, i, j, stream, fnv1a64(name)):
        h = splitmix64(h ^ (v mod 2**64))

The generator (``edgezo.perturb``) turns that key and an element index into a value. Block 0 means
"the whole model" (single-block methods: MeZO, FedZO, DeComFL); block 1 and block 2 directions have
support only on the tensors of their block.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

MASK64 = (1 << 64) - 1
WHOLE_MODEL = 0


def splitmix64(x: int) -> int:
    """SplitMix64 finaliser (Steele, Lea, Flood 2014) on a 64-bit integer."""
    x = (x + 0x9E3779B97F4A7C15) & MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def fnv1a64(text: str) -> int:
    """FNV-1a 64-bit hash of a UTF-8 string (tensor names)."""
    h = 0xCBF29CE484222325
    for byte in text.encode("utf-8"):
        h = ((h ^ byte) * 0x100000001B3) & MASK64
    return h


@dataclass(frozen=True, order=True)
class Direction:
    """One perturbation direction; hashable, ordered (updates are applied in sorted order)."""

    run_seed: int
    round: int
    step: int
    block: int
    i: int
    j: int = 0
    stream: int = 0

    def fields(self) -> tuple[int, ...]:
        return (self.run_seed, self.round, self.step, self.block, self.i, self.j, self.stream)

    def covers(self, block: int) -> bool:
        """Whether this direction perturbs the tensors of ``block`` (1 or 2)."""
        return self.block == WHOLE_MODEL or self.block == block

    def covers_unit(self, unit: str, block: int) -> bool:
        """Whether this direction perturbs ``unit`` (a unit of ``block``): every unit of a block it covers."""
        return self.covers(block)

    def tensor_key(self, name: str) -> int:
        return tensor_key(self.fields(), name)


@lru_cache(maxsize=1 << 16)
def tensor_key(fields: tuple[int, ...], name: str) -> int:
    """The 64-bit key of one tensor along one direction (cached: computed on every forward)."""
    h = 0
    for v in (*fields, fnv1a64(name)):
        h = splitmix64(h ^ (v & MASK64))
    return h
