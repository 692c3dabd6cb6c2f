"""Real federation: `edgezo coordinate` and `edgezo join` processes over a real mosquitto.

Each test runs its own job (its own --run, so retained messages of other tests do not mix) on a
tiny LLaMA and real SST-2 examples, and checks the global model by fingerprint.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import paho.mqtt.client as mqtt
import pytest

from edgezo.coordinator.wire import messages as m
from support.procs import TIMEOUT, Procs



def job_options(tiny: Path, data: Path) -> list[str]:
    return ["--model", str(tiny), "--data", str(data), "--batch-size", "4", "--max-length", "32", "--eval-samples", "40", "--seed", "3"]


@pytest.fixture
def procs(tmp_path, mosquitto):
    p = Procs(tmp_path, mosquitto)
    yield p
    p.kill_all()


def metrics(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            pass
    return rows


def wait_until(what: str, predicate, procs: Procs, timeout: float = TIMEOUT, poll: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        for name, proc in procs.procs.items():
            if proc.poll() not in (None, 0):
                pytest.fail(f"{name} died (exit {proc.returncode}) while waiting for {what}:\n{procs.log(name)[-3000:]}")
        time.sleep(poll)
    pytest.fail(f"timed out waiting for {what}")


def final_fingerprint(log: str) -> str:
    line = [ln for ln in log.splitlines() if "finished: replica at round" in ln][-1]
    return line.rsplit("fingerprint ", 1)[1].strip()


def simulate_fingerprint(tmp_path: Path, tiny: Path, data: Path, clients: int, rounds: int, train_samples: int) -> str:
    """Run in a process with the devices' thread count: matmul reductions (hence the last bits of
    each scalar) depend on it."""
    out = tmp_path / "simulated"
    cmd = [sys.executable, "-m", "edgezo", "simulate", *job_options(tiny, data), "--clients", str(clients),
           "--rounds", str(rounds), "--train-samples", str(train_samples), "--out", str(out), "--quiet"]
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=TIMEOUT)
    return json.loads((out / "summary.json").read_text())["fingerprint"]


def test_three_devices_reach_the_simulated_model(procs, tmp_path, tiny_llama, sst2_dir):
    job = job_options(tiny_llama, sst2_dir)
    procs.start("coordinator", "coordinate", *job, "--run", "parity", "--rounds", "3", "--min-devices", "3",
                "--out", str(tmp_path / "coord"), "--quiet")
    for i in range(3):
        procs.start(f"dev{i}", "join", "--run", "parity", "--device-id", f"dev{i}", "--model", str(tiny_llama),
                    "--data", str(sst2_dir), "--shard", f"{i}/3", "--train-samples", "300")
    procs.wait("coordinator", "dev0", "dev1", "dev2")
    summary = json.loads((tmp_path / "coord" / "summary.json").read_text())
    assert summary["rounds_completed"] == 3
    rows = metrics(tmp_path / "coord")
    assert [r["round"] for r in rows] == [0, 1, 2, 3]
    assert all(r["devices"] == 3 for r in rows[1:])
    assert 0 < rows[-1]["bytes_up"] / 3 < 1000, "a round should cost a device a few hundred bytes up"
    for i in range(3):
        assert final_fingerprint(procs.log(f"dev{i}")) == summary["fingerprint"]
    assert simulate_fingerprint(tmp_path, tiny_llama, sst2_dir, 3, 3, 300) == summary["fingerprint"]


def test_devices_on_three_backends_hold_one_global_model(procs, tmp_path, tiny_llama, sst2_dir):
    """A torch, an int8 and an mlx device in one job: each checks its replica's fingerprint against
    the coordinator's after every round (a mismatch stops it), and all end on the global model."""
    job = job_options(tiny_llama, sst2_dir)
    procs.start("coordinator", "coordinate", *job, "--run", "mixed", "--rounds", "3", "--min-devices", "3",
                "--out", str(tmp_path / "coord"), "--quiet")
    backends = ("torch", "int8", "mlx")
    for i, backend in enumerate(backends):
        procs.start(f"dev{i}", "join", "--run", "mixed", "--device-id", f"dev{i}", "--model", str(tiny_llama), "--backend", backend,
                    "--data", str(sst2_dir), "--shard", f"{i}/3", "--train-samples", "300")
    procs.wait("coordinator", "dev0", "dev1", "dev2")
    summary = json.loads((tmp_path / "coord" / "summary.json").read_text())
    assert summary["rounds_completed"] == 3
    assert all(r["devices"] == 3 for r in metrics(tmp_path / "coord")[1:])
    for i, backend in enumerate(backends):
        assert f"backend {backend}" in procs.log(f"dev{i}")
        assert final_fingerprint(procs.log(f"dev{i}")) == summary["fingerprint"]


def test_a_stalled_then_killed_device_does_not_stall_the_job_and_catches_up(procs, tmp_path, tiny_llama, sst2_dir):
    job = job_options(tiny_llama, sst2_dir)
    out = tmp_path / "coord"
    procs.start("coordinator", "coordinate", *job, "--run", "stall", "--rounds", "6", "--min-devices", "2",
                "--round-timeout", "3", "--out", str(out), "--quiet")
    device = ["join", "--run", "stall", "--model", str(tiny_llama), "--data", str(sst2_dir), "--train-samples", "200"]
    procs.start("a", *device, "--device-id", "a", "--shard", "0/2")
    b = procs.start("b", *device, "--device-id", "b", "--shard", "1/2")
    wait_until("round 1", lambda: any(r["round"] >= 1 for r in metrics(out)), procs)
    b.send_signal(signal.SIGSTOP)  # mid-job and unable to answer: only the deadline can close its round
    wait_until("a round closed without b", lambda: any(r.get("assigned") == 2 and r["devices"] == 1 for r in metrics(out)), procs)
    b.send_signal(signal.SIGKILL)
    b.wait()
    procs.start("b2", *device, "--device-id", "b", "--shard", "1/2")
    procs.wait("coordinator", "a", "b2")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds_completed"] == 6
    assert "caught up from round" in procs.log("b2")
    assert final_fingerprint(procs.log("b2")) == final_fingerprint(procs.log("a")) == summary["fingerprint"]


@pytest.mark.heavy  # ~30 s: run by .ci/run, not the default suite
def test_a_killed_coordinator_resumes_to_the_same_model(procs, tmp_path, tiny_llama, sst2_dir):
    job = job_options(tiny_llama, sst2_dir)
    out = tmp_path / "coord"
    rounds = 12
    coordinator = ["coordinate", *job, "--run", "resume", "--rounds", str(rounds), "--min-devices", "2", "--out", str(out), "--quiet"]
    first = procs.start("coordinator", *coordinator)
    for i in range(2):
        procs.start(f"dev{i}", "join", "--run", "resume", "--device-id", f"dev{i}", "--model", str(tiny_llama),
                    "--data", str(sst2_dir), "--shard", f"{i}/2", "--train-samples", "200")
    wait_until("round 3", lambda: any(r["round"] >= 3 for r in metrics(out)), procs, poll=0.01)
    first.send_signal(signal.SIGKILL)
    first.wait()
    killed_at = max(r["round"] for r in metrics(out))
    assert killed_at < rounds, "the job finished before the kill; the test needs more rounds"
    procs.start("coordinator2", *coordinator)
    procs.wait("coordinator2", "dev0", "dev1")
    assert "resuming resume at round" in procs.log("coordinator2")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds_completed"] == rounds
    assert [r["round"] for r in metrics(out)] == list(range(rounds + 1))
    assert final_fingerprint(procs.log("dev0")) == summary["fingerprint"]
    assert simulate_fingerprint(tmp_path, tiny_llama, sst2_dir, 2, rounds, 200) == summary["fingerprint"]


@pytest.mark.parametrize("point", [pytest.param(p, marks=[] if p == "appended" else [pytest.mark.slow])
                                   for p in ("appended", "published", "checkpointed", "announced", "recorded")])
def test_a_crash_after_the_seed_log_append_loses_no_round(procs, tmp_path, tiny_llama, sst2_dir, point):
    """Killed (SIGKILL, from the crash hook) right after a durable write of round 2, the resumed job
    finishes that round's work exactly once: a complete metrics.jsonl, the uninterrupted model."""
    from edgezo.seedlog import SeedLog

    job = job_options(tiny_llama, sst2_dir)
    out = tmp_path / "coord"
    rounds = 4
    coordinator = ["coordinate", *job, "--run", f"durable-{point}", "--rounds", str(rounds), "--min-devices", "2",
                   "--checkpoint-every", "2", "--out", str(out), "--quiet"]
    procs.env["EDGEZO_CRASH_AT"] = f"{point}:2"
    first = procs.start("coordinator", *coordinator)
    del procs.env["EDGEZO_CRASH_AT"]
    for i in range(2):
        procs.start(f"dev{i}", "join", "--run", f"durable-{point}", "--device-id", f"dev{i}", "--model", str(tiny_llama),
                    "--data", str(sst2_dir), "--shard", f"{i}/2", "--train-samples", "200")
    assert first.wait(TIMEOUT) == -signal.SIGKILL, procs.log("coordinator")[-3000:]
    assert len(list(SeedLog(out / "state" / "seedlog.jsonl").entries())) == 2, "the crash came after round 2's append"
    procs.start("coordinator2", *coordinator)
    procs.wait("coordinator2", "dev0", "dev1")
    rows = metrics(out)
    assert [r["round"] for r in rows] == list(range(rounds + 1)), "each round recorded exactly once"
    assert rows[2]["devices"] == 2 and rows[2]["train_loss"] is not None
    if point != "recorded":
        assert "round 2 was logged but not recorded before the restart" in procs.log("coordinator2")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds_completed"] == rounds
    assert final_fingerprint(procs.log("dev0")) == summary["fingerprint"]
    assert simulate_fingerprint(tmp_path, tiny_llama, sst2_dir, 2, rounds, 200) == summary["fingerprint"]
    simulated = metrics(tmp_path / "simulated")
    assert [r["fingerprint"] for r in rows] == [r["fingerprint"] for r in simulated]


class Adversary:
    """A plain MQTT client that watches real results and publishes bad ones."""

    def __init__(self, broker, run: str):
        self.run = run
        self.results: list[tuple[str, bytes]] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"adversary-{run}", protocol=mqtt.MQTTv5)
        self.client.on_message = lambda c, u, msg: self.results.append((msg.topic, msg.payload))
        self.client.connect(broker.host, broker.port)
        self.client.subscribe(f"edgezo/{run}/result/+", qos=1)
        self.client.loop_start()

    def publish(self, device: str, payload: bytes, retain: bool = False) -> None:
        self.client.publish(f"edgezo/{self.run}/result/{device}", payload, qos=1, retain=retain).wait_for_publish(5)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_late_devices_catch_up_by_replay_and_checkpoint_and_bad_messages_are_rejected(procs, tmp_path, tiny_llama, sst2_dir, mosquitto):
    job = job_options(tiny_llama, sst2_dir)
    out = tmp_path / "coord"
    run = "late"
    # A "ghost" device that is online but never answers paces the rounds at the deadline, so the
    # late devices join mid-job; it leaves once they have caught up, and the job runs to its end.
    # (--max-missed 0: a silent device would otherwise be dropped after 3 rounds, see
    # test_federation_hardening.py.)
    ghost = Adversary(mosquitto, run)
    status = m.Status(v=m.PROTOCOL_VERSION, run=run, device="ghost", state="online", examples=10)
    ghost.client.publish(f"edgezo/{run}/status/ghost", m.encode(status), qos=1, retain=True).wait_for_publish(5)
    try:
        procs.start("coordinator", "coordinate", *job, "--run", run, "--rounds", "30", "--min-devices", "2",
                    "--round-timeout", "2", "--checkpoint-every", "2", "--max-missed", "0", "--out", str(out))
        device = ["join", "--run", run, "--model", str(tiny_llama), "--data", str(sst2_dir), "--train-samples", "200"]
        procs.start("a", *device, "--device-id", "a")
        wait_until("a's first result", lambda: ghost.results, procs)
        topic, good = ghost.results[0]
        result = msgspec.msgpack.decode(good, type=m.Message)
        nan = msgspec.structs.replace(result, device="ghost", scalars=m.pack_scalars([math.nan] * (len(result.scalars) // 4)))
        bad = {
            "duplicate": ("a", good),
            "non-finite": ("ghost", m.encode(nan)),
            "not assigned": ("intruder", m.encode(msgspec.structs.replace(result, device="intruder"))),
            "claims device": ("ghost", good),
            "malformed": ("a", b"\x00\x01 definitely not msgpack"),
            "oversized": ("a", b"\x00" * (m.MAX_PAYLOAD_BYTES + 1)),
            "wrong scalar count": ("ghost", m.encode(msgspec.structs.replace(result, device="ghost", scalars=b"\x00" * 8))),
        }
        for device_name, payload in bad.values():
            ghost.publish(device_name, payload)
        wait_until("round 4", lambda: any(r["round"] >= 4 for r in metrics(out)), procs)
        ghost.publish("a", good)  # replayed from an old round
        procs.start("c", *device, "--device-id", "c", "--catch-up", "replay")
        procs.start("d", *device, "--device-id", "d", "--catch-up", "checkpoint")
        wait_until("c and d caught up", lambda: "caught up" in procs.log("c") and "caught up" in procs.log("d"), procs)
        gone = m.Status(v=m.PROTOCOL_VERSION, run=run, device="ghost", state="offline")
        ghost.client.publish(f"edgezo/{run}/status/ghost", m.encode(gone), qos=1, retain=True).wait_for_publish(5)
        procs.wait("coordinator", "a", "c", "d")
    finally:
        ghost.client.publish(f"edgezo/{run}/status/ghost", b"", qos=1, retain=True).wait_for_publish(5)
        ghost.close()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds_completed"] == 30
    coordinator_log = procs.log("coordinator")
    for reason in ("duplicate result", "non-finite", "was not assigned", "claims device", "malformed", "oversized",
                   "the assignment asked for", "attempt"):
        assert reason in coordinator_log, f"no rejection mentioning {reason!r}"
    assert summary["rejected_messages"] >= 8
    assert "by replay" in procs.log("c")
    assert "loaded checkpoint of round" in procs.log("d") and "by checkpoint + replay" in procs.log("d")
    for name in ("a", "c", "d"):
        assert final_fingerprint(procs.log(name)) == summary["fingerprint"], name
    rounds = {r["round"]: r for r in metrics(out)}
    assert rounds[30]["devices"] == 3, "the late devices should answer once caught up"


def test_wrong_password_is_refused_with_a_clear_error(tmp_path, mosquitto_factory, tiny_llama, sst2_dir):
    broker = mosquitto_factory(password_file={"dev": "right"}, allow_anonymous=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "edgezo", "join", "--broker", broker.address, "--username", "dev", "--password", "wrong", "--run", "x"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 2
    assert "bad username or password" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_job_survives_a_broker_restart(tmp_path, mosquitto_factory, tiny_llama, sst2_dir):
    broker = mosquitto_factory()
    procs = Procs(tmp_path, broker)
    try:
        job = job_options(tiny_llama, sst2_dir)
        out = tmp_path / "coord"
        rounds = 10
        procs.start("coordinator", "coordinate", *job, "--run", "outage", "--rounds", str(rounds), "--min-devices", "2", "--out", str(out))
        for i in range(2):
            procs.start(f"dev{i}", "join", "--run", "outage", "--device-id", f"dev{i}", "--model", str(tiny_llama),
                        "--data", str(sst2_dir), "--shard", f"{i}/2", "--train-samples", "200")
        wait_until("round 2", lambda: any(r["round"] >= 2 for r in metrics(out)), procs, poll=0.01)
        broker.kill()  # SIGKILL: every connection drops, retained messages are lost (no persistence)
        time.sleep(1.0)
        broker.restart()
        procs.wait("coordinator", "dev0", "dev1")
        summary = json.loads((out / "summary.json").read_text())
        assert summary["rounds_completed"] == rounds
        assert "reconnected" in procs.log("coordinator")
        assert final_fingerprint(procs.log("dev1")) == summary["fingerprint"]
        assert simulate_fingerprint(tmp_path, tiny_llama, sst2_dir, 2, rounds, 200) == summary["fingerprint"]
    finally:
        procs.kill_all()


def test_coordinate_without_a_broker_starts_an_embedded_one(procs, tmp_path, tiny_llama, sst2_dir):
    from support.ports import free_port

    port = free_port()
    job = job_options(tiny_llama, sst2_dir)
    procs.start("coordinator", "coordinate", *job, "--run", "embedded", "--rounds", "2", "--port", str(port),
                "--out", str(tmp_path / "coord"), broker=None)
    procs.start("dev", "join", "--run", "embedded", "--device-id", "dev", "--model", str(tiny_llama), "--data", str(sst2_dir),
                "--train-samples", "100", broker=f"127.0.0.1:{port}")
    procs.wait("coordinator", "dev")
    assert "embedded MQTT broker (amqtt)" in procs.log("coordinator")
    summary = json.loads((tmp_path / "coord" / "summary.json").read_text())
    assert final_fingerprint(procs.log("dev")) == summary["fingerprint"]


def test_a_device_with_other_weights_is_refused(procs, tmp_path, tiny_llama, sst2_dir):
    import shutil

    from safetensors.numpy import load_file, save_file

    other = tmp_path / "other-weights"
    shutil.copytree(tiny_llama, other)
    tensors = load_file(other / "model.safetensors")
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 1.0
    save_file(tensors, other / "model.safetensors", metadata={"format": "pt"})
    job = job_options(tiny_llama, sst2_dir)
    procs.start("coordinator", "coordinate", *job, "--run", "digest", "--rounds", "1", "--out", str(tmp_path / "coord"))
    dev = procs.start("dev", "join", "--run", "digest", "--device-id", "dev", "--model", str(other), "--data", str(sst2_dir))
    assert dev.wait(TIMEOUT) == 2
    log = procs.log("dev")
    assert "model mismatch" in log and "pass --model with the same weights" in log
    assert "Traceback" not in log


def plan_profile_toml(name: str, overhead_ms: float) -> str:
    """A reference profile whose speed is set by its per-layer overhead (the tiny model's FLOPs are
    negligible), so the planner's P2 depends on it."""
    return (f'name = "{name}"\nkind = "reference"\nmemory_total_gb = 8.0\nmemory_available_gb = 4.0\n'
            f'sources = ["a test"]\n\n[[backends]]\nname = "torch"\ngflops = 50.0\noverhead_ms = {overhead_ms}\n')


def test_planned_devices_get_their_own_work_and_reach_the_same_model(procs, tmp_path, tiny_llama, sst2_dir):
    import re

    procs.env["EDGEZO_PROFILES"] = str(tmp_path / "user-profiles")  # no measured profile of this host leaks in
    (tmp_path / "fast.toml").write_text(plan_profile_toml("fast", 0.01))
    (tmp_path / "slow.toml").write_text(plan_profile_toml("slow", 2000.0))  # 2 s a layer: few perturbations fit
    job = job_options(tiny_llama, sst2_dir)
    out = tmp_path / "coord"
    procs.start("coordinator", "coordinate", *job, "--run", "planned", "--rounds", "3", "--min-devices", "2", "--plan",
                "--round-timeout", "60", "--max-p2", "16", "--out", str(out), "--quiet")
    for i, name in enumerate(("fast", "slow")):
        procs.start(name, "join", "--run", "planned", "--device-id", name, "--model", str(tiny_llama), "--data", str(sst2_dir),
                    "--shard", f"{i}/2", "--train-samples", "200", "--profile", str(tmp_path / f"{name}.toml"))
    procs.wait("coordinator", "fast", "slow")
    log = procs.log("coordinator")
    plans = {}
    for name in ("fast", "slow"):
        line = next(ln for ln in log.splitlines() if ln.startswith(f"plan for {name}: backend torch"))
        plans[name] = {key: int(v) for key, v in re.findall(r"\b(K|P1|P2|batch) (\d+)", line)}
    assert plans["fast"]["P2"] == 16 and plans["slow"]["P2"] < plans["fast"]["P2"], plans
    for name, plan in plans.items():  # each device ran its own task
        assert f"(K {plan['K']}, P1 {plan['P1']}, P2 {plan['P2']}, batch {plan['batch']})" in procs.log(name), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds_completed"] == 3
    assert all(r["devices"] == 2 for r in metrics(out)[1:])
    for name in ("fast", "slow"):
        assert final_fingerprint(procs.log(name)) == summary["fingerprint"], name
