"""FLOPs from what really runs: one local step of every method under
``torch.utils.flop_counter.FlopCounterMode`` against what edgezo charges for it.

The comparison charges each method the forward FLOPs its forward-count model predicts (2·P1·(F1 +
P2·F2) block forwards for an SPZO step, 2P or P + 1 full forwards for a single-block one) and the
CLI counts over the real tokens of every batch; FedAvg is charged 3 forwards a step (a backward
taken as two). This script measures the matrix products torch really executes (FlopCounterMode
counts matmuls, linear layers and attention; elementwise work and the perturbation's additions are
not FLOPs it, or edgezo, counts), for each method on one batch without padding (every prompt the
same, so "real tokens" and "what runs" are the same tokens), and for FedAvg splits its step into
the forward and the backward autograd executes for the trainable set: with only norms or LoRA
trainable, the frozen matrices' weight gradients are skipped and the backward costs about one
forward, not two.

    python benchmarks/flops_check.py [--model PATH|hub id] [--trainable norm|lora|bitfit|full]
                                     [--task sst2] [--batch 8] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from edgezo.backends.choice import build_executor
from edgezo.config import JobConfig, probe_config
from edgezo.jobdata import load_job_data, make_batcher
from edgezo.methods import method_of
from edgezo.methods.bforward import b_only

# (label, --method, overrides of the job): every estimator the comparison runs, once each
STEPS = (
    ("spzo", "spzo", {"p1": 1, "p2": 4, "variant": "joint"}),
    ("spzo-clean", "spzo", {"p1": 1, "p2": 4, "variant": "clean"}),
    ("mezo", "mezo", {"p1": 1}),
    ("decomfl", "decomfl", {"p1": 5, "difference": "central"}),
    ("decomfl-fwd", "decomfl", {"p1": 5, "difference": "forward"}),
    ("fedzo", "fedzo", {"p1": 5}),
    ("fzoo", "fzoo", {"p1": 4}),  # N + 1 forwards, batched into one forward of (N + 1)·B rows where it can
)
# run on the job's trainable set with LoRA's A factors frozen (b_only), the only LoRA set bforward probes
B_ONLY_STEPS = (("bforward", "bforward", {"p1": 16}),)


@dataclass
class StepCheck:
    label: str
    charged: float  # what edgezo counts for the step (the LocalRound's flops)
    measured: float  # what FlopCounterMode saw

    @property
    def ratio(self) -> float:
        return self.measured / self.charged


@dataclass
class BackwardCheck:
    """FedAvg's step: the forward (counted and measured) and the backward autograd executes."""

    forward_counted: float
    forward_measured: float
    backward_measured: float
    charged: float  # what the CLI charges for the whole step (its forward and ``backward_flops``)

    @property
    def backward_forwards(self) -> float:
        """The backward in forwards: what a step should be charged is (1 + this) forwards."""
        return self.backward_measured / self.forward_measured


def _cpu_attention(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_attention_backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


# FlopCounterMode (torch 2.13) knows the CUDA attention kernels but not the CPU's flash kernel, so
# on a CPU it would see no attention at all; these count it as it counts the others.
CPU_ATTENTION = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention,
                 torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_attention_backward}


def measured_flops(fn) -> float:
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION) as counter:
        fn()
    return float(counter.get_total_flops())


def one_batch(ex, task, dev, size: int):
    """``size`` copies of one prompt: no padding, so the real tokens are the tokens that run."""
    return make_batcher(ex, task, dev)([0] * size)


def check_steps(cfg: JobConfig, ex, batch, steps=STEPS) -> list[StepCheck]:
    """Each method's one local step: the FLOPs it is charged against those torch runs."""
    out = []
    for label, method, changes in steps:
        job = JobConfig(**{**cfg.to_dict(), "method": method, "difference": None, **changes}).validate()
        m = method_of(method)
        start = ex.snapshot()
        result = []
        flops = measured_flops(lambda: result.append(m.local_round(ex, [batch], probe_config(job), 0.0, 0, 1, m.stream(1))))
        ex.restore(start)
        out.append(StepCheck(label, float(result[0].flops), flops))
    return out


def check_backward(ex, batch) -> BackwardCheck:
    """FedAvg's step split into its forward and the backward autograd runs for the trainable set."""
    f1, f2 = ex.forward_flops(batch)
    forward = measured_flops(lambda: ex.label_logits(batch))
    both = measured_flops(lambda: ex.loss_and_grad(batch))
    return BackwardCheck(f1 + f2, forward, both - forward, f1 + f2 + ex.backward_flops(batch))


def run_checks(cfg: JobConfig, batch_size: int) -> tuple[list[StepCheck], BackwardCheck]:
    data = load_job_data(cfg, need_train=False)
    ex, _ = build_executor("torch", cfg, data.task)
    batch = one_batch(ex, data.task, data.dev, batch_size)
    b_cfg = JobConfig(**{**cfg.to_dict(), "trainable": b_only(cfg.trainable)}).validate()
    b_ex = ex if b_cfg.trainable == cfg.trainable else build_executor("torch", b_cfg, data.task)[0]
    with torch.no_grad():
        steps = check_steps(cfg, ex, batch) + check_steps(b_cfg, b_ex, batch, B_ONLY_STEPS)
    return steps, check_backward(ex, batch)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="model (default: the CLI's SmolLM2-135M-Instruct)")
    ap.add_argument("--trainable", default="norm")
    ap.add_argument("--task", default="sst2")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    cfg = JobConfig(model=args.model, task=args.task, trainable=args.trainable, max_length=args.max_length,
                    eval_samples=8, clients=1).validate()
    steps, backward = run_checks(cfg, args.batch)
    print(f"model {args.model or 'SmolLM2-135M-Instruct'}, trainable {args.trainable}, {args.task}, batch {args.batch} (no padding)")
    print(f"{'step':<12} {'charged':>12} {'measured':>12} {'measured/charged':>17}")
    for s in steps:
        print(f"{s.label:<12} {s.charged:12.4g} {s.measured:12.4g} {s.ratio:17.4f}")
    b = backward
    print(f"fedavg: forward counted {b.forward_counted:.4g}, measured {b.forward_measured:.4g}; backward measured "
          f"{b.backward_measured:.4g} = {b.backward_forwards:.3f} forwards; the CLI charges {b.charged:.4g} ({b.charged / b.forward_counted:.3f} forwards), "
          f"autograd runs {b.forward_measured + b.backward_measured:.4g} ({1 + b.backward_forwards:.3f} forwards)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"model": args.model, "trainable": args.trainable, "task": args.task, "batch": args.batch,
                       "steps": [asdict(s) | {"ratio": s.ratio} for s in steps],
                       "fedavg": asdict(b) | {"backward_forwards": b.backward_forwards}}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
