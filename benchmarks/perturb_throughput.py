"""Perturbation throughput of the torch generator against a plain ``torch.add`` over the same
tensors (all of SmolLM2-135M's weight shapes, 135M elements): the cost of generating z.

    python benchmarks/perturb_throughput.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from edgezo.backends.torch import perturb as tz
from edgezo.keys import Direction


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--elements", type=int, default=0, help="use one tensor of this size instead of the model's shapes")
    args = ap.parse_args()
    if args.elements:
        tensors = {"w": torch.randn(args.elements)}
    else:
        from edgezo.backends.torch.loading import load_model

        model, _, _ = load_model(None)
        tensors = {n: p.detach().reshape(-1).clone() for n, p in model.named_parameters()}
        del model
    total = sum(t.numel() for t in tensors.values())
    others = {n: torch.randn_like(t) for n, t in tensors.items()}
    d = Direction(0, 1, 0, 0, 0)

    def plain_add():
        for n, t in tensors.items():
            t.add_(others[n], alpha=1e-3)

    def generated():
        for n, t in tensors.items():
            tz.add_scaled(t, d.tensor_key(n), 1e-3)

    def timed(fn):
        fn()
        runs = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            fn()
            runs.append(time.perf_counter() - t)
        return statistics.median(runs)

    t_add = timed(plain_add)
    tz.use_compiled_kernel(False)
    t_eager = timed(generated)
    compiled = tz.use_compiled_kernel(True)
    t0 = time.perf_counter()
    generated()
    compile_s = time.perf_counter() - t0
    t_comp = timed(generated) if compiled else float("nan")
    print(f"{total / 1e6:.1f}M elements in {len(tensors)} tensors, {torch.get_num_threads()} threads")
    print(f"torch.add (z already in memory):   {t_add:.3f} s  {total / t_add / 1e9:.2f} G elements/s")
    print(f"add_scaled, eager index_select:    {t_eager:.3f} s  {total / t_eager / 1e9:.2f} G elements/s  ({t_eager / t_add:.2f}x the add)")
    print(f"add_scaled, fused compiled kernel: {t_comp:.3f} s  {total / t_comp / 1e9:.2f} G elements/s  ({t_comp / t_add:.2f}x the add; "
          f"first call incl. compilation {compile_s:.1f} s)")


if __name__ == "__main__":
    main()
