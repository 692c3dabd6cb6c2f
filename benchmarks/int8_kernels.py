"""Candidate kernels for the int8 executor's quantized linear layers, on this CPU.

    python benchmarks/int8_kernels.py [--reps 15] [--threads N]

For each SmolLM2-135M linear shape (out x in) at 272 tokens (batch 16 x 17 tokens) and at 1 token,
it times, median over ``--reps`` runs (milliseconds per call):

* ``fp32``: ``F.linear`` on a weight already in float32 (the torch executor: the floor);
* ``a:deq``: dequantize the whole layer to float32, then ``F.linear`` (Q8_0 and Q4_1 blocks);
* ``b:rows``: dequantize ``CHUNK`` (128K) weights' worth of output rows at a time, ``F.linear``
  each into its slice of the output (bounds the float32 temporary);
* ``b:cols``: dequantize ``CHUNK`` weights' worth of input columns at a time and accumulate
  ``out += x[:, cols] @ w[:, cols].T`` with ``addmm_`` (no output copy);
* ``c:int_mm``: ``torch._int_mm`` on int8 activations (quantized per token) and an int8 weight with
  one scale per output row: not Q8_0 (whose scales vary along the input dimension), but the fastest
  int8 GEMM torch offers, so an upper bound for any int8 kernel;
* ``c:blockwise``: the exact llama.cpp Q8_0 x Q8_0 product: one ``_int_mm`` per 32-wide input
  block, scaled by both blocks' scales and summed;
* ``d:bf16``: dequantize to bfloat16 and ``F.linear`` in bfloat16.

The last rows time the tied LM head (49152 x 576, Q8_0) on the 16 gathered rows: the full vocabulary
against the 2 verbalizer rows only. Runs in well under two minutes.

    python benchmarks/int8_kernels.py --step torch|gguf|q8_0

instead measures one SPZO step (P1=1, P2=4, batch 16 SST-2 training prompts, norm trainable) of
the default model in this process (run each in a fresh one): the torch executor (float32), int8
from the GGUF's native blocks, or int8 with the float32 folder requantized to Q8_0. It prints the
build time, the weights' memory, the process's peak RSS (ru_maxrss: loading included), the RSS
peak sampled during the step, and the time of two steps (the first warms up).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import threading
import time

import torch
import torch.nn.functional as F

from edgezo.backends.int8.quant import BLOCK, dequantize, quantize

SHAPES = [(576, 576), (192, 576), (1536, 576), (576, 1536)]
TOKENS = [272, 1]
CHUNK = 1 << 17  # weights dequantized per chunk in b:rows / b:cols (512 KiB of float32)


def timed(fn, reps: int) -> float:
    fn()
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def chunk_rows(x, qt, chunk=CHUNK):
    out_features, in_features = qt.shape
    step = max(1, chunk // in_features)
    out = x.new_empty(*x.shape[:-1], out_features)
    for start in range(0, out_features, step):
        rows = slice(start, min(start + step, out_features))
        out[..., rows] = F.linear(x, dequantize(qt.rows(rows)))
    return out


def chunk_cols(x, qt, chunk=CHUNK):
    out_features, in_features = qt.shape
    step = max(BLOCK, chunk // out_features // BLOCK * BLOCK)
    out = None
    for start in range(0, in_features, step):
        stop = min(start + step, in_features)
        part = type(qt)(qt.qtype, qt.qs[:, start:stop], qt.d[:, start // BLOCK : stop // BLOCK])
        w = dequantize(part)
        if out is None:
            out = x[:, start:stop] @ w.t()
        else:
            out.addmm_(x[:, start:stop], w.t())
    return out


def int_mm_rowwise(x, w_int8, w_scale):
    """Per-token activation quantization, per-output-row weight scale, one int32 GEMM."""
    sx = x.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127
    xq = torch.round(x / sx).to(torch.int8)
    return torch._int_mm(xq, w_int8.t()).to(torch.float32) * sx * w_scale


def int_mm_blockwise(x, qt):
    """llama.cpp's Q8_0 x Q8_0: activations quantized per 32-block, one int GEMM per block."""
    tokens, cols = x.shape
    nb = cols // BLOCK
    xb = quantize(x, "q8_0")
    xs = xb.d.to(torch.float32)  # [tokens, nb]
    ws = qt.d.to(torch.float32)  # [out, nb]
    out = torch.zeros(tokens, qt.shape[0])
    xq = xb.qs.reshape(tokens, nb, BLOCK)
    wq = qt.qs.reshape(-1, nb, BLOCK)
    for b in range(nb):
        acc = torch._int_mm(xq[:, b].contiguous(), wq[:, b].t().contiguous())
        out += acc.to(torch.float32) * xs[:, b : b + 1] * ws[:, b].unsqueeze(0)
    return out


def pad_tokens(x, minimum=32):
    """_int_mm wants more than 16 rows on some builds: pad, then slice the answer."""
    if x.shape[0] >= minimum:
        return x, x.shape[0]
    return torch.cat([x, x.new_zeros(minimum - x.shape[0], x.shape[1])]), x.shape[0]


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def step(kind: str) -> None:
    from edgezo.config import JobConfig
    from edgezo.estimators import ProbeConfig
    from edgezo.methods import method_of
    from edgezo.jobdata import load_job_data, make_batcher

    cfg = JobConfig(model=None, trainable="norm", batch_size=16, p1=1, p2=4)
    data = load_job_data(cfg, train_samples=16, need_dev=False)
    start = time.perf_counter()
    if kind == "torch":
        from edgezo.backends.torch.factory import build_torch_executor

        ex, _ = build_torch_executor(cfg, data.task)
    else:
        from edgezo.backends.int8.factory import build_int8_executor

        ex, _ = build_int8_executor(cfg, data.task, weights=kind)
    built = time.perf_counter() - start
    memory = getattr(ex, "memory", None)
    batch = make_batcher(ex, data.task, data.train)(list(range(16)))
    probe = ProbeConfig("spzo", cfg.p1, cfg.p2, cfg.eps)
    before = rss_mb()
    peak, done = [before], threading.Event()

    def sample():
        while not done.wait(0.002):
            peak[0] = max(peak[0], rss_mb())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    times = []
    for rnd in (1, 2):
        t0 = time.perf_counter()
        method_of("spzo").local_round(ex, [batch], probe, cfg.lr, run_seed=0, rnd=rnd)
        times.append(time.perf_counter() - t0)
    done.set()
    sampler.join()
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{kind}: build {built:.1f} s; tokens {tuple(batch.input_ids.shape)}; {torch.get_num_threads()} threads")
    if memory is not None:
        print(f"  {memory.summary()}")
    print(f"  RSS before the step {before:.0f} MiB, peak during the steps {peak[0]:.0f} MiB, process peak (ru_maxrss) {maxrss:.0f} MiB")
    print(f"  step time: first {times[0]:.2f} s, second {times[1]:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--step", choices=["torch", "gguf", "q8_0"], help="measure one SPZO step of the default model instead")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.step:
        step(args.step)
        return
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.reps} (ms per call)")
    cols = ["fp32", "a:deq q8", "a:deq q4_1", "b:rows q8", "b:cols q8", "c:int_mm", "c:blockwise", "d:bf16 q8"]
    print(f"{'shape':>12} {'tokens':>6} " + " ".join(f"{c:>11}" for c in cols))
    with torch.inference_mode():
        for out_f, in_f in SHAPES:
            w = torch.randn(out_f, in_f) * 0.05
            q8, q41 = quantize(w, "q8_0"), quantize(w, "q4_1")
            w8 = q8.dequantize()
            row_scale = w8.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127
            w_int8 = torch.round(w8 / row_scale).to(torch.int8)
            row_scale = row_scale.t().contiguous()
            for tokens in TOKENS:
                x = torch.randn(tokens, in_f)
                xp, n = pad_tokens(x)
                reps = args.reps if tokens > 1 else 3 * args.reps
                row = [
                    timed(lambda: F.linear(x, w8), reps),
                    timed(lambda: F.linear(x, dequantize(q8)), reps),
                    timed(lambda: F.linear(x, dequantize(q41)), reps),
                    timed(lambda: chunk_rows(x, q8), reps),
                    timed(lambda: chunk_cols(x, q8), reps),
                    timed(lambda: int_mm_rowwise(xp, w_int8, row_scale)[:n], reps),
                    timed(lambda: int_mm_blockwise(xp, q8)[:n], max(3, reps // 3)),
                    timed(lambda: F.linear(x.to(torch.bfloat16), dequantize(q8, torch.bfloat16)), reps),
                ]
                print(f"{out_f:>5}x{in_f:<6} {tokens:>6} " + " ".join(f"{t:>11.3f}" for t in row))
        # the tied LM head on the 16 gathered rows: whole vocabulary vs the verbalizer rows only
        vocab, hidden = 49152, 576
        head = quantize(torch.randn(vocab, hidden) * 0.05, "q8_0")
        x = torch.randn(16, hidden)
        ids = torch.tensor([4916, 3658])
        full = timed(lambda: F.linear(x, dequantize(head)), 5)
        chunk = timed(lambda: chunk_rows(x, head), 5)
        few = timed(lambda: F.linear(x, dequantize(head.rows(ids))), args.reps)
        print(f"head {vocab}x{hidden} Q8_0, 16 rows: whole vocab a:deq {full:.2f} ms, b:rows {chunk:.2f} ms; "
              f"2 verbalizer rows only {few:.3f} ms")


if __name__ == "__main__":
    main()
