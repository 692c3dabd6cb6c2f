"""What a finished job writes beside its merged model, so the result can be used without edgezo's
job settings and without shipping a full copy of the model:

* ``model/edgezo-task.json``: the task the model was trained for (template, label words, or the
  built-in's name), its sequence length and split, and the base model's name and digest, so
  ``edgezo evaluate MODEL_FOLDER`` needs nothing else;
* ``trainable.safetensors``: only the trained tensors (Hugging Face names, float32) and, in its
  metadata, the base model's digest and the ``--trainable`` spec: kilobytes for norm, megabytes
  for LoRA. For norm/bitfit/full/names a transformers user applies it with
  ``model.load_state_dict(safetensors.torch.load_file(path), strict=False)``;
* ``adapter/`` (LoRA only): a PEFT adapter folder (``adapter_config.json`` and
  ``adapter_model.safetensors``) that ``peft.PeftModel.from_pretrained(base, folder)`` loads.

Everything here works on NumPy arrays from the executor protocol (``trainable_arrays``), so it is
the same for every backend and imports no array framework (a backend's ``save_trained_model``
calls :func:`write_exports`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from edgezo.errors import EdgezoError

RECORD = "edgezo-task.json"
TRAINABLE_FILE = "trainable.safetensors"
ADAPTER_DIR = "adapter"
RECORD_FORMAT = 1


def task_record(cfg, task, info, split: int) -> dict:
    """What ``edgezo evaluate`` and ``generate`` read back: enough to rebuild the task and the
    executor's prompt handling (the weights are the folder itself)."""
    record = {"format": RECORD_FORMAT, "task": task.ref, "task_name": task.name, "task_kind": task.kind}
    if task.kind == "generation":
        s = task.source
        record["prompt"] = {"template": s.template, "prompt_column": s.prompt_column, "response_column": s.response_column,
                            "messages_column": s.messages_column, "chat_template": s.chat}
    else:
        record |= {
            "label_names": list(task.label_names),
            "templates": {"causal": task.causal_template, "mlm": task.mlm_template},
            "label_words": {"causal": list(task.causal_verbalizers), "mlm": list(task.mlm_verbalizers)},
        }
    return record | {
        "max_length": cfg.max_length,
        "split": split,
        "trainable": cfg.trainable,
        "method": cfg.method,
        "base_model": {"name": info.name, "revision": info.revision, "digest": info.digest},
    }


def write_record(folder: Path, record: dict) -> Path:
    path = Path(folder) / RECORD
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return path


def read_record(folder: str | Path) -> dict | None:
    """The folder's task record, or None for a model folder edgezo did not write."""
    path = Path(folder) / RECORD
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise EdgezoError(f"{path} is not valid JSON ({e}); re-run the job or pass --task") from None


def save_trainable(path: Path, arrays: dict[str, np.ndarray], base_digest: str, trainable: str, base_name: str = "") -> Path:
    """The trained tensors only, with the base model they apply to in the metadata."""
    from safetensors.numpy import save_file

    path = Path(path)
    save_file({n: np.ascontiguousarray(a, dtype=np.float32) for n, a in arrays.items()}, str(path),
              metadata={"format": "edgezo-trainable", "base_digest": base_digest, "base_name": base_name, "trainable": trainable})
    return path


def load_trainable_file(path: str | Path, base_digest: str | None = None) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """``(arrays, metadata)`` of a trainable-only file; with ``base_digest``, refuse a file made
    for other base weights (the tensors would land on the wrong model silently)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise EdgezoError(f"trainable file {path} does not exist")
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = dict(f.metadata() or {})
            arrays = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file
        raise EdgezoError(f"{path} is not a readable safetensors file ({type(e).__name__}: {e})") from None
    if meta.get("format") != "edgezo-trainable":
        raise EdgezoError(f"{path} is not an edgezo trainable-only file (no edgezo metadata)")
    if base_digest is not None and meta.get("base_digest") != base_digest:
        raise EdgezoError(f"{path} was trained on base model digest {meta.get('base_digest', '?')[:12]}..., "
                          f"this model's is {base_digest[:12]}...: load it onto the base model it was trained from")
    return arrays, meta


_LORA = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])$")


def save_peft_adapter(folder: Path, arrays: dict[str, np.ndarray], trainable: str, base_name: str, task_type: str = "CAUSAL_LM") -> Path:
    """A PEFT LoRA adapter folder from edgezo's LoRA tensors (``<module>.lora_A`` [r, in],
    ``<module>.lora_B`` [out, r], scaling alpha/r: the same parametrisation as PEFT's)."""
    from safetensors.numpy import save_file

    from edgezo.backends.hf.trainable import parse_trainable

    spec = parse_trainable(trainable)
    if spec.kind != "lora":
        raise EdgezoError(f"a PEFT adapter needs --trainable lora (this model trained {trainable})")
    tensors, modules = {}, []
    for name, array in arrays.items():
        m = _LORA.match(name)
        if m is None:
            raise EdgezoError(f"trainable tensor {name} is not a LoRA factor: a PEFT adapter holds LoRA factors only")
        tensors[f"base_model.model.{m['module']}.lora_{m['ab']}.weight"] = np.ascontiguousarray(array, dtype=np.float32)
        modules.append(m["module"].rpartition(".")[2])
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = {
        "peft_type": "LORA",
        "task_type": task_type,
        "base_model_name_or_path": base_name,
        "r": spec.rank,
        "lora_alpha": spec.alpha,
        "lora_dropout": 0.0,
        "bias": "none",
        "target_modules": sorted(set(modules)),
        "fan_in_fan_out": False,
        "use_rslora": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "modules_to_save": None,
    }
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return folder


def write_exports(model_dir: Path, cfg, task, ex, info) -> dict[str, int]:
    """The task record in ``model_dir`` and the trainable-only exports beside it (in its parent,
    the job's --out); returns each file's size in bytes."""
    model_dir = Path(model_dir)
    out = model_dir.parent
    write_record(model_dir, task_record(cfg, task, info, ex.split))
    arrays = ex.trainable_arrays()
    sizes = {TRAINABLE_FILE: save_trainable(out / TRAINABLE_FILE, arrays, info.digest, cfg.trainable, info.name).stat().st_size}
    if cfg.trainable.strip().lower().startswith("lora"):
        adapter = save_peft_adapter(out / ADAPTER_DIR, arrays, cfg.trainable, info.name,
                                    "CAUSAL_LM" if ex.kind == "causal" else "FEATURE_EXTRACTION")
        sizes[ADAPTER_DIR] = sum(p.stat().st_size for p in adapter.iterdir())
    return sizes
