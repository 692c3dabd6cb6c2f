"""What ``--p2 auto --split auto`` chooses on a job's model and data, without the job: the
calibration alone (``edgezo.app.jobs.calibrating.calibrate``: forwards only), per trainable set,
ranked per forward FLOP (no profile) and re-ranked on each device profile's seconds from the same
measurement (``choose``: pure), written to benchmarks/results/calibration.json.

The browser profiles (iphone, android-midrange) say ``reuses_block1 = false``: the page runs a full
forward for every probe, and the cost model charges it so.

    OMP_NUM_THREADS=1 python benchmarks/calibration.py --trainable norm lora
    python benchmarks/calibration.py --rerank   # only the profiles' ranking, from the stored measurement
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
from edgezo.profiles import resolve_profile

OUT = Path(__file__).parent / "results" / "calibration.json"
PROFILES = ["laptop-x86", "macbook-m", "jetson-orin-nano", "pi5", "iphone", "android-midrange"]


def by_profile(cfg: JobConfig, shape, tokens: int, groups: list, names: list[str]) -> list[dict]:
    """The choice on each profile's seconds (the same measured groups), with its descent per
    second over the default setting's (P2 = 4 at the job's split) on that profile."""
    rows = []
    for profile in (resolve_profile(n) for n in names):
        job = replace(cfg)
        record = choose(job, shape, tokens, groups, True, True, profile, lambda line: None)
        default = next(r for r in record["candidates"] if r["p2"] == 4 and r["split"] == shape.split)
        best = record["candidates"][0]
        rows.append({"profile": profile.name, "ranked_by": record["ranked_by"], "chosen": record["chosen"],
                     "seconds_per_step": best["seconds"], "vs_default": best["descent_per_second"] / default["descent_per_second"]})
    return rows


def job_shape(trainable: str, seed: int):
    """The default job (SmolLM2-135M, SST-2) with ``trainable``: its config, data, executor, model
    shape and typical tokens per sequence."""
    cfg = JobConfig(trainable=trainable, seed=seed).validate()
    data = load_job_data(cfg, need_dev=False)
    ex, info = build_torch_executor(cfg, data.task)
    shape = model_shape(ex, ex.model.config, info.name, info.digest)
    return cfg, data, ex, info, shape, typical_tokens(ex, data.task, data.train, cfg.batch_size, cfg.seed)


def rerank(rows: list[dict], profiles: list[str]) -> list[dict]:
    """Each stored measurement re-ranked on the profiles as they are now (no forwards: a profile
    changed, the measured descent did not)."""
    out = []
    for row in rows:
        cfg, _, _, _, shape, tokens = job_shape(row["trainable"], row["seed"])
        groups = [cal.GroupEnergy(**g) for g in row["groups"]]
        out.append({**row, "by_profile": by_profile(cfg, shape, tokens, groups, profiles)})
    return out


def one(trainable: str, seed: int, profiles: list[str]) -> dict:
    """The default job with ``trainable``, calibrated as a job would be."""
    cfg, data, ex, info, shape, tokens = job_shape(trainable, seed)
    record = calibrate(replace(cfg), ex, shape, tokens, make_batcher(ex, data.task, data.train), len(data.train), True, True, print)
    groups = [cal.GroupEnergy(**g) for g in record["groups"]]
    return {"trainable": trainable, "seed": seed, "model": info.name, **record,
            "by_profile": by_profile(cfg, shape, tokens, groups, profiles)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trainable", nargs="+", default=["norm", "lora"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--profiles", nargs="+", default=PROFILES)
    parser.add_argument("--rerank", action="store_true", help="re-rank the stored measurement on the profiles, no calibration")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.rerank:
        OUT.write_text(json.dumps(rerank(json.loads(OUT.read_text()), args.profiles), indent=1) + "\n")
        print(f"wrote {OUT}")
        return
    rows = []
    OUT.parent.mkdir(parents=True, exist_ok=True)
    for trainable in args.trainable:
        for seed in args.seeds:
            rows.append(one(trainable, seed, args.profiles))
            OUT.write_text(json.dumps(rows, indent=1) + "\n")  # after each: a stopped run keeps what it measured
            print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
