"""The executor protocol: what the backend-agnostic core asks of a backend.

The core (estimators, federation, seed log) never touches tensors; an executor owns the model,
splits it into block 1 (embeddings + first layers) and block 2 (remaining layers + head), and
applies canonical perturbations (``edgezo.perturb``) by key. A *perturbation* is a sequence of
``(Direction, scale)`` pairs; a forward of block ``b`` applies those directions that cover ``b``
for the duration of that forward only (the stored weights are never left perturbed). An *update*
is a sequence of ``(Direction, coefficient)`` pairs added to the weights in sorted order, so every
replica that applies the same update to the same weights gets the same bits.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence

from edgezo.keys import Direction

Perturbation = Sequence[tuple[Direction, float]]


class Executor(Protocol):
    distribution: str

    def trainable_numel(self, block: int) -> int:
        """Number of trainable scalars in block 1 or 2."""

    def encode(self, prompts: Sequence[str], labels: Sequence[int]) -> Any:
        """Tokenise prompts into an opaque batch this executor can run."""

    def forward_block1(self, batch: Any, perturbation: Perturbation = ()) -> Any:
        """Run block 1; return an activation handle for ``forward_block2``."""

    def forward_block2(self, activation: Any, batch: Any, perturbation: Perturbation = ()) -> float:
        """Run block 2 on an activation; return the mean loss over the batch."""

    def predict(self, batch: Any) -> list[int]:
        """Predicted label per example (unperturbed model)."""

    def forward_flops(self, batch: Any) -> tuple[float, float]:
        """FLOPs of one block-1 forward and one block-2 forward on this batch."""

    def apply_update(self, update: Perturbation) -> None:
        """Add ``coefficient * z(direction)`` for each pair, in sorted order."""

    def snapshot(self) -> Any:
        """A copy of the trainable parameters (simulation of many devices on one replica)."""

    def restore(self, snapshot: Any) -> None:
        """Put a snapshot back, bit for bit."""

    def trainable_arrays(self) -> dict:
        """Trainable parameters as NumPy arrays by name (a checkpoint)."""

    def load_trainable(self, arrays: dict) -> None:
        """Overwrite the trainable parameters from ``trainable_arrays`` output."""

    def fingerprint(self) -> str:
        """SHA-256 over the trainable parameters' names and bytes."""
