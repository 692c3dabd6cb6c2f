"""--p2 auto in real jobs on the tiny model: simulate with two device profiles and --plan (each
device its own P2 from the one measured descent table), and coordinate over the embedded broker
with `edgezo join` devices (the calibration on the coordinator's replica, reused on a restart)."""

from __future__ import annotations

import json
import re

import pytest

import edgezo
from edgezo.app.jobs.coordinate import CALIBRATION_FILE, CoordinateJob


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
    energies, while forwards are nearly all of a step: here 5-15 ms against ~0.1 ms of copies); the
    job-wide choice is ranked on the slower profile."""
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
    assert record["gain_over_given"] >= 1 - 1e-9  # the choice is at least as good as the given P2 = 4
    assert all(r["seconds"] > 0 and r["flops"] > 0 for r in record["candidates"])
    assert any("P2 by descent per second" in line for line in said)
    assert json.loads((out / "job.json").read_text())["calibration"] == record


@pytest.mark.slow  # about 55 s: two coordinator processes and a device
def test_coordinate_calibrates_on_its_replica_and_a_restart_reuses_the_choice(tmp_path, tiny_llama, sst2_dir):
    """`edgezo coordinate --p2 auto --split auto` over its embedded broker with one `edgezo join`
    device: the choice is printed, recorded in summary.json and STATE/calibration.json, announced
    (the device runs it), and a restarted coordinator reuses it without measuring again."""
    from support.ports import free_port
    from support.procs import Procs

    procs, port, out = Procs(tmp_path), free_port(), tmp_path / "coord"
    coordinator = ["coordinate", "--model", str(tiny_llama), "--data", str(sst2_dir), "--batch-size", "4", "--max-length", "32",
                   "--eval-samples", "16", "--run", "auto", "--rounds", "2", "--port", str(port), "--out", str(out), "--quiet",
                   "--p2", "auto", "--split", "auto"]
    try:
        procs.start("coordinator", *coordinator)
        procs.start("dev", "join", "--run", "auto", "--device-id", "dev", "--model", str(tiny_llama), "--data", str(sst2_dir),
                    "--train-samples", "40", broker=f"127.0.0.1:{port}")
        procs.wait("coordinator", "dev")
        log = procs.log("coordinator")
        chosen = re.search(r"calibration chose P1=(\d+) P2=(\d+) split=(\d+): best descent per forward FLOP", log)
        assert chosen is not None, log[-3000:]
        summary = json.loads((out / "summary.json").read_text())
        record = json.loads((out / "state" / "calibration.json").read_text())
        assert summary["calibration"] == record and record["forwards"] > 0
        assert [record["chosen"][k] for k in ("p1", "p2", "split")] == [int(g) for g in chosen.groups()]
        job = json.loads((out / "state" / "job.json").read_text())["job"]
        assert (job["p2"], job["split"]) == (record["chosen"]["p2"], record["chosen"]["split"])
        procs.start("again", *coordinator)
        procs.wait("again")
        again = procs.log("again")
        assert "calibration reused" in again and "calibrating" not in again, again[-3000:]
        assert json.loads((out / "summary.json").read_text())["fingerprint"] == summary["fingerprint"]
    finally:
        procs.kill_all()


def test_a_coordinator_measures_on_its_own_training_split_once_and_a_restart_takes_the_record(tmp_path, sst2_dir):
    """What coordinate --p2 auto reads before the broker and the model: a new job the training
    examples of its own --data; a restart its STATE/calibration.json, never a new measurement; a
    restart of a job started without auto, a clear error."""
    job = CoordinateJob.from_options(data=str(sst2_dir), out=str(tmp_path / "coord"), p2="auto", batch_size=4)
    assert job.settings.p2_auto and not job.settings.split_auto and job.config.p2 == edgezo.JobConfig.p2
    state = tmp_path / "state"
    state.mkdir()
    recorded, train = job._calibration_inputs(state)
    assert recorded is None and len(train) > 100
    (state / "job.json").write_text("{}")
    with pytest.raises(edgezo.ConfigError, match="started without --p2/--split auto"):
        job._calibration_inputs(state)
    record = {"chosen": {"p1": 1, "p2": 2, "split": 3}, "groups": []}
    (state / CALIBRATION_FILE).write_text(json.dumps(record))
    assert job._calibration_inputs(state) == (record, [])
