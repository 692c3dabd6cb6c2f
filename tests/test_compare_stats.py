"""The paired statistics of the comparison (benchmarks/compare_stats.py) on synthetic runs whose
answer is known: an interval that must include 0 and one that must not, FLOPs-to-target ratios
resolved, unresolved and censored, and pairing by seed and example."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.append(str(Path(__file__).resolve().parents[1] / "benchmarks"))

import compare_stats as cs  # noqa: E402


def run(seed: int, accuracy_curve, n: int = 400, flops_per_eval: float = 10.0, rng_seed: int = 0, shared=None) -> cs.RunScores:
    """A run whose evaluation t gets about accuracy_curve[t] of n examples right. ``shared``:
    per-example difficulty in [0, 1) shared by every run (the same evaluation set), so runs with
    equal curves get nearly the same examples right."""
    rng = np.random.default_rng([seed, rng_seed])
    difficulty = shared if shared is not None else rng.random(n)
    noise = rng.random((len(accuracy_curve), n)) * 0.05
    hits = (difficulty[None, :] + noise < np.asarray(accuracy_curve)[:, None]).astype(int)
    logprobs = np.where(hits == 1, -0.3, -1.2) + rng.normal(0, 0.05, hits.shape)
    return cs.RunScores(seed, np.arange(len(accuracy_curve)) * flops_per_eval, hits, logprobs)


def test_an_equal_pair_is_not_resolved_and_a_clear_gain_is():
    shared = np.random.default_rng(9).random(400)
    base = [run(s, [0.5, 0.6, 0.65], shared=shared, rng_seed=1) for s in range(4)]
    same = [run(s, [0.5, 0.6, 0.65], shared=shared, rng_seed=2) for s in range(4)]
    better = [run(s, [0.5, 0.7, 0.80], shared=shared, rng_seed=3) for s in range(4)]
    tie = cs.paired_difference(same, base, "accuracy", replicates=500)
    assert tie.pooled.low < 0 < tie.pooled.high and not tie.resolved
    assert "not resolved" in cs.fmt_difference(tie)
    gain = cs.paired_difference(better, base, "accuracy", replicates=500)
    assert gain.resolved and gain.pooled.low > 0.10 and gain.pooled.value == pytest.approx(0.15, abs=0.02)
    assert set(gain.per_seed) == {0, 1, 2, 3} and all(iv.low > 0 for iv in gain.per_seed.values())
    loss = cs.paired_difference(better, base, "eval_loss", replicates=500)  # -loss: higher is better
    assert loss.resolved and loss.pooled.value > 0


def test_pairing_uses_only_the_seeds_both_methods_have_and_the_same_examples():
    a = [run(s, [0.5, 0.6]) for s in (0, 1, 2)]
    b = [run(s, [0.5, 0.6]) for s in (1, 2, 3)]
    assert set(cs.paired_difference(a, b, "accuracy", replicates=50).per_seed) == {1, 2}
    with pytest.raises(ValueError, match="different sizes"):
        cs.paired_difference(a, [run(1, [0.5, 0.6], n=300)], "accuracy", replicates=10)
    with pytest.raises(ValueError, match="nothing to pair"):
        cs.paired_difference(a[:1], b[2:], "accuracy", replicates=10)


def test_flops_to_target_interpolates_and_censors():
    curves = np.array([[0.5, 0.6, 0.8], [0.5, 0.55, 0.58], [0.7, 0.8, 0.9]])
    reach = cs.flops_to_target(curves, np.array([0.0, 10.0, 20.0]), 0.7)
    assert reach[0] == pytest.approx(15.0) and np.isnan(reach[1]) and reach[2] == 0.0


def test_a_twice_as_fast_estimator_is_resolved_near_two_and_an_equal_one_is_not():
    shared = np.random.default_rng(4).random(400)
    curve = [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.82, 0.84]
    base = [run(s, curve, shared=shared, rng_seed=1) for s in range(4)]
    fast = [run(s, curve, shared=shared, rng_seed=2, flops_per_eval=5.0) for s in range(4)]
    same = [run(s, curve, shared=shared, rng_seed=3) for s in range(4)]
    r = cs.target_ratio(fast, base, "accuracy", 0.7, replicates=400)
    assert r.resolved and r.ratio.value == pytest.approx(2.0, rel=0.1) and 1 < r.ratio.low <= r.ratio.value <= r.ratio.high
    assert cs.fmt_ratio(r).startswith(f"{r.ratio.value:.2f}× [")
    t = cs.target_ratio(same, base, "accuracy", 0.7, replicates=400)
    assert t.ratio.low < 1 < t.ratio.high and not t.resolved and cs.fmt_ratio(t).startswith("not resolved [")
    entry = cs.summary_entry("sst2", "spzo", "mezo", r)
    assert {"task", "estimator", "baseline", "target", "ratio", "low", "high", "resolved", "seeds"} <= set(entry)
    assert entry["seeds"] == 4 and entry["resolved"] is True


def test_a_baseline_that_never_reaches_the_target_gives_a_bound_not_a_value():
    shared = np.random.default_rng(5).random(400)
    est = [run(s, [0.5, 0.6, 0.75, 0.85], shared=shared, rng_seed=1) for s in range(3)]
    stuck = [run(s, [0.5, 0.55, 0.58, 0.6], shared=shared, rng_seed=2) for s in range(3)]
    r = cs.target_ratio(est, stuck, "accuracy", 0.7, replicates=300)
    assert r.censored_baseline == 3 and r.censored_estimator == 0
    assert r.ratio.value is None and r.ratio.high is None and r.ratio.low > 1 and r.resolved
    assert cs.fmt_ratio(r).startswith("≥") and "∞)" in cs.fmt_ratio(r) and ">" not in cs.fmt_ratio(r)
    both = cs.target_ratio(stuck, stuck, "accuracy", 0.7, replicates=100)  # neither reaches it: nothing known
    assert both.ratio.low == 0.0 and both.ratio.high is None and not both.resolved


def test_a_loss_target_is_reached_from_above():
    shared = np.random.default_rng(6).random(300)
    base = [run(s, [0.5, 0.6, 0.7, 0.8], n=300, shared=shared, rng_seed=1) for s in range(3)]
    fast = [run(s, [0.5, 0.7, 0.8, 0.85], n=300, shared=shared, rng_seed=2) for s in range(3)]
    loss0 = -base[0].logprobs[0].mean()
    target = loss0 - 0.15  # a lower loss than at round 0
    r = cs.target_ratio(fast, base, "eval_loss", target, replicates=300)
    assert r.resolved and r.ratio.value > 1.2 and r.target == target


def test_late_rise_tells_a_rising_curve_from_a_flat_one():
    shared = np.random.default_rng(7).random(400)
    rising = [run(s, [0.5, 0.6, 0.65, 0.7, 0.75], shared=shared, rng_seed=1) for s in range(4)]
    flat = [run(s, [0.5, 0.7, 0.7, 0.7, 0.7], shared=shared, rng_seed=2) for s in range(4)]
    up = cs.late_rise(rising, "accuracy", replicates=300)  # evaluation 2 of 0..4 is at half the FLOPs
    assert up.excludes(0.0) and up.value == pytest.approx(0.10, abs=0.02)
    still = cs.late_rise(flat, "accuracy", replicates=300)
    assert not still.excludes(0.0)
