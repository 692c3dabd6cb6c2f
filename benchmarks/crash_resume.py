"""The coordinator SIGKILLed at random moments (issue 14): each trial starts `edgezo coordinate`
and two `edgezo join` processes over a private mosquitto (tiny LLaMA, real SST-2), kills the
coordinator at a moment drawn uniformly over the uninterrupted job's training (from round 1
to the end of the process), restarts it on the
same state and output folders, and checks that the job ends on the uninterrupted job's final
fingerprint with every round recorded exactly once in metrics.jsonl. Prints one row per trial
and the tally.

    python benchmarks/crash_resume.py [--trials 20] [--rounds 6] [--seed 0]

About 20-40 s per trial on one core (model loading dominates).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # test-only broker and process helpers

from support.mosquitto import MosquittoBroker  # noqa: E402
from support.procs import Procs  # noqa: E402
from tiny import data_dir, save_tiny  # noqa: E402

LEAD_S = 0.3  # about one tiny round: the kills start while round 1 is still open
JOB = ["--batch-size", "4", "--max-length", "32", "--eval-samples", "24", "--seed", "3", "--local-steps", "1"]


def rounds_recorded(out: Path) -> list[int]:
    path = out / "metrics.jsonl"
    rows = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            rows.append(json.loads(line)["round"])
        except (ValueError, KeyError):
            rows.append(None)  # a torn row counts against the trial
    return rows


class Trial:
    """One job: coordinator + 2 devices; optionally the coordinator killed after ``kill_after`` s."""

    def __init__(self, root: Path, broker, model: Path, data: Path, rounds: int, run: str):
        self.root, self.run, self.rounds = root, run, rounds
        self.procs = Procs(root, broker)
        job = ["--model", str(model), "--data", str(data), *JOB]
        self.out = root / "coord"
        self.coordinator = ["coordinate", *job, "--run", run, "--rounds", str(rounds), "--min-devices", "2",
                            "--checkpoint-every", "2", "--round-timeout", "30", "--out", str(self.out), "--quiet"]
        self.devices = {f"dev{i}": ["join", "--run", run, "--device-id", f"{run}-dev{i}", "--model", str(model),
                                    "--data", str(data), "--shard", f"{i}/2", "--train-samples", "120"] for i in range(2)}

    def go(self, kill_after: float | None) -> dict:
        """Run the job; with ``kill_after``, SIGKILL the coordinator that many seconds after its
        training started (``LEAD_S`` before round 1's record: loading models and waiting for
        devices are not the interesting part) and restart it."""
        started = time.monotonic()
        first = self.procs.start("coordinator", *self.coordinator)
        for name, args in self.devices.items():
            self.procs.start(name, *args)
        killed_round, self.training_started = None, None
        while first.poll() is None:
            now = time.monotonic()
            if self.training_started is None and any(r for r in rounds_recorded(self.out) if r):
                self.training_started = now - LEAD_S
            if kill_after is not None and self.training_started is not None and now - self.training_started >= kill_after:
                killed_round = max([r for r in rounds_recorded(self.out) if r is not None], default=0)
                first.send_signal(signal.SIGKILL)
                first.wait()
                self.procs.start("coordinator2", *self.coordinator)
                break
            time.sleep(0.02)
        self.training_s = time.monotonic() - (self.training_started or started)
        try:
            self.procs.wait(*(["coordinator2"] if killed_round is not None else ["coordinator"]), *self.devices, timeout=600)
            ok = True
        except BaseException as e:  # pytest.fail raises a BaseException subclass
            ok, why = False, str(e)[:200]
        finally:
            self.procs.kill_all()
        summary = json.loads((self.out / "summary.json").read_text()) if (self.out / "summary.json").exists() else {}
        return {"ok": ok, "seconds": time.monotonic() - started, "recorded_at_kill": killed_round,
                "fingerprint": summary.get("fingerprint"), "rounds": rounds_recorded(self.out),
                "why": "" if ok else why}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = "1"
    draw = random.Random(args.seed)
    data = data_dir() / "sst2"
    with tempfile.TemporaryDirectory() as tmp, MosquittoBroker() as broker:
        root = Path(tmp)
        model = save_tiny(root / "tiny-llama", "llama")
        (root / "clean").mkdir()
        clean_trial = Trial(root / "clean", broker, model, data, args.rounds, "clean")
        clean = clean_trial.go(None)
        training_s = clean_trial.training_s
        if not clean["ok"]:
            sys.exit(f"the uninterrupted job failed: {clean['why']}")
        print(f"uninterrupted job: {clean['seconds']:.1f} s ({training_s:.1f} s from round 1 on), fingerprint "
              f"{clean['fingerprint'][:16]}, {args.rounds} rounds; {args.trials} trials killing the coordinator at a "
              "uniform moment of its training")
        print(f"{'trial':>5} {'kill at':>8} {'last row':>8} {'same model':>10} {'metrics complete':>16}")
        good = 0
        expected = list(range(args.rounds + 1))
        for t in range(args.trials):
            at = draw.uniform(0.0, 1.0) * training_s
            (root / f"t{t}").mkdir()
            got = Trial(root / f"t{t}", broker, model, data, args.rounds, f"crash{t}").go(at)
            same = got["fingerprint"] == clean["fingerprint"]
            complete = got["rounds"] == expected
            good += same and complete and got["ok"]
            where = "-" if got["recorded_at_kill"] is None else str(got["recorded_at_kill"])
            print(f"{t + 1:>5} {at:>7.1f}s {where:>8} {'yes' if same else 'NO':>10} {'yes' if complete else 'NO':>16}"
                  + (f"  ({got['why']})" if not got["ok"] else ""), flush=True)
        print(f"{good}/{args.trials} trials ended on the uninterrupted fingerprint with a complete metrics.jsonl")


if __name__ == "__main__":
    main()
