"""The gradient-quality bench's I/O with the model: the checkpoints, the per-batch gradients by
backpropagation (cached), and the check of the linearised probe scalars against real perturbed
forwards through edgezo's own method code.

Everything here runs the torch executor's public functions (``loss_and_grad``, ``forward_flops``,
``add_to_trainable``, ``trainable_arrays``/``load_trainable``, ``Method.step``); the statistics
are in ``gradient_quality_stats`` (pure NumPy). The cache lives under ``runs/`` (gitignored): one
``.npz`` per (trainable set, checkpoint, batch), so a stopped run resumes where it stopped and
``report`` never touches the model.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from edgezo import perturb
from edgezo.config import JobConfig
from edgezo.estimators import ProbeConfig
from edgezo.keys import Direction
from edgezo.methods import method_of
from edgezo.tasks import get_task, load_examples

CACHE = Path(__file__).resolve().parent.parent / "runs" / "gradient_quality"
MID_STEPS = 16  # first-order SGD steps from the base model to the mid-training checkpoint
# Their rate: for LoRA, FedAvg's tuned rate for SST-2 (0.025, the comparison's grid winner in
# benchmarks/RESULTS.md); for the norm weights one device's plain SGD at 0.025 diverged (batch
# loss 0.31 -> 1.4 -> 0.8 over 16 steps: FedAvg averaged 4 devices), so 0.005 (its grid's middle).
MID_LR = {"lora": 0.025}
MID_LR_OTHERS = 0.005
SAMPLE_SEED = 0  # the permutation of SST-2's training split the batches are drawn from


@dataclass
class Bench:
    """The default job on one trainable set: its executor, task, training examples and the
    sampling order of its batches (the mid-training steps take the first ones)."""

    job: JobConfig
    ex: object
    task: object
    train: list
    order: np.ndarray
    model_name: str
    cache: Path = CACHE

    def batch(self, k: int):
        """Training batch k of the gradient batches (after the mid-training steps' batches)."""
        return self.encode(self.order[(MID_STEPS + k) * self.job.batch_size:(MID_STEPS + k + 1) * self.job.batch_size])

    def mid_batch(self, k: int):
        return self.encode(self.order[k * self.job.batch_size:(k + 1) * self.job.batch_size])

    def encode(self, ix):
        return self.ex.encode([self.task.prompt(self.train[i], self.ex.kind) for i in ix], [self.train[i].label for i in ix])


def load_bench(trainable: str, model: str | None = None, data: str | None = None, cache: Path = CACHE) -> Bench:
    """The default job (SmolLM2-135M-Instruct, SST-2, its template, batch 16, max length 128,
    split 20, eps 1e-3) with ``--trainable`` set to ``trainable`` (``model``/``data``: another
    model or SST-2 folder, for the tests' tiny model)."""
    from edgezo.backends.torch.factory import build_torch_executor

    torch.set_num_threads(1)
    job = JobConfig(trainable=trainable, model=model, data=data).validate()
    task = get_task(job.task)
    train = load_examples(task, job.data, "train")
    ex, info = build_torch_executor(job, task)
    order = np.random.default_rng(SAMPLE_SEED).permutation(len(train))
    return Bench(job, ex, task, train, order, Path(info.name).name, cache)


def trainable_tag(ex) -> str:
    """Names the trainable set by its tensors, so ``bitfit`` on a model without biases (SmolLM2)
    shares ``norm``'s cache: the two select the same tensors there."""
    text = json.dumps([[n, ex.tensor_numel[n]] for n in ex.names])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def unit_layout(ex) -> tuple[list[str], np.ndarray]:
    """The units (embed, layers.i, head) and, per element of the flat gradient (``ex.names``
    order), the index of its unit: block membership follows from the unit and the split."""
    units = list(ex.unit_tensors)
    owner = {n: units.index(u) for u, names in ex.unit_tensors.items() for n in names}
    index = np.concatenate([np.full(ex.tensor_numel[n], owner[n], dtype=np.int32) for n in ex.names])
    return units, index


def tensor_layout(ex) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The trainable tensors (``ex.names`` order), their sizes, and per element of the flat
    gradient the index of its tensor: the per-tensor probe scales' unit of account."""
    numel = np.array([ex.tensor_numel[n] for n in ex.names], dtype=np.int64)
    return list(ex.names), numel, np.repeat(np.arange(len(numel), dtype=np.int32), numel)


def flops_by_split(ex, batch) -> np.ndarray:
    """[split, F1, F2] for every split 1..L-1 on this batch, from the executor's own FLOP count
    (``forward_flops`` reads only the split, so a shallow copy with another split asks it)."""
    rows = []
    for s in range(1, ex.num_layers):
        other = copy.copy(ex)
        other.split = s
        rows.append((s, *other.forward_flops(batch)))
    table = np.array(rows, dtype=np.float64)
    totals = table[:, 1] + table[:, 2]
    if not (np.allclose(totals, totals[0]) and np.allclose(table[ex.split - 1, 1:], ex.forward_flops(batch))):
        raise RuntimeError("forward_flops no longer follows the executor's split attribute: "
                           "gradient_quality_grads.flops_by_split needs another way to ask it per split")
    return table


def flat_gradient(ex, batch) -> tuple[float, np.ndarray]:
    """The batch's mean loss and its gradient over the trainable set, flat in ``ex.names`` order,
    by the first-order path FedAvg uses (``loss_and_grad``)."""
    loss, grads = ex.loss_and_grad(batch)
    return loss, np.concatenate([grads[n].detach().float().cpu().numpy().reshape(-1) for n in ex.names])


def checkpoint_dir(bench: Bench, checkpoint: str) -> Path:
    return bench.cache / bench.model_name / trainable_tag(bench.ex) / checkpoint


def set_checkpoint(bench: Bench, checkpoint: str, base_weights: dict) -> dict:
    """Put the executor at ``checkpoint``: ``base`` (the loaded model) or ``mid`` (MID_STEPS SGD
    steps of batch 16 at MID_LR from base, computed once and cached). Returns what it was."""
    bench.ex.load_trainable(base_weights)
    if checkpoint == "base":
        return {"checkpoint": "base", "steps": 0}
    path = bench.cache / bench.model_name / trainable_tag(bench.ex) / "mid_weights.npz"
    info_path = path.with_suffix(".json")
    if not path.exists():
        losses, lr = [], MID_LR.get(bench.job.trainable.split(":")[0], MID_LR_OTHERS)
        for k in tqdm(range(MID_STEPS), desc="mid-training SGD steps", dynamic_ncols=True):
            loss, grads = bench.ex.loss_and_grad(bench.mid_batch(k))
            bench.ex.add_to_trainable(grads, -lr)
            losses.append(loss)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **bench.ex.trainable_arrays())
        info_path.write_text(json.dumps({"steps": MID_STEPS, "lr": lr, "batch": bench.job.batch_size, "losses": losses}))
    with np.load(path) as saved:
        bench.ex.load_trainable({n: saved[n] for n in saved.files})
    return {"checkpoint": "mid", **json.loads(info_path.read_text())}


def collect_gradients(bench: Bench, checkpoint: str, batches: int) -> Path:
    """Per-batch gradients, losses and FLOPs of the first ``batches`` gradient batches at the
    executor's current weights, cached one file per batch (a rerun computes only what is missing)."""
    folder = checkpoint_dir(bench, checkpoint)
    folder.mkdir(parents=True, exist_ok=True)
    todo = [k for k in range(batches) if not (folder / f"batch_{k:04d}.npz").exists()]
    for k in tqdm(todo, desc=f"{bench.job.trainable} {checkpoint}: batch gradients", dynamic_ncols=True):
        batch = bench.batch(k)
        loss, grad = flat_gradient(bench.ex, batch)
        tmp = folder / f"batch_{k:04d}.tmp.npz"
        np.savez(tmp, grad=grad.astype(np.float32), loss=np.float64(loss), flops=flops_by_split(bench.ex, batch))
        tmp.rename(folder / f"batch_{k:04d}.npz")
    return folder


def load_gradients(folder: Path, batches: int) -> dict:
    """The cached batches 0..batches-1 as arrays: grads [B, d], losses [B], flops [B, splits, 3]."""
    grads, losses, flops = [], [], []
    for k in range(batches):
        with np.load(folder / f"batch_{k:04d}.npz") as f:
            grads.append(f["grad"])
            losses.append(float(f["loss"]))
            flops.append(f["flops"])
    return {"grads": np.stack(grads), "losses": np.array(losses), "flops": np.stack(flops)}


# -- the linearisation check --------------------------------------------------------------------

VALIDATION_PROBES = (
    ProbeConfig("spzo", p1=2, p2=2, variant="joint"),
    ProbeConfig("spzo", p1=1, p2=2, variant="clean"),
    ProbeConfig("decomfl", p1=6, difference="central"),
    ProbeConfig("decomfl", p1=6, difference="forward"),
)  # the central and forward rows probe the same directions: their difference is the curvature term


def linear_scalar(ex, grad: np.ndarray, direction: Direction, joint_partner: Direction | None) -> float:
    """What a probe scalar is to first order in eps: the batch gradient along the direction
    (for a joint SPZO block-2 scalar, along z1_i and z2_ij together)."""
    total, offset = 0.0, 0
    for name in ex.names:
        n = ex.tensor_numel[name]
        block = ex.name_block[name]
        for d in (direction, joint_partner):
            if d is not None and d.covers(block):
                total += float(grad[offset:offset + n].astype(np.float64) @ perturb.rademacher(d.tensor_key(name), 0, n))
        offset += n
    return total


def validate_linearisation(bench: Bench, grad: np.ndarray, batch, eps: float) -> list[dict]:
    """Real probe scalars (each method's own ``step`` through the executor) against the
    linearised ones from the batch gradient ``grad``; the relative difference per setting."""
    out = []
    for probe in VALIDATION_PROBES:
        probe = ProbeConfig(probe.method, probe.p1, probe.p2, eps, probe.variant, probe.difference)
        result = method_of(probe.method).step(bench.ex, batch, probe, 7, 1, 0)
        real, lin = [], []
        for d, s in sorted(result.scalars.items()):
            partner = Direction(d.run_seed, d.round, d.step, 1, d.i, 0, d.stream) if (d.block == 2 and probe.variant == "joint" and probe.method == "spzo") else None
            real.append(s)
            lin.append(linear_scalar(bench.ex, grad, d, partner))
        real, lin = np.array(real), np.array(lin)
        out.append({"method": probe.method, "variant": probe.variant if probe.method == "spzo" else None,
                    "difference": probe.difference, "p1": probe.p1, "p2": probe.p2 if probe.method == "spzo" else None,
                    "scalars_real": real.tolist(), "scalars_linear": lin.tolist(),
                    "relative_difference": float(np.linalg.norm(real - lin) / np.linalg.norm(lin))})
    return out


def prepare_checkpoint(bench: Bench, checkpoint: str, base_weights: dict, batches: int) -> dict:
    """Everything the statistics need of one checkpoint, computed once and cached: the
    checkpoint, its per-batch gradients and the linearisation check on gradient batch 0."""
    info = set_checkpoint(bench, checkpoint, base_weights)
    folder = collect_gradients(bench, checkpoint, batches)
    check = folder / f"validation_eps{bench.job.eps:g}.json"
    if not check.exists():
        with np.load(folder / "batch_0000.npz") as f:
            grad = f["grad"]
        rows = validate_linearisation(bench, grad, bench.batch(0), bench.job.eps)
        check.write_text(json.dumps(rows, indent=1))
    return {**info, "folder": str(folder), "validation": json.loads(check.read_text())}


def prepare_all(trainables: list[str], batches: int, checkpoints=("base", "mid")) -> None:
    """Fill the cache for every trainable set and checkpoint (the long part of ``run``)."""
    for trainable in trainables:
        bench = load_bench(trainable)
        base = bench.ex.trainable_arrays()
        for checkpoint in checkpoints:
            prepare_checkpoint(bench, checkpoint, base, batches)
    bench.ex.load_trainable(base)
