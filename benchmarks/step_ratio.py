"""One SPZO step (P1=1, P2=8, split at the middle layer) against one MeZO step with 8
perturbations (16 full forwards) on the same batch of SmolLM2-135M / SST-2.

Prints the measured time ratio next to what the forward-count model predicts, from FLOPs and
from the measured block-forward times. Activation reuse is real if the measured ratio is within
15% of the prediction.

    python benchmarks/step_ratio.py [--repeats 3] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from edgezo.backends.torch.factory import build_torch_executor
from edgezo.config import JobConfig
from edgezo.estimators import ProbeConfig
from edgezo.methods import method_of
from edgezo.tasks import get_task, load_examples


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--trainable", default="norm")
    args = ap.parse_args()
    task = get_task("sst2")
    train = load_examples(task, None, "train")
    ex, info = build_torch_executor(JobConfig(trainable=args.trainable, split=15), task)
    ix = np.random.default_rng(0).choice(len(train), args.batch_size, replace=False)
    batch = ex.encode([task.prompt(train[k], ex.kind) for k in ix], [train[k].label for k in ix])
    spzo = ProbeConfig("spzo", p1=1, p2=8, eps=1e-3)
    mezo = ProbeConfig("mezo", p1=8, p2=1, eps=1e-3)

    def timed(fn):
        fn()  # warm-up
        runs = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            out = fn()
            runs.append(time.perf_counter() - t)
        return statistics.median(runs), out

    t_spzo, r_spzo = timed(lambda: method_of("spzo").step(ex, batch, spzo, 0, 1, 0))
    t_mezo, r_mezo = timed(lambda: method_of("mezo").step(ex, batch, mezo, 0, 1, 0))
    t1, _ = timed(lambda: ex.forward_block1(batch))
    act = ex.forward_block1(batch)
    t2, _ = timed(lambda: ex.forward_block2(act, batch))
    f1, f2 = ex.forward_flops(batch)
    predicted_flops = r_spzo.flops / r_mezo.flops
    predicted_time = (2 * t1 + 16 * t2) / (16 * (t1 + t2))
    measured = t_spzo / t_mezo
    print(f"model {info.name}, split 15/{ex.adapter.num_layers}, batch {args.batch_size}x{batch.input_ids.shape[1]} tokens, trainable {args.trainable}")
    print(f"block forwards: F1 {t1:.3f} s, F2 {t2:.3f} s  (FLOPs {f1:.3g} / {f2:.3g})")
    print(f"SPZO step  (P1=1, P2=8): {r_spzo.forwards1} block-1 + {r_spzo.forwards2} block-2 forwards, {t_spzo:.2f} s")
    print(f"MeZO step  (P=8):        {r_mezo.forwards1} block-1 + {r_mezo.forwards2} block-2 forwards, {t_mezo:.2f} s")
    print(f"time ratio SPZO/MeZO: measured {measured:.3f}; predicted {predicted_flops:.3f} (FLOPs), {predicted_time:.3f} (block times)")
    err = abs(measured - predicted_flops) / predicted_flops
    print(f"measured vs FLOP prediction: {100 * err:.1f}% off ({'within' if err <= 0.15 else 'OUTSIDE'} the 15% bar)")


if __name__ == "__main__":
    main()
