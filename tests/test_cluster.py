"""Federation through a clustered broker: a real two-node RabbitMQ cluster (MQTT plugin, 3.1.1),
clients given every node's address, devices on different nodes, and a node stopped mid-job.

RabbitMQ keeps retained messages per node and delivers none for wildcard subscriptions: these
tests pass only because nothing depends on a retained message crossing nodes (a link with
several nodes publishes its retained messages through every node itself).

The cluster tests take minutes (Erlang nodes starting and stopping) and need Debian's
rabbitmq-server, so they sit behind the ``cluster`` marker, outside the default suite:

    apt-get install -y rabbitmq-server && python -m pytest -m cluster tests/test_cluster.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from support.mosquitto import wait_connected
from support.procs import Procs

from edgezo.coordinator.wire.transport import MqttLink, broker_settings_for, parse_brokers
from edgezo.errors import EdgezoError

TIMEOUT = 300


def test_broker_lists_parse_and_bad_ones_name_the_problem():
    assert parse_brokers("a:1883,[::1]:1884, b") == [("a", 1883), ("::1", 1884), ("b", 1883)]
    settings = broker_settings_for("a:1,b:2", username="u")
    assert settings.addresses == [("a", 1), ("b", 2)] and settings.node(1).host == "b" and settings.username == "u"
    for bad, why in [("a:1,,b:2", "empty address"), ("a:1,a:1", "listed twice"), ("a;b", "nodes separated by commas")]:
        with pytest.raises(EdgezoError, match=why):
            parse_brokers(bad)


@pytest.mark.cluster
def test_retained_messages_reach_every_node_and_clients_fail_over(rabbit_cluster):
    cluster = rabbit_cluster
    cluster.ensure_running()
    a, b = cluster.nodes
    topic = f"edgezo/t{uuid.uuid4().hex[:8]}/announce"
    pub = MqttLink(broker_settings_for(cluster.broker_list(0)), "pub")
    pub.connect()
    assert pub.protocol == "3.1.1" and pub.settings.port == a.mqtt_port
    pub.publish(topic, b"state", retain=True)
    pub.flush(5)
    time.sleep(1.0)  # the mirror link to node b connects in the background
    for node in (a, b):  # a late subscriber on either node gets the retained message from its own node
        with MqttLink(node.settings(), f"late-{node.index}") as late:
            late.subscribe(topic)
            late.connect()
            got = late.get(5)
            assert got is not None and got.payload == b"state" and got.retain, node.name
    sub = MqttLink(broker_settings_for(cluster.broker_list(0)), "sub")
    sub.subscribe(topic)
    sub.connect()
    a.stop()
    assert wait_connected(sub, 30) and sub.settings.port == b.mqtt_port, "the subscriber did not fail over to node b"
    assert wait_connected(pub, 30) and pub.settings.port == b.mqtt_port
    time.sleep(0.5)
    pub.publish(topic, b"after", retain=True)
    deadline = time.monotonic() + 10
    seen = []
    while time.monotonic() < deadline and b"after" not in seen:
        msg = sub.get(0.5)
        if msg is not None:
            seen.append(msg.payload)
    assert b"after" in seen
    pub.close()
    sub.close()


# -- coordinate + joins through the cluster ---------------------------------------------------

def job_options(tiny: Path, data: Path) -> list[str]:
    return ["--model", str(tiny), "--data", str(data), "--batch-size", "4", "--max-length", "32", "--eval-samples", "24",
            "--seed", "3", "--local-steps", "1"]


@pytest.fixture
def procs(tmp_path):
    p = Procs(tmp_path)
    yield p
    p.kill_all()


def final_fingerprint(log: str) -> str:
    line = [ln for ln in log.splitlines() if "finished: replica at round" in ln][-1]
    return line.rsplit("fingerprint ", 1)[1].strip()


def rows_of(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    rows = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            rows.append(json.loads(line))
        except ValueError:
            pass
    return rows


def simulate_fingerprint(tiny_llama, sst2_dir, out: Path, rounds: int) -> str:
    """The same job in one process (3 devices), with the devices' thread count."""
    cmd = [sys.executable, "-m", "edgezo", "simulate", *job_options(tiny_llama, sst2_dir), "--clients", "3", "--rounds",
           str(rounds), "--train-samples", "150", "--out", str(out), "--quiet"]
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=TIMEOUT, capture_output=True)
    return json.loads((out / "summary.json").read_text())["fingerprint"]


def _start_job(procs: Procs, cluster, run: str, out: Path, tiny_llama, sst2_dir, rounds: int) -> None:
    """The coordinator on node 0; dev0 and dev2 on node 1, dev1 on node 0 (each given both nodes)."""
    job = job_options(tiny_llama, sst2_dir)
    procs.start("coordinator", "coordinate", *job, "--run", run, "--rounds", str(rounds), "--min-devices", "3", "--out", str(out),
                "--broker", cluster.broker_list(0), "--quiet")
    for i in range(3):
        procs.start(f"dev{i}", "join", "--run", run, "--device-id", f"dev{i}", "--model", str(tiny_llama), "--data",
                    str(sst2_dir), "--shard", f"{i}/3", "--train-samples", "150", "--broker", cluster.broker_list(1 - i % 2))


def _check(procs: Procs, out: Path, simulated: str, rounds: int) -> None:
    procs.wait("coordinator", "dev0", "dev1", "dev2", timeout=TIMEOUT)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds_completed"] == rounds
    for i in range(3):
        assert final_fingerprint(procs.log(f"dev{i}")) == summary["fingerprint"], f"dev{i}"
    assert summary["fingerprint"] == simulated


@pytest.mark.cluster
def test_coordinate_and_three_joins_through_the_cluster_end_on_the_simulated_model(rabbit_cluster, procs, tmp_path,
                                                                                   tiny_llama, sst2_dir):
    rabbit_cluster.ensure_running()
    out = tmp_path / "coord"
    _start_job(procs, rabbit_cluster, "cluster", out, tiny_llama, sst2_dir, 3)
    _check(procs, out, simulate_fingerprint(tiny_llama, sst2_dir, tmp_path / "simulated", 3), 3)
    assert all(r["devices"] == 3 for r in rows_of(out)[1:])


@pytest.mark.cluster
def test_stopping_the_coordinators_node_mid_job_everyone_fails_over_to_the_same_model(rabbit_cluster, procs, tmp_path,
                                                                                       tiny_llama, sst2_dir):
    rabbit_cluster.ensure_running()
    out, rounds = tmp_path / "coord", 40  # long enough for the node to stop mid-job (a round takes ~0.1 s)
    _start_job(procs, rabbit_cluster, "failover", out, tiny_llama, sst2_dir, rounds)
    deadline = time.monotonic() + TIMEOUT
    while not any(r["round"] >= 1 for r in rows_of(out)):
        assert time.monotonic() < deadline, "round 1 never finished:\n" + procs.log("coordinator")[-3000:]
        assert procs.procs["coordinator"].poll() is None, procs.log("coordinator")[-3000:]
        time.sleep(0.05)
    rabbit_cluster.nodes[0].stop()  # the coordinator's node (and dev1's)
    assert len(rows_of(out)) < rounds + 1, "the job ended before the node stopped"
    _check(procs, out, simulate_fingerprint(tiny_llama, sst2_dir, tmp_path / "simulated", rounds), rounds)
    assert "lost connection" in procs.log("coordinator") and "lost connection" in procs.log("dev1")
