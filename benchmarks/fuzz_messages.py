"""Fuzzed messages against a running federation (issue 14): `edgezo coordinate` and two `edgezo
join` processes over a private mosquitto (tiny LLaMA, real SST-2) while a stranger publishes
``--messages`` bad messages on the job's topics: random bytes, truncated and oversized payloads,
replayed real results (duplicates and stale rounds), results claiming another device, bad values
inside well-formed results, and garbage on the topics devices read. Prints, per kind, how many
were sent; then the coordinator's rejected-message count, whether any process crashed, and whether
the job ended on the fingerprint of the same job without the stranger (`edgezo simulate`).

    python benchmarks/fuzz_messages.py [--messages 10000] [--rounds 400] [--seed 0]

A fake *well-formed* device status is not sent: without signed messages (not built) or a
broker ACL, a stranger can announce a device the coordinator will wait for.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import msgspec
import paho.mqtt.client as mqtt

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # test-only broker and process helpers

from support.mosquitto import MosquittoBroker  # noqa: E402
from support.procs import Procs  # noqa: E402
from tiny import data_dir, save_tiny  # noqa: E402

from edgezo.coordinator import messages as m  # noqa: E402

JOB = ["--batch-size", "4", "--max-length", "32", "--eval-samples", "24", "--seed", "3", "--local-steps", "1"]


class Stranger:
    """A plain MQTT 5 client that watches the devices' real results and publishes bad messages."""

    def __init__(self, broker, run: str):
        self.run, self.results, self.lock = run, [], threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"stranger-{run}", protocol=mqtt.MQTTv5)
        self.client.on_message = self._keep
        self.client.connect(broker.host, broker.port)
        # noLocal: the stranger's own bad results must not count as the devices' real ones
        self.client.subscribe(f"edgezo/{run}/result/+", options=mqtt.SubscribeOptions(qos=1, noLocal=True))
        self.client.loop_start()

    def _keep(self, client, userdata, msg) -> None:
        with self.lock:
            self.results.append(bytes(msg.payload))

    def real(self) -> list[bytes]:
        with self.lock:
            return list(self.results)

    def send(self, topic: str, payload: bytes) -> None:
        self.client.publish(f"edgezo/{self.run}/{topic}", payload, qos=1).wait_for_publish(10)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def bad_message(kind: str, draw: random.Random, real: list[bytes]) -> tuple[str, bytes]:
    """One bad message of ``kind``: (topic below edgezo/<run>/, payload)."""
    good = draw.choice(real)
    result = msgspec.msgpack.decode(good, type=m.Message)
    device = result.device
    if kind == "random bytes":
        return draw.choice([f"result/{device}", f"status/{device}", f"logreq/{device}"]), draw.randbytes(draw.randint(1, 400))
    if kind == "truncated":
        return f"result/{device}", good[: draw.randint(1, len(good) - 1)]
    if kind == "oversized":
        return f"result/{device}", good + b"\0" * (m.MAX_PAYLOAD_BYTES + 1)
    if kind == "replayed":  # the same result again: a duplicate now, a stale round later
        return f"result/{device}", good
    if kind == "spoofed":  # another device's topic, or a device that is not in the job
        other = draw.choice(["dev-x", "intruder", device + "-twin"])
        return draw.choice([f"result/{other}", f"result/{device}"]), m.encode(msgspec.structs.replace(result, device=other))
    if kind == "bad values":
        n = len(result.scalars) // 4
        broken = draw.choice([
            {"scalars": m.pack_scalars([math.nan] * n)},
            {"scalars": m.pack_scalars([1.0] * (n + 1))},
            {"examples": -3},
            {"loss": math.inf},
            {"v": 99},
            {"run": "another-run"},
        ])
        return f"result/{device}", m.encode(msgspec.structs.replace(result, **broken))
    if kind == "garbage to devices":
        return draw.choice(["round", "update", f"log/{device}"]), draw.randbytes(draw.randint(1, 300))
    raise ValueError(kind)


def reason_of(line: str) -> str:
    """A coordinator log line's rejection reason, without the numbers that make each one unique."""
    why = line.split("rejected message on ", 1)[1].split(": ", 1)[-1]
    return " ".join(w for w in why.split() if not any(ch.isdigit() for ch in w))[:70]


KINDS = ("random bytes", "truncated", "oversized", "replayed", "spoofed", "bad values", "garbage to devices")
OVERSIZED = 20  # 1 MiB each: a few show the limit without pushing gigabytes through the broker
# what reaches the coordinator (the rest goes to devices, which log and ignore it)
TO_COORDINATOR = set(KINDS) - {"garbage to devices"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=400, help="enough for the job to outlast the flood and its backlog")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = "1"
    draw = random.Random(args.seed)
    data = data_dir() / "sst2"
    with tempfile.TemporaryDirectory() as tmp, MosquittoBroker() as broker:
        root = Path(tmp)
        model = save_tiny(root / "tiny-llama", "llama")
        job = ["--model", str(model), "--data", str(data), *JOB]
        simulated = root / "simulated"
        subprocess.run([sys.executable, "-m", "edgezo", "simulate", *job, "--clients", "2", "--rounds", str(args.rounds),
                        "--train-samples", "120", "--out", str(simulated), "--quiet"], check=True, capture_output=True)
        clean = json.loads((simulated / "summary.json").read_text())["fingerprint"]
        run, out = "fuzzed", root / "coord"
        procs = Procs(root, broker)
        stranger = Stranger(broker, run)
        # a long round timeout: a round must not close on the deadline while the stranger floods it
        procs.start("coordinator", "coordinate", *job, "--run", run, "--rounds", str(args.rounds), "--min-devices", "2",
                    "--round-timeout", "120", "--out", str(out), "--quiet")
        for i in range(2):
            procs.start(f"dev{i}", "join", "--run", run, "--device-id", f"dev{i}", "--model", str(model), "--data", str(data),
                        "--shard", f"{i}/2", "--train-samples", "120")
        deadline = time.monotonic() + 300
        while not stranger.real() and time.monotonic() < deadline:
            time.sleep(0.1)
        if not stranger.real():
            sys.exit("no device result seen in 300 s: " + procs.log("coordinator")[-2000:])
        sent: Counter = Counter()
        started = time.monotonic()
        for k in range(args.messages):
            kind = KINDS[k % len(KINDS)] if k < len(KINDS) else draw.choice(KINDS)
            if kind == "oversized" and sent[kind] >= OVERSIZED:
                kind = "random bytes"
            topic, payload = bad_message(kind, draw, stranger.real())
            stranger.send(topic, payload)
            sent[kind] += 1
        flood_s = time.monotonic() - started
        outlasted = procs.procs["coordinator"].poll() is None
        try:
            procs.wait("coordinator", "dev0", "dev1", timeout=900)
            crashed = "none"
        except BaseException as e:  # pytest.fail's exception: a process failed or hung
            crashed = str(e)[:300]
        finally:
            procs.kill_all()
            stranger.close()
        summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {}
        reasons = Counter(reason_of(line) for line in procs.log("coordinator").splitlines() if "rejected message on" in line)
        print(f"{args.messages:,} bad messages in {flood_s:.1f} s during a {args.rounds}-round job of 2 devices")
        print(f"{'kind':<20} {'sent':>7}")
        for kind in KINDS:
            print(f"{kind:<20} {sent[kind]:>7,}")
        to_coordinator = sum(sent[k] for k in TO_COORDINATOR)
        print(f"coordinator rejected (with a logged reason): {summary.get('rejected_messages', 'n/a'):,} of the "
              f"{to_coordinator:,} sent its way")
        for why, n in reasons.most_common(8):
            print(f"    {n:>6,}  {why}")
        print(f"processes crashed or hung: {crashed}; the job {'was still running' if outlasted else 'had ENDED'} when the flood ended")
        same = summary.get("fingerprint") == clean
        print(f"final model: {'the same as without the stranger' if same else 'DIFFERENT'} ({str(summary.get('fingerprint'))[:16]})")


if __name__ == "__main__":
    main()
