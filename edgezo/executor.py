"""The executor protocol: what the backend-agnostic core asks of a backend.

The core (methods, the round engine, aggregation, the seed log, the coordinator and devices) never
touches tensors; an executor owns the model, splits it into block 1 (embeddings + first layers) and
block 2 (remaining layers + head), and applies canonical perturbations (``edgezo.perturb``) by key.
A *perturbation* is a sequence of ``(Direction, scale)`` pairs; a forward of block ``b`` applies
those directions that cover ``b`` for the duration of that forward only (the stored weights are
never left perturbed). An *update* is a sequence of ``(Direction, coefficient)`` pairs added to the
weights in sorted order, so every replica that applies the same update to the same weights gets
the same bits.

:class:`Executor` is everything the core uses, attributes included; :class:`FirstOrderExecutor`
adds what the first-order baseline (FedAvg with backpropagation) needs. Both are runtime-checkable
(``isinstance(ex, Executor)`` checks that every member is present), and
``tests/test_executor_conformance.py`` checks every installed backend's semantics against them.
The backends implement them once, in ``edgezo.backends.hf.split_executor.SplitExecutor``.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable

from edgezo.keys import Direction

Perturbation = Sequence[tuple[Direction, float]]


@runtime_checkable
class Batch(Protocol):
    """An encoded batch: opaque to the core but for its number of examples."""

    @property
    def size(self) -> int:
        """Examples in the batch (what a device reports and FedAvg weights by)."""


@runtime_checkable
class Tokenizer(Protocol):
    """What the core reads of the model's tokenizer: masked-LM prompts put its mask token where
    the answer goes (None for causal models' tokenizers that have none)."""

    mask_token: str | None


@runtime_checkable
class Executor(Protocol):
    backend: str
    """The backend's name ("torch", "int8", "mlx"): what a device reports to the coordinator."""
    kind: str
    """"causal" or "mlm": which prompt template the task uses for this model."""
    split: int
    """Layers in block 1 (0 < split < num_layers); devices of one job must agree on it."""
    num_layers: int
    distribution: str
    """The perturbation distribution ("rademacher" or "gaussian", ``edgezo.perturb.DISTRIBUTIONS``)."""
    model: Any
    """The backend's model object (saving a trained model, reading its configuration)."""
    tokenizer: Tokenizer

    def trainable_numel(self, block: int) -> int:
        """Number of trainable scalars in block 1 or 2."""

    def encode(self, prompts: Sequence[str], labels: Sequence[int]) -> Batch:
        """Tokenise prompts into an opaque batch this executor can run."""

    def forward_block1(self, batch: Any, perturbation: Perturbation = ()) -> Any:
        """Run block 1; return an activation handle for ``forward_block2`` (reusable: block 2 may
        run many times on one handle)."""

    def forward_block2(self, activation: Any, batch: Any, perturbation: Perturbation = ()) -> float:
        """Run block 2 on an activation; return the mean loss over the batch."""

    def predict(self, batch: Any) -> list[int]:
        """Predicted label per example (unperturbed model)."""

    def forward_flops(self, batch: Any) -> tuple[float, float]:
        """FLOPs of one block-1 forward and one block-2 forward on this batch (equal on every
        backend for the same model and batch)."""

    def apply_update(self, update: Perturbation) -> None:
        """Add ``coefficient * z(direction)`` for each pair, in sorted order (the given order does
        not matter)."""

    def snapshot(self) -> Any:
        """A copy of the trainable parameters (simulation of many devices on one replica)."""

    def restore(self, snapshot: Any) -> None:
        """Put a snapshot back, bit for bit."""

    def trainable_arrays(self) -> dict:
        """Trainable parameters as float32 NumPy arrays by name (a checkpoint)."""

    def load_trainable(self, arrays: dict) -> None:
        """Overwrite the trainable parameters from ``trainable_arrays`` output."""

    def fingerprint(self) -> str:
        """SHA-256 over the trainable parameters' names and float32 bytes: equal weights give equal
        fingerprints on every backend."""


@runtime_checkable
class FirstOrderExecutor(Executor, Protocol):
    """An executor that can also backpropagate (torch and int8): the first-order baseline's needs."""

    def loss_and_grad(self, batch: Any) -> tuple[float, dict[str, Any]]:
        """The unperturbed mean loss and its gradient per trainable tensor, by name."""

    def backward_flops(self, batch: Any) -> float:
        """FLOPs of the backward ``loss_and_grad`` runs on this batch for the trainable set (about
        one forward for norm or LoRA: frozen matrices need no weight gradient)."""

    def add_to_trainable(self, deltas: dict[str, Any], scale: float = 1.0) -> None:
        """Add ``scale * delta`` to each named trainable tensor (``loss_and_grad``'s gradients, or
        an average of devices' model deltas)."""
