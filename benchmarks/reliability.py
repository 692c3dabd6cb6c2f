"""Hostile participants under the default settings (issue 14): one device of ten sends 1e30, NaN,
sign-flipped or random scalars in place of its own, each kind in its own run of the same short
job (a tiny LLaMA built from a config, or any model, on real SST-2). Prints, against the clean
run and the run where that device sends nothing: the final accuracy, whether every weight of the
final model is finite, the devices the rounds named, and the refused rounds.

    python benchmarks/reliability.py [--rounds 8] [--clients 10] [--model PATH] [--lr 2e-2]
    python benchmarks/reliability.py --model SmolLM2.gguf --trainable norm --lr 1e-3 --eps 1e-2 \
        --rounds 6 --eval-samples 200 --max-length 48   (the real model; about 1 CPU-minute a run)

The tiny model (the default) takes about 2 s per round of ten devices on one core.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the test-only hostile devices

from support.hostile import KINDS, simulate_job  # noqa: E402
from tiny import data_dir, save_tiny  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--hostile", type=int, default=3, help="index of the hostile device")
    ap.add_argument("--model", help="model folder or .gguf (default: a tiny LLaMA built here)")
    ap.add_argument("--lr", type=float, default=2e-2)
    ap.add_argument("--trainable", default="full")
    ap.add_argument("--eps", type=float, default=None, help="perturbation size (default: the CLI's)")
    ap.add_argument("--eval-samples", type=int, default=0, help="validation examples (0: the whole SST-2 dev split)")
    ap.add_argument("--max-length", type=int, default=32)
    args = ap.parse_args()
    extra = {"eval_samples": args.eval_samples, "max_length": args.max_length, **({"eps": args.eps} if args.eps else {})}
    logging.disable(logging.WARNING)  # the rounds' warnings name the device; the table does too
    data = data_dir() / "sst2"
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or save_tiny(Path(tmp) / "tiny-llama", "llama")
        print(f"model {'tiny LLaMA (4 layers, hidden 32)' if not args.model else args.model}; SST-2, {args.clients} devices, "
              f"{args.rounds} rounds, lr {args.lr:g}, trainable {args.trainable}; device {args.hostile} hostile; default aggregation")
        print(f"{'run':<8} {'accuracy':>9} {'vs clean':>9} {'finite':>7} {'same as silent':>15} {'refused':>8}  devices named  (s)")
        rows = {}
        for kind in ("clean", "silent", *KINDS):
            t = time.perf_counter()
            out = simulate_job(model, data, None if kind == "clean" else {args.hostile: kind}, clients=args.clients,
                               rounds=args.rounds, lr=args.lr, trainable=args.trainable, **extra)
            rows[kind] = out
            refused = sum(r.refused is not None for r in out.records)
            same = "-" if kind in ("clean", "silent") else ("yes" if out.fingerprint == rows["silent"].fingerprint else "no")
            delta = 100 * (out.accuracy - rows["clean"].accuracy)
            print(f"{kind:<8} {100 * out.accuracy:>8.1f}% {delta:>+8.1f}p {str(out.finite):>7} {same:>15} {refused:>8}  "
                  f"{', '.join(sorted(out.named)) or '-'}  ({time.perf_counter() - t:.0f})", flush=True)
        print(f"initial accuracy {100 * rows['clean'].records[0].eval_accuracy:.1f}%; 'silent': the device sends nothing "
              "(what a perfect defence achieves)")


if __name__ == "__main__":
    main()
