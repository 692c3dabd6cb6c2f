"""What every backend's executor shares over a Hugging Face model split at a layer index.

``SplitExecutor`` implements the executor protocol (``edgezo.executor.Executor``) once: the
unit-to-block map (from the architecture's ``UnitLayout``), perturbed unit-by-unit forwards, the
order of updates, the FLOPs formula, snapshots, checkpoints and the fingerprint. A backend
(torch, int8, mlx) supplies only its arrays and kernels through the ``_`` hooks at the end of the
class, so the rules that replicas on different backends must agree on are written once:

* units are ``embed``, ``layers.0`` .. ``layers.n-1`` and ``head``; block 1 is embed +
  ``layers[:split]``, block 2 ``layers[split:]`` + head;
* a perturbed forward replaces each trainable tensor of a unit by a perturbed copy (``scale * z``
  summed over the directions covering the unit's block, in the given order) only while that unit
  runs: the stored weights are never left perturbed, so restoration is exact, and at most one
  unit's trainable tensors are copied at a time (inference-level memory);
* ``apply_update`` adds ``coefficient * z`` per tensor in sorted direction order, so every replica
  that applies the same update to the same weights gets the same bits (Rademacher: on every backend);
* tensor names (and so perturbation keys) are the Hugging Face names, in the order the factory
  gives them (Hugging Face ``named_parameters`` order); the fingerprint hashes names and float32
  bytes in that order, so equal weights have equal fingerprints on every backend.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from edgezo.backends.hf.tokenize import Encoded, encode_prompts, verbalizer_token_ids
from edgezo.backends.hf.units import EMBED, UnitLayout, unit_block
from edgezo.errors import EdgezoError
from edgezo.executor import Perturbation
from edgezo.perturb import DISTRIBUTIONS, RADEMACHER


@dataclass
class Batch:
    """A tokenised batch in the executor's own arrays (torch tensors, mlx arrays)."""

    input_ids: Any  # [B, T], right-padded
    attention_mask: Any  # [B, T]
    target_positions: Any  # [B]: last real token (causal) or the mask token (MLM)
    labels: Any  # [B]: index into the verbalizers

    @property
    def size(self) -> int:
        return int(self.labels.shape[0])


class SplitExecutor(ABC):
    """The executor protocol over a split Hugging Face model; subclasses implement the hooks.

    ``model``: the backend's model; ``tokenizer``: its Hugging Face tokenizer; ``split``: layers in
    block 1; ``trainable``: the trained tensors' Hugging Face names, in the fingerprint's order;
    ``verbalizers``: the words whose first tokens' logits the loss compares. Before calling this
    constructor a backend sets what it reads from its own model: ``layout``, ``kind``,
    ``num_layers``, ``hidden_size`` and ``vocab_size``.
    """

    backend: str
    layout: UnitLayout  # where each unit's weights are (the architecture's declaration)
    kind: str  # "causal" or "mlm"
    num_layers: int
    hidden_size: int  # the model's hidden size and vocabulary (FLOPs of a tied or absent head)
    vocab_size: int

    def __init__(
        self,
        model,
        tokenizer,
        split: int,
        trainable: Sequence[str],
        verbalizers: Sequence[str],
        max_length: int = 128,
        distribution: str = RADEMACHER,
    ):
        if distribution not in DISTRIBUTIONS:
            raise EdgezoError(f"unknown perturbation distribution {distribution!r}; use one of {', '.join(DISTRIBUTIONS)}")
        num_layers, layout = self.num_layers, self.layout
        if not 0 < split < num_layers:
            raise EdgezoError(f"split index {split} is outside the model: it has {num_layers} layers, so use --split 1..{num_layers - 1}")
        self.model = model
        self.tokenizer = tokenizer
        self.split = split
        self.max_length = max_length
        self.distribution = distribution
        self.verbalizer_ids = self._index_array(verbalizer_token_ids(tokenizer, verbalizers))
        parameters = self._parameter_numel()
        unknown = {t for t in trainable if t not in parameters}
        if unknown:
            raise EdgezoError(f"trainable parameters not in the model: {sorted(unknown)[:5]}")
        if len(set(trainable)) != len(trainable):
            raise EdgezoError("trainable parameter names repeat")
        self.names = list(trainable)
        self.tensor_numel = {n: parameters[n] for n in self.names}
        weights = self._weight_numel()
        self.unit_tensors: dict[str, list[str]] = {}  # unit -> its trainable tensors
        self.unit_block: dict[str, int] = {}
        self.name_block: dict[str, int] = {}
        self.unit_numel: dict[str, int] = {}  # unit -> scalars of all its weights (what forward_flops counts)
        for unit in layout.unit_names(num_layers):
            block = unit_block(unit, split)
            prefixes = layout.prefixes(unit, num_layers)
            owned = [n for n in self.names if n.startswith(prefixes)]
            self.unit_tensors[unit] = owned
            self.unit_block[unit] = block
            for n in owned:
                self.name_block[n] = block
            self.unit_numel[unit] = sum(k for n, k in weights.items() if n.startswith(prefixes))

    # -- tokenisation -------------------------------------------------------------------------
    def encode(self, prompts: Sequence[str], labels: Sequence[int]) -> Batch:
        return self._batch(encode_prompts(self.tokenizer, prompts, self.max_length, self.kind), labels)

    # -- forwards -----------------------------------------------------------------------------
    def trainable_numel(self, block: int) -> int:
        return sum(self.tensor_numel[n] for n in self.names if self.name_block[n] == block)

    def parameter_count(self) -> int:
        """Scalars of every parameter, a tied one once (what the model holds in memory; the cost
        model's ``total_params``)."""
        return sum(self._parameter_numel().values())

    def _run_unit(self, unit: str, perturbation: Perturbation, fn: Callable, *args):
        """``fn(*args)`` with the unit's trainable tensors perturbed for the length of the call."""
        names = self.unit_tensors[unit]
        dirs = [(d, s) for d, s in perturbation if d.covers_unit(unit, self.unit_block[unit])]
        if not names or not dirs:
            return fn(*args)
        saved = {}
        try:
            for name in names:
                value = self._get(name)
                new = self._perturbed_copy(value, [(d.tensor_key(name), scale) for d, scale in dirs])
                saved[name] = value
                self._put(name, new)
            return fn(*args)
        finally:
            for name, value in saved.items():
                self._put(name, value)

    def _block1(self, batch: Batch, perturbation: Perturbation):
        h = self._run_unit("embed", perturbation, self._embed, batch)
        for i in range(self.split):
            h = self._run_unit(f"layers.{i}", perturbation, self._layer, i, h)
        return h

    def _block2_logits(self, h, perturbation: Perturbation):
        """Block 2 on block 1's output: float32 logits of the verbalizer tokens, [B, labels]."""
        for i in range(self.split, self.num_layers):
            h = self._run_unit(f"layers.{i}", perturbation, self._layer, i, h)
        return self._verbalizer_logits(h, perturbation)

    def _verbalizer_logits(self, h, perturbation: Perturbation):
        return self._verbalizer_columns(self._run_unit("head", perturbation, self._head, h))

    def forward_block1(self, batch: Batch, perturbation: Perturbation = ()):
        """Block 1's output, kept so block 2 can be probed many times on it (SPZO's saving)."""
        return self._block1(batch, perturbation)

    def forward_block2(self, activation, batch: Batch, perturbation: Perturbation = ()) -> float:
        return self._mean_cross_entropy(self._block2_logits(activation, perturbation), batch.labels)

    def predict(self, batch: Batch) -> list[int]:
        return self._argmax(self._block2_logits(self._block1(batch, ()), ()))

    def label_logits(self, batch: Batch) -> np.ndarray:
        """[B, labels] float32 verbalizer logits of the current model as NumPy: evaluation takes
        the accuracy, the loss and each example's correct-label log-probability from one forward."""
        return self._numpy(self._block2_logits(self._block1(batch, ()), ()))

    def _numpy(self, logits) -> np.ndarray:
        """Logits of the backend's framework as a float32 NumPy array (a backend whose arrays
        live off the host overrides it)."""
        return np.asarray(logits, dtype=np.float32)

    def forward_flops(self, batch: Batch) -> tuple[float, float]:
        """Multiply-adds x 2 over the real tokens: weights of each unit, plus attention scores.

        Embedding lookups cost nothing; the head runs on one position per sequence.
        """
        lengths = np.asarray(self._token_lengths(batch), dtype=np.float64)
        tokens = float(lengths.sum())
        attn = 4.0 * float((lengths**2).sum()) * self.hidden_size
        layer_cost = [2.0 * self.unit_numel[f"layers.{i}"] * tokens + attn for i in range(self.num_layers)]
        head = 2.0 * self.unit_numel["head"] * batch.size
        if head == 0 or self.head_is_tied():
            head += 2.0 * self.hidden_size * self.vocab_size * batch.size
        return sum(layer_cost[: self.split]), sum(layer_cost[self.split :]) + head

    def backward_flops(self, batch: Batch) -> float:
        """What autograd runs for the trainable set on this batch, counted as ``forward_flops`` is.

        The activation gradients flow from the loss back to the earliest block holding a
        trainable tensor: about that block's forward again (block 2 alone when only block 2
        trains). The weight gradients are the forward's matmuls again for the trainable share of
        the counted weights, matrices only (a LoRA factor, a full projection; a norm's or a bias's
        gradient is elementwise). So with norm or LoRA trainable a backward is about one forward,
        not the two of full fine-tuning (``benchmarks/flops_check.py`` measures 1.008-1.009
        forwards with torch's FlopCounterMode on SmolLM2-135M; the token embedding's gradient, a
        scatter, is not counted).
        """
        f1, f2 = self.forward_flops(batch)
        reaches_block1 = any(self.name_block[n] == 1 for n in self.names)
        counted = [u for u in self.unit_numel if u != EMBED]  # the units forward_flops charges
        matrices = sum(self.tensor_numel[n] for u in counted for n in self.unit_tensors[u] if len(self._shape(n)) >= 2)
        share = matrices / max(1, sum(self.unit_numel[u] for u in counted))
        return f2 + (f1 if reaches_block1 else 0.0) + share * (f1 + f2)

    # -- updates and state --------------------------------------------------------------------
    def apply_update(self, update: Perturbation) -> None:
        ordered = sorted(update)
        for name in self.names:
            block = self.name_block[name]
            pairs = [(d.tensor_key(name), coeff) for d, coeff in ordered if d.covers(block)]
            if pairs:
                self._add_in_order(name, pairs)

    def snapshot(self) -> dict[str, Any]:
        return {n: self._copy(n) for n in self.names}

    def restore(self, snapshot: dict[str, Any]) -> None:
        for n in self.names:
            self._write(n, snapshot[n])

    def trainable_arrays(self) -> dict[str, np.ndarray]:
        """The trainable parameters as float32 NumPy arrays (checkpoints), by Hugging Face name."""
        return {n: np.array(self._float32(n), copy=True) for n in self.names}

    def load_trainable(self, arrays: dict[str, np.ndarray]) -> None:
        """Overwrite the trainable parameters from a checkpoint; names and shapes must match."""
        missing = sorted(set(self.names) - set(arrays))
        if missing:
            raise EdgezoError(f"checkpoint lacks trainable tensors {missing[:3]}{'...' if len(missing) > 3 else ''}: it is for another trainable set")
        for n in self.names:
            if tuple(arrays[n].shape) != self._shape(n):
                raise EdgezoError(f"checkpoint tensor {n} has shape {tuple(arrays[n].shape)}, the model {self._shape(n)}")
        for n in self.names:
            self._write(n, self._from_numpy(n, np.ascontiguousarray(arrays[n])))

    def fingerprint(self) -> str:
        """SHA-256 over names and float32 bytes, in the trainable order."""
        h = hashlib.sha256()
        for n in self.names:
            h.update(n.encode())
            h.update(np.ascontiguousarray(self._float32(n)).tobytes())
        return h.hexdigest()

    # -- what a backend supplies --------------------------------------------------------------
    @abstractmethod
    def head_is_tied(self) -> bool:
        """Whether the LM head is the token embedding (its FLOPs are then not in ``unit_numel``)."""

    @abstractmethod
    def _parameter_numel(self) -> dict[str, int]:
        """Scalars of every parameter, by Hugging Face name (what ``trainable`` may name)."""

    def _weight_numel(self) -> dict[str, int]:
        """Scalars of every weight ``forward_flops`` counts: the parameters, plus any weights a
        backend holds otherwise (int8's quantized blocks)."""
        return self._parameter_numel()

    @abstractmethod
    def _index_array(self, ids: list[int]):
        """Token ids as an index array of the backend's framework."""

    @abstractmethod
    def _batch(self, encoded: Encoded, labels: Sequence[int]) -> Batch:
        """A :class:`Batch` of the backend's arrays from the shared tokenisation."""

    @abstractmethod
    def _token_lengths(self, batch: Batch) -> np.ndarray:
        """Real tokens per sequence."""

    @abstractmethod
    def _embed(self, batch: Batch):
        """The embedding unit: block 1's first activation."""

    @abstractmethod
    def _layer(self, index: int, h):
        """Layer ``index`` on an activation; returns the next activation."""

    @abstractmethod
    def _head(self, h):
        """Logits over the vocabulary at the target rows."""

    @abstractmethod
    def _verbalizer_columns(self, logits):
        """The verbalizer tokens' columns of the head's logits, in float32."""

    @abstractmethod
    def _mean_cross_entropy(self, logits, labels) -> float:
        """The mean cross-entropy of the verbalizer logits against the labels."""

    @abstractmethod
    def _argmax(self, logits) -> list[int]:
        """The predicted label of each row."""

    @abstractmethod
    def _get(self, name: str):
        """The array a forward reads for trainable tensor ``name``."""

    @abstractmethod
    def _put(self, name: str, value) -> None:
        """Make the forward read ``value`` for ``name`` (a perturbed copy, or the stored array back)."""

    @abstractmethod
    def _perturbed_copy(self, value, pairs: list[tuple[int, float]]):
        """A new array: ``value + sum(scale * z(key))`` over ``pairs`` in order; ``value`` untouched."""

    @abstractmethod
    def _add_in_order(self, name: str, pairs: list[tuple[int, float]]) -> None:
        """Add ``coefficient * z(key)`` to the stored tensor ``name``, one pair after another."""

    @abstractmethod
    def _copy(self, name: str):
        """A copy of tensor ``name`` that later updates cannot change (a snapshot)."""

    @abstractmethod
    def _write(self, name: str, value) -> None:
        """Store ``value`` (a ``_copy`` or a ``_from_numpy``) as tensor ``name``, bit for bit."""

    @abstractmethod
    def _from_numpy(self, name: str, array: np.ndarray):
        """A checkpoint's array as a value for ``_write`` of tensor ``name`` (its dtype)."""

    @abstractmethod
    def _shape(self, name: str) -> tuple[int, ...]:
        """The shape of trainable tensor ``name``."""

    @abstractmethod
    def _float32(self, name: str) -> np.ndarray:
        """Tensor ``name`` as a float32 NumPy array (may share memory)."""

