"""The gradient-quality bench's statistics (pure NumPy): what each zero-order estimator's
estimate ĝ is worth against the true gradient, per forward FLOP.

Setting. h = (h1, h2) is the gradient of one training batch's loss (block 1, block 2; d1, d2
trainable elements), G = E_batch[h] the population gradient. Every probe z is Rademacher (the
canonical generator's default: ‖z‖² = d exactly, E[zzᵀ] = I, odd moments 0). With the job's small
eps a central-difference scalar is h·z to O(eps²) (checked against real forwards: see
``gradient_quality_grads.validate_linearisation``), so, conditionally on the batch, the second
moments below are exact (no Monte-Carlo over probes is needed; the unit tests check them against
edgezo's own method code on a quadratic toy):

* central SPSA (MeZO, DeComFL central), P probes: ĝ = (1/P) Σ_p (h·z_p) z_p,
  E‖ĝ‖² = ‖h‖² (d + P − 1) / P.
* forward difference (FedZO, DeComFL forward), P probes, P + 1 forwards: the scalar is
  h·z + q with q = (eps/2) zᵀHz (curvature; not small for eps = 1e-3, measured), and q z has mean
  zero and is uncorrelated with (h·z) z (odd moments vanish), so
  E‖ĝ‖² = ‖h‖² (d + P − 1) / P + d·E[q²] / P, E[q²] measured from the same directions probed
  by both differences (q = forward scalar − central scalar).
* FedSPZO joint (the default): s_ij = h1·z1_i + h2·z2_ij,
  ĝ2 = (1/(P1P2)) Σ_ij s_ij z2_ij, ĝ1 = (1/P1) Σ_i mean_j(s_ij) z1_i. Both are unbiased. The
  shared block-1 probe enters every s_ij of its i: block 2's estimate carries block 1's gradient
  as noise, and block 1's carries block 2's averaged over the P2 probes:
  E‖ĝ1‖² = [d1 (‖h1‖² + ‖h2‖²/P2) + (P1 − 1) ‖h1‖²] / P1,
  E‖ĝ2‖² = [d2 (‖h1‖² + ‖h2‖²) + (P1P2 − 1) ‖h2‖²] / (P1P2).
  (Cross terms between (i, j) and (i, l) that share z1_i reduce to ‖h2‖², as between
  independent probes, because E[h1·z1_i] = 0.)
* FedSPZO clean: block 1 has its own full-forward scalar h1·z1_i, block 2 is probed on the
  unperturbed activations (h2·z2_ij): two independent SPSA estimates,
  E‖ĝ1‖² = ‖h1‖² (d1 + P1 − 1) / P1, E‖ĝ2‖² = ‖h2‖² (d2 + P1P2 − 1) / (P1P2).
* backprop (FedAvg's step, the first-order reference): ĝ = h, E‖ĝ‖² = ‖h‖².

Figures. For an unbiased ĝ, E[G·ĝ] = ‖G‖², so the expected one-step descent ratio
E[G·ĝ]² / (E‖ĝ‖² ‖G‖²) = ‖G‖² / E‖ĝ‖²; its square root is the effective cosine, its quotient by
the step's forward FLOPs the descent per FLOP, and the best step size η* = E[G·ĝ] / E‖ĝ‖² (the
same ratio, in units of 1/‖G‖²... all relative to the default setting). ‖G‖² is estimated
without bias from N independent batch gradients by the U-statistic
(1/(N(N−1))) Σ_{a≠b} h_a·h_b (every pair of batches, no batch with itself), E‖ĝ‖² by the mean
over batches of the conditional moment above; standard errors by the delete-one-batch jackknife
of the whole figure. A gradient of M examples as the reference (the brief's "512-example g")
scales every ratio by cos²(g_M, G) = ‖G‖² / (‖G‖² + tr Σ_1 / M), reported beside it.

Costs are forward FLOPs per step from edgezo's forward-count model (docs/algorithm.md): joint
2·P1·(F1 + P2·F2); clean F1 + 2·P1·(F1 + F2) + 2·P1·P2·F2; central 2P(F1 + F2); forward
(P + 1)(F1 + F2); backprop 2(F1 + F2) (as ``edgezo.methods.fedavg`` charges it for these trainable
sets: a forward, and a backward of about one forward since the frozen matrices need no weight
gradient; ``SplitExecutor.backward_flops``), with F1, F2 the
executor's ``forward_flops`` of the batch at the setting's split.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from edgezo.calibration import clean_moment, joint_moment  # the closed forms: one copy, shared with --p2 auto

PROBES = (1, 2, 4, 8, 16)

# -- the estimators: forwards per step and the conditional second moment ------------------------

Moment = Callable[["Setting", np.ndarray, np.ndarray, int, int, float], np.ndarray]
Forwards = Callable[["Setting"], tuple[int, int]]


def _whole_model(s: "Setting", a1, a2, d1, d2, q2):
    return (a1 + a2) * (d1 + d2 + s.p1 - 1) / s.p1


def _forward_difference(s: "Setting", a1, a2, d1, d2, q2):
    return _whole_model(s, a1, a2, d1, d2, q2) + (d1 + d2) * q2 / s.p1


def _joint(s: "Setting", a1, a2, d1, d2, q2):
    return joint_moment(a1, a2, d1, d2, s.p1, s.p2)


def _clean(s: "Setting", a1, a2, d1, d2, q2):
    return clean_moment(a1, a2, d1, d2, s.p1, s.p2)


def _backprop(s: "Setting", a1, a2, d1, d2, q2):
    return a1 + a2


@dataclass(frozen=True)
class Estimator:
    """One estimator family: its label, conditional E‖ĝ‖² and forwards per step (block 1, 2)."""

    name: str
    moment: Moment
    forwards: Forwards
    split_matters: bool  # whether its moment and cost depend on the split (SPZO only)


ESTIMATORS = {e.name: e for e in (
    Estimator("spzo-joint", _joint, lambda s: (2 * s.p1, 2 * s.p1 * s.p2), True),
    Estimator("spzo-clean", _clean, lambda s: (1 + 2 * s.p1, 2 * s.p1 + 2 * s.p1 * s.p2), True),
    Estimator("central", _whole_model, lambda s: (2 * s.p1, 2 * s.p1), False),
    Estimator("forward", _forward_difference, lambda s: (s.p1 + 1, s.p1 + 1), False),
    Estimator("backprop", _backprop, lambda s: (2, 2), False),  # a forward and a backward of about one (FedAvg's charge)
)}


@dataclass(frozen=True)
class Setting:
    estimator: str
    p1: int = 1
    p2: int = 1
    split: int = 20  # single-block estimators' figures do not depend on it (their F1 + F2 neither)

    @property
    def family(self) -> Estimator:
        return ESTIMATORS[self.estimator]

    @property
    def label(self) -> str:
        if self.family.split_matters:
            return f"{self.estimator} P1={self.p1} P2={self.p2} split={self.split}"
        if self.estimator == "backprop":
            return "backprop"
        return f"{self.estimator} P={self.p1}"

    def forwards(self) -> tuple[int, int]:
        return self.family.forwards(self)

    def flops(self, f1, f2):
        """Forward FLOPs of one step given one block-1 and one block-2 forward's FLOPs."""
        n1, n2 = self.forwards()
        return n1 * np.asarray(f1) + n2 * np.asarray(f2)

    def second_moment(self, a1, a2, d1: int, d2: int, q2: float = 0.0):
        """E‖ĝ‖² over the probes given the batch's ‖h1‖², ‖h2‖² (arrays: one per batch)."""
        return self.family.moment(self, np.asarray(a1, float), np.asarray(a2, float), d1, d2, q2)


DEFAULT = Setting("spzo-joint", 1, 4, 20)  # the default job's (edgezo simulate with no options) on SmolLM2


def settings_grid(splits=(10, 20, 25), probes=PROBES, default: Setting = DEFAULT) -> list[Setting]:
    """FedSPZO joint and clean over P1 x P2 x split, central and forward over P, and backprop
    (the single-block rows read their F1 + F2 at the default's split: the sum does not depend on it)."""
    out = [Setting(v, p1, p2, s) for v in ("spzo-joint", "spzo-clean") for s in splits for p1 in probes for p2 in probes]
    out += [Setting(e, p, 1, default.split) for e in ("central", "forward") for p in probes]
    out += [Setting("backprop", 1, 1, default.split)]
    return out if default in out else [default, *out]


# -- the data of one checkpoint, and its figures --------------------------------------------


def unit_block(unit: str, split: int) -> int:
    """Block 1 is the embedding and layers[:split]; block 2 the rest and the head."""
    if unit == "embed":
        return 1
    if unit.startswith("layers."):
        return 1 if int(unit.split(".")[1]) < split else 2
    return 2


@dataclass
class Checkpoint:
    """What the figures of one checkpoint need: per-unit Gram matrices of the N batch gradients
    (gram[u, a, b] = h_a,u · h_b,u), the units' sizes and names, the per-batch FLOPs of a block-1
    and a block-2 forward at each split (flops[b, split-1] = (split, F1, F2)), and E[q²]."""

    gram: np.ndarray  # [U, N, N]
    dims: np.ndarray  # [U]
    units: list[str]
    flops: np.ndarray  # [N, L-1, 3]
    q2: float = 0.0

    @property
    def batches(self) -> int:
        return self.gram.shape[1]

    def block_norms(self, split: int) -> tuple[np.ndarray, np.ndarray, int, int]:
        """Per batch ‖h1‖², ‖h2‖² and the blocks' sizes at ``split``."""
        one = np.array([unit_block(u, split) == 1 for u in self.units])
        diag = np.einsum("unn->un", self.gram)
        return diag[one].sum(0), diag[~one].sum(0), int(self.dims[one].sum()), int(self.dims[~one].sum())

    def block_flops(self, split: int) -> tuple[np.ndarray, np.ndarray]:
        row = self.flops[:, split - 1]
        if not np.all(row[:, 0] == split):
            raise ValueError(f"the FLOPs table has no split {split}")
        return row[:, 1], row[:, 2]


def gram_by_unit(grads: np.ndarray, unit_index: np.ndarray, units: int) -> np.ndarray:
    """[U, N, N] Gram matrices of the batch gradients restricted to each unit."""
    out = np.zeros((units, grads.shape[0], grads.shape[0]))
    for u in range(units):
        part = grads[:, unit_index == u].astype(np.float64)
        out[u] = part @ part.T
    return out


def pair_mean(gram: np.ndarray) -> float:
    """The U-statistic (1/(N(N−1))) Σ_{a≠b} gram[a, b]: unbiased for ‖E h‖²."""
    n = gram.shape[0]
    return float((gram.sum() - np.trace(gram)) / (n * (n - 1)))


def leave_one_out_pair_means(gram: np.ndarray) -> np.ndarray:
    """pair_mean of the Gram matrix without batch b, for every b."""
    n = gram.shape[0]
    off = gram.sum() - np.trace(gram)
    rows = gram.sum(1) - np.diag(gram)
    return (off - 2 * rows) / ((n - 1) * (n - 2))


def jackknife_se(full: float, leave_one_out: np.ndarray) -> float:
    """The delete-one jackknife standard error of a statistic."""
    n = len(leave_one_out)
    return float(np.sqrt((n - 1) / n * np.sum((leave_one_out - leave_one_out.mean()) ** 2)))


def loo_means(x: np.ndarray) -> np.ndarray:
    return (x.sum() - x) / (len(x) - 1)


@dataclass
class SettingTerms:
    """A setting's per-batch E‖ĝ‖² and step FLOPs on one checkpoint."""

    y: np.ndarray
    cost: np.ndarray


def setting_terms(ck: Checkpoint, s: Setting) -> SettingTerms:
    a1, a2, d1, d2 = ck.block_norms(s.split)
    f1, f2 = ck.block_flops(s.split)
    return SettingTerms(s.second_moment(a1, a2, d1, d2, ck.q2), s.flops(f1, f2))


def figures(ck: Checkpoint, s: Setting, reference: SettingTerms) -> dict:
    """A setting's figures with jackknife SEs: descent ratio r = ‖G‖²/E‖ĝ‖², effective cosine
    √r, r per GFLOP of a step, and, against ``reference`` (the default setting on the same
    batches: a paired comparison), the best-step-size ratio and the descent-per-FLOP ratio."""
    total = ck.gram.sum(0)
    g2, g2_loo = pair_mean(total), leave_one_out_pair_means(total)
    t = setting_terms(ck, s)

    def stat(g, y, c, ry, rc):
        r = g / y
        return np.array([r, np.sqrt(max(r, 0.0)), r / (c / 1e9), ry / y, (ry * rc) / (y * c)])

    full = stat(g2, t.y.mean(), t.cost.mean(), reference.y.mean(), reference.cost.mean())
    loo = np.stack([stat(g, y, c, ry, rc) for g, y, c, ry, rc in zip(
        g2_loo, loo_means(t.y), loo_means(t.cost), loo_means(reference.y), loo_means(reference.cost))])
    se = [jackknife_se(full[k], loo[:, k]) for k in range(len(full))]
    names = ("descent_ratio", "cosine", "descent_per_gflop", "step_size_vs_default", "per_flop_vs_default")
    out = {"setting": s.label, "estimator": s.estimator, "p1": s.p1, "p2": s.p2,
           "split": s.split if s.family.split_matters else None,
           "forwards": list(s.forwards()), "gflops_per_step": float(t.cost.mean() / 1e9)}
    for k, name in enumerate(names):
        out[name] = float(full[k])
        out[name + "_se"] = float(se[k])
    return out


def unit_shares(ck: Checkpoint) -> list[dict]:
    """Each unit's share of ‖G‖² (U-statistics, so the batches' noise does not inflate small
    units), with jackknife SEs."""
    total = ck.gram.sum(0)
    g2, g2_loo = pair_mean(total), leave_one_out_pair_means(total)
    out = []
    for u, name in enumerate(ck.units):
        if ck.dims[u] == 0:
            continue
        share = pair_mean(ck.gram[u]) / g2
        loo = leave_one_out_pair_means(ck.gram[u]) / g2_loo
        out.append({"unit": name, "elements": int(ck.dims[u]), "share": share, "share_se": jackknife_se(share, loo)})
    return out


def block_share(ck: Checkpoint, split: int) -> tuple[float, float]:
    """Block 2's share of ‖G‖² at ``split``, with its jackknife SE."""
    total = ck.gram.sum(0)
    two = sum(ck.gram[u] for u, name in enumerate(ck.units) if unit_block(name, split) == 2)
    share = pair_mean(two) / pair_mean(total)
    loo = leave_one_out_pair_means(two) / leave_one_out_pair_means(total)
    return share, jackknife_se(share, loo)


def reference_cos2(ck: Checkpoint, examples: int, batch: int) -> float:
    """cos²(g_M, G) for a reference gradient g_M of ``examples`` examples: the factor by which
    every descent ratio shrinks when measured against g_M instead of G."""
    total = ck.gram.sum(0)
    g2 = pair_mean(total)
    per_batch_noise = float(np.trace(total) / total.shape[0]) - g2  # tr Σ_B
    return g2 / (g2 + per_batch_noise * batch / examples)


def mean_and_se(samples: np.ndarray) -> tuple[float, float]:
    """A Monte-Carlo mean and its standard error."""
    samples = np.asarray(samples, float)
    return float(samples.mean()), float(samples.std(ddof=1) / np.sqrt(len(samples)))


# -- probes with a per-tensor scale (issue 27) ---------------------------------------------------
#
# A whole-model probe z = s ⊙ r, r Rademacher, s ≥ 0 a fixed scale per element (here one value s_t
# per trainable tensor t; w_t = s_t²). With u = s ⊙ h the central scalar is h·z = u·r (to O(eps²)),
# and one probe's estimate ĝ_p = (u·r) s ⊙ r. Because r_i² = 1 exactly:
#
#   E[ĝ_p | h] = s² ⊙ h                                  (biased unless s = 1: a diagonal preconditioner)
#   E[G·ĝ]     = Σ_t w_t ‖G_t‖²                          (over batches, E h = G)
#   ‖ĝ_p‖²     = (u·r)² ‖s‖², so E‖ĝ_p‖² = ‖s‖² ‖s ⊙ h‖²
#   E[ĝ_p·ĝ_q] = ‖s² ⊙ h‖² for p ≠ q (independent probes), hence, P probes averaged,
#   E‖ĝ‖²      = [‖s‖² ‖s ⊙ h‖² + (P − 1) ‖s² ⊙ h‖²] / P                       (central)
#              = the same + ‖s‖² E[q_s²] / P                                     (forward, P + 1 forwards)
#
# with q_s = (eps/2) zᵀHz the forward difference's curvature term, taken as E[q²]·(‖s‖²/d)² from
# the measured isotropic E[q²] (exact when H ∝ I; the term is < 1% of E‖ĝ‖² for LoRA and a few % for
# norm, so the model barely matters). s = 1 gives back the whole-model rows above. The descent ratio
# of a biased estimate is E[G·ĝ]² / (E‖ĝ‖² ‖G‖²) (the expected one-step descent at the best step
# size, relative to backprop's); E[G·ĝ] is the U-statistic of Σ_t w_t (h_a,t · h_b,t) over batch
# pairs, unbiased like ‖G‖²'s. The scale is held fixed in the jackknife (its own estimation noise is
# not in the SE: for the oracle scales below that makes them an in-sample upper bound).


@dataclass(frozen=True)
class ScaledProbe:
    """A whole-model estimator whose probes carry the per-tensor scale s_t = √w_t."""

    label: str
    difference: str  # "central" (2P forwards) or "forward" (P + 1)
    p: int
    weights: np.ndarray  # [T] w_t = s_t²

    def forwards(self) -> int:
        return 2 * self.p if self.difference == "central" else self.p + 1


@dataclass
class TensorCheckpoint:
    """Per-tensor Gram matrices of the batch gradients (gram[t, a, b] = h_a,t · h_b,t), the
    tensors' sizes, and per batch the FLOPs of one whole-model forward; E[q²] as measured."""

    gram: np.ndarray  # [T, N, N]
    numel: np.ndarray  # [T]
    full_flops: np.ndarray  # [N]
    q2: float = 0.0
    curvature: np.ndarray | None = None  # [T] curvature per element over the average (None: 1, the isotropic model)

    def relative_curvature(self) -> np.ndarray:
        return np.ones(len(self.numel)) if self.curvature is None else np.asarray(self.curvature, float)

    def diag(self) -> np.ndarray:
        return np.einsum("tnn->tn", self.gram)  # [T, N] per-batch ‖h_t‖²


def scaled_terms(tck: TensorCheckpoint, probe: ScaledProbe) -> SettingTerms:
    """Per batch E‖ĝ‖² (formula above) and the step's FLOPs."""
    w = np.asarray(probe.weights, float)
    diag = tck.diag()
    c = tck.relative_curvature()
    norm_s2 = float(w @ (tck.numel * c))  # ‖s‖², or zᵀHz/κ̄ in the curvature-weighted model
    y = (norm_s2 * (w @ diag) + (probe.p - 1) * ((w**2 * c) @ diag)) / probe.p
    if probe.difference == "forward":
        y = y + norm_s2 * tck.q2 * (float(w @ tck.numel) / tck.numel.sum()) ** 2 / probe.p
    return SettingTerms(y, probe.forwards() * tck.full_flops)


def scaled_figures(tck: TensorCheckpoint, probe: ScaledProbe, references: dict[str, SettingTerms]) -> dict:
    """A scaled probe's descent ratio, cosine, descent per GFLOP, and its descent per FLOP over
    each unbiased reference's (``references``: name -> its terms on the same batches), with
    delete-one-batch jackknife SEs."""
    total = tck.gram.sum(0)
    signal = np.tensordot(np.asarray(probe.weights, float), tck.gram, axes=1)  # Σ_t w_t gram_t
    g2, g2_loo = pair_mean(total), leave_one_out_pair_means(total)
    m, m_loo = pair_mean(signal), leave_one_out_pair_means(signal)
    t = scaled_terms(tck, probe)
    refs = list(references.values())

    def stat(g, mm, y, c, *ref):
        r = mm**2 / (y * g)
        vs = [r / c / (g / ry / rc) for ry, rc in zip(ref[0::2], ref[1::2])]
        steps = [(mm / y) / (g / ry) for ry in ref[0::2]]  # best step size E[G·ĝ]/E‖ĝ‖² over the reference's
        return np.array([r, np.sqrt(max(r, 0.0)), r / (c / 1e9), *vs, *steps])

    ref_full = [v for ref in refs for v in (ref.y.mean(), ref.cost.mean())]
    full = stat(g2, m, t.y.mean(), t.cost.mean(), *ref_full)
    ref_loo = [v for ref in refs for v in (loo_means(ref.y), loo_means(ref.cost))]
    loo = np.stack([stat(*row) for row in zip(g2_loo, m_loo, loo_means(t.y), loo_means(t.cost), *ref_loo)])
    names = (["descent_ratio", "cosine", "descent_per_gflop"] + [f"per_flop_vs_{k}" for k in references]
             + [f"step_size_vs_{k}" for k in references])
    out = {"setting": probe.label, "difference": probe.difference, "p": probe.p, "forwards": probe.forwards(),
           "gflops_per_step": float(t.cost.mean() / 1e9), "bias_cosine": bias_cosine(tck, probe.weights)}
    for k, name in enumerate(names):
        out[name] = float(full[k])
        out[name + "_se"] = jackknife_se(full[k], loo[:, k])
    return out


def bias_cosine(tck: TensorCheckpoint, weights: np.ndarray) -> float:
    """cos(G, s² ⊙ G): how far the scale turns the expected step from the gradient (1 for s = 1)."""
    g = np.maximum([pair_mean(gram) for gram in tck.gram], 0.0)
    w = np.asarray(weights, float)
    return float((w @ g) / np.sqrt(g.sum() * ((w**2) @ g))) if (w @ g) > 0 else 0.0


def tensor_energy(tck: TensorCheckpoint) -> np.ndarray:
    """Each tensor's ‖G_t‖² (U-statistic, clipped at 0: a negative estimate is noise)."""
    return np.maximum([pair_mean(gram) for gram in tck.gram], 0.0)


def normalised(weights: np.ndarray, numel: np.ndarray) -> np.ndarray:
    """Weights rescaled so that ‖s‖² = d: the probe moves the weights as far as an isotropic one
    (the step-size column then compares like with like; the descent ratio does not depend on it)."""
    w = np.asarray(weights, float)
    return w * (numel.sum() / float(w @ numel))


def per_element(energy: np.ndarray, numel: np.ndarray) -> np.ndarray:
    """energy/numel, 0 for an empty tensor."""
    return np.divide(energy, numel, out=np.zeros(len(numel)), where=numel > 0)


def oracle_rms_weights(tck: TensorCheckpoint) -> np.ndarray:
    """s_t ∝ the RMS of G over tensor t (w_t ∝ ‖G_t‖²/n_t): the brief's oracle, not replayable."""
    return normalised(per_element(tensor_energy(tck), tck.numel), tck.numel)


def history_weights(tck: TensorCheckpoint, steps: int, p_history: int) -> np.ndarray:
    """What a device can rebuild from the seed log: w_t = ‖m_t‖²/n_t, m the running mean of the
    past ĝ (equivalently the RMS of tensor t's accumulated update, for a constant lr), after
    ``steps`` isotropic forward-difference steps of ``p_history`` probes, in expectation and with
    G held constant along the history (both favour it): ‖G_t‖²/n_t plus the per-element noise of
    the mean, (E‖h‖² + E[q²]) / (P·K), the same for every element, so a short history gives an
    isotropic scale."""
    noise = (float(tck.diag().sum(0).mean()) + tck.q2) / (p_history * steps)
    return normalised(per_element(tensor_energy(tck), tck.numel) + noise, tck.numel)


def best_weights(tck: TensorCheckpoint, difference: str, p: int) -> np.ndarray:
    """The per-tensor scale that maximises the descent ratio on these batches (L-BFGS over log w,
    from the oracle-rms scale, the objective in units of its starting value so the optimiser's
    tolerances mean something): an in-sample upper bound on what a per-tensor scale can buy."""
    from scipy.optimize import minimize

    g2 = pair_mean(tck.gram.sum(0))

    def ratio(logw):
        w = np.exp(logw)
        m = pair_mean(np.tensordot(w, tck.gram, axes=1))
        return m * abs(m) / (scaled_terms(tck, ScaledProbe("", difference, p, w)).y.mean() * g2)  # signed: uphill loses

    start = np.log(np.maximum(oracle_rms_weights(tck), 1e-9))
    unit = abs(ratio(start)) or 1.0
    found = minimize(lambda x: -ratio(x) / unit, start, method="L-BFGS-B", bounds=[(-25.0, 25.0)] * len(start))
    return normalised(np.exp(found.x), tck.numel)


def half(tck: TensorCheckpoint, parity: int) -> TensorCheckpoint:
    """The checkpoint restricted to the batches of one parity: fit a scale on one half, measure
    it on the other, so an oracle's own noise does not flatter it (cross-fitting)."""
    keep = np.arange(parity, tck.gram.shape[1], 2)
    return TensorCheckpoint(tck.gram[:, keep][:, :, keep], tck.numel, tck.full_flops[keep], tck.q2, tck.curvature)


def fisher_curvature(tck: TensorCheckpoint) -> np.ndarray:
    """Each tensor's curvature per element over the average, with the Hessian taken as the
    gradient covariance (empirical Fisher, the Gauss-Newton part for a cross-entropy loss): the
    batch gradients' noise per element, E‖h_t‖² − ‖G_t‖² over n_t, from the same Gram matrices.

    Why it matters: the one-step descent at the best step is E[G·ĝ]²/(2 E[ĝᵀHĝ]) and, for P ≪ d,
    E[ĝᵀHĝ] ≈ (1/P) ‖s ⊙ h‖² tr(DHD): the isotropic figures take tr(DHD) = ‖s‖² tr(H)/d, which
    flatters a scale that concentrates on high-curvature tensors (MeZO's analysis: the slowdown
    follows the Hessian's effective rank, not d). With this curvature, scaled_terms replaces ‖s‖²
    by Σ_t w_t n_t c_t."""
    noise = np.array([np.trace(g) / g.shape[0] - pair_mean(g) for g in tck.gram])
    per = per_element(np.maximum(noise, 0.0), tck.numel)
    return per / (per @ tck.numel / tck.numel.sum())


def group_share(tck: TensorCheckpoint, mask: np.ndarray) -> tuple[float, float]:
    """The share of ‖G‖² held by the tensors in ``mask`` (U-statistics), with its jackknife SE."""
    total = tck.gram.sum(0)
    part = tck.gram[np.asarray(mask, bool)].sum(0)
    share = pair_mean(part) / pair_mean(total)
    loo = leave_one_out_pair_means(part) / leave_one_out_pair_means(total)
    return share, jackknife_se(share, loo)
