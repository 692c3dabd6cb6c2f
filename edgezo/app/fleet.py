"""A fleet of heterogeneous simulated devices: which profiles, how many of each, and the work
each one gets (planned from its profile, or the job's fixed work for everyone)."""

from __future__ import annotations

import tomllib
from pathlib import Path

from edgezo.costmodel import ModelShape, Work
from edgezo.errors import EdgezoError
from edgezo.planner import Budget, Limits, Plan, fixed_plan, plan_device
from edgezo.profiles import Profile, resolve_profile


def parse_fleet(spec: str) -> list[tuple[str, Profile]]:
    """``pi5:4,macbook-m:2`` (profile names or files, with counts) or a TOML file listing
    ``[[devices]]`` tables with ``profile`` and ``count``; one (device name, profile) per device."""
    entries: list[tuple[str, int]] = []
    if spec.endswith(".toml") and Path(spec).is_file():
        try:
            data = tomllib.loads(Path(spec).read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as e:
            raise EdgezoError(f"device list {spec} is not valid TOML: {e}") from e
        tables = data.get("devices")
        if not isinstance(tables, list) or not tables:
            raise EdgezoError(f"device list {spec} needs [[devices]] tables with profile = \"NAME\" and count = N")
        for k, t in enumerate(tables):
            if not isinstance(t, dict) or not isinstance(t.get("profile"), str):
                raise EdgezoError(f"device list {spec}: devices[{k}] needs profile = \"NAME or FILE\"")
            count = t.get("count", 1)
            if not isinstance(count, int) or isinstance(count, bool) or count < 1:
                raise EdgezoError(f"device list {spec}: devices[{k}].count must be a positive integer (got {count!r})")
            entries.append((t["profile"], count))
    else:
        for part in filter(None, (p.strip() for p in spec.split(","))):
            name, _, count = part.rpartition(":") if ":" in part else (part, "", "1")
            try:
                n = int(count)
            except ValueError:
                raise EdgezoError(f"--devices {spec!r}: {part!r} must look like PROFILE:COUNT, e.g. pi5:4") from None
            if n < 1 or not name:
                raise EdgezoError(f"--devices {spec!r}: {part!r} needs a profile name and a count of at least 1")
            entries.append((name, n))
    if not entries:
        raise EdgezoError("--devices lists no devices; use e.g. --devices pi5:4,macbook-m:2")
    fleet = []
    for spec_name, count in entries:
        prof = resolve_profile(spec_name)
        fleet += [(f"{prof.name}-{k}", prof) for k in range(count)]
    return fleet


def plan_fleet(fleet: list[tuple[str, Profile]], shape: ModelShape, tokens: int, job: Work, round_seconds: float | None,
               plan: bool, max_p1: int, max_p2: int, descent=None) -> list[Plan]:
    """Each device's work: planned for the round budget (``plan``; with the calibration's
    ``descent`` table, by descent per second), or the job's own."""
    if plan:
        if round_seconds is None:
            raise EdgezoError("--plan needs a round budget: pass --round-seconds")
        limits = Limits(job, p1=max_p1, p2=max_p2)
        return [plan_device(prof, shape, tokens, Budget(round_seconds), limits, device=name, descent=descent) for name, prof in fleet]
    return [fixed_plan(prof, shape, tokens, job, device=name, round_seconds=round_seconds or 0.0) for name, prof in fleet]
