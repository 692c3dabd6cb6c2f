"""Whether an ONNX export computes what the torch executor computes, before a page is served it.

A browser device's scalars are averaged with the Python devices' along the same directions, so
its forward must be the executor's forward up to float32 rounding. ``check_export`` runs the
export with onnxruntime (the same kernels onnxruntime-web compiles to WASM) and the torch executor
on the job's own batches: the label logits unperturbed and along ``+eps`` and ``-eps`` of a probe
direction, and that direction's probe scalar ``(L+ - L-) / (2 eps)``; then the label logits with
the trainables moved far along it (a replica some rounds into a job: LoRA's B is zero at the base,
so only there is the adapters' term exercised at full size). The perturbed trainables fed
to the graph are made with the NumPy reference generator (``edgezo.perturb``), as the page makes
them with its port of it; the loss is the protocol's (PROTOCOL.md 9.4: cross-entropy of the
softmax over the label words), computed in float64 from ``label_logits`` as the page computes it.

Tolerances (:class:`Tolerance`): forwards are not bit-exact across runtimes (different kernels sum
in different orders); measured differences are about 2e-5 on label logits and 5e-5 relative on a
scalar (issue 26), so the defaults leave a margin of 5-20x and still catch a wrong graph, which
is off by whole units.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from edgezo import perturb
from edgezo.errors import EdgezoError
from edgezo.keys import Direction

from .onnx_export import INPUTS, OUTPUTS, WEB_EXTRA_HINT


MOVED_SCALE = 0.05  # how far check_moved moves every trainable element: a replica tens of rounds into a job


@dataclass(frozen=True)
class Tolerance:
    """|onnx - torch| <= atol + rtol * |torch|, elementwise, for label logits and probe scalars."""

    logits_atol: float = 2e-4
    logits_rtol: float = 1e-4
    scalar_atol: float = 2e-3  # L± differ by ~1e-6 between runtimes; divided by 2 eps = 2e-3, that is ~5e-4
    scalar_rtol: float = 1e-3


@dataclass(frozen=True)
class Agreement:
    """What ``check_export`` measured: the worst label-logit difference over every row it ran
    (unperturbed, +eps, -eps), and each batch's probe scalar from torch and from the export."""

    batches: int
    max_logit_diff: float
    scalars_torch: tuple[float, ...]
    scalars_onnx: tuple[float, ...]

    @property
    def max_scalar_rel_diff(self) -> float:
        t, o = np.asarray(self.scalars_torch), np.asarray(self.scalars_onnx)
        return float(np.max(np.abs(o - t) / np.maximum(np.abs(t), 1e-12))) if t.size else 0.0


def onnx_session(path: Path | str, threads: int = 1):
    """An onnxruntime CPU session on the export (one thread unless asked: the coordinator shares its cores)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise EdgezoError(f"checking the ONNX export needs onnxruntime; {WEB_EXTRA_HINT}") from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    if names[: len(INPUTS)] != list(INPUTS) or [o.name for o in session.get_outputs()] != list(OUTPUTS):
        raise EdgezoError(f"{path} is not an edgezo browser export: inputs {names[:3]}..., outputs "
                          f"{[o.name for o in session.get_outputs()]} (expected {list(INPUTS)}..., {list(OUTPUTS)})")
    return session


def trainable_values(ex, direction: Direction | None = None, scale: float = 0.0) -> dict[str, np.ndarray]:
    """The trainables as float32 arrays, ``w + float32(scale) * z(direction)`` on the tensors the
    direction's block covers (PROTOCOL.md 9.9: one float32 rounding per element, as the page does)."""
    values = {}
    for name in ex.names:
        w = ex.params[name].detach().cpu().numpy()
        if direction is not None and direction.covers(ex.name_block[name]):
            z = perturb.generate(direction.tensor_key(name), 0, w.size, ex.distribution).reshape(w.shape)
            w = (w + np.float32(scale) * z).astype(np.float32)
        values[name] = np.ascontiguousarray(w, dtype=np.float32)
    return values


def onnx_outputs(session, batch, trainables: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(label_logits [B, labels], log_normalizer [B]) of the export on a batch."""
    feeds = {"input_ids": batch.input_ids.cpu().numpy().astype(np.int64),
             "attention_mask": batch.attention_mask.cpu().numpy().astype(np.int64), **trainables}
    logits, normalizer = session.run(list(OUTPUTS), feeds)
    return logits, normalizer


def label_loss(label_logits: np.ndarray, labels: Sequence[int]) -> float:
    """The protocol's loss in float64: mean cross-entropy of the softmax over the label words."""
    z = np.asarray(label_logits, dtype=np.float64)
    top = z.max(axis=1, keepdims=True)
    log_softmax = z - top - np.log(np.exp(z - top).sum(axis=1, keepdims=True))
    return float(-log_softmax[np.arange(len(z)), np.asarray(labels)].mean())


def torch_label_logits(ex, batch, perturbation) -> np.ndarray:
    """The torch executor's label logits [B, labels] on ``batch`` under ``perturbation`` ([(direction, scale)])."""
    with torch.no_grad():
        return ex._block2_logits(ex._block1(batch, perturbation), perturbation).float().cpu().numpy()


def _within(onnx: np.ndarray, ref: np.ndarray, atol: float, rtol: float) -> bool:
    return bool(np.all(np.abs(onnx - ref) <= atol + rtol * np.abs(ref)))


def check_moved(session, path, ex, batch, direction: Direction, tolerance: Tolerance, scale: float = MOVED_SCALE) -> float:
    """Label logits of a replica moved far from the base along ``direction`` (``scale`` times a
    Rademacher or Gaussian vector), torch against the export; the largest difference, or an
    ``EdgezoError``. At ±eps around the base a graph's trainable path is barely exercised: LoRA's
    B starts at zero, so a wrong adapter term (its scaling, a transposed factor) moves the logits
    by about eps, under the tolerance; a few rounds into a job B is far from zero."""
    perturbation = [(direction, scale)]
    ref = torch_label_logits(ex, batch, perturbation)
    got, _ = onnx_outputs(session, batch, trainable_values(ex, direction, scale))
    if not _within(got, ref, tolerance.logits_atol, tolerance.logits_rtol):
        raise EdgezoError(f"the ONNX export {path} disagrees with the torch executor on trainables moved by {scale:g} along a probe "
                          f"direction (a replica some rounds into the job): label logits differ by up to {np.max(np.abs(got - ref)):.3g}; "
                          "delete the cached export and try again, or report it")
    return float(np.max(np.abs(got - ref)))


def check_export(path: Path | str, ex, batches: Sequence, direction: Direction, eps: float,
                 tolerance: Tolerance = Tolerance(), session=None) -> Agreement:
    """Run the export and the executor on ``batches``; an ``EdgezoError`` naming the batch and
    the difference when they disagree beyond ``tolerance``, else what was measured. Besides the
    probe at ±eps around the base, the first batch is run with the trainables moved far from it
    (:func:`check_moved`), so a trainable path that is near zero at the base (LoRA's) is checked."""
    session = session if session is not None else onnx_session(path)
    worst, scalars_t, scalars_o = 0.0, [], []
    for b, batch in enumerate(batches):
        labels = batch.labels.cpu().numpy()
        losses = {}
        for sign in (0.0, 1.0, -1.0):
            perturbation = [(direction, sign * eps)] if sign else []
            ref = torch_label_logits(ex, batch, perturbation)
            got, _ = onnx_outputs(session, batch, trainable_values(ex, direction if sign else None, sign * eps))
            worst = max(worst, float(np.max(np.abs(got - ref))))
            if not _within(got, ref, tolerance.logits_atol, tolerance.logits_rtol):
                raise EdgezoError(f"the ONNX export {path} disagrees with the torch executor on batch {b} "
                                  f"({'unperturbed' if not sign else f'perturbed by {sign * eps:+g}'}): label logits differ by up to "
                                  f"{np.max(np.abs(got - ref)):.3g}; delete the cached export and try again, or report it")
            losses[sign] = (ex.forward_block2(ex.forward_block1(batch, perturbation), batch, perturbation), label_loss(got, labels))
        g_t = (losses[1.0][0] - losses[-1.0][0]) / (2 * eps)
        g_o = (losses[1.0][1] - losses[-1.0][1]) / (2 * eps)
        scalars_t.append(g_t)
        scalars_o.append(g_o)
        if not _within(np.float64(g_o), np.float64(g_t), tolerance.scalar_atol, tolerance.scalar_rtol):
            raise EdgezoError(f"the ONNX export {path} gives probe scalar {g_o:.6g} on batch {b} where the torch executor "
                              f"gives {g_t:.6g}; delete the cached export and try again, or report it")
    if batches:
        worst = max(worst, check_moved(session, path, ex, batches[0], direction, tolerance))
    return Agreement(len(batches), worst, tuple(scalars_t), tuple(scalars_o))


__all__ = ["Agreement", "MOVED_SCALE", "Tolerance", "check_export", "check_moved", "label_loss", "onnx_outputs", "onnx_session", "torch_label_logits", "trainable_values"]
