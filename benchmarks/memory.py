"""Peak memory (RSS) of one SPZO training step against plain inference on the same batch.

Each measurement runs in a fresh process (peak RSS only grows), loading the same model and
batch; the ratio is training-step peak over inference peak.

    python benchmarks/memory.py [--trainable norm|full|lora] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys


def child(mode: str, trainable: str, batch_size: int) -> None:
    import numpy as np

    from edgezo.backends.torch.factory import build_torch_executor
    from edgezo.config import JobConfig
    from edgezo.estimators import ProbeConfig
    from edgezo.methods import method_of
    from edgezo.tasks import get_task, load_examples

    task = get_task("sst2")
    train = load_examples(task, None, "train")
    ex, _ = build_torch_executor(JobConfig(trainable=trainable), task)
    ix = np.random.default_rng(0).choice(len(train), batch_size, replace=False)
    batch = ex.encode([task.prompt(train[k], ex.kind) for k in ix], [train[k].label for k in ix])
    loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if mode == "inference":
        ex.forward_block2(ex.forward_block1(batch), batch)
    else:
        method_of("spzo").local_round(ex, [batch], ProbeConfig("spzo", 1, 4, 1e-3), 1e-4, 0, 1)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"loaded_kib": loaded, "peak_kib": peak}))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trainable", default="norm")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--child", choices=["inference", "train"])
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.trainable, args.batch_size)
    result = {}
    for mode in ("inference", "train"):
        out = subprocess.run(
            [sys.executable, __file__, "--child", mode, "--trainable", args.trainable, "--batch-size", str(args.batch_size)],
            capture_output=True, text=True, check=True,
        )
        result[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    inf, train = result["inference"]["peak_kib"], result["train"]["peak_kib"]
    print(f"SmolLM2-135M, batch {args.batch_size}, trainable {args.trainable}")
    print(f"peak RSS: inference {inf / 1024:.0f} MiB, SPZO step (P1=1, P2=4, with its local update) {train / 1024:.0f} MiB")
    print(f"ratio {train / inf:.3f} (bar: at most 1.15)")


if __name__ == "__main__":
    main()
