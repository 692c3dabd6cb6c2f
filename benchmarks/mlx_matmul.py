"""MLX's float32 matmul rate on this machine next to torch's (GFLOP/s, median of repeats).

    python benchmarks/mlx_matmul.py [--reps 5]

Shapes: the SmolLM2-135M MLP products at 272 tokens (batch 16 x 17 tokens),
``[272x576]@[576x1536]`` and ``[272x1536]@[1536x576]``, and a square ``1024^3``. Each is timed two
ways: ``A@B`` with B stored [in, out], and ``A@W.T`` with W stored [out, in] (a transposed view), the
layout of ``nn.Linear`` in both mlx-lm and transformers, hence what the executors run. MLX is
timed around ``mx.eval`` (it is lazy). On Linux the ``mlx[cpu]`` wheel calls the reference
(netlib) BLAS it ships, so expect MLX to be far slower than torch there; on Apple silicon it runs on
the GPU. Runs in well under a minute.
"""

from __future__ import annotations

import argparse

import mlx.core as mx
import numpy as np
import torch

from edgezo.backends.torch.profiling import median_seconds

SHAPES = [(272, 576, 1536), (272, 1536, 576), (1024, 1024, 1024)]  # (M, K, N): [M x K] @ [K x N]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    print(f"mlx {mx.__version__} on {mx.default_device()}, torch {torch.__version__} with {torch.get_num_threads()} threads")
    print(f"{'shape':<24} {'layout':<7} {'mlx GFLOP/s':>12} {'torch GFLOP/s':>14} {'torch/mlx':>10}")
    rng = np.random.default_rng(0)
    for m, k, n in SHAPES:
        a = rng.standard_normal((m, k), dtype=np.float32)
        b = rng.standard_normal((k, n), dtype=np.float32)
        w = np.ascontiguousarray(b.T)  # [out, in]
        flops = 2.0 * m * k * n
        ma, mb, mw = mx.array(a), mx.array(b), mx.array(w)
        ta, tb, tw = torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(w)
        mx.eval(ma, mb, mw)
        for layout, mlx_fn, torch_fn in (
            ("A@B", lambda: mx.eval(ma @ mb), lambda: ta @ tb),
            ("A@W.T", lambda: mx.eval(ma @ mw.T), lambda: ta @ tw.T),
        ):
            with torch.inference_mode():
                t_torch = median_seconds(torch_fn, args.reps)
            t_mlx = median_seconds(mlx_fn, args.reps)
            g_mlx, g_torch = flops / t_mlx / 1e9, flops / t_torch / 1e9
            print(f"[{m}x{k}]@[{k}x{n}]".ljust(24) + f" {layout:<7} {g_mlx:>12.1f} {g_torch:>14.1f} {g_torch / g_mlx:>9.1f}x")


if __name__ == "__main__":
    main()
