"""A user task end to end on a tiny model: simulate trains on a JSONL file with its own template,
the saved folder records the task so `edgezo evaluate` needs only the folder, and the exports
(trainable-only safetensors, PEFT adapter) load back into edgezo, transformers and peft."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from edgezo.backends.hf.export import RECORD, load_trainable_file, read_record
from edgezo.backends.torch.factory import build_torch_executor
from edgezo.config import JobConfig
from edgezo.errors import EdgezoError
from edgezo.tasks import get_task
from test_taskfile import TASK, sst2_rows, write_jsonl


def run_cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "edgezo.app.cli", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def task_file(tmp_path_factory, sst2_dir):
    folder = tmp_path_factory.mktemp("task")
    write_jsonl(folder / "train.jsonl", sst2_rows(sst2_dir, "train", 200))
    write_jsonl(folder / "dev.jsonl", sst2_rows(sst2_dir, "dev", 40))
    (folder / "task.toml").write_text(TASK, encoding="utf-8")
    return folder / "task.toml"


def _train(tiny_llama, task_file, out, trainable):
    done = run_cli("simulate", "--model", str(tiny_llama), "--task", str(task_file), "--clients", "2", "--rounds", "2",
                   "--local-steps", "2", "--batch-size", "4", "--lr", "5e-3", "--eps", "1e-2", "--trainable", trainable,
                   "--eval-samples", "24", "--out", str(out), "--quiet")
    assert done.returncode == 0, done.stderr[-3000:]
    return out, json.loads((out / "summary.json").read_text())


@pytest.fixture(scope="module")
def norm_run(tiny_llama, task_file, tmp_path_factory):
    return _train(tiny_llama, task_file, tmp_path_factory.mktemp("norm"), "norm")


@pytest.fixture(scope="module")
def lora_run(tiny_llama, task_file, tmp_path_factory):
    return _train(tiny_llama, task_file, tmp_path_factory.mktemp("lora"), "lora:r=4,alpha=8,targets=q_proj+v_proj")


def test_the_model_folder_records_task_template_and_label_words(norm_run, task_file, tiny_llama):
    out, summary = norm_run
    record = read_record(out / "model")
    assert record["templates"]["causal"] == "Movie review: {text}\nSentiment:"
    assert record["label_words"]["causal"] == [" negative", " positive"] and record["label_names"] == ["neg", "pos"]
    assert get_task(record["task"]) == get_task(str(task_file))  # the whole task, not a path to it
    assert record["base_model"]["digest"] == summary["model"]["digest"] and record["split"] == 3


def test_evaluate_needs_only_the_folder(norm_run):
    out, summary = norm_run
    done = run_cli("evaluate", str(out / "model"), "--eval-samples", "24", "--quiet")
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"accuracy {100 * summary['final_accuracy']:.1f}% on 24 validation examples of reviews" in done.stdout


def test_evaluate_a_base_model_with_a_trainable_file_and_refuse_another_base(norm_run, lora_run, tiny_llama, task_file):
    for out, summary in (norm_run, lora_run):
        done = run_cli("evaluate", str(tiny_llama), "--task", str(task_file), "--eval-samples", "24", "--quiet",
                       "--trainable-file", str(out / "trainable.safetensors"))
        assert done.returncode == 0, done.stderr[-2000:]
        assert f"accuracy {100 * summary['final_accuracy']:.1f}%" in done.stdout
    out, _ = norm_run
    done = run_cli("evaluate", str(out / "model"), "--trainable-file", str(out / "trainable.safetensors"), "--quiet")
    assert done.returncode == 2 and "was trained on base model digest" in done.stderr and done.stderr.count("\n") == 1


def test_evaluate_without_a_record_asks_for_the_task(tiny_llama):
    done = run_cli("evaluate", str(tiny_llama), "--quiet")
    assert done.returncode == 2 and "records no task" in done.stderr and "--task" in done.stderr


def test_trainable_file_is_small_and_loads_back_in_edgezo_and_transformers(norm_run, tiny_llama):
    out, summary = norm_run
    path = out / "trainable.safetensors"
    arrays, meta = load_trainable_file(path, summary["model"]["digest"])
    assert meta["trainable"] == "norm" and set(arrays) and all("norm" in n for n in arrays)
    assert path.stat().st_size < 8 * 1024 + sum(a.nbytes for a in arrays.values())
    assert path.stat().st_size * 20 < (out / "model" / "model.safetensors").stat().st_size
    # edgezo: a fresh executor on the base model + the file = the trained global model
    cfg = JobConfig(model=str(tiny_llama), task="sst2", trainable="norm", split=summary["split"]).validate()
    ex, _ = build_torch_executor(cfg, get_task("sst2"))
    ex.load_trainable(arrays)
    assert ex.fingerprint() == summary["fingerprint"]
    # transformers: two lines onto the base model give the merged folder's weights
    base = AutoModelForCausalLM.from_pretrained(tiny_llama)
    missing, unexpected = base.load_state_dict(load_file(path), strict=False)
    assert not unexpected
    merged = AutoModelForCausalLM.from_pretrained(out / "model")
    for (name, a), (_, b) in zip(base.state_dict().items(), merged.state_dict().items()):
        assert torch.equal(a, b), name
    with pytest.raises(EdgezoError, match="base model digest"):
        load_trainable_file(path, "0" * 64)


def test_lora_exports_a_peft_adapter_that_peft_loads(lora_run, tiny_llama):
    peft = pytest.importorskip("peft", reason="pip install peft (the PEFT adapter check)")
    out, summary = lora_run
    adapter = out / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 8
    assert sorted(config["target_modules"]) == ["q_proj", "v_proj"]
    arrays, _ = load_trainable_file(out / "trainable.safetensors")
    assert any(np.any(a != 0) for n, a in arrays.items() if n.endswith("lora_B"))  # trained, not the zero init
    base = AutoModelForCausalLM.from_pretrained(tiny_llama)
    model = peft.PeftModel.from_pretrained(base, adapter).eval()
    merged = AutoModelForCausalLM.from_pretrained(out / "model").eval()
    ids = torch.tensor([[5, 17, 42, 9, 100, 3]])
    with torch.no_grad():
        got, want = model(input_ids=ids).logits, merged(input_ids=ids).logits
        plain = AutoModelForCausalLM.from_pretrained(tiny_llama)(input_ids=ids).logits
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(plain, want, atol=1e-7)  # the adapter changes the model
    assert read_record(out / "model") is not None and (out / "model" / RECORD).is_file()
