"""Choosing an executor: named backends, `auto` by installation and memory, and the one-line
error that names the extra when a backend is not installed."""

from __future__ import annotations

import subprocess
import sys

import pytest

from edgezo.backends import choice
from edgezo.errors import EdgezoError


def test_parse_backends():
    assert choice.parse_backends("torch") == ["torch"]
    assert choice.parse_backends(" Torch, mlx ,int8") == ["torch", "mlx", "int8"]
    for bad in ("", "cuda", "torch,tpu", "auto,torch"):
        with pytest.raises(EdgezoError):
            choice.parse_backends(bad)


def test_weight_size_from_safetensors_headers(tiny_llama):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    numel = sum(p.numel() for p in model.parameters())  # the tied head is counted (and saved) once
    assert choice.fp32_weight_mb(tiny_llama) == pytest.approx(4 * numel / 2**20, rel=0.02)
    with pytest.raises(EdgezoError, match="no .safetensors"):
        choice.fp32_weight_mb(tiny_llama / "nonexistent")


def test_auto_prefers_fp32_and_falls_back_to_int8_when_memory_is_short(monkeypatch):
    monkeypatch.setattr(choice, "is_apple_silicon", lambda: False)
    weights = 540.0  # SmolLM2-135M at fp32
    assert choice.choose_backend("auto", weights, None).backend == "torch"
    assert choice.choose_backend("auto", weights, 4096).backend == "torch"
    tight = choice.estimated_peak_mb("torch", weights) - 1
    assert choice.estimated_peak_mb("int8", weights) < tight
    picked = choice.choose_backend("auto", weights, tight)
    assert picked.backend == "int8" and "fits" in picked.reason
    with pytest.raises(EdgezoError, match="does not fit"):
        choice.choose_backend("auto", weights, 100)


def test_auto_prefers_mlx_on_apple_silicon(monkeypatch):
    monkeypatch.setattr(choice, "is_apple_silicon", lambda: True)
    monkeypatch.setattr(choice, "is_installed", lambda b: True)
    assert choice.choose_backend("auto", 540.0, None).backend == "mlx"


def test_named_backend_must_be_installed(monkeypatch):
    monkeypatch.setattr(choice, "is_installed", lambda b: b != "mlx")
    assert choice.choose_backend("int8", 0, None).backend == "int8"
    with pytest.raises(EdgezoError, match=r'pip install "edgezo\[mlx\]"'):
        choice.choose_backend("mlx", 0, None)


def test_missing_mlx_is_a_one_line_cli_error(tmp_path, tiny_llama, sst2_dir):
    """A real interpreter where `import mlx` fails (as plain mlx does on Linux) asks for the extra."""
    fake = tmp_path / "site" / "mlx"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('libmlx.so: cannot open shared object file')\n")
    env = {"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HOME": str(tmp_path)}
    for args in (["simulate", "--backend", "mlx", "--model", str(tiny_llama), "--data", str(sst2_dir), "--out", str(tmp_path / "o")],
                 ["join", "--broker", "127.0.0.1:1", "--backend", "mlx"]):
        done = subprocess.run([sys.executable, "-m", "edgezo.app.cli", *args], capture_output=True, text=True, env=env, timeout=120)
        assert done.returncode != 0
        assert "Traceback" not in done.stderr, done.stderr[-2000:]
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and 'pip install "edgezo[mlx]"' in lines[0], done.stderr
