"""GGUF Q8_0 export of a model folder (edgezo.backends.hf.gguf_export), loaded back by the gguf
package's reader, by transformers (through edgezo's GGUF conversion) and by the int8 executor's
native GGUF reader."""

from __future__ import annotations

import subprocess
import sys

import gguf
import numpy as np
import pytest
from safetensors.numpy import load_file

from edgezo.backends.hf.gguf_export import export_gguf
from edgezo.backends.hf.source import resolve_model
from edgezo.backends.int8.factory import build_int8_executor
from edgezo.backends.torch.factory import build_torch_executor
from edgezo.config import JobConfig
from edgezo.errors import EdgezoError
from edgezo.tasks import get_task


@pytest.fixture(scope="module")
def exported(tiny_llama, tmp_path_factory):
    return export_gguf(tiny_llama, tmp_path_factory.mktemp("gguf") / "tiny-q8_0.gguf")


def test_gguf_reader_sees_a_q8_0_llama(exported, tiny_llama):
    reader = gguf.GGUFReader(str(exported))
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["token_embd.weight"] == "Q8_0" and types["blk.0.attn_q.weight"] == "Q8_0" and types["blk.3.ffn_down.weight"] == "Q8_0"
    assert types["blk.0.attn_norm.weight"] == "F32" and types["output_norm.weight"] == "F32"
    assert "output.weight" not in types  # tied head: llama.cpp reuses token_embd
    field = reader.fields["general.architecture"]
    assert bytes(field.parts[field.data[0]]).decode() == "llama"
    assert int(reader.fields["llama.block_count"].parts[-1][0]) == 4
    assert exported.stat().st_size < 0.45 * (tiny_llama / "model.safetensors").stat().st_size  # ~8.5 bits a weight


def test_transformers_reads_back_the_weights_within_q8_0_error(exported, tiny_llama, tmp_path):
    source = resolve_model(str(exported), cache_dir=tmp_path)
    original = load_file(str(tiny_llama / "model.safetensors"))
    back = {}
    for f in source.folder.glob("*.safetensors"):
        back.update(load_file(str(f)))
    assert set(back) == set(original)
    for name, w in original.items():
        err = np.abs(back[name] - w).max()
        if w.ndim == 1:
            assert err == 0, name  # norms stay float32
        else:
            assert 0 < err <= np.abs(w).max() / 127 * 0.51 + 1e-7, name  # q/k permutation undone, Q8_0 rounding only


def test_the_int8_executor_loads_the_export_natively(exported, tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEZO_CACHE", str(tmp_path))
    task = get_task("sst2")
    q8, info = build_int8_executor(JobConfig(model=str(exported), trainable="norm", split=2).validate(), task)
    assert info.name == str(exported) and q8.backend == "int8"
    fp32, _ = build_torch_executor(JobConfig(model=str(tiny_llama), trainable="norm", split=2).validate(), task)
    batch = fp32.encode(["Review : a great film", "Review : bad"], [1, 0])
    want = fp32.forward_block2(fp32.forward_block1(batch), batch)
    got = q8.forward_block2(q8.forward_block1(batch), batch)
    assert got == pytest.approx(want, rel=0.05) and got != want
    assert q8.fingerprint() == fp32.fingerprint()  # the trainable norms are the same float32 weights


def test_export_command_and_refusals(tiny_llama, tiny_models, tmp_path):
    done = subprocess.run([sys.executable, "-m", "edgezo.app.cli", "export", str(tiny_llama), "--gguf", str(tmp_path / "m.gguf")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "Q8_0" in done.stdout and (tmp_path / "m.gguf").stat().st_size > 0, done.stderr[-2000:]
    with pytest.raises(EdgezoError, match="LLaMA-family"):
        export_gguf(tiny_models["opt"], tmp_path / "opt.gguf")
    with pytest.raises(EdgezoError, match="no config.json"):
        export_gguf(tmp_path, tmp_path / "x.gguf")
