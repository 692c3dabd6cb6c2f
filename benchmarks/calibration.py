"""What ``--p2 auto --split auto`` chooses on a job's model and data, without the job: the
calibration alone (``edgezo.app.jobs.calibrating.calibrate``: forwards only), per trainable set,
written to benchmarks/results/calibration.json with each candidate's expected descent per FLOP.

    OMP_NUM_THREADS=1 python benchmarks/calibration.py --trainable norm lora
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from edgezo.app.jobs.calibrating import calibrate
from edgezo.backends.hf.shape import model_shape, typical_tokens
from edgezo.backends.torch.factory import build_torch_executor
from edgezo.config import JobConfig
from edgezo.jobdata import load_job_data, make_batcher

OUT = Path(__file__).parent / "results" / "calibration.json"


def one(trainable: str, seed: int) -> dict:
    """The default job (SmolLM2-135M, SST-2) with ``trainable``, calibrated as a job would be."""
    cfg = JobConfig(trainable=trainable, seed=seed).validate()
    data = load_job_data(cfg, need_dev=False)
    ex, info = build_torch_executor(cfg, data.task)
    shape = model_shape(ex, ex.model.config, info.name, info.digest)
    tokens = typical_tokens(ex, data.task, data.train, cfg.batch_size, cfg.seed)
    record = calibrate(cfg, ex, shape, tokens, make_batcher(ex, data.task, data.train), len(data.train), True, True, print)
    return {"trainable": trainable, "seed": seed, "model": info.name, "tokens": tokens, **record}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trainable", nargs="+", default=["norm", "lora"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    OUT.parent.mkdir(parents=True, exist_ok=True)
    for trainable in args.trainable:
        for seed in args.seeds:
            rows.append(one(trainable, seed))
            OUT.write_text(json.dumps(rows, indent=1) + "\n")  # after each: a stopped run keeps what it measured
            print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
