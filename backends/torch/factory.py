"""Build a torch executor for a job: load the model, choose the trainable set, split it."""

from __future__ import annotations

from edgezo.backends.hf.factory import transformers_executor
from edgezo.backends.hf.source import ModelInfo
from edgezo.backends.torch.device import resolve_device
from edgezo.backends.torch.executor import TorchExecutor
from edgezo.backends.torch.loading import load_model
from edgezo.config import JobConfig
from edgezo.tasks import Task


def build_torch_executor(cfg: JobConfig, task: Task, model_bundle=None, device: str = "cpu") -> tuple[TorchExecutor, ModelInfo]:
    """``model_bundle``: an already loaded ``(model, tokenizer, ModelInfo)`` (default: ``load_model(cfg.model)``);
    ``device``: ``--device`` (auto, cpu or cuda; the CPU unless asked, so callers that never
    offer the option keep running where they did). The model moves there before LoRA wraps it."""
    model, tokenizer, info = model_bundle or load_model(cfg.model)
    model = model.to(resolve_device(device))
    if getattr(task, "kind", "classification") == "generation":
        from edgezo.backends.torch.lm import TorchLMExecutor

        return transformers_executor(TorchLMExecutor, model, tokenizer, cfg, task), info
    return transformers_executor(TorchExecutor, model, tokenizer, cfg, task), info


def save_trained_model(cfg: JobConfig, task: Task, ex, out_dir, info: ModelInfo | None = None) -> dict[str, int]:
    """Write the trained global model as a transformers folder. A torch executor saves its own
    weights; any other backend's trainable tensors are loaded into a torch replica of the base
    model first, so the folder is always ``base + replay`` at fp32 (an int8 device's quantized
    frozen weights are its local approximation of that base, not part of the global model).

    With the base model's ``info``, also the task record and the trainable-only exports
    (``edgezo.backends.hf.export``); returns their sizes in bytes."""
    from edgezo.backends.hf.export import write_exports
    from edgezo.backends.torch.loading import save_model

    saved = ex
    if ex.backend != "torch":
        arrays = ex.trainable_arrays()
        ex, _ = build_torch_executor(cfg, task)
        ex.load_trainable(arrays)
    save_model(ex.model, ex.tokenizer, out_dir)
    return write_exports(out_dir, cfg, task, saved, info) if info is not None else {}
