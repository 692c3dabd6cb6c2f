"""What the backends' factories share: the job's split, verbalizers, sequence length and
distribution for an executor, and the job's trainable set on a loaded transformers model."""

from __future__ import annotations

from typing import Sequence

from edgezo.backends.hf.arch import make_adapter
from edgezo.backends.hf.lora import LoRAWrappers
from edgezo.backends.hf.trainable import job_trainable, parse_trainable
from edgezo.config import JobConfig
from edgezo.errors import EdgezoError
from edgezo.tasks import Task


def default_split(num_layers: int) -> int:
    """Two thirds of the layers in block 1: block 2 is probed P2 times per block-1 probe, so a
    cheaper block 2 buys more perturbations for the same compute."""
    return max(1, min(num_layers - 1, round(num_layers * 2 / 3)))


def build_split_executor(
    executor_class, model, tokenizer, names: Sequence[str], cfg: JobConfig, task: Task, *, kind: str, num_layers: int, **options
):
    """``executor_class`` over a loaded model with the job's split (default: :func:`default_split`),
    the task's verbalizers for the model's ``kind``, sequence length and distribution; ``options``:
    the backend's own keyword arguments."""
    if getattr(task, "kind", "classification") == "generation" and not getattr(executor_class, "language_modelling", False):
        raise EdgezoError(f"generation task {task.name}: the response-token loss runs on the torch backend only "
                          f"({getattr(executor_class, 'backend', executor_class.__name__)} scores label words); use --backend torch")
    split = cfg.split if cfg.split is not None else default_split(num_layers)
    return executor_class(
        model,
        tokenizer,
        split=split,
        trainable=list(names),
        verbalizers=task.verbalizers(kind),
        max_length=cfg.max_length,
        distribution=cfg.distribution,
        **options,
    )


def transformers_executor(executor_class, model, tokenizer, cfg: JobConfig, task: Task, lora_wrappers: LoRAWrappers | None = None):
    """``executor_class`` over a transformers torch model (torch's float32 one, int8's quantized
    one) with the job's trainable set; LoRA, when asked for, wraps the layers ``lora_wrappers``
    names (default: plain linear layers)."""
    adapter = make_adapter(model)
    names = job_trainable(model, parse_trainable(cfg.trainable), cfg.seed, lora_wrappers)
    return build_split_executor(executor_class, model, tokenizer, names, cfg, task, kind=adapter.kind, num_layers=adapter.num_layers)
