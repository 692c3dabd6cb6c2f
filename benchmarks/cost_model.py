"""Cost-model error on this machine: profile the device, then time SPZO steps at (P1, P2, batch)
configurations the profile did not measure, and compare each with the cost model's prediction.

The profile measures forwards at batch sizes 1, 2, 4, 8, 16 of 64-token sequences; the checked
configurations use other batch sizes (one beyond the measured range) and one real SST-2 batch,
whose padded length differs from the profile's. Prediction and measurement come from the same
process, minutes apart, so machine noise affects both alike.

    python benchmarks/cost_model.py [--repeats 2]
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np

from edgezo.backends.torch.factory import build_torch_executor
from edgezo.backends.torch.profiling import median_seconds, model_shape, profile_torch, rss_mb, synthetic_batch
from edgezo.config import JobConfig
from edgezo.costmodel import Predictor, Work, relative_error
from edgezo.estimators import ProbeConfig
from edgezo.methods import method_of
from edgezo.tasks import get_task, load_examples

CONFIGS = [(1, 8, 12), (2, 4, 6), (1, 16, 3), (2, 2, 24), (3, 6, 10)]  # (P1, P2, batch); none measured


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=64)
    args = ap.parse_args()
    runtime = rss_mb()
    task = get_task("sst2")
    ex, info = build_torch_executor(JobConfig(), task)
    shape = model_shape(ex, info.name, info.digest)
    backend = profile_torch(ex, shape, "norm", args.seq_len, [1, 2, 4, 8, 16], 3, runtime, lambda: None)
    print(f"{info.name}, split {ex.split}/{shape.layers}, trainable norm; profiled at batch 1,2,4,8,16 x {args.seq_len} tokens")
    print(f"{'P1':>3} {'P2':>3} {'batch':>5} {'tokens':>6} {'predicted s':>11} {'measured s':>10} {'error':>7}")
    errors = []

    def check(p1, p2, batch, tokens, data_batch):
        pred = Predictor(backend, shape, tokens).step_s(Work(1, p1, p2, batch))
        probe = ProbeConfig("spzo", p1, p2, 1e-3)
        ex.forward_block1(data_batch)  # warm the allocator for this shape
        start = ex.snapshot()

        def step():
            method_of("spzo").local_round(ex, [data_batch], probe, 1e-4, 0, 1)
            ex.restore(start)

        measured = median_seconds(step, args.repeats, warm_up=False)
        err = relative_error(pred, measured)
        errors.append(err)
        print(f"{p1:>3} {p2:>3} {batch:>5} {tokens:>6} {pred:>11.2f} {measured:>10.2f} {100 * err:>6.1f}%")

    for p1, p2, batch in CONFIGS:
        check(p1, p2, batch, args.seq_len, synthetic_batch(ex, batch, args.seq_len, seed=1))
    train = load_examples(task, None, "train")
    ix = np.random.default_rng(0).choice(len(train), 16, replace=False)
    real = ex.encode([task.prompt(train[k], ex.kind) for k in ix], [train[k].label for k in ix])
    check(1, 4, 16, int(real.input_ids.shape[1]), real)  # real SST-2 batch: padded length, not profiled
    print(f"largest error {100 * max(errors):.1f}%, mean {100 * statistics.mean(errors):.1f}% (bar: each within 20%)")


if __name__ == "__main__":
    main()
