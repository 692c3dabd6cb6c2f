"""DeComFL (Li et al. 2024): P whole-model perturbations per step, central or forward
differences; only seeds and scalars travel, and a device that fell behind replays the seed log."""

from __future__ import annotations

from edgezo.methods.single_block import SingleBlockMethod


class DeComFL(SingleBlockMethod):
    name = "decomfl"
    label = "DeComFL"
