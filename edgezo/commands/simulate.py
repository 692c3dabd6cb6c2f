"""`edgezo simulate`: N virtual devices fine-tune a model together in one process."""

from __future__ import annotations

import time

import click
from tqdm.auto import tqdm

from edgezo.commands.options import JOB_OPTIONS, TRAIN_SAMPLES, apply
from edgezo.config import build_config, load_toml, lr_at, probe_config
from edgezo.errors import EdgezoError
from edgezo.evaluate import make_evaluator
from edgezo.jobdata import device_shards, load_job_data, make_batcher
from edgezo.outputs import RunOutputs, round_line
from edgezo.seedlog import SeedLog
from edgezo.simulation import RoundRecord, Simulation


@click.command(context_settings={"show_default": True})
@apply(JOB_OPTIONS + [TRAIN_SAMPLES])
@click.option("--quiet", is_flag=True, help="No progress bar.")
def simulate(config_file, train_samples, quiet, **options):
    """Fine-tune a model with N virtual devices in one process.

    Evaluates before training (round 0) and after the last round, and writes to --out:
    metrics.jsonl (one JSON object per round), summary.json (settings, accuracy, fingerprint of
    the final global model), seedlog.jsonl (the global model = base + replay of this log),
    accuracy_vs_flops.png and model/ (safetensors, loadable with transformers' from_pretrained).

    Example: edgezo simulate --task sst2 --clients 4 --rounds 30 --out runs/sst2
    """
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    cfg = build_config(load_toml(config_file) if config_file else {}, options)
    if train_samples is not None and train_samples < cfg.clients:
        raise EdgezoError(f"--train-samples {train_samples} is fewer than --clients {cfg.clients}")
    data = load_job_data(cfg, train_samples)
    shards = device_shards(cfg, data.train)

    from edgezo.backends.torch.factory import build_torch_executor
    from edgezo.backends.torch.loading import save_model

    say = (lambda msg: None) if quiet else (lambda msg: tqdm.write(msg))
    say(f"loading model {cfg.model or '(default) SmolLM2-135M-Instruct'} ...")
    ex, info = build_torch_executor(cfg, data.task)
    say(
        f"{info.name}: {ex.adapter.num_layers} layers, split at {ex.split}; trainable {cfg.trainable}: "
        f"{ex.trainable_numel(1):,} + {ex.trainable_numel(2):,} parameters (block 1 + block 2); "
        f"{len(data.train):,} train examples over {cfg.clients} devices, {len(data.dev)} validation"
    )
    outputs = RunOutputs(cfg.out)
    seedlog = SeedLog(outputs.out / "seedlog.jsonl")
    seedlog.path.unlink(missing_ok=True)
    bar = tqdm(total=cfg.rounds * cfg.clients, desc="devices x rounds", unit="dev", disable=quiet, dynamic_ncols=True)

    def on_round(record: RoundRecord, entry) -> None:
        outputs.add(record)
        if entry is not None:
            seedlog.append(entry)
        say(round_line(record, cfg.rounds))

    started = time.perf_counter()
    sim = Simulation(
        executor=ex,
        shards=shards,
        make_batch=make_batcher(ex, data.task, data.train),
        evaluate=make_evaluator(ex, data.task, data.dev, quiet),
        method=cfg.method,
        rounds=cfg.rounds,
        local_steps=cfg.local_steps,
        lr=lambda rnd: lr_at(cfg.lr, cfg.lr_schedule, rnd, cfg.rounds),
        probe=probe_config(cfg),
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        eval_every=cfg.eval_every,
        on_round=on_round,
        on_device=lambda: bar.update(1),
    )
    sim.run()
    bar.close()
    summary = outputs.finish(cfg, ex, info, started, save_model)
    click.echo(
        f"accuracy {100 * summary['initial_accuracy']:.1f}% -> {100 * summary['final_accuracy']:.1f}% "
        f"after {cfg.rounds} rounds ({summary['flops']:.3g} forward FLOPs, {summary['wall_s']:.0f} s); wrote {outputs.out}/"
    )
