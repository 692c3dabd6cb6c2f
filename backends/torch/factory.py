"""Build a torch executor for a job: load the model, choose the trainable set, split it."""

from __future__ import annotations

from edgezo.backends.torch.adapters import make_adapter
from edgezo.backends.torch.executor import TorchExecutor
from edgezo.backends.torch.loading import ModelInfo, load_model
from edgezo.backends.torch.trainable import add_lora, parse_trainable, select_trainable
from edgezo.config import JobConfig
from edgezo.tasks import Task


def default_split(num_layers: int) -> int:
    """Two thirds of the layers in block 1: block 2 is probed P2 times per block-1 probe, so a
    cheaper block 2 buys more perturbations for the same compute."""
    return max(1, min(num_layers - 1, round(num_layers * 2 / 3)))


def build_torch_executor(cfg: JobConfig, task: Task, model_bundle=None) -> tuple[TorchExecutor, ModelInfo]:
    model, tokenizer, info = model_bundle or load_model(cfg.model)
    spec = parse_trainable(cfg.trainable)
    if spec.kind == "lora":
        add_lora(model, spec.rank, spec.alpha, spec.targets, cfg.seed)
    adapter = make_adapter(model)
    names = select_trainable(model, spec, frozen_names=adapter.input_embedding_names())
    return split_executor(TorchExecutor, model, tokenizer, adapter, names, cfg, task), info


def split_executor(executor_class, model, tokenizer, adapter, names, cfg: JobConfig, task: Task):
    """An executor over a loaded Hugging Face model (torch's or int8's) with the job's split
    (default: :func:`default_split`), verbalizers, sequence length and distribution."""
    split = cfg.split if cfg.split is not None else default_split(adapter.num_layers)
    return executor_class(
        model,
        tokenizer,
        split=split,
        trainable=names,
        verbalizers=task.verbalizers(adapter.kind),
        max_length=cfg.max_length,
        distribution=cfg.distribution,
    )


def save_trained_model(cfg: JobConfig, task: Task, ex, out_dir) -> None:
    """Write the trained global model as a transformers folder. A torch executor saves its own
    weights; any other backend's trainable tensors are loaded into a torch replica of the base
    model first, so the folder is always ``base + replay`` at fp32 (an int8 device's quantized
    frozen weights are its local approximation of that base, not part of the global model)."""
    from edgezo.backends.torch.loading import save_model

    if getattr(ex, "backend", "torch") != "torch":
        arrays = ex.trainable_arrays()
        ex, _ = build_torch_executor(cfg, task)
        ex.load_trainable(arrays)
    save_model(ex.model, ex.tokenizer, out_dir)
