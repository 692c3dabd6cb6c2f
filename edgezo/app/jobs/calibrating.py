"""``--p2 auto`` / ``--split auto`` in a job (simulate and coordinate alike): measure the gradient
energies on the job's own replica (``edgezo.calibration``, forwards only), rank the candidate
settings by expected descent per second on a device profile (per forward FLOP when the job has
none), set the best on the job's config, and return the record summary.json keeps. A restarted or
resumed job rebuilds everything from that record (``reuse``) and never measures again, so its
rounds are those of the uninterrupted job.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Callable

from edgezo import calibration as cal
from edgezo.config import JobConfig, job_work
from edgezo.costmodel import ModelShape
from edgezo.errors import ConfigError
from edgezo.profiles import Profile

CALIBRATION_BATCHES = 3  # batches of the calibration's own stream: ‖G‖² needs pairs of them
CALIBRATION_PROBES = 4  # probes per group of layers and batch


def calibrate(cfg: JobConfig, ex, shape: ModelShape, tokens: int, batcher, examples: int, choose_p2: bool, choose_split: bool,
              say: Callable[[str], None], profile: Profile | None = None) -> dict:
    """Measure on ``ex`` (``examples`` examples behind ``batcher``), then ``choose``."""
    check_method(cfg)
    groups = cal.layer_groups(ex, cfg.seed, cal.group_bounds(ex.num_layers, keep=[ex.split]))
    batches = cal.calibration_batches(batcher, examples, cfg.batch_size, CALIBRATION_BATCHES, cfg.seed)
    say(f"calibrating {'P2' if choose_p2 else ''}{' and ' if choose_p2 and choose_split else ''}{'the split' if choose_split else ''} "
        f"on {len(batches)} batches x {len(groups)} groups of layers x {CALIBRATION_PROBES} probes ...")
    measured = cal.measure(ex, batches, groups, CALIBRATION_PROBES, cfg.eps)
    record = choose(cfg, shape, tokens, measured["groups"], choose_p2, choose_split, profile, say)
    say(f"  ({measured['forwards']} forwards, {measured['seconds']:.1f} s)")
    return record | {"forwards": measured["forwards"], "seconds": round(measured["seconds"], 3)}


def check_method(cfg: JobConfig) -> None:
    """Refuse auto for a method that has no block-2 probes (before any model or broker)."""
    if cfg.resolved_method.effective_p2(2) != 2:
        raise ConfigError(f"--p2 auto / --split auto choose SPZO's block-2 probes and split; --method {cfg.method} has neither")


def choose(cfg: JobConfig, shape: ModelShape, tokens: int, groups: list, choose_p2: bool, choose_split: bool,
           profile: Profile | None, say: Callable[[str], None]) -> dict:
    """Rank the candidates on the measured ``groups`` (pure but for ``say``), set the best P2 and
    split on ``cfg`` and print the table and the choice with its figures."""
    splits = cal.candidate_splits(groups) if choose_split else [shape.split]
    candidates = cal.candidates(cfg.p1, splits, cal.P2_CHOICES if choose_p2 else [cfg.p2])
    work, method = job_work(cfg), cfg.resolved_method
    flops = cal.step_cost(method, work, cal.flops_costs(shape, cfg.batch_size, tokens))
    seconds, ranked_by = None, "descent per forward FLOP (no device profile)"
    if profile is not None:
        backend = cal.profile_backend(profile, shape, tokens, work)
        seconds = cal.step_cost(method, work, cal.profile_costs(backend, shape, groups, cfg.batch_size, tokens))
        ranked_by = f"descent per second on the {profile.kind} profile {profile.name!r} (backend {backend.name})"
    rows = cal.rank(groups, candidates, cfg.variant, flops, seconds, prefer_split=shape.split)
    best, given = rows[0], (cfg.p2, shape.split)
    gain = _gain(rows, given, "descent_per_second" if seconds else "descent_per_flop")
    cfg.p2, cfg.split = best["p2"], best["split"]
    for line in cal.table(rows):
        say(line)
    figures = f"{best['flops']:.3g} FLOPs" + (f", {best['seconds']:.3g} s on the profile" if seconds else "") + " a step" + (
        "" if gain is None else f"; {gain:.3g}x the expected descent {'per second' if seconds else 'per FLOP'} of "
                                f"P2={given[0]} split={given[1]}")
    say(f"calibration chose P1={best['p1']} P2={best['p2']} split={best['split']}: best {ranked_by}; {figures}")
    return {"chosen": {k: best[k] for k in ("p1", "p2", "split")}, "ranked_by": ranked_by, "gain_over_given": gain,
            "profile": None if profile is None else profile.name, "tokens": tokens, "candidates": rows,
            "groups": [asdict(g) for g in groups]}


def _gain(rows: list[dict], given: tuple[int, int], key: str) -> float | None:
    """The chosen setting's expected descent per second (or FLOP) over that of the P2 and split the
    job was given (the default, unless set): ‖G‖² cancels, so the ratio holds even where its noisy
    estimate is negative. None when the given setting is not a candidate."""
    base = next((r for r in rows if (r["p2"], r["split"]) == given), None)
    return None if base is None else rows[0][key] / base[key]


def reuse(cfg: JobConfig, record: dict, say: Callable[[str], None], where: str) -> dict:
    """A stopped or restarted job's recorded choice, set on ``cfg`` (never re-measured)."""
    cfg.p2, cfg.split = record["chosen"]["p2"], record["chosen"]["split"]
    say(f"calibration reused (recorded in {where}): P2={cfg.p2}, split={cfg.split}")
    return record


def descent_of(record: dict, variant: str) -> Callable[[int, int], float]:
    """The planner's descent table (``planner.plan_device(descent=...)``) at the chosen split, from
    the record's measured groups: each device's P2 then follows its own profile's seconds."""
    groups = [cal.GroupEnergy(**g) for g in record["groups"]]
    return cal.descent_table(groups, record["chosen"]["split"], variant)
