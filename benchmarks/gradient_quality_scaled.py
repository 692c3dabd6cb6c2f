"""``gradient_quality.py scaled``: where the probes go (issue 27). From the cached per-batch
gradients (no model work beyond reading the trainable set's layout), the figures of whole-model
estimators whose probes carry a per-tensor scale, z = s ⊙ r (formulas in
``gradient_quality_stats``, section "probes with a per-tensor scale"):

* ``iso``: s = 1 (DeComFL / MeZO; a check: it reproduces the bench's whole-model rows);
* ``b-only`` (LoRA): s = 0 on every ``lora_A``, 1 on every ``lora_B`` (at the base model the
  gradient with respect to A is exactly 0 while B = 0); ``b-only v_proj``: on one projection's B
  only (a trainable set too: ``lora:targets=v_proj,factors=B``);
* ``history K``: s_t² ∝ the mean square of the running mean of K isotropic forward-difference
  steps' ĝ over tensor t (what every device can rebuild from the seed log);
* ``oracle-rms``: s_t ∝ the RMS of G over t (not replayable: how much is on the table), and
  ``oracle-best``: the per-tensor scale maximising the descent ratio in-sample (an upper bound).

Each is reported as descent per forward FLOP over the default's (SPZO P1 1, P2 4, split 20, joint)
and over DeComFL P = 5's, central and forward, with jackknife SEs, at each checkpoint. Writes
``benchmarks/results/gradient_quality/scaled_<trainable>.json``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

import gradient_quality_grads as grads
import gradient_quality_stats as st

PROBES = (1, 4, 5, 8, 16, 32)
HISTORY_STEPS = (100, 1_000, 10_000, 100_000)
HISTORY_PROBES = 16  # the history's forward-difference probes per step
BEST_P = 16  # the P at which the scaled variants are compared


def references(ck: st.Checkpoint, default: st.Setting) -> dict[str, st.SettingTerms]:
    """The unbiased settings every scaled probe is compared with, on the same batches."""
    return {"default": st.setting_terms(ck, default),
            "decomfl_p5": st.setting_terms(ck, st.Setting("central", 5, 1, default.split)),
            "decomfl_fwd_p5": st.setting_terms(ck, st.Setting("forward", 5, 1, default.split))}


def candidate_probes(tck: st.TensorCheckpoint, names: list[str]) -> list[st.ScaledProbe]:
    """Every scale of the screen, forward differences at each P (and central at P = 5)."""
    iso = np.ones(len(names))
    scales = {"iso": iso}
    if any(n.endswith(".lora_A") for n in names):
        scales["b-only"] = np.array([0.0 if n.endswith(".lora_A") else 1.0 for n in names])
        for target in sorted({n.split(".")[-2] for n in names if n.endswith(".lora_B")}):  # one adapted projection's B
            scales[f"b-only {target}"] = np.array([float(n.endswith(f".{target}.lora_B")) for n in names])
    out = [st.ScaledProbe(f"{k} forward P={p}", "forward", p, w) for k, w in scales.items() for p in PROBES]
    out += [st.ScaledProbe(f"{k} central P=5", "central", 5, w) for k, w in scales.items()]
    out += [st.ScaledProbe(f"history K={k} forward P={BEST_P}", "forward", BEST_P, st.history_weights(tck, k, HISTORY_PROBES))
            for k in HISTORY_STEPS]
    return out + oracle_probes(tck, "in-sample")


def oracle_probes(fit: st.TensorCheckpoint, how: str) -> list[st.ScaledProbe]:
    """The two oracle scales fitted on ``fit``'s batches."""
    return [st.ScaledProbe(f"oracle-rms ({how}) forward P={BEST_P}", "forward", BEST_P, st.oracle_rms_weights(fit)),
            st.ScaledProbe(f"oracle-best ({how}) forward P={BEST_P}", "forward", BEST_P, st.best_weights(fit, "forward", BEST_P))]


def cross_fitted(tck: st.TensorCheckpoint, ck: st.Checkpoint, default: st.Setting) -> list[dict]:
    """The oracles fitted on the odd batches and measured on the even ones (and the reference
    settings on those same even batches): what an oracle's noise-free part is worth."""
    keep = np.arange(0, ck.batches, 2)
    even = st.Checkpoint(ck.gram[:, keep][:, :, keep], ck.dims, ck.units, ck.flops[keep], ck.q2)
    refs = references(even, default)
    return [st.scaled_figures(st.half(tck, 0), p, refs) | {"batches_measured": len(keep)}
            for p in oracle_probes(st.half(tck, 1), "cross-fitted")]


def checkpoint_screen(tck: st.TensorCheckpoint, ck: st.Checkpoint, names: list[str], default: st.Setting) -> dict:
    refs = references(ck, default)
    lora_a = np.array([n.endswith(".lora_A") for n in names])
    energy = st.tensor_energy(tck)
    settings = [st.scaled_figures(tck, p, refs) for p in candidate_probes(tck, names)] + cross_fitted(tck, ck, default)
    out = {"batches": ck.batches, "settings": settings}
    if lora_a.any():
        out["lora_A_share"] = dict(zip(("share", "share_se"), st.group_share(tck, lora_a)))
        out["lora_A_elements_share"] = float(tck.numel[lora_a].sum() / tck.numel.sum())
        out["lora_factor_shares"] = factor_shares(tck, names)
    order = np.argsort(-energy)
    out["top_tensors"] = [{"tensor": names[t], "elements": int(tck.numel[t]), "share": float(energy[t] / energy.sum())}
                          for t in order[:5]]
    # how concentrated G is: the fewest tensors (and their elements) holding 80% of its energy
    cum = np.cumsum(energy[order]) / energy.sum()
    k = int(np.searchsorted(cum, 0.8) + 1)
    out["tensors_for_80pct"] = {"tensors": k, "of": len(names), "elements_share": float(tck.numel[order[:k]].sum() / tck.numel.sum())}
    return out


def factor_shares(tck: st.TensorCheckpoint, names: list[str]) -> list[dict]:
    """Each (projection, factor)'s share of ‖G‖² and of the elements: q_proj's B, v_proj's A, ..."""
    groups = sorted({".".join(n.split(".")[-2:]) for n in names})
    out = []
    for g in groups:
        mask = np.array([n.endswith("." + g) for n in names])
        share, se = st.group_share(tck, mask)
        out.append({"factor": g, "share": share, "share_se": se, "elements_share": float(tck.numel[mask].sum() / tck.numel.sum())})
    return out


def with_fisher_curvature(tck: st.TensorCheckpoint, ck: st.Checkpoint, owner: np.ndarray) -> tuple[st.TensorCheckpoint, st.Checkpoint]:
    """The same batches under the curvature-weighted model (``st.fisher_curvature``): each tensor's
    elements count for their relative curvature, in the scaled probes' moments and in the
    references' (a unit's size becomes Σ_t n_t c_t, what an isotropic probe's zᵀHz/κ̄ is)."""
    c = st.fisher_curvature(tck)
    tck_f = dataclasses.replace(tck, curvature=c)
    dims = np.array([float((tck.numel * c)[owner == u].sum()) for u in range(len(ck.units))])
    return tck_f, dataclasses.replace(ck, dims=dims)


def curvature_by_factor(tck: st.TensorCheckpoint, names: list[str]) -> dict[str, float]:
    """The curvature proxy per element, element-weighted over each (projection, factor) and over
    all B factors (relative to the whole set's average; empty for a set without LoRA)."""
    c = tck.relative_curvature()
    groups = {g: (lambda n, g=g: n.endswith("." + g)) for g in sorted({".".join(n.split(".")[-2:]) for n in names if ".lora_" in n})}
    if groups:
        groups["lora_B"] = lambda n: n.endswith(".lora_B")
    out = {}
    for g, keep in groups.items():
        mask = np.array([keep(n) for n in names])
        out[g] = float((c * tck.numel)[mask].sum() / tck.numel[mask].sum())
    return out


def load_checkpoint(bench: grads.Bench, checkpoint: str, base: dict, count: int, q2_of) -> tuple[st.TensorCheckpoint, st.Checkpoint, np.ndarray]:
    """The per-tensor and per-unit views of one checkpoint's cached batch gradients, and each
    tensor's unit index."""
    info = grads.prepare_checkpoint(bench, checkpoint, base, count)
    data = grads.load_gradients(Path(info["folder"]), count)
    names, numel, index = grads.tensor_layout(bench.ex)
    tgram = st.gram_by_unit(data["grads"], index, len(names))
    units, unit_index = grads.unit_layout(bench.ex)
    owner = np.array([units.index(u) for n in names for u, members in bench.ex.unit_tensors.items() if n in members])
    ugram = np.stack([tgram[owner == u].sum(0) for u in range(len(units))])
    dims = np.bincount(unit_index, minlength=len(units))
    q2, _ = q2_of(info["validation"])
    split = bench.ex.split
    full = data["flops"][:, split - 1, 1] + data["flops"][:, split - 1, 2]
    tck, ck = st.TensorCheckpoint(tgram, numel, full, q2), st.Checkpoint(ugram, dims, units, data["flops"], q2)
    return tck, ck, owner


def scaled_result(bench: grads.Bench, batches: dict[str, int], q2_of) -> dict:
    """The screen on every checkpoint of ``batches`` (checkpoint -> cached batches to read)."""
    base = bench.ex.trainable_arrays()
    job = bench.job
    default = st.Setting(f"spzo-{job.variant}", job.p1, job.p2, bench.ex.split)
    out = {"trainable": job.trainable, "model": bench.model_name, "task": job.task, "default": default.label,
           "history_probes": HISTORY_PROBES, "checkpoints": {}}
    for checkpoint, count in batches.items():
        tck, ck, owner = load_checkpoint(bench, checkpoint, base, count, q2_of)
        names = list(bench.ex.names)
        screen = checkpoint_screen(tck, ck, names, default)
        tck_f, ck_f = with_fisher_curvature(tck, ck, owner)
        screen["fisher_curvature"] = {n: float(c) for n, c in zip(names, tck_f.curvature)}
        screen["fisher_curvature_by_factor"] = curvature_by_factor(tck_f, names)
        screen["settings_fisher_curvature"] = checkpoint_screen(tck_f, ck_f, names, default)["settings"]
        out["checkpoints"][checkpoint] = screen
    bench.ex.load_trainable(base)
    return out
