"""`edgezo simulate`: N virtual devices fine-tune a model together in one process.

A thin layer: options -> ``edgezo.app.jobs.simulate.SimulateJob`` -> ``run()``."""

from __future__ import annotations

import click
from tqdm.auto import tqdm

from edgezo.app.engines.options import engine_options
from edgezo.app.jobs.simulate import SimulateJob
from edgezo.app.settings import SimulateSettings
from edgezo.app.commands.options import (AGGREGATION_OPTIONS, DEVICE_OPTION, JOB_OPTIONS, PLAN_CAP_OPTIONS, QUIET_HELP, TASK_OPTIONS,
                                     TRAIN_SAMPLES, apply, given_options)

S = SimulateSettings


@click.command(context_settings={"show_default": True})
@apply(JOB_OPTIONS + TASK_OPTIONS + [TRAIN_SAMPLES] + AGGREGATION_OPTIONS)
@click.option("--eval-seed", type=int, help="Draw the --eval-samples validation subset with this seed instead of the run's, so runs of every seed and method score the same examples (a paired comparison). [default: the run's seed]")
@click.option("--devices", help="Heterogeneous devices from profiles: NAME:COUNT,... (measured or reference names, or files) or a TOML file of [[devices]] profile/count; sets --clients. Each device's round time is simulated from its profile.")
@click.option("--round-seconds", type=float, help="Round deadline in simulated seconds (with --devices): devices that cannot answer in time are left out of the round; the planning budget of --plan.")
@click.option("--plan", is_flag=True, help="Give each device of --devices its own K, P1, P2 and batch from its profile and --round-seconds (otherwise everyone does the job's).")
@apply(PLAN_CAP_OPTIONS)
@click.option("--backend", default=S.backend, help="Executor of the devices: auto, torch, mlx or int8, or a comma-separated list given to the devices in turn (torch,mlx,int8: a mixed-backend job). auto: torch here (mlx on Apple silicon); with --devices, each device's planned backend when it is installed.")
@DEVICE_OPTION
@click.option("--overwrite", is_flag=True, help="Replace the run already in --out (otherwise such an --out is refused).")
@click.option("--resume", is_flag=True, help="Continue the stopped run in --out from its seed log and metrics, to the model the uninterrupted run would have reached (its settings are reused; options given must agree with them).")
@click.option("--quiet", is_flag=True, help=QUIET_HELP)
@engine_options
@click.pass_context
def simulate(ctx, config_file, engine, **options):
    """Fine-tune a model with N virtual devices in one process.

    Evaluates before training (round 0) and after the last round, and writes to --out:
    metrics.jsonl (one JSON object per round), summary.json (settings, accuracy, fingerprint of
    the final global model), seedlog.jsonl (the global model = base + replay of this log),
    job.json (what --resume continues), accuracy_vs_flops.png and model/ (safetensors, loadable
    with transformers' from_pretrained).

    With --devices, metrics also carry sim_time_s, the simulated wall clock of those devices.

    Examples: edgezo simulate --task sst2 --clients 4 --rounds 30 --out runs/sst2;
    edgezo simulate --devices pi5:2,laptop-x86:2 --round-seconds 60 --plan;
    edgezo simulate --backend torch,mlx,int8 --clients 3 (one device per backend)

    Accuracy is that of the first listed backend's replica (torch's with --devices); every
    replica applies the same global updates.
    """
    job = SimulateJob.from_options(config_file, engine=engine, **given_options(ctx, options, {"rule": "aggregation"}))
    job.say, job.progress = tqdm.write, not job.settings.quiet  # a --config file may say quiet = true too
    result = job.run()
    if result.stopped:
        return
    summary, clock = result.summary, summary_clock(result.summary)
    click.echo(
        f"accuracy {100 * summary['initial_accuracy']:.1f}% -> {100 * summary['final_accuracy']:.1f}% "
        f"after {job.config.rounds} rounds ({summary['flops']:.3g} forward FLOPs, {summary['wall_s']:.0f} s{clock}); wrote {result.out}/"
    )


def summary_clock(summary: dict) -> str:
    return f", {summary['sim_time_s']:,.0f} simulated s" if summary.get("sim_time_s") is not None else ""
