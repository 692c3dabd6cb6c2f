"""`edgezo profile` and `edgezo simulate --devices` end to end on the tiny model."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from edgezo.profiles import BackendProfile, Profile, load_profile, save_profile


def run_cli(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "edgezo.app.cli", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def test_profile_measures_writes_a_valid_file_and_plans(tiny_llama, tmp_path):
    out = tmp_path / "me.toml"
    done = run_cli("profile", "--model", str(tiny_llama), "--quick", "--name", "me", "--out", str(out),
                   "--plan", "--round-seconds", "5", "--memory-gb", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    prof = load_profile(out)
    assert prof.kind == "measured" and prof.name == "me" and prof.memory_total_gb >= prof.memory_available_gb > 0
    torch_backend = prof.backend("torch")
    m = torch_backend.measured
    assert m is not None and [r.batch for r in m.forwards] == [1, 8] and all(r.block1_s > 0 and r.block2_s > 0 for r in m.forwards)
    assert [p.batch for p in m.memory] == [1, 8] and all(p.peak_mb > torch_backend.runtime_mb for p in m.memory)
    assert m.load_mb > 0 and m.digest and m.split == 3 and m.layers == 4
    assert torch_backend.gflops > 0 and torch_backend.perturb_melems_s > 0
    assert "block-1 us/token" in done.stdout
    plan = re.search(r"plan: me: backend torch, batch (\d+), K (\d+), P1 (\d+), P2 (\d+)", done.stdout)
    assert plan, done.stdout
    assert int(plan.group(1)) == 16 and int(plan.group(2)) == 2  # a tiny model: everything the limits allow
    assert "of 2,048 MB" in done.stdout


def test_profile_plans_from_a_reference_and_refuses_clearly(tiny_llama):
    done = run_cli("profile", "--model", str(tiny_llama), "--use", "pi5", "--plan", "--round-seconds", "30")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "using the reference profile pi5" in done.stdout and "plan: pi5: backend torch" in done.stdout
    done = run_cli("profile", "--model", str(tiny_llama), "--use", "pi5", "--plan", "--round-seconds", "0.0001")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "no round fits" in done.stderr and "Raise the round budget" in done.stderr
    done = run_cli("profile", "--model", str(tiny_llama), "--use", "no-such-device", "--plan")
    assert done.returncode == 2 and "no device profile named 'no-such-device'" in done.stderr and "pi5" in done.stderr
    done = run_cli("profile", "--model", str(tiny_llama), "--name", "../escape", "--quick")
    assert done.returncode == 2 and "--name '../escape'" in done.stderr


def _two_speeds(folder):
    for name, gflops in (("slowpoke", 0.02), ("speedy", 50.0)):
        save_profile(Profile(name=name, kind="reference", memory_total_gb=4, memory_available_gb=2, sources=["test"],
                             backends=[BackendProfile("torch", gflops=gflops, overhead_ms=0.1)]), folder / f"{name}.toml")


@pytest.mark.parametrize("plan", [True, False], ids=["planned", "fixed"])
def test_simulate_heterogeneous_devices(plan, tiny_llama, sst2_dir, tmp_path):
    _two_speeds(tmp_path)
    out = tmp_path / "run"
    args = ["simulate", "--model", str(tiny_llama), "--data", str(sst2_dir), "--devices", "slowpoke:1,speedy:2",
            "--round-seconds", "2", "--rounds", "3", "--train-samples", "120", "--eval-samples", "16", "--batch-size", "4",
            "--out", str(out)] + (["--plan", "--max-p2", "8"] if plan else [])
    done = run_cli(*args, env={"EDGEZO_PROFILES": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    times = [r["sim_time_s"] for r in rows]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sim_time_s"] == times[-1] and [d["device"] for d in summary["devices"]] == ["slowpoke-0", "speedy-0", "speedy-1"]
    assert times[0] == 0 and all(b > a for a, b in zip(times, times[1:]))
    assert all(r["assigned"] == 3 for r in rows)
    log = done.stdout + done.stderr
    p2 = {m.group(1): int(m.group(2)) for m in re.finditer(r"(slowpoke-0|speedy-0): backend torch, batch \d+, K \d+, P1 \d+, P2 (\d+)", log)}
    if plan:
        assert all(r["devices"] == 3 for r in rows[1:])  # everyone fits the deadline
        assert p2["speedy-0"] == 8 and p2["slowpoke-0"] < 8, log
        assert all(t <= 2.0 + 1e-9 for t in (b - a for a, b in zip(times, times[1:])))
    else:
        assert all(r["devices"] == 2 for r in rows[1:])  # the slow device misses every deadline
        assert "misses the deadline" in log and p2 == {"slowpoke-0": 4, "speedy-0": 4}
        assert times[1] == pytest.approx(2.0)  # the round waited the whole deadline for it


def test_simulate_devices_bad_input(tiny_llama, sst2_dir, tmp_path):
    common = ["simulate", "--model", str(tiny_llama), "--data", str(sst2_dir), "--rounds", "1", "--out", str(tmp_path / "x")]
    for extra, needle in (
        (["--devices", "pi5:0"], "count of at least 1"),
        (["--devices", "pi5:two"], "PROFILE:COUNT"),
        (["--devices", "pi5:2", "--clients", "3"], "--clients 3 disagrees"),
        (["--devices", "pi5:2", "--plan"], "--plan needs a round budget"),
        (["--plan", "--round-seconds", "5"], "give them with --devices"),
        (["--devices", "nosuch:1"], "no device profile named 'nosuch'"),
    ):
        done = run_cli(*common, *extra)
        assert done.returncode == 2 and needle in done.stderr and "Traceback" not in done.stderr, (extra, done.stderr[-2000:])


def test_profile_takes_its_options_from_a_config_file(tiny_llama, tmp_path):
    conf = tmp_path / "profile.toml"
    conf.write_text(f'model = "{tiny_llama}"\nuse = "pi5"\nplan = true\nround-seconds = 5\nquiet = true\n')
    done = run_cli("profile", "--config", str(conf))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "using the reference profile pi5" in done.stdout and "plan: " in done.stdout
    conf.write_text('seq_len = "long"\n')
    done = run_cli("profile", "--config", str(conf))
    assert done.returncode == 2 and "seq_len must be a whole number (got 'long')" in done.stderr
    assert len([line for line in done.stderr.splitlines() if line.strip()]) == 1
