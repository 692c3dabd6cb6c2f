"""The ONNX export browser devices run (backends/torch/onnx_export.py, onnx_check.py), on a real
tiny LLaMA built from a config: the graph's contract (inputs, outputs, dynamic shapes), agreement
with the torch executor on the job's batches with perturbed trainables, the loss the page computes,
the cache, and that a graph computing something else is refused before it is served."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgezo.backends.torch.factory import build_torch_executor
from edgezo.backends.torch.onnx_check import Tolerance, check_export, check_moved, label_loss, onnx_outputs, onnx_session, trainable_values
from edgezo.backends.torch.onnx_export import OUTPUTS, cached_export, export_key
from edgezo.config import JobConfig
from edgezo.coordinator.server.web_serving import base_trainable_file, check_batches
from edgezo.errors import EdgezoError
from edgezo.jobdata import load_job_data
from edgezo.keys import Direction
from tiny import save_tiny


@pytest.fixture(scope="module")
def two_layer_llama(tmp_path_factory, sst2_dir):
    """A 2-layer tiny LLaMA: the export's time grows with the layers (about 8 s here on a quiet core)."""
    return save_tiny(tmp_path_factory.mktemp("models") / "tiny-llama-2", "llama", layers=2)


@pytest.fixture(scope="module")
def job(two_layer_llama):
    torch.set_num_threads(1)
    cfg = JobConfig(model=str(two_layer_llama), task="sst2", batch_size=8, eval_samples=64, seed=5).validate()
    data = load_job_data(cfg, need_train=False)
    ex, info = build_torch_executor(cfg, data.task)
    return cfg, data, ex, info


@pytest.fixture(scope="module")
def export(job, tmp_path_factory):
    cfg, data, ex, info = job
    cache = tmp_path_factory.mktemp("onnx-cache")
    made = cached_export(ex, check_batches(ex, data, cfg, 1)[0], info.digest, cfg.trainable, cache)
    return made, cache


def test_graph_inputs_and_outputs_are_the_contract(job, export):
    cfg, data, ex, info = job
    session = onnx_session(export[0].path)
    inputs = session.get_inputs()
    assert [i.name for i in inputs] == ["input_ids", "attention_mask", *ex.names]
    assert [i.type for i in inputs[:2]] == ["tensor(int64)"] * 2 and {i.type for i in inputs[2:]} == {"tensor(float)"}
    assert all(isinstance(d, str) for d in inputs[0].shape)  # batch and length are dynamic
    assert [tuple(i.shape) for i in inputs[2:]] == [tuple(ex.params[n].shape) for n in ex.names]
    assert [o.name for o in session.get_outputs()] == list(OUTPUTS)


def test_export_agrees_with_the_executor_on_the_jobs_batches_perturbed_too(job, export):
    cfg, data, ex, info = job
    batches = check_batches(ex, data, cfg, 3)
    agreement = check_export(export[0].path, ex, batches, Direction(cfg.seed, 4, 1, 0, 0, 0), 1e-2)
    assert agreement.batches == 3 and agreement.max_logit_diff < 1e-5
    assert np.allclose(agreement.scalars_onnx, agreement.scalars_torch, rtol=1e-3, atol=1e-5)
    assert any(abs(s) > 1e-4 for s in agreement.scalars_torch)  # the probe moved the loss: the check compared something


def test_page_loss_from_label_logits_is_the_executors_loss(job, export):
    """PROTOCOL.md 9.4: softmax over the label words only; a batch of another length than the traced one."""
    cfg, data, ex, info = job
    batch = ex.encode(["Review: a fine film\nSentiment:", "Review: it was bad , and long and dull .\nSentiment:", "Review: great\nSentiment:"],
                      [1, 0, 1])
    logits, normalizer = onnx_outputs(onnx_session(export[0].path), batch, trainable_values(ex))
    assert logits.shape == (3, 2) and normalizer.shape == (3,)
    assert label_loss(logits, [1, 0, 1]) == pytest.approx(ex.forward_block2(ex.forward_block1(batch), batch), rel=1e-6)
    assert np.all(normalizer > logits.max(axis=1))  # logsumexp over the whole vocabulary exceeds any one logit


def test_the_cache_is_reused_and_keyed_by_what_the_graph_depends_on(job, export):
    cfg, data, ex, info = job
    made, cache = export
    again = cached_export(ex, None, info.digest, cfg.trainable, cache)  # no sample needed: nothing is exported
    assert again == made
    assert export_key(ex, "0" * 64, cfg.trainable) != made.key
    assert export_key(ex, info.digest, "bitfit") != made.key
    (made.path.parent / "export.json").write_text((made.path.parent / "export.json").read_text().replace(made.sha256, "f" * 64))
    with pytest.raises(EdgezoError, match="sample batch"):  # a broken cache entry is exported again (here: refused before work)
        cached_export(ex, ex.encode(["x"], [0]), info.digest, cfg.trainable, cache)


def test_an_export_that_computes_something_else_is_refused(job, export):
    cfg, data, ex, info = job
    frozen = ex.params["model.layers.1.mlp.down_proj.weight"]  # block 2's, frozen
    saved = frozen.data.clone()
    frozen.data.mul_(1.5)  # the executor's model is no longer the exported one
    try:
        with pytest.raises(EdgezoError, match="disagrees with the torch executor on batch 0"):
            check_export(export[0].path, ex, check_batches(ex, data, cfg, 1), Direction(cfg.seed, 1, 0, 0, 0, 0), cfg.eps)
    finally:
        frozen.data.copy_(saved)


def test_base_trainables_are_served_as_a_round_0_checkpoint(job, tmp_path):
    """The page's starting replica: the graph's trainable inputs at round 0, with their fingerprint."""
    from safetensors import safe_open

    cfg, data, ex, info = job
    path = base_trainable_file(ex, tmp_path)
    with safe_open(str(path), "np") as f:
        assert f.metadata() == {"format": "edgezo-checkpoint-1", "round": "0", "fingerprint": ex.fingerprint()}
        assert list(f.keys()) == sorted(ex.names)
        assert all(np.array_equal(f.get_tensor(n), a) for n, a in ex.trainable_arrays().items())


def lora_job(model, trainable: str, seed: int = 5):
    cfg = JobConfig(model=str(model), task="sst2", batch_size=8, eval_samples=64, seed=seed, trainable=trainable).validate()
    data = load_job_data(cfg, need_train=False)
    ex, info = build_torch_executor(cfg, data.task)
    return cfg, data, ex, info


@pytest.fixture(scope="module")
def lora_export(two_layer_llama, tmp_path_factory):
    """The default-suite LoRA job (``lora:r=4``) and its export (about 8 s)."""
    cfg, data, ex, info = lora_job(two_layer_llama, "lora:r=4")
    batches = check_batches(ex, data, cfg, 2)
    return cfg, ex, batches, cached_export(ex, batches[0], info.digest, cfg.trainable, tmp_path_factory.mktemp("lora-onnx"))


def check_lora_export(cfg, ex, batches, made, factors: str) -> None:
    """The trained factors are the graph's trainable inputs in the fingerprint's order (A then B
    per layer; B alone with factors=B, A then a constant of the graph), and the export agrees with
    the executor at the base (B = 0, perturbed: the check moves B away from zero) and after the
    adapters moved (a replica some rounds into the job)."""
    inputs = [i.name for i in onnx_session(made.path).get_inputs()][2:]
    assert inputs == ex.names and [n.rsplit(".", 1)[1] for n in inputs] == (["lora_B"] * 4 if factors == "B" else ["lora_A", "lora_B"] * 4)
    agreement = check_export(made.path, ex, batches, Direction(cfg.seed, 1, 0, 0, 0, 0), 1e-2)
    assert agreement.max_logit_diff < 1e-5 and any(abs(s) > 1e-4 for s in agreement.scalars_torch)
    saved = {n: p.detach().clone() for n, p in ex.params.items() if n in ex.names}
    try:
        ex.apply_update([(Direction(cfg.seed, 1, 0, 0, 0, 0), 0.5), (Direction(cfg.seed, 1, 0, 0, 1, 0), -0.3)])  # B far from zero
        moved = check_export(made.path, ex, batches, Direction(cfg.seed, 2, 0, 0, 0, 0), 1e-2)
        assert moved.max_logit_diff < 1e-5 and moved.scalars_torch != agreement.scalars_torch
    finally:
        for n, value in saved.items():
            ex.params[n].data.copy_(value)


def test_lora_adapters_are_graph_inputs_and_agree_with_the_executor_perturbed(lora_export):
    cfg, ex, batches, made = lora_export
    check_lora_export(cfg, ex, batches, made, "AB")


@pytest.mark.browser  # a second LoRA export (8 s): with the browser suite
def test_lora_B_factors_alone_are_graph_inputs_and_agree_with_the_executor(two_layer_llama, tmp_path):
    cfg, data, ex, info = lora_job(two_layer_llama, "lora:r=4,factors=B")
    batches = check_batches(ex, data, cfg, 2)
    check_lora_export(cfg, ex, batches, cached_export(ex, batches[0], info.digest, cfg.trainable, tmp_path), "B")


def test_a_wrong_adapter_term_is_caught_only_with_the_adapters_moved(lora_export):
    """At the base B = 0, so a graph whose LoRA term is off (here: the executor's LoRA scaling
    changed by 2% after the export) moves the label logits at ±eps by a fraction of eps, within the
    tolerance; the check's moved replica (check_moved, every element 0.05 from the base) catches it."""
    cfg, ex, batches, made = lora_export
    adapters = [m for m in ex.model.modules() if hasattr(m, "lora_term")]
    for module in adapters:
        module.scaling *= 1.02
    try:
        session = onnx_session(made.path)
        near = [check_moved(session, made.path, ex, batches[0], Direction(cfg.seed, 1, 0, 0, 0, 0), Tolerance(), scale=sign * cfg.eps)
                for sign in (1, -1)]  # passes: what the ±eps probe alone would see
        assert 0 < max(near) < Tolerance().logits_atol
        with pytest.raises(EdgezoError, match="moved by 0.05 along a probe direction"):
            check_export(made.path, ex, batches, Direction(cfg.seed, 1, 0, 0, 0, 0), cfg.eps)
    finally:
        for module in adapters:
            module.scaling /= 1.02


def test_a_frozen_lora_A_is_part_of_the_export_cache_key(two_layer_llama):
    """factors=B bakes lora_A (seeded by the run seed) into the graph: another seed is another
    export; with both factors trained, A is an input and the seed does not matter."""
    keys = {(t, seed): export_key(lora_job(two_layer_llama, t, seed)[2], "d" * 64, t)
            for t in ("lora:r=4", "lora:r=4,factors=B") for seed in (5, 6)}
    assert keys[("lora:r=4,factors=B", 5)] != keys[("lora:r=4,factors=B", 6)]
    assert keys[("lora:r=4", 5)] == keys[("lora:r=4", 6)]
