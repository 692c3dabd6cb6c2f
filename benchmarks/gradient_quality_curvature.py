"""The curvature along each probe support, measured with real forwards: the check of the scaled
screen's one modelling assumption (issue 27).

The bench's descent ratio E[G·ĝ]²/(E‖ĝ‖²‖G‖²) charges a step's noise at the average curvature:
the expected one-step loss change at the best step is E[G·ĝ]²/(2 E[ĝᵀHĝ]), and for P ≪ d,
E[ĝᵀHĝ] ≈ (1/P) ‖s ⊙ h‖² tr(DHD) with D = diag(s), where the ratio above assumed
tr(DHD) = ‖s‖² · tr(H)/d. Restricting the probes to a support S changes the curvature per probed
element, κ_S = tr(H_SS)/|S|, so a curvature-aware gain is the screen's gain × κ_all/κ_S. While
LoRA's B = 0 the loss is flat in A (H_AA = 0), so κ_B = κ_all · d/|B|: the B-only gain of the
screen would vanish in this model at the base model itself; what it is elsewhere is measured here.

κ_S from the second difference along Rademacher directions on S: with
q = (L(θ + εz) + L(θ − εz) − 2L(θ)) / (2ε) = (ε/2) zᵀHz + O(ε³), E[q] = (ε/2) tr(H_SS), so
κ_S = 2·mean(q)/(ε|S|), its SE from the spread of q over the probes (zᵀHz's off-diagonal part
makes it noisy). The probes perturb only S through a view of the executor whose units hold only
S's tensors (a bench device; the method's own support is its trainable set).

    python benchmarks/gradient_quality.py curvature [--probes 32]

writes ``benchmarks/results/gradient_quality/curvature_lora.json``.
"""

from __future__ import annotations

import copy

import numpy as np
from tqdm.auto import tqdm

import gradient_quality_grads as grads
import gradient_quality_stats as st
from edgezo.keys import WHOLE_MODEL, Direction

SUPPORTS = {  # name -> which trainable tensors a probe of that support perturbs
    "B only": lambda n: n.endswith(".lora_B"),
    "B of v_proj only": lambda n: n.endswith(".v_proj.lora_B"),
    "B of q_proj only": lambda n: n.endswith(".q_proj.lora_B"),
}
REFERENCE = "B only"  # whole-LoRA probes are left out: their zᵀHz is dominated by the A-B cross term
# (mean 0, large spread: 3 probes at the base model gave q = -0.034, -0.024, 0.094) and while B = 0,
# H_AA = 0 makes κ_B/κ_all = d/|B| exactly (2.5 for r = 8 on q and v)
PROBE_SEED = 11  # the run seed of the measuring directions (not any job's)


def probe_view(ex, keep):
    """A shallow copy of the executor whose forwards perturb only the tensors ``keep`` selects
    (the units' tensor lists filtered; the model and its weights are shared)."""
    view = copy.copy(ex)
    view.unit_tensors = {u: [n for n in names if keep(n)] for u, names in ex.unit_tensors.items()}
    return view


def loss(ex, batch, perturbation=()) -> float:
    return ex.forward_block2(ex.forward_block1(batch, perturbation), batch, perturbation)


def second_differences(ex, batch, keep, probes: int, eps: float) -> np.ndarray:
    """q along ``probes`` Rademacher directions on the support ``keep``."""
    view = probe_view(ex, keep)
    base = loss(view, batch)
    out = []
    for i in tqdm(range(probes), desc="second differences", dynamic_ncols=True, leave=False):
        d = Direction(PROBE_SEED, 0, 0, WHOLE_MODEL, i)
        out.append((loss(view, batch, [(d, eps)]) + loss(view, batch, [(d, -eps)]) - 2 * base) / (2 * eps))
    return np.array(out)


def support_curvature(ex, batch, probes: int, eps: float, supports=tuple(SUPPORTS), rows: dict | None = None) -> dict:
    """κ_S and its SE for each of ``supports`` (added to ``rows``, an earlier run's), and each
    one's ratio to the B-only support's (delta method)."""
    rows = dict(rows or {})
    for name in supports:
        keep = SUPPORTS[name]
        size = sum(ex.tensor_numel[n] for n in ex.names if keep(n))
        q = second_differences(ex, batch, keep, probes, eps)
        mean, se = st.mean_and_se(q)
        rows[name] = {"elements": size, "q": q.tolist(), "kappa": 2 * mean / (eps * size), "kappa_se": 2 * se / (eps * size)}
    return with_ratios(rows)


def with_ratios(rows: dict) -> dict:
    """Each support's κ over the reference's, its SE by the delta method (independent probes;
    the reference's own ratio is 1 exactly)."""
    ref = rows[REFERENCE]
    for name, row in rows.items():
        ratio = row["kappa"] / ref["kappa"]
        row["kappa_vs_b_only"] = ratio
        row["kappa_vs_b_only_se"] = 0.0 if name == REFERENCE else abs(ratio) * float(
            np.hypot(row["kappa_se"] / row["kappa"], ref["kappa_se"] / ref["kappa"]))
    return rows


def curvature_result(bench: grads.Bench, probes: int, supports=tuple(SUPPORTS), earlier: dict | None = None) -> dict:
    """κ per support at the base and mid checkpoints, on gradient batch 0 (the linearisation
    check's batch), at the job's eps; ``earlier``: a previous result (same probes) to extend."""
    if earlier and earlier["probes"] != probes:
        raise ValueError(f"the earlier result used {earlier['probes']} probes per support, not {probes}")
    base = bench.ex.trainable_arrays()
    out = {"trainable": bench.job.trainable, "model": bench.model_name, "eps": bench.job.eps, "probes": probes,
           "batch": "gradient batch 0", "checkpoints": {}}
    for checkpoint in ("base", "mid"):
        grads.set_checkpoint(bench, checkpoint, base)
        rows = (earlier or {}).get("checkpoints", {}).get(checkpoint)
        out["checkpoints"][checkpoint] = support_curvature(bench.ex, bench.batch(0), probes, bench.job.eps, supports, rows)
    bench.ex.load_trainable(base)
    return out
