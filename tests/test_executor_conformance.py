"""Every installed backend (torch, int8, mlx) against the executor protocol (edgezo.executor), on a
tiny LLaMA: the members the core uses are there, and they mean the same thing on every backend.

* perturbed forwards never leave the stored weights perturbed, and block 2 can be rerun on one
  block-1 activation;
* an update is applied in sorted order whatever the order it is given in, and the same Rademacher
  update gives equal fingerprints on every backend;
* snapshot/restore and trainable_arrays/load_trainable put the weights back bit for bit;
* the first-order extension (FedAvg) is a gradient step where a backend declares it;
* the backends stand on the shared model layer (edgezo.backends.hf), not on each other.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from edgezo.backends.choice import BACKENDS, build_executor
from edgezo.config import JobConfig
from edgezo.errors import EdgezoError
from edgezo.executor import Batch, Executor, FirstOrderExecutor, Tokenizer
from edgezo.keys import Direction
from edgezo.perturb import RADEMACHER
from edgezo.tasks import get_task

TRAINABLE = ("norm", "lora")
PROMPTS = ["Review: a great movie . Sentiment:", "Review: bad , boring and too long . It was", "the film", "Review: ."]
LABELS = [1, 0, 1, 0]
PERTURBATION = [(Direction(1, 1, 0, 1, 0), 2e-2), (Direction(1, 1, 0, 2, 0, 1), -2e-2)]
# both blocks and whole-model directions, over two steps, given out of order
UPDATE = [(Direction(2, 1, s, b, i), c * (s + 1)) for s in (1, 0) for b, i, c in ((2, 1, -2e-3), (0, 0, 3e-4), (1, 0, 1e-3))]


def build(folder, backend: str, trainable: str) -> Executor:
    cfg = JobConfig(model=str(folder), trainable=trainable, split=2, seed=3)
    return build_executor(backend, cfg, get_task("sst2"))[0]


@pytest.fixture(params=[(b, t) for b in BACKENDS for t in TRAINABLE], ids=lambda p: f"{p[0]}-{p[1]}")
def executor(request, tiny_llama) -> Executor:
    backend, trainable = request.param
    return build(tiny_llama, backend, trainable)


def loss(ex: Executor, batch, perturbation=()) -> float:
    return ex.forward_block2(ex.forward_block1(batch, perturbation), batch, perturbation)


def same_arrays(a: dict, b: dict) -> bool:
    return list(a) == list(b) and all(a[n].dtype == b[n].dtype and np.array_equal(a[n], b[n]) for n in a)


def test_declares_what_the_core_uses(executor):
    assert isinstance(executor, Executor)
    assert executor.backend in BACKENDS and executor.kind == "causal" and executor.distribution == RADEMACHER
    assert executor.num_layers == 4 and executor.split == 2 and executor.model is not None
    assert isinstance(executor.tokenizer, Tokenizer) and executor.tokenizer.mask_token is not None  # tiny's has one
    assert isinstance(executor, FirstOrderExecutor) == (executor.backend in ("torch", "int8"))
    batch = executor.encode(PROMPTS, LABELS)
    assert isinstance(batch, Batch) and batch.size == len(PROMPTS)
    assert all(isinstance(executor.trainable_numel(b), int) and executor.trainable_numel(b) > 0 for b in (1, 2))
    f1, f2 = executor.forward_flops(batch)
    assert isinstance(f1, float) and isinstance(f2, float) and f1 > 0 and f2 > 0
    value = loss(executor, batch)
    assert isinstance(value, float) and math.isfinite(value)
    predictions = executor.predict(batch)
    assert len(predictions) == len(PROMPTS) and all(p in (0, 1) for p in predictions)
    assert isinstance(executor.fingerprint(), str) and len(executor.fingerprint()) == 64


def test_perturbed_forwards_leave_the_weights_unchanged(executor):
    batch = executor.encode(PROMPTS, LABELS)
    start, arrays = executor.fingerprint(), executor.trainable_arrays()
    clean = loss(executor, batch)
    activation = executor.forward_block1(batch, PERTURBATION)
    perturbed = [executor.forward_block2(activation, batch, PERTURBATION) for _ in range(2)]
    assert perturbed[0] == perturbed[1] != clean  # block 2 reruns on one block-1 activation
    assert executor.fingerprint() == start and same_arrays(executor.trainable_arrays(), arrays)
    assert loss(executor, batch) == clean


def test_updates_are_applied_in_sorted_order(executor):
    start, snap = executor.fingerprint(), executor.snapshot()
    executor.apply_update(UPDATE)
    given = executor.fingerprint()
    assert given != start
    executor.restore(snap)
    executor.apply_update(sorted(UPDATE))
    assert executor.fingerprint() == given
    executor.restore(snap)
    for pair in sorted(UPDATE):  # pair by pair in sorted order: the same additions
        executor.apply_update([pair])
    assert executor.fingerprint() == given


def test_snapshot_and_restore_are_bit_exact(executor):
    start, arrays, snap = executor.fingerprint(), executor.trainable_arrays(), executor.snapshot()
    executor.apply_update(UPDATE)
    assert not same_arrays(executor.trainable_arrays(), arrays)
    executor.restore(snap)
    assert executor.fingerprint() == start and same_arrays(executor.trainable_arrays(), arrays)
    executor.apply_update(UPDATE)  # the snapshot is a copy: later updates do not reach it
    executor.restore(snap)
    assert executor.fingerprint() == start


def test_trainable_arrays_round_trip(executor):
    start, before = executor.fingerprint(), executor.trainable_arrays()
    assert all(isinstance(a, np.ndarray) and a.dtype == np.float32 for a in before.values())
    executor.apply_update(UPDATE)
    updated, after = executor.fingerprint(), executor.trainable_arrays()
    executor.load_trainable(before)
    assert executor.fingerprint() == start and same_arrays(executor.trainable_arrays(), before)
    executor.load_trainable(after)
    assert executor.fingerprint() == updated
    with pytest.raises(EdgezoError, match="lacks"):
        executor.load_trainable({})
    name = next(iter(before))
    with pytest.raises(EdgezoError, match="shape"):
        executor.load_trainable({**before, name: np.zeros((1, 1), np.float32)})
    assert executor.fingerprint() == updated  # a refused checkpoint changes nothing


@pytest.mark.parametrize("trainable", TRAINABLE)
def test_backends_agree(tiny_llama, trainable):
    executors = {backend: build(tiny_llama, backend, trainable) for backend in BACKENDS}
    batches = {backend: ex.encode(PROMPTS, LABELS) for backend, ex in executors.items()}
    for attribute in ("names", "split", "num_layers", "kind"):
        assert len({repr(getattr(ex, attribute)) for ex in executors.values()}) == 1, attribute
    for measure in (lambda ex, b: ex.fingerprint(), lambda ex, b: ex.forward_flops(b), lambda ex, b: ex.trainable_numel(1),
                    lambda ex, b: ex.trainable_numel(2), lambda ex, b: b.size):
        assert len({measure(ex, batches[name]) for name, ex in executors.items()}) == 1
    for ex in executors.values():
        ex.apply_update(UPDATE)
    assert len({ex.fingerprint() for ex in executors.values()}) == 1  # Rademacher: bit for bit everywhere
    torch_arrays = executors["torch"].trainable_arrays()
    assert all(same_arrays(ex.trainable_arrays(), torch_arrays) for ex in executors.values())


FORWARD_ONLY = {"mlx"}  # backends that by design declare no first-order extension (FedAvg is torch's)


def test_first_order_step(executor):
    """The torch-based backends backpropagate correctly; the forward-only ones say so by type."""
    if executor.backend in FORWARD_ONLY:
        assert not isinstance(executor, FirstOrderExecutor)
        return
    assert isinstance(executor, FirstOrderExecutor)
    batch = executor.encode(PROMPTS, LABELS)
    start = executor.fingerprint()
    value, grads = executor.loss_and_grad(batch)
    assert executor.fingerprint() == start and list(grads) == executor.names
    assert abs(value - loss(executor, batch)) < 1e-6
    executor.add_to_trainable(grads, -0.1)
    assert executor.fingerprint() != start and loss(executor, batch) < value


IMPORTS = """
import importlib, json, sys
seen = {}
for backend in ("mlx", "int8"):
    before = set(sys.modules)
    importlib.import_module(f"edgezo.backends.{backend}.factory")
    seen[backend] = sorted(m for m in set(sys.modules) - before if m.startswith("edgezo.backends.torch"))
    for m in [m for m in sys.modules if m.startswith("edgezo.backends")]:
        del sys.modules[m]
print(json.dumps(seen))
"""


def test_backends_import_the_model_layer_not_each_other():
    """mlx imports nothing of the torch backend; int8 (a torch model) its executor and kernels only:
    loading, trainable selection, LoRA and the architectures' adapters are edgezo.backends.hf's."""
    out = subprocess.run([sys.executable, "-c", IMPORTS], capture_output=True, text=True, check=True).stdout
    seen = json.loads(out.strip().splitlines()[-1])
    assert seen["mlx"] == []
    # torch.device: where a model's tensors live (the executor's inputs follow its model there);
    # torch.backend: the torch backend's registration record (no torch import), which --device's
    # parsing reaches through the backend registry
    assert set(seen["int8"]) <= {"edgezo.backends.torch", "edgezo.backends.torch.executor", "edgezo.backends.torch.perturb",
                                 "edgezo.backends.torch.device", "edgezo.backends.torch.batched_probes",
                                 "edgezo.backends.torch.backend"}
