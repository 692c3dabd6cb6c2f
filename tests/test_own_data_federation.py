"""A user task over a real mosquitto: the coordinator reads only the task file and its validation
file, announces the task whole (template and label words), and each device trains on its own
JSONL file (`join --data FILE`), none of them holding the task file."""

from __future__ import annotations

import json

from test_federation import final_fingerprint, metrics, procs  # noqa: F401 - procs is a fixture
from test_taskfile import TASK, sst2_rows, write_jsonl


def test_each_device_trains_on_its_own_file(procs, tmp_path, tiny_llama, sst2_dir):  # noqa: F811
    server = tmp_path / "server"
    server.mkdir()
    write_jsonl(server / "dev.jsonl", sst2_rows(sst2_dir, "dev", 24))
    (server / "task.toml").write_text(TASK.replace('train = "train.jsonl"', 'train = "not-on-the-server.jsonl"'), encoding="utf-8")
    rows = sst2_rows(sst2_dir, "train", 90)
    sizes = (50, 40)
    owns = []
    for i, n in enumerate(sizes):
        home = tmp_path / f"device{i}"
        home.mkdir()
        owns.append(write_jsonl(home / "mine.jsonl", rows[sum(sizes[:i]):sum(sizes[:i]) + n]))
    procs.start("coordinator", "coordinate", "--model", str(tiny_llama), "--task", str(server / "task.toml"), "--run", "own-data",
                "--rounds", "2", "--min-devices", "2", "--batch-size", "4", "--max-length", "32", "--out", str(tmp_path / "coord"), "--quiet")
    for i, own in enumerate(owns):
        procs.start(f"dev{i}", "join", "--run", "own-data", "--device-id", f"dev{i}", "--model", str(tiny_llama), "--data", str(own))
    procs.wait("coordinator", "dev0", "dev1")
    summary = json.loads((tmp_path / "coord" / "summary.json").read_text())
    assert summary["rounds_completed"] == 2 and all(r["devices"] == 2 for r in metrics(tmp_path / "coord")[1:])
    announced = json.loads(summary["settings"]["task"])  # the task travelled whole, not as a path
    assert announced["template"] == "Movie review: {text}\nSentiment:" and announced["labels"] == {"neg": " negative", "pos": " positive"}
    for i, n in enumerate(sizes):
        log = procs.log(f"dev{i}")
        assert f"{n:,} local examples" in log, log[-2000:]
        assert final_fingerprint(log) == summary["fingerprint"]


def test_a_generation_task_over_mqtt_with_each_device_on_its_own_file(procs, tmp_path, tiny_llama, sst2_dir):  # noqa: F811
    from test_generation import GEN

    def answers(split, n, skip=0):
        return [{"review": r["text"], "answer": "positive" if r["sentiment"] == "pos" else "negative"}
                for r in sst2_rows(sst2_dir, split, n + skip)[skip:]]

    server = tmp_path / "server"
    server.mkdir()
    write_jsonl(server / "dev.jsonl", answers("dev", 12))
    (server / "task.toml").write_text(GEN, encoding="utf-8")  # its train.jsonl exists nowhere
    owns = [write_jsonl(tmp_path / f"mine{i}.jsonl", answers("train", 30, 30 * i)) for i in range(2)]
    procs.start("coordinator", "coordinate", "--model", str(tiny_llama), "--task", str(server / "task.toml"), "--run", "own-gen",
                "--rounds", "2", "--min-devices", "2", "--batch-size", "4", "--max-length", "32", "--trainable", "lora",
                "--out", str(tmp_path / "coord"), "--quiet")
    for i, own in enumerate(owns):
        procs.start(f"dev{i}", "join", "--run", "own-gen", "--device-id", f"dev{i}", "--model", str(tiny_llama), "--data", str(own))
    procs.wait("coordinator", "dev0", "dev1")
    summary = json.loads((tmp_path / "coord" / "summary.json").read_text())
    assert summary["rounds_completed"] == 2 and json.loads(summary["settings"]["task"])["kind"] == "generation"
    rows = metrics(tmp_path / "coord")
    assert all(r["devices"] == 2 and r["train_loss"] > 0 for r in rows[1:])
    for i in range(2):
        assert final_fingerprint(procs.log(f"dev{i}")) == summary["fingerprint"]
    assert (tmp_path / "coord" / "adapter" / "adapter_config.json").is_file()
