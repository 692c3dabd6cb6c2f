"""`edgezo evaluate`: the accuracy of a model folder on a task's validation split.

A folder written by ``simulate`` or ``coordinate`` (``OUT/model``) records the task, template and
label words it was trained for (``edgezo-task.json``), so the folder alone is enough; any other
model (a hub id, a folder, a .gguf: the base model, say) is evaluated with ``--task``.
"""

from __future__ import annotations

from pathlib import Path

import click
from tqdm.auto import tqdm

from edgezo.app.commands.options import DEVICE_OPTION
from edgezo.backends.hf.export import load_trainable_file, read_record
from edgezo.config import JobConfig
from edgezo.errors import EdgezoError
from edgezo.evaluate import exact_match, make_evaluator, make_lm_evaluator, rouge_l
from edgezo.jobdata import load_job_data, pairs_for
from edgezo.tasks import get_task


@click.command(context_settings={"show_default": True})
@click.argument("model")
@click.option("--task", help="Task name or TOML task file. [default: the one the folder was trained for]")
@click.option("--data", help="The task's data: a folder (built-in tasks' release files, or a user task's file names) or, for a user task, a validation file.")
@click.option("--eval-samples", type=int, default=0, help="Evaluate a seeded sample of N validation examples (0: all); the same N and --seed pick the same examples as a job's evaluation.")
@click.option("--seed", type=int, default=0, help="Seed of the --eval-samples draw (a job's --seed).")
@click.option("--batch-size", type=int, default=32, help="Examples per forward.")
@click.option("--max-length", type=int, help="Tokens per prompt. [default: the folder's, else 128]")
@click.option("--trainable-file", type=click.Path(dir_okay=False, exists=True), help="A job's trainable.safetensors to apply to MODEL first (MODEL is then the base model it was trained from; its digest is checked).")
@click.option("--max-new-tokens", type=int, default=64, help="Generation tasks: most tokens generated per answer (exact match and ROUGE-L).")
@DEVICE_OPTION
@click.option("--quiet", is_flag=True, help="No progress bar.")
def evaluate(model, task, data, eval_samples, seed, batch_size, max_length, trainable_file, max_new_tokens, device, quiet):
    """Accuracy of MODEL on the validation split of the task it was trained for; for a generation
    task, validation loss, token accuracy, and exact match and ROUGE-L of greedy answers.

    Examples: edgezo evaluate runs/sst2/model;
    edgezo evaluate --task my-task.toml BASE (a folder, hub id or .gguf: the model before training);
    edgezo evaluate BASE --task sst2 --trainable-file runs/sst2/trainable.safetensors
    """
    import transformers

    from edgezo.backends.torch.factory import build_torch_executor

    from edgezo.backends.torch.device import resolve_device

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    resolve_device(device)  # --device cuda without a GPU: one line, before any data or model is read
    record = read_record(model) if Path(model).is_dir() else None
    if task is None:
        if record is None:
            raise EdgezoError(f"{model} records no task (no edgezo-task.json: not a folder an edgezo job wrote): pass --task NAME or --task FILE.toml")
        task = record["task"]
    if data is not None and Path(data).is_file():
        task, data = _validation_only(task, data), None
    arrays, meta = load_trainable_file(trainable_file) if trainable_file else (None, {})
    cfg = JobConfig(model=model, task=task, data=data, eval_samples=eval_samples, seed=seed, batch_size=batch_size,
                    trainable=meta.get("trainable", "norm"),
                    max_length=max_length or (record or {}).get("max_length", 128),
                    split=(record or {}).get("split")).validate()
    job = load_job_data(cfg, need_train=False)
    if not job.dev:
        raise EdgezoError(f"the validation split of {job.task.name} is empty")
    ex, info = build_torch_executor(cfg, job.task, device=device)
    if arrays is not None:
        load_trainable_file(trainable_file, info.digest)  # the base model it was trained from, or one line why not
        ex.load_trainable(arrays)
    if job.task.kind == "generation":
        click.echo(generation_report(ex, job.task, job.dev, quiet, batch_size, max_new_tokens) + f" ({info.name})")
        return
    accuracy = make_evaluator(ex, job.task, job.dev, quiet, batch_size)()
    click.echo(f"accuracy {100 * accuracy:.1f}% on {len(job.dev)} validation examples of {job.task.name} ({info.name})")


def generation_report(ex, task, dev, quiet: bool, batch_size: int, max_new_tokens: int) -> str:
    """Validation loss and token accuracy (teacher-forced), then exact match and ROUGE-L of greedy
    generations against the references."""
    from edgezo.backends.torch.lm import generate

    evaluation = make_lm_evaluator(ex, task, dev, quiet, batch_size)
    evaluation()
    prompts = [p for p, _ in pairs_for(ex, task, dev)]
    references = [task.reference(e) for e in dev]
    predictions = []
    for prompt in tqdm(prompts, desc="generating", unit="ex", leave=False, disable=quiet):
        predictions += generate(ex.model, ex.tokenizer, [prompt], max_new_tokens)
    return (f"validation loss {evaluation.last['loss']:.4f}, token accuracy {100 * evaluation.last['token_accuracy']:.1f}%, "
            f"exact match {100 * exact_match(predictions, references):.1f}%, ROUGE-L {100 * rouge_l(predictions, references):.1f} "
            f"on {len(dev)} validation examples of {task.name}")


def _validation_only(task: str, data: str) -> str:
    """``--data FILE`` names the validation file here (a job's ``--data FILE`` is its training
    file): the task, as JSON text, with that file as its validation split."""
    from dataclasses import replace

    resolved = get_task(task)
    if resolved.source is None:
        raise EdgezoError(f"--data {data} is a file, but {resolved.name} reads a folder of release files: pass the folder")
    return replace(resolved, source=replace(resolved.source, validation=str(Path(data).resolve()))).ref
