"""--p2 auto in real jobs on the tiny model: simulate with two device profiles and --plan (each
device its own P2 from the one measured descent table), and coordinate over the embedded broker
with `edgezo join` devices (the calibration on the coordinator's replica, reused on a restart)."""

from __future__ import annotations

import json
import re

import edgezo


def measured_profile_toml(name: str, model: str, block1_s: float, block2_s: float, reuses_block1: bool) -> str:
    """A measured profile of the tiny model at its split (4 layers, split 3), so the cost model
    uses these forward times: block-2 forwards nearly free, or (``reuses_block1 = false``) a full
    forward per probe."""
    return (f'name = "{name}"\nkind = "measured"\nmemory_total_gb = 8.0\nmemory_available_gb = 4.0\n\n'
            f'[[backends]]\nname = "torch"\nreuses_block1 = {str(reuses_block1).lower()}\n\n'
            f'[backends.measured]\nmodel = "{model}"\nlayers = 4\nsplit = 3\ntrainable = "norm"\nload_mb = 10.0\n\n'
            f'[[backends.measured.forwards]]\nbatch = 4\ntokens = 32\nblock1_s = {block1_s}\nblock2_s = {block2_s}\n')


def test_planned_devices_get_their_own_p2_from_the_calibration(tiny_llama, sst2_dir, tmp_path):
    """The device whose block-2 forwards are nearly free gets several block-2 probes; the one that
    runs a full forward per probe gets P2 = 1 (with it, E‖ĝ‖²·P2 grows with P2, whatever the
    energies); the job-wide choice is ranked on the slower profile."""
    (tmp_path / "reuse.toml").write_text(measured_profile_toml("reuse", str(tiny_llama), 1.0, 0.001, True))
    (tmp_path / "page.toml").write_text(measured_profile_toml("page", str(tiny_llama), 0.01, 0.005, False))
    out, said = tmp_path / "planned", []
    devices = f"{tmp_path / 'reuse.toml'}:1,{tmp_path / 'page.toml'}:1"
    result = edgezo.simulate(model=str(tiny_llama), data=str(sst2_dir), devices=devices, plan=True, round_seconds=100.0,
                             max_p2=12, rounds=2, local_steps=1, trainable="norm", batch_size=4, max_length=32, eval_samples=16,
                             train_samples=40, out=str(out), quiet=True, p2="auto", say=said.append)
    planned = {d["device"]: d for d in result.summary["devices"]}
    assert planned["page-0"]["p2"] == 1 and 1 < planned["reuse-0"]["p2"] <= 12, planned
    record = result.summary["calibration"]
    assert record["profile"] == "reuse" and "descent per second" in record["ranked_by"]
    assert all(r["seconds"] > 0 and r["flops"] > 0 for r in record["candidates"])
    assert any("P2 by descent per second" in line for line in said)
    assert json.loads((out / "job.json").read_text())["calibration"] == record
