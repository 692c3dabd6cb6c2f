"""How soon the coordinator drops a device that dies (issue 14): `edgezo coordinate` and three
`edgezo join` processes over a private mosquitto (tiny LLaMA, real SST-2); once round 2 is recorded,
one device dies without a goodbye, and the time until the coordinator logs it offline is
measured. Two ways to die: SIGKILL (the process is gone; the kernel closes its socket, so the
broker sends its last will at once) and SIGSTOP (frozen, as a device whose power or network is
cut looks: the socket stays open and only the MQTT keepalive can tell; mosquitto fires the will
after 1.5 keepalives without a packet).

    python benchmarks/dead_device.py [--trials 2]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # test-only broker and process helpers

from support.mosquitto import MosquittoBroker  # noqa: E402
from support.procs import Procs  # noqa: E402
from tiny import data_dir, save_tiny  # noqa: E402

from edgezo.coordinator.wire.transport import BrokerSettings  # noqa: E402

JOB = ["--batch-size", "4", "--max-length", "32", "--eval-samples", "24", "--seed", "3", "--local-steps", "1"]


def rounds_recorded(out: Path) -> int:
    path = out / "metrics.jsonl"
    return len(path.read_text().splitlines()) - 1 if path.exists() else -1


def trial(root: Path, broker, model: Path, data: Path, run: str, how: signal.Signals) -> float:
    procs = Procs(root, broker)
    out = root / "coord"
    job = ["--model", str(model), "--data", str(data), *JOB]
    try:
        procs.start("coordinator", "coordinate", *job, "--run", run, "--rounds", "100000", "--min-devices", "2",
                    "--round-timeout", "120", "--out", str(out))
        for i in range(3):
            procs.start(f"dev{i}", "join", "--run", run, "--device-id", f"{run}-dev{i}", "--model", str(model),
                        "--data", str(data), "--shard", f"{i}/3", "--train-samples", "120")
        deadline = time.monotonic() + 300
        while rounds_recorded(out) < 2:
            if time.monotonic() > deadline:
                sys.exit("round 2 never came: " + procs.log("coordinator")[-2000:])
            time.sleep(0.05)
        victim = f"{run}-dev2"
        procs.procs["dev2"].send_signal(how)
        killed = time.monotonic()
        while f"device {victim} went offline" not in procs.log("coordinator"):
            if time.monotonic() - killed > 120:
                sys.exit("the dead device was never dropped: " + procs.log("coordinator")[-2000:])
            time.sleep(0.05)
        return time.monotonic() - killed
    finally:
        procs.kill_all()  # SIGKILL also ends a stopped process


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=2, help="trials per way of dying")
    args = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = "1"
    keepalive = BrokerSettings().keepalive
    data = data_dir() / "sst2"
    with tempfile.TemporaryDirectory() as tmp, MosquittoBroker() as broker:
        root = Path(tmp)
        model = save_tiny(root / "tiny-llama", "llama")
        print(f"keepalive {keepalive} s: mosquitto's will is due {1.5 * keepalive:.1f} s after the last packet "
              "(its keepalive checks add a few seconds)")
        results = {}
        for how in (signal.SIGKILL, signal.SIGSTOP):
            times = []
            for t in range(args.trials):
                folder = root / f"{how.name}-{t}"
                folder.mkdir()
                times.append(trial(folder, broker, model, data, f"dead{how.name.lower()}{t}", how))
            results[how.name] = [round(x, 1) for x in times]
            print(f"{how.name}: dropped {min(times):.1f}-{max(times):.1f} s after ({', '.join(f'{x:.1f}' for x in times)})", flush=True)
        print(json.dumps({"keepalive_s": keepalive, "will_within_s": 1.5 * keepalive, "dropped_after_s": results}))

if __name__ == "__main__":
    main()
