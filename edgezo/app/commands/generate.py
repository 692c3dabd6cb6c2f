"""`edgezo generate`: complete a prompt with a saved model (greedy), to try what a job trained."""

from __future__ import annotations

from pathlib import Path

import click

from edgezo.app.commands.options import DEVICE_OPTION
from edgezo.backends.hf.export import read_record
from edgezo.errors import EdgezoError


@click.command(context_settings={"show_default": True})
@click.argument("model")
@click.argument("prompt")
@click.option("--max-new-tokens", type=int, default=64, help="Most tokens to generate.")
@click.option("--raw", is_flag=True, help="Feed PROMPT as it is (default: as the user's turn of the model's chat template, when the model has one and its task did).")
@DEVICE_OPTION
def generate(model, prompt, max_new_tokens, raw, device):
    """Complete PROMPT with MODEL (a folder an edgezo job wrote, a model folder, hub id or .gguf).

    A folder trained on a generation task wraps PROMPT the way its training prompts were (the
    chat template, when the task used it). Example: edgezo generate runs/instruct/model "Name three primary colours."
    """
    import transformers

    from edgezo.backends.torch.lm import generate as complete
    from edgezo.backends.torch.device import resolve_device
    from edgezo.backends.torch.loading import load_model

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    if max_new_tokens < 1:
        raise EdgezoError(f"--max-new-tokens must be at least 1 (got {max_new_tokens})")
    where = resolve_device(device)  # --device cuda without a GPU: one line, before the model loads
    record = read_record(model) if Path(model).is_dir() else None
    lm, tokenizer, _ = load_model(model)
    lm = lm.to(where)
    if lm.config.is_encoder_decoder or not hasattr(lm, "generate") or getattr(lm.config, "model_type", "") in ("bert", "roberta"):
        raise EdgezoError(f"{model} is not a causal LM: generate completes prompts with causal models only")
    text = prompt
    chat = bool(getattr(tokenizer, "chat_template", None))
    if record is not None and record.get("task_kind") == "generation":
        wanted = record.get("prompt", {}).get("chat_template")
        chat = chat if wanted is None else wanted and chat
    elif record is not None:
        chat = False  # a classification model: its prompts were plain templates
    if chat and not raw:
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False)
    click.echo(complete(lm, tokenizer, [text], max_new_tokens)[0])
