"""MeZO (Malladi et al. 2023), run federated: P whole-model perturbations per step with central
differences; devices share the round's seeds and send one scalar per direction."""

from __future__ import annotations

from edgezo.methods.single_block import SingleBlockMethod


class MeZO(SingleBlockMethod):
    name = "mezo"
    label = "MeZO"
