"""The fixed set of short jobs whose results the redesign of issue 13 must not change.

Each job runs in its own process with one thread (matmul reductions, hence the last bits of every
scalar, depend on the thread count) on a tiny LLaMA built from a config and real SST-2 examples.
What is kept of a job: its final fingerprint and every metrics row less the wall time (losses,
accuracies, forwards per block, FLOPs, bytes, per-round fingerprints).

    python tests/invariant_jobs.py --record [JOB ...]  # rewrite tests/golden/invariant.json from this code

Recording is for a deliberate change of results only, never to make a refactor pass.

The last bits depend on the CPU as well as on the code (MKL and oneDNN pick their kernels by
vendor and model), so the golden file keeps one recording per environment: ``--record`` on a new
kind of machine adds its recording from the same code, and replaces only this machine's.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOLDEN = Path(__file__).parent / "golden" / "invariant.json"
TIMEOUT = 300

COMMON = ["--batch-size", "4", "--max-length", "32", "--eval-samples", "24", "--seed", "5", "--lr", "2e-3"]

# name -> extra `edgezo simulate` options (with COMMON, --clients 2 --rounds 2 --train-samples 120)
SIMULATE_JOBS: dict[str, list[str]] = {
    "spzo-torch-full": ["--method", "spzo", "--p1", "2", "--p2", "3", "--split", "2", "--trainable", "full"],
    "spzo-torch-clean-lora": ["--method", "spzo", "--variant", "clean", "--trainable", "lora:r=2"],
    "spzo-gaussian-dirichlet": ["--method", "spzo", "--distribution", "gaussian", "--partition", "dirichlet", "--clients", "3"],
    "spzo-int8-norm": ["--method", "spzo", "--backend", "int8", "--trainable", "norm"],
    "spzo-mlx-lora": ["--method", "spzo", "--backend", "mlx", "--trainable", "lora:r=2"],
    "spzo-mixed-backends": ["--method", "spzo", "--backend", "torch,int8,mlx", "--clients", "3", "--trainable", "norm"],
    "mezo": ["--method", "mezo", "--p1", "2", "--clients", "1", "--trainable", "full"],
    "decomfl": ["--method", "decomfl", "--p1", "3", "--trainable", "full"],
    "fedzo": ["--method", "fedzo", "--p1", "2", "--trainable", "full"],
    "fedavg": ["--method", "fedavg", "--trainable", "full", "--lr", "1e-2"],
}
FEDERATION_JOB = "coordinate-2-joins"

DROPPED = {"wall_s"}  # machine-dependent


def environment() -> dict:
    """What the golden values depend on besides the code: a different torch build or CPU kernel
    set may round differently."""
    import torch

    return {"torch": torch.__version__.split("+")[0], "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "machine": platform.machine(), "cpu": cpu_model()}


def cpu_model() -> str:
    """The CPU's vendor and model name (Linux's /proc/cpuinfo; platform's answer elsewhere)."""
    fields = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return " ".join(v for v in (fields.get("vendor_id"), fields.get("model name")) if v) or platform.processor() or "unknown"


def load_golden() -> list[dict]:
    """The recordings: ``[{"environment": ..., "jobs": {name: kept job}}, ...]``."""
    return json.loads(GOLDEN.read_text())["recordings"] if GOLDEN.exists() else []


def recording_for(recordings: list[dict], env: dict) -> dict | None:
    """The recording made in exactly this environment, if any."""
    return next((r for r in recordings if r["environment"] == env), None)


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def kept(out: Path) -> dict:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    summary = json.loads((out / "summary.json").read_text())
    return {
        "fingerprint": summary["fingerprint"],
        "rounds_completed": summary["rounds_completed"],
        "rows": [{k: v for k, v in r.items() if k not in DROPPED} for r in rows],
    }


def run_simulate(name: str, model: Path, data: Path, root: Path) -> dict:
    out = root / name
    extra = SIMULATE_JOBS[name]
    base = ["--clients", "2", "--rounds", "2", "--train-samples", "120"]
    if "--clients" in extra:
        base = base[2:]
    cmd = [sys.executable, "-m", "edgezo", "simulate", "--model", str(model), "--data", str(data), *COMMON, *base,
           *extra, "--out", str(out), "--quiet"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=TIMEOUT)
    if done.returncode != 0:
        raise RuntimeError(f"{name}: exit {done.returncode}\n{done.stderr[-3000:]}")
    return kept(out)


def run_federation(model: Path, data: Path, root: Path, broker_address: str) -> dict:
    """`edgezo coordinate` and two `edgezo join` processes over a real broker.

    Messages carry the run id and the model's name (its path), so both are fixed strings here:
    bytes_down counts the announcement's size."""
    out = root / FEDERATION_JOB
    link = root / "invariant-model"
    if not link.exists():
        link.symlink_to(model.resolve(), target_is_directory=True)
    model = Path(link.name)  # relative to the processes' working directory, root
    job = ["--model", str(model), "--data", str(data), *COMMON]
    run_id = "invariant-job"
    cmds = {"coordinator": ["coordinate", *job, "--run", run_id, "--rounds", "2", "--min-devices", "2",
                            "--out", str(out), "--quiet"]}
    for i in range(2):
        cmds[f"dev{i}"] = ["join", "--run", run_id, "--device-id", f"dev{i}", "--model", str(model), "--data", str(data),
                           "--shard", f"{i}/2", "--train-samples", "120"]
    procs = {}
    try:
        for name, args in cmds.items():
            log = open(root / f"{FEDERATION_JOB}-{name}.log", "w")
            procs[name] = subprocess.Popen([sys.executable, "-m", "edgezo", *args, "--broker", broker_address],
                                           stdout=log, stderr=subprocess.STDOUT, env=_env(), cwd=root)
        deadline = time.monotonic() + TIMEOUT
        for name, proc in procs.items():
            code = proc.wait(max(1, deadline - time.monotonic()))
            if code != 0:
                log = (root / f"{FEDERATION_JOB}-{name}.log").read_text(errors="replace")
                raise RuntimeError(f"{FEDERATION_JOB}: {name} exited {code}\n{log[-3000:]}")
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return kept(out)


def record(names: list[str]) -> None:
    """Record the named jobs (all when none is named) into GOLDEN, keeping the others."""
    sys.path.insert(0, str(Path(__file__).parent))
    from tiny import data_dir, save_tiny

    from support.mosquitto import MosquittoBroker

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = save_tiny(root / "tiny-llama", "llama")
        data = data_dir() / "sst2"
        recordings = load_golden()
        here = recording_for(recordings, environment())
        jobs = dict(here["jobs"]) if names and here else {}
        for name in names or [*SIMULATE_JOBS, FEDERATION_JOB]:
            print(f"recording {name}", flush=True)
            if name == FEDERATION_JOB:
                with MosquittoBroker() as broker:
                    jobs[name] = run_federation(model, data, root, broker.address)
            else:
                jobs[name] = run_simulate(name, model, data, root)
    GOLDEN.parent.mkdir(exist_ok=True)
    others = [r for r in recordings if r["environment"] != environment()]
    recordings = others + [{"environment": environment(), "jobs": jobs}]
    GOLDEN.write_text(json.dumps({"recordings": recordings}, indent=1) + "\n")
    print(f"wrote {GOLDEN}")


if __name__ == "__main__":
    if sys.argv[1:2] != ["--record"]:
        sys.exit(__doc__)
    record(sys.argv[2:])
