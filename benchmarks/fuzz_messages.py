"""Fuzzed messages against a running federation (issue 14): `edgezo coordinate` and two `edgezo
join` processes over a private mosquitto (tiny LLaMA, real SST-2) while a stranger publishes
``--messages`` bad messages on the job's topics: random bytes, truncated and oversized payloads,
replayed real results (duplicates and stale rounds), results claiming another device, bad values
inside well-formed results, and garbage on the topics devices read. Prints, per kind, how many
were sent; then the coordinator's rejected-message count, whether any process crashed, and whether
the job ended on the fingerprint of the same job without the stranger (`edgezo simulate`).

    python benchmarks/fuzz_messages.py [--messages 10000] [--rounds 400] [--seed 0]

The kind "unsigned or forged" goes to a second job of the same settings with signing on
(`coordinate --enrolled`, both devices `join --key --coordinator-key`): the devices' real results
unsigned, moved to the other device's topic, with one byte changed or signed by the stranger's
key; fake devices' and forged real devices' statuses (unsigned or signed by the stranger), an
unsigned log request; and forged updates, assignments and announcements to the devices. Both jobs
must end on the simulated fingerprint. (In the unsigned job a fake *well-formed* device status is
not sent: without signing or a broker ACL, a stranger can announce a device the coordinator will
wait for.)
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

from edgezo import signing  # noqa: E402
from edgezo.coordinator.wire import messages as m  # noqa: E402

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


def forged_message(draw: random.Random, real: list[bytes], run: str, stranger) -> tuple[str, bytes]:
    """One message of the kind "unsigned or forged" for a signed job: ``real`` holds the devices'
    signed results, ``stranger`` a key nobody enrolled."""
    sealed = draw.choice(real)
    inner = sealed[signing.OVERHEAD :]  # a stranger reads a signed payload; it cannot re-sign it
    result = msgspec.msgpack.decode(inner, type=m.Message)
    device, other = result.device, "dev1" if result.device == "dev0" else "dev0"
    full = lambda topic: f"edgezo/{run}/{topic}"  # noqa: E731 (what a signature covers)
    signed_by_stranger = lambda topic, payload: signing.seal(stranger, full(topic), payload)  # noqa: E731
    fake = f"fake-{draw.randrange(1000)}"
    online = m.encode(m.Status(v=1, run=run, device=fake, state="online", examples=50, instance="x"))
    offline = m.encode(m.Status(v=1, run=run, device=device, state="offline"))
    tampered = bytearray(sealed)
    tampered[draw.randrange(len(signing.MAGIC), len(tampered))] ^= 1 << draw.randrange(8)
    to_devices = [
        m.Update(v=1, run=run, round=result.round + 1, run_seed=3, rows=m.pack_update([]), fingerprint="0" * 64),
        m.Assign(v=1, run=run, round=result.round + 1, attempt=0, lr=1.0, timeout_s=1.0,
                 tasks=[m.DeviceTask(device=device, k=1, p1=1, p2=1, batch=1)]),
        m.Announce(v=1, run=run, state="finished", model=m.ModelRef("x", "", "0" * 64), job={}, split=1, round=10**6,
                   rounds=10**6, fingerprint="0" * 64, log_chunk=1),
    ]
    choice = draw.randrange(9)
    if choice == 0:
        return f"result/{device}", inner  # unsigned
    if choice == 1:
        return f"result/{other}", sealed  # moved to another device's topic
    if choice == 2:
        return f"result/{device}", bytes(tampered)  # one bit changed
    if choice == 3:
        return f"result/{device}", signed_by_stranger(f"result/{device}", inner)
    if choice == 4:
        return f"status/{fake}", online  # a fake device, unsigned
    if choice == 5:
        return f"status/{fake}", signed_by_stranger(f"status/{fake}", online)  # a fake device with its own key
    if choice == 6:
        return f"status/{device}", draw.choice([offline, signed_by_stranger(f"status/{device}", offline)])  # a forged goodbye
    if choice == 7:
        return f"logreq/{device}", m.encode(m.LogRequest(v=1, run=run, device=device, first=1, last=10))
    forged = m.encode(draw.choice(to_devices))
    topic = {"update": "update", "assign": "round", "announce": "announce"}[msgspec.msgpack.decode(forged)["type"]]
    return topic, draw.choice([forged, signed_by_stranger(topic, forged)])


def reason_of(line: str) -> str:
    """A coordinator log line's rejection reason, without the numbers that make each one unique."""
    why = line.split("rejected message on ", 1)[1].split(": ", 1)[-1]
    return " ".join(w for w in why.split() if not any(ch.isdigit() for ch in w) and "ed25519:" not in w)[:70]


SIGNED = "unsigned or forged"  # sent to the job with signing on
KINDS = ("random bytes", "truncated", "oversized", "replayed", "spoofed", "bad values", "garbage to devices", SIGNED)
OVERSIZED = 20  # 1 MiB each: a few show the limit without pushing gigabytes through the broker
# what reaches the coordinator (the rest goes to devices, which log and ignore it)
TO_COORDINATOR = set(KINDS) - {"garbage to devices", SIGNED}
COORDINATOR_TOPICS = ("result/", "status/", "logreq/")


def run_job(broker, root: Path, job: list[str], model: Path, data: Path, rounds: int, run: str, kinds: list[str],
            draw: random.Random, signed: bool) -> dict:
    """One job of 2 devices while the stranger sends ``kinds`` (in order); with ``signed``, the
    coordinator takes only the enrolled devices' signed messages and the devices check its key."""
    out = root / run
    procs = Procs(root, broker)
    stranger = Stranger(broker, run)
    coordinate, join = [], [[], []]
    stranger_key = signing.generate()
    if signed:
        keys = [signing.generate() for _ in range(2)]
        for i, key in enumerate(keys):
            signing.save_key(key, root / f"{run}-dev{i}.key")
        (root / f"{run}-enrolled.txt").write_text("".join(key.line(f"dev{i}") + "\n" for i, key in enumerate(keys)))
        coordinate = ["--enrolled", str(root / f"{run}-enrolled.txt")]
    # a long round timeout: a round must not close on the deadline while the stranger floods it
    procs.start(f"{run}-coordinator", "coordinate", *job, "--run", run, "--rounds", str(rounds), "--min-devices", "2",
                "--round-timeout", "120", "--out", str(out), "--quiet", *coordinate)
    if signed:
        pub = out / "state" / "coordinator.pub"
        deadline = time.monotonic() + 300
        while not pub.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        join = [["--key", str(root / f"{run}-dev{i}.key"), "--coordinator-key", str(pub)] for i in range(2)]
    for i in range(2):
        procs.start(f"{run}-dev{i}", "join", "--run", run, "--device-id", f"dev{i}", "--model", str(model), "--data", str(data),
                    "--shard", f"{i}/2", "--train-samples", "120", *join[i])
    deadline = time.monotonic() + 300
    while not stranger.real() and time.monotonic() < deadline:
        time.sleep(0.1)
    if not stranger.real():
        sys.exit("no device result seen in 300 s: " + procs.log(f"{run}-coordinator")[-2000:])
    sent: Counter = Counter()
    to_coordinator = 0
    started = time.monotonic()
    for kind in kinds:
        if kind == "oversized" and sent[kind] >= OVERSIZED:
            kind = "random bytes"
        if kind == SIGNED:
            topic, payload = forged_message(draw, stranger.real(), run, stranger_key)
            to_coordinator += topic.startswith(COORDINATOR_TOPICS)
        else:
            topic, payload = bad_message(kind, draw, stranger.real())
            to_coordinator += kind in TO_COORDINATOR
        stranger.send(topic, payload)
        sent[kind] += 1
    flood_s = time.monotonic() - started
    names = [f"{run}-coordinator", f"{run}-dev0", f"{run}-dev1"]
    outlasted = procs.procs[names[0]].poll() is None
    try:
        procs.wait(*names, timeout=900)
        crashed = "none"
    except BaseException as e:  # pytest.fail's exception: a process failed or hung
        crashed = str(e)[:300]
    finally:
        procs.kill_all()
        stranger.close()
    summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {}
    reasons = Counter(reason_of(line) for line in procs.log(names[0]).splitlines() if "rejected message on" in line)
    ignored = sum(procs.log(name).count("ignoring a message on") for name in names[1:])
    return {"sent": sent, "to_coordinator": to_coordinator, "flood_s": flood_s, "outlasted": outlasted, "crashed": crashed,
            "summary": summary, "reasons": reasons, "ignored_by_devices": ignored}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=400, help="enough for each job to outlast the flood and its backlog")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = "1"
    draw = random.Random(args.seed)
    kinds = [KINDS[k % len(KINDS)] if k < len(KINDS) else draw.choice(KINDS) for k in range(args.messages)]
    data = data_dir() / "sst2"
    with tempfile.TemporaryDirectory() as tmp, MosquittoBroker() as broker:
        root = Path(tmp)
        model = save_tiny(root / "tiny-llama", "llama")
        job = ["--model", str(model), "--data", str(data), *JOB]
        simulated = root / "simulated"
        subprocess.run([sys.executable, "-m", "edgezo", "simulate", *job, "--clients", "2", "--rounds", str(args.rounds),
                        "--train-samples", "120", "--out", str(simulated), "--quiet"], check=True, capture_output=True)
        clean = json.loads((simulated / "summary.json").read_text())["fingerprint"]
        jobs = {
            "unsigned": run_job(broker, root, job, model, data, args.rounds, "fuzzed", [k for k in kinds if k != SIGNED], draw, False),
            "signed": run_job(broker, root, job, model, data, args.rounds, "fuzzed-signed", [k for k in kinds if k == SIGNED], draw, True),
        }
    sent = jobs["unsigned"]["sent"] + jobs["signed"]["sent"]
    print(f"{args.messages:,} bad messages during two {args.rounds}-round jobs of 2 devices (the last kind: the job with "
          f"signing on), in {jobs['unsigned']['flood_s']:.1f} s + {jobs['signed']['flood_s']:.1f} s")
    print(f"{'kind':<20} {'sent':>7}")
    for kind in KINDS:
        print(f"{kind:<20} {sent[kind]:>7,}")
    for name, r in jobs.items():
        summary = r["summary"]
        devices = (f"; the devices ignored {r['ignored_by_devices']:,} forged messages on "
                   "their topics (not signed by the coordinator's key, or their own)"
                   if name == "signed" else "")
        print(f"{name} job: coordinator rejected (with a logged reason): {summary.get('rejected_messages', 'n/a'):,} of the "
              f"{r['to_coordinator']:,} sent its way{devices}")
        for why, n in r["reasons"].most_common(8):
            print(f"    {n:>6,}  {why}")
        print(f"    processes crashed or hung: {r['crashed']}; the job {'was still running' if r['outlasted'] else 'had ENDED'} "
              "when the flood ended")
        same = summary.get("fingerprint") == clean
        print(f"    final model: {'the same as without the stranger' if same else 'DIFFERENT'} ({str(summary.get('fingerprint'))[:16]})")


if __name__ == "__main__":
    main()
