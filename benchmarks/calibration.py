"""What ``--p2 auto --split auto`` chooses on a job's model and data, without the job: the
calibration alone (``edgezo.app.jobs.calibrating.calibrate``: forwards only), per trainable set,
ranked per forward FLOP (no profile) and re-ranked on each device profile's seconds from the same
measurement (``choose``: pure), written to benchmarks/results/calibration.json.

The browser profiles (iphone, android-midrange) divide their throughput by 2.4 for the page's full
forwards; each is also ranked as ``NAME-full-forwards``: its throughput times 2.4 with
``reuses_block1 = false``, which is how the cost model now charges a page.

    OMP_NUM_THREADS=1 python benchmarks/calibration.py --trainable norm lora
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import torch

from edgezo import calibration as cal
from edgezo.app.jobs.calibrating import calibrate, choose
from edgezo.backends.hf.shape import model_shape, typical_tokens
from edgezo.backends.torch.factory import build_torch_executor
from edgezo.config import JobConfig
from edgezo.jobdata import load_job_data, make_batcher
from edgezo.profiles import Profile, resolve_profile

OUT = Path(__file__).parent / "results" / "calibration.json"
PROFILES = ["laptop-x86", "macbook-m", "jetson-orin-nano", "pi5", "iphone", "android-midrange"]
BROWSER_FACTOR = 2.4  # the browser profiles' throughput divisor for full forwards (device_profiles/iphone.toml)


def full_forwards(profile: Profile) -> Profile:
    """A browser profile as the cost model now prices a page: throughput undivided, a full forward per probe."""
    backends = [replace(b, gflops=b.gflops * BROWSER_FACTOR, reuses_block1=False) for b in profile.backends]
    return replace(profile, name=f"{profile.name}-full-forwards", backends=backends)


def by_profile(cfg: JobConfig, shape, tokens: int, groups: list, names: list[str]) -> list[dict]:
    """The choice on each profile's seconds (the same measured groups), with its descent per
    second over the default setting's (P2 = 4 at the job's split) on that profile."""
    rows = []
    profiles = [resolve_profile(n) for n in names]
    profiles += [full_forwards(p) for p in profiles if any(b.name.startswith("browser") for b in p.backends)]
    for profile in profiles:
        job = replace(cfg)
        record = choose(job, shape, tokens, groups, True, True, profile, lambda line: None)
        default = next(r for r in record["candidates"] if r["p2"] == 4 and r["split"] == shape.split)
        best = record["candidates"][0]
        rows.append({"profile": profile.name, "ranked_by": record["ranked_by"], "chosen": record["chosen"],
                     "seconds_per_step": best["seconds"], "vs_default": best["descent_per_second"] / default["descent_per_second"]})
    return rows


def one(trainable: str, seed: int, profiles: list[str]) -> dict:
    """The default job (SmolLM2-135M, SST-2) with ``trainable``, calibrated as a job would be."""
    cfg = JobConfig(trainable=trainable, seed=seed).validate()
    data = load_job_data(cfg, need_dev=False)
    ex, info = build_torch_executor(cfg, data.task)
    shape = model_shape(ex, ex.model.config, info.name, info.digest)
    tokens = typical_tokens(ex, data.task, data.train, cfg.batch_size, cfg.seed)
    record = calibrate(replace(cfg), ex, shape, tokens, make_batcher(ex, data.task, data.train), len(data.train), True, True, print)
    groups = [cal.GroupEnergy(**g) for g in record["groups"]]
    return {"trainable": trainable, "seed": seed, "model": info.name, **record,
            "by_profile": by_profile(cfg, shape, tokens, groups, profiles)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trainable", nargs="+", default=["norm", "lora"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--profiles", nargs="+", default=PROFILES)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    OUT.parent.mkdir(parents=True, exist_ok=True)
    for trainable in args.trainable:
        for seed in args.seeds:
            rows.append(one(trainable, seed, args.profiles))
            OUT.write_text(json.dumps(rows, indent=1) + "\n")  # after each: a stopped run keeps what it measured
            print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
