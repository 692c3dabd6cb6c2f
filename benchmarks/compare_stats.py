"""The statistics of the paired comparison (harness compare-2): what the evidence allows, with
intervals, from runs that scored the same evaluation examples.

Every run of a task scores one fixed evaluation set (``--eval-seed`` or the whole split), so two
methods are compared on the same examples and, seed by seed, on the same training partition.
Two sources of noise remain, and the intervals resample both, crossed: the seeds (training
noise) and the evaluation examples (which examples happen to be in the set). One bootstrap
replicate draws seeds with replacement (the same draw for both methods: paired) and examples
with replacement (the same draw for every run), and recomputes everything from the per-example
scores. Intervals are the 2.5 and 97.5 percentiles of the replicates.

FLOPs to a target: the first crossing of the target along the run's curve, interpolated
linearly between the two evaluations that bracket it. A run that never reaches it is
*censored*: all we know is that it would need more than it spent. A ratio's interval therefore
takes the censored runs at both ends of what they allow: for ``low`` the estimator's censored
runs count as never reaching it (infinite) and the baseline's as reaching it at their budget;
for ``high`` the reverse. A ratio whose interval includes 1 is "not resolved"; an unbounded end
is ``None`` (printed as ∞), never a ">x×" claim.

Pure functions on NumPy arrays; ``compare_report`` reads the rows into ``RunScores``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

REPLICATES = 2000
LEVEL = 0.95


@dataclass(frozen=True)
class RunScores:
    """One run's evaluations: FLOPs charged up to each, and each example's score at each."""

    seed: int
    flops: np.ndarray  # [T] cumulative FLOPs at each evaluation (round 0 first)
    hits: np.ndarray  # [T, N] 0/1
    logprobs: np.ndarray  # [T, N] correct-label log-probabilities

    def metric(self, name: str) -> np.ndarray:
        """[T, N] per-example values of a metric oriented so that higher is better: ``accuracy``
        (hits) or ``eval_loss`` (the negated log-probability's sign flipped: -loss)."""
        return {"accuracy": self.hits, "eval_loss": self.logprobs}[name].astype(np.float64)


def oriented(metric: str, value: float) -> float:
    """A target or a level of ``metric`` on the higher-is-better scale of ``RunScores.metric``."""
    return -value if metric == "eval_loss" else value


@dataclass(frozen=True)
class Interval:
    value: float | None
    low: float | None
    high: float | None

    def excludes(self, x: float) -> bool:
        """Whether the whole interval lies on one side of ``x`` (an unbounded end is beyond any x)."""
        lo = -math.inf if self.low is None else self.low
        hi = math.inf if self.high is None else self.high
        return lo > x or hi < x


# -- resampling ---------------------------------------------------------------------------------
def resamples(seeds: int, examples: int, replicates: int = REPLICATES, rng_seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(seed counts [B, S], example counts [B, N]): how often each seed and each example is drawn
    in each replicate; replicate 0 is the data itself (every count 1)."""
    rng = np.random.default_rng(rng_seed)
    seed_counts = np.ones((replicates, seeds))
    example_counts = np.ones((replicates, examples))
    if replicates > 1:
        seed_counts[1:] = rng.multinomial(seeds, np.full(seeds, 1 / seeds), size=replicates - 1)
        example_counts[1:] = rng.multinomial(examples, np.full(examples, 1 / examples), size=replicates - 1)
    return seed_counts, example_counts


def resampled_curves(runs: Sequence[RunScores], metric: str, example_counts: np.ndarray) -> np.ndarray:
    """[S, B, T]: each run's metric curve (mean over examples) under each example resample."""
    weights = example_counts / example_counts.sum(axis=1, keepdims=True)  # [B, N]
    return np.stack([weights @ r.metric(metric).T for r in runs])


def percentile_interval(values: np.ndarray) -> tuple[float, float]:
    tail = 100 * (1 - LEVEL) / 2
    lo, hi = np.nanpercentile(values, [tail, 100 - tail])
    return float(lo), float(hi)


def _paired(estimator: Sequence[RunScores], baseline: Sequence[RunScores]) -> tuple[list[RunScores], list[RunScores]]:
    """The runs of the seeds both methods have, in seed order (pairs by seed); their evaluation
    sets must be the same size (the same examples: the harness's fixed set)."""
    base = {r.seed: r for r in baseline}
    est = {r.seed: r for r in estimator}
    seeds = sorted(set(base) & set(est))
    if not seeds:
        raise ValueError("no seed has runs of both methods: nothing to pair")
    sizes = {r.hits.shape[1] for r in [*est.values(), *base.values()]}
    if len(sizes) != 1:
        raise ValueError(f"runs scored evaluation sets of different sizes {sorted(sizes)}: they cannot be paired example by example")
    return [est[s] for s in seeds], [base[s] for s in seeds]


# -- paired difference at the end of the budget ----------------------------------------------------
@dataclass(frozen=True)
class PairedDifference:
    """Estimator minus baseline of a metric's final value (higher-is-better scale), pooled over
    seeds with its interval, and per seed with an interval over examples alone."""

    metric: str
    pooled: Interval
    per_seed: dict[int, Interval]

    @property
    def resolved(self) -> bool:
        return self.pooled.excludes(0.0)


def paired_difference(estimator: Sequence[RunScores], baseline: Sequence[RunScores], metric: str,
                      replicates: int = REPLICATES, rng_seed: int = 0) -> PairedDifference:
    est, base = _paired(estimator, baseline)
    seed_counts, example_counts = resamples(len(est), est[0].hits.shape[1], replicates, rng_seed)
    diff = resampled_curves(est, metric, example_counts)[:, :, -1] - resampled_curves(base, metric, example_counts)[:, :, -1]  # [S, B]
    pooled = (seed_counts.T * diff).sum(axis=0) / seed_counts.sum(axis=1)
    per_seed = {r.seed: Interval(float(diff[i, 0]), *percentile_interval(diff[i])) for i, r in enumerate(est)}
    return PairedDifference(metric, Interval(float(pooled[0]), *percentile_interval(pooled)), per_seed)


def late_rise(runs: Sequence[RunScores], metric: str, replicates: int = REPLICATES, rng_seed: int = 0) -> Interval:
    """How much a method's metric still rose over the second half of its budget: the final
    evaluation minus the one nearest half the FLOPs, mean over seeds, with its interval. A regime
    whose curves have flattened by then cannot show a difference in compute (issue 24)."""
    seed_counts, example_counts = resamples(len(runs), runs[0].hits.shape[1], replicates, rng_seed)
    curves = resampled_curves(runs, metric, example_counts)  # [S, B, T]
    half = [int(np.argmin(np.abs(r.flops - r.flops[-1] / 2))) for r in runs]
    rise = np.stack([curves[i, :, -1] - curves[i, :, h] for i, h in enumerate(half)])
    pooled = (seed_counts.T * rise).sum(axis=0) / seed_counts.sum(axis=1)
    return Interval(float(pooled[0]), *percentile_interval(pooled))


# -- FLOPs to a target -------------------------------------------------------------------------------
def flops_to_target(curves: np.ndarray, flops: np.ndarray, target: float) -> np.ndarray:
    """[B] FLOPs at which each of B curves [B, T] (higher is better) first reaches ``target``,
    interpolated between evaluations; NaN where it never does (censored at ``flops[-1]``)."""
    reached = curves >= target
    first = reached.argmax(axis=1)
    out = np.full(len(curves), np.nan)
    ok = reached.any(axis=1)
    at_start = ok & (first == 0)
    out[at_start] = flops[0]
    inner = ok & (first > 0)
    if inner.any():
        t = first[inner]
        rows = np.nonzero(inner)[0]
        m0, m1 = curves[rows, t - 1], curves[rows, t]
        frac = np.where(m1 > m0, (target - m0) / np.where(m1 > m0, m1 - m0, 1.0), 1.0)
        out[inner] = flops[t - 1] + np.clip(frac, 0.0, 1.0) * (flops[t] - flops[t - 1])
    return out


@dataclass(frozen=True)
class TargetRatio:
    """Baseline FLOPs to the target over the estimator's (above 1: the estimator needs less),
    the ratio of the means over seeds, with its interval; ``censored`` counts the runs (of both)
    that never reached the target on the data itself."""

    metric: str
    target: float  # on the metric's own scale (an accuracy, or a loss)
    ratio: Interval
    censored_estimator: int
    censored_baseline: int
    seeds: int

    @property
    def resolved(self) -> bool:
        return self.ratio.excludes(1.0)


def _mean_reach(reach: np.ndarray, budget: np.ndarray, seed_counts: np.ndarray, censored_as: float | None) -> np.ndarray:
    """[B] seed-weighted mean FLOPs to target; a censored run counts as its budget (None) or as
    ``censored_as`` (math.inf: never)."""
    filled = np.where(np.isnan(reach), budget[:, None] if censored_as is None else censored_as, reach)  # [S, B]
    with np.errstate(invalid="ignore"):
        return (seed_counts.T * filled).sum(axis=0) / seed_counts.sum(axis=1)


def _ratio(base: np.ndarray, est: np.ndarray) -> np.ndarray:
    """base / est with 0/0 (both at round 0) as 1 and inf/inf as NaN (unknown)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        r = base / est
    r[(base == 0) & (est == 0)] = 1.0
    return r


def target_ratio(estimator: Sequence[RunScores], baseline: Sequence[RunScores], metric: str, target: float,
                 replicates: int = REPLICATES, rng_seed: int = 0) -> TargetRatio:
    """The ratio of FLOPs to ``target`` (on the metric's own scale: a loss is reached from above)."""
    est, base = _paired(estimator, baseline)
    seed_counts, example_counts = resamples(len(est), est[0].hits.shape[1], replicates, rng_seed)
    goal = oriented(metric, target)

    def reach(runs):  # [S, B] and the budgets [S]
        curves = resampled_curves(runs, metric, example_counts)
        return np.stack([flops_to_target(c, r.flops, goal) for c, r in zip(curves, runs)]), np.array([r.flops[-1] for r in runs])

    (re, be), (rb, bb) = reach(est), reach(base)
    point = _ratio(_mean_reach(rb, bb, seed_counts, None), _mean_reach(re, be, seed_counts, None))[0]
    low = _ratio(_mean_reach(rb, bb, seed_counts, None), _mean_reach(re, be, seed_counts, math.inf))
    high = _ratio(_mean_reach(rb, bb, seed_counts, math.inf), _mean_reach(re, be, seed_counts, None))
    # no interpolation between replicates (an infinite end would make it NaN), and outward
    lo = float(np.percentile(np.nan_to_num(low, nan=0.0, posinf=math.inf), 100 * (1 - LEVEL) / 2, method="lower"))
    hi = float(np.percentile(np.nan_to_num(high, nan=math.inf, posinf=math.inf), 100 * (1 + LEVEL) / 2, method="higher"))
    censored_e, censored_b = int(np.isnan(re[:, 0]).sum()), int(np.isnan(rb[:, 0]).sum())
    value = float(point) if not (censored_e or censored_b) and math.isfinite(point) else None
    return TargetRatio(metric, target, Interval(value, lo, hi if math.isfinite(hi) else None), censored_e, censored_b, len(est))


# -- words ----------------------------------------------------------------------------------------
def fmt_ratio(r: TargetRatio) -> str:
    """"1.84× [1.21, 2.90]" when resolved and nothing is censored; "≥1.21× [1.21, ∞)"-style
    bounds when censored runs leave an end open; "not resolved [0.71, 1.90]" when the interval
    includes 1 (never a ">x×" claim)."""
    lo = "0" if r.ratio.low is None else f"{r.ratio.low:.2f}"
    hi = "∞)" if r.ratio.high is None else f"{r.ratio.high:.2f}]"
    span = f"[{lo}, {hi}"
    if not r.resolved:
        return f"not resolved {span}"
    if r.ratio.value is not None:
        return f"{r.ratio.value:.2f}× {span}"
    return (f"≥{r.ratio.low:.2f}× {span}" if r.ratio.low is not None and r.ratio.low > 1 else f"≤{r.ratio.high:.2f}× {span}") \
        + f" ({r.censored_estimator + r.censored_baseline} run(s) never reached it)"


def fmt_difference(d: PairedDifference, scale: float = 100.0, unit: str = " points", digits: int = 1) -> str:
    """"+2.1 points [+0.4, +3.9]", or "not resolved: +0.3 points [-1.2, +1.8]"."""
    f = f"{{:+.{digits}f}}"
    body = f"{f.format(scale * d.pooled.value)}{unit} [{f.format(scale * d.pooled.low)}, {f.format(scale * d.pooled.high)}]"
    return body if d.resolved else f"not resolved: {body}"


def fmt_per_seed(d: PairedDifference, scale: float = 100.0, digits: int = 1) -> str:
    """Each seed's difference with its interval over the examples: "s0 +1.2 [-0.5, +2.9]; ..."."""
    f = f"{{:+.{digits}f}}"
    return "; ".join(f"s{seed} {f.format(scale * iv.value)} [{f.format(scale * iv.low)}, {f.format(scale * iv.high)}]"
                     for seed, iv in sorted(d.per_seed.items()))


def summary_entry(task: str, estimator: str, baseline: str, r: TargetRatio) -> dict:
    """One entry of summary.json (the schema issue 24 fixes, plus what the ratio is of)."""
    return {"task": task, "estimator": estimator, "baseline": baseline, "target": r.target, "metric": r.metric,
            "ratio": r.ratio.value, "low": r.ratio.low, "high": r.ratio.high, "resolved": r.resolved, "seeds": r.seeds,
            "censored": {"estimator": r.censored_estimator, "baseline": r.censored_baseline}}


def level_at_fraction(start: float, finals: Sequence[float], fraction: float, pick: Callable[[Sequence[float]], float] = min) -> float:
    """A target between the common start and ``pick`` (default: the least) of the methods' final
    levels: ``start + fraction * (pick(finals) - start)`` (on any scale, loss included)."""
    return start + fraction * (pick(finals) - start)
