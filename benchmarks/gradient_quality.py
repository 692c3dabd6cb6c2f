"""The gradient-quality bench: how much expected descent each zero-order estimator setting buys
per forward FLOP, measured against backpropagation's gradient, without training noise.

    python benchmarks/gradient_quality.py run [--trainable norm lora bitfit] [--batches 48] [--mid-batches N] [--quick]
    python benchmarks/gradient_quality.py scaled [--trainable norm lora] [--batches 48] [--mid-batches N]
    python benchmarks/gradient_quality.py curvature [--probes 32]
    python benchmarks/gradient_quality.py report

``run``: at two checkpoints of the default job's model (the base model and one mid-training
checkpoint: 16 first-order SGD steps of batch 16 at lr 0.025, the path FedAvg uses), the gradient
of the trainable set on N training batches of the default job (SST-2, its template, batch 16,
max length 128) by backpropagation (cached under runs/gradient_quality/, so reruns and more
batches are cheap), and, from those, every estimator setting's figures: FedSPZO joint and clean
over P1 x P2 in {1, 2, 4, 8, 16}² at splits 10, 20 and 25 of 30 layers, central SPSA (MeZO,
DeComFL central) and forward differences (FedZO, DeComFL forward) with P probes, and backprop.
The estimator formulas and the statistics are in ``gradient_quality_stats`` (its docstring);
the probe scalars' linearisation is checked against real perturbed forwards through each
method's own ``step`` on one batch per checkpoint. Writes
``benchmarks/results/gradient_quality/<trainable>.json``.

``scaled``: from the cached gradients only, the per-tensor probe scales of issue 27 (LoRA B-only,
scales rebuilt from the seed log, the oracle) against the default and DeComFL P = 5
(``gradient_quality_scaled``); writes ``benchmarks/results/gradient_quality/scaled_<trainable>.json``.

``report``: prints the tables and writes the RESULTS.md section "Gradient quality (mechanism
bench)" (at the end of the file) and one plot per trainable set.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np

import gradient_quality_grads as grads
import gradient_quality_stats as st

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "gradient_quality"
TRAINABLES = ("norm", "lora", "bitfit")
REFERENCE_EXAMPLES = 512  # the brief's large-batch gradient, for the cos²(g_512, G) factor


def curvature_q2(validation: list[dict]) -> tuple[float, float]:
    """E[q²] and its SE, q = forward-difference scalar − central scalar along the same
    directions (the rows of ``VALIDATION_PROBES`` that share them)."""
    rows = {r["difference"]: r for r in validation if r["method"] != "spzo"}
    q = np.array(rows["forward"]["scalars_real"]) - np.array(rows["central"]["scalars_real"])
    return st.mean_and_se(q**2)


def checkpoint_figures(ck: st.Checkpoint, settings: list[st.Setting], default: st.Setting, splits: list[int], batch: int) -> dict:
    """Every setting's figures on one checkpoint, the units' and blocks' shares of ‖G‖²."""
    reference = st.setting_terms(ck, default)
    shares = {str(s): dict(zip(("share", "share_se"), st.block_share(ck, s))) for s in splits}
    g2 = st.pair_mean(ck.gram.sum(0))
    return {
        "batches": ck.batches,
        "gradient_norm2": g2,
        "gradient_norm2_se": st.jackknife_se(g2, st.leave_one_out_pair_means(ck.gram.sum(0))),
        "cos2_of_512_example_gradient": st.reference_cos2(ck, REFERENCE_EXAMPLES, batch),
        "block2_share": shares,
        "units": st.unit_shares(ck),
        "settings": [st.figures(ck, s, reference) for s in settings],
    }


def trainable_result(bench: grads.Bench, batches: dict[str, int], splits: list[int], probes: tuple[int, ...]) -> dict:
    """Fill the cache for one trainable set (model work) and compute its figures at each
    checkpoint of ``batches`` (checkpoint -> training batches)."""
    base = bench.ex.trainable_arrays()
    units, unit_index = grads.unit_layout(bench.ex)
    dims = np.bincount(unit_index, minlength=len(units))
    job = bench.job
    default = st.Setting(f"spzo-{job.variant}", job.p1, job.p2, bench.ex.split)
    settings = st.settings_grid(tuple(splits), probes, default)
    out = {"trainable": job.trainable, "tensors": len(bench.ex.names), "elements": int(dims.sum()),
           "tensor_names_digest": grads.trainable_tag(bench.ex), "checkpoints": {}}
    for checkpoint, count in batches.items():
        info = grads.prepare_checkpoint(bench, checkpoint, base, count)
        data = grads.load_gradients(Path(info["folder"]), count)
        q2, q2_se = curvature_q2(info["validation"])
        ck = st.Checkpoint(st.gram_by_unit(data["grads"], unit_index, len(units)), dims, units, data["flops"], q2)
        figures = checkpoint_figures(ck, settings, default, splits, job.batch_size)
        validation = [{k: v for k, v in r.items() if not k.startswith("scalars")} for r in info["validation"]]
        out["checkpoints"][checkpoint] = {
            "checkpoint": {k: v for k, v in info.items() if k not in ("folder", "validation")},
            "mean_batch_loss": float(data["losses"].mean()),
            # elements whose gradient is 0 on every batch (LoRA's A while B = 0): probe dimensions that buy only noise
            "zero_gradient_fraction": float(np.mean(np.all(data["grads"] == 0, axis=0))),
            "curvature_q2": q2, "curvature_q2_se": q2_se,
            "linearisation": validation,
            **figures,
        }
    bench.ex.load_trainable(base)
    out |= {"model": bench.model_name, "task": job.task, "batch": job.batch_size, "max_length": job.max_length,
            "eps": job.eps, "distribution": job.distribution, "default": default.label,
            "blocks": {str(s): [int(dims[[st.unit_block(u, s) == b for u in units]].sum()) for b in (1, 2)] for s in splits}}
    return out


def run(args) -> None:
    if args.quick:
        args.splits, probes, batches = [20], (1, 4), {"base": 6}
    else:
        probes, batches = st.PROBES, {"base": args.batches, "mid": args.mid_batches or args.batches}
    command = "python benchmarks/gradient_quality.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    for trainable in args.trainable:
        result = trainable_result(grads.load_bench(trainable), batches, args.splits, probes)
        result["command"] = command
        path = (grads.CACHE / "quick" if args.quick else RESULTS) / f"{trainable}.json"  # a smoke run leaves the results alone
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1))
        print(f"wrote {path}")


def scaled(args) -> None:
    import gradient_quality_scaled as sc

    command = "python benchmarks/gradient_quality.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    for trainable in args.trainable:
        batches = {"base": args.batches, "mid": args.mid_batches or args.batches}
        result = sc.scaled_result(grads.load_bench(trainable), batches, curvature_q2) | {"command": command}
        path = RESULTS / f"scaled_{trainable}.json"
        path.write_text(json.dumps(result, indent=1))
        print(f"wrote {path}")


def curvature(args) -> None:
    import gradient_quality_curvature as cv

    path = RESULTS / "curvature_lora.json"
    earlier = json.loads(path.read_text()) if args.supports and path.exists() else None
    supports = tuple(args.supports or cv.SUPPORTS)
    result = cv.curvature_result(grads.load_bench("lora"), args.probes, supports, earlier)
    commands = ([earlier["command"]] if earlier else []) + ["python benchmarks/gradient_quality.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])]
    path.write_text(json.dumps(result | {"command": "; ".join(commands)}, indent=1))
    print(f"wrote {path}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="compute (or complete) the gradients and every setting's figures")
    r.add_argument("--trainable", nargs="+", default=list(TRAINABLES), choices=TRAINABLES)
    r.add_argument("--batches", type=int, default=48, help="training batches of 16 per checkpoint (default 48)")
    r.add_argument("--mid-batches", type=int, default=0, help="batches at the mid-training checkpoint (default: --batches)")
    r.add_argument("--splits", type=int, nargs="+", default=[10, 20, 25])
    r.add_argument("--quick", action="store_true",
                   help="6 batches, the base model, P in {1, 4}, split 20: a smoke run, written under runs/gradient_quality/quick/")
    sc = sub.add_parser("scaled", help="screen per-tensor probe scales from the cached gradients (issue 27)")
    sc.add_argument("--trainable", nargs="+", default=["norm", "lora"], choices=TRAINABLES)
    sc.add_argument("--batches", type=int, required=True, help="cached batches to read at the base checkpoint")
    sc.add_argument("--mid-batches", type=int, default=0, help="at the mid checkpoint (default: --batches)")
    cv = sub.add_parser("curvature", help="curvature per probed element of each LoRA probe support, real forwards (issue 27)")
    cv.add_argument("--probes", type=int, default=32, help="Rademacher directions per support and checkpoint (default 32)")
    cv.add_argument("--supports", nargs="+", help="measure only these supports, keeping the others' rows of the last run "
                    "(names as in gradient_quality_curvature.SUPPORTS)")
    sub.add_parser("report", help="print the tables, write the RESULTS section and the plots")
    args = ap.parse_args(argv)
    if args.command == "run":
        if min(args.batches, args.mid_batches or args.batches) < 4:
            ap.error("--batches and --mid-batches must be at least 4 (the jackknife needs several batches)")
        run(args)
    elif args.command == "scaled":
        scaled(args)
    elif args.command == "curvature":
        import gradient_quality_curvature as cv

        curvature(args)
    else:
        import gradient_quality_report

        gradient_quality_report.report(RESULTS, HERE / "RESULTS.md")


if __name__ == "__main__":
    main()
