"""2 Python + 2 browser devices against 4 Python devices: one federated job on SmolLM2-135M SST-2, run
twice on this machine (issue 26's figure).

    OMP_NUM_THREADS=1 nohup python benchmarks/browser_job.py > /tmp/browser_job.log 2>&1 &

Both jobs are ``edgezo coordinate`` with its embedded broker (which opens the WebSocket listener the
pages use), the same seed and settings (``SETTINGS``), the coordinator evaluating the whole SST-2
validation split (872 examples) at round 0 and after the last round. The four devices have the
same ids and the same shards in both jobs (``dev<i>`` holds shard i/4): in job ``python4`` all four
are ``edgezo join``; in job ``mixed`` dev2 and dev3 are headless Chromium pages (onnxruntime-web
WASM, one thread each, each in its own browser context) that open the coordinator's join link
with ``&device-id=dev<i>&shard=i/4`` (the coordinator serves the shards, ``--web-data``). So the
two jobs assign the same work with the same seeds, and differ only in where dev2 and dev3 run
their forwards: their scalars differ in the last bits (forwards are not bit-exact across runtimes),
and so, through the updates, do the models.

Reported per job: accuracy and correct-label loss at round 0 and at the end, wall time, per-round
time; the paired difference of the final per-example results (``mixed`` minus ``python4``: a
bootstrap over the 872 examples with ``compare_stats``, and McNemar's exact test on the
discordant hits), "not resolved" when the 95% interval includes 0; and the pages' scalars against
the Python devices' for the same assignment (round 1, where both jobs' replicas are the base
model: dev2/dev3 of ``mixed`` against dev2/dev3 of ``python4``). The machine's load is sampled all
along (other jobs run here). Each finished job is cached in the result file, so a rerun does only
the missing one (``--redo NAME`` to run one again).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import psutil

sys.path.append(str(Path(__file__).resolve().parent))
import compare_stats as cs  # noqa: E402

from edgezo.coordinator.server.broker import port_accepts  # noqa: E402
from edgezo.coordinator.wire import messages as m  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "sst2"
RESULT = ROOT / "benchmarks" / "results" / "browser_job.json"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-background-timer-throttling",
                 "--disable-renderer-backgrounding", "--disable-backgrounding-occluded-windows"]
SETTINGS = ["--task", "sst2", "--rounds", "8", "--local-steps", "1", "--p1", "1", "--p2", "1", "--batch-size", "8",
            "--max-length", "64", "--trainable", "norm", "--seed", "0", "--eval-samples", "872", "--min-devices", "4",
            "--round-timeout", "1800", "--max-missed", "0", "--quiet"]
DEVICES = 4
JOBS = {"python4": (), "mixed": (2, 3)}  # job name -> the device indices that are browser pages
REQUIRED_JOB_KEYS = ("devices", "browser_devices", "commands", "wall_s", "round0_accuracy", "final_accuracy", "round0_eval_loss",
                     "final_eval_loss", "round_seconds", "final_hits", "final_label_logprobs", "results", "load")


# -- the pure parts: figures from a job's outputs, the paired statistics -----------------------------
def job_figures(rows: list[dict], examples: list[dict]) -> dict:
    """Accuracy and correct-label loss at round 0 and at the end, per-round time (the last round's
    includes the final evaluation), and the final evaluation's per-example scores."""
    evaluated = [r for r in rows if r.get("eval_accuracy") is not None]
    if len(evaluated) < 2 or len(examples) < 2:
        raise ValueError(f"a finished job evaluates at round 0 and at the end: {len(evaluated)} evaluated rounds, {len(examples)} example lines")
    first, last = examples[0], examples[-1]
    walls = [r["wall_s"] for r in rows]
    return {"round0_accuracy": evaluated[0]["eval_accuracy"], "final_accuracy": evaluated[-1]["eval_accuracy"],
            "round0_eval_loss": evaluated[0]["eval_loss"], "final_eval_loss": evaluated[-1]["eval_loss"],
            "round0_eval_s": walls[0], "round_seconds": [round(b - a, 2) for a, b in zip(walls, walls[1:])],
            "round0_hits": first["hits"], "final_hits": last["hits"], "final_label_logprobs": last["label_logprobs"]}


def mcnemar_exact(hits_a: list[int], hits_b: list[int]) -> dict:
    """McNemar's exact test: of the examples the two runs disagree on, how many each got right
    (``only_a``, ``only_b``), and the two-sided binomial p-value of that split under no difference."""
    a, b = np.asarray(hits_a, dtype=bool), np.asarray(hits_b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"the runs scored {a.size} and {b.size} examples: not the same evaluation set")
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(b & ~a))
    n, k = only_a + only_b, min(only_a, only_b)
    p = 1.0 if n == 0 else min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)
    return {"only_a": only_a, "only_b": only_b, "p_value": p}


def paired_final(job: dict, baseline: dict, replicates: int = cs.REPLICATES) -> dict:
    """``job`` minus ``baseline`` of the final accuracy and correct-label log-probability (higher is
    better; the loss difference is its negative), bootstrapped over the examples (one seed each),
    with McNemar's exact test on the hits."""
    def scores(j):
        return cs.RunScores(0, np.zeros(1), np.asarray([j["final_hits"]]), np.asarray([j["final_label_logprobs"]]))

    out = {}
    for metric in ("accuracy", "eval_loss"):
        d = cs.paired_difference([scores(job)], [scores(baseline)], metric, replicates)
        sign = -1.0 if metric == "eval_loss" else 1.0  # eval_loss is the log-prob on the higher-is-better scale: flip back to loss
        lo, hi = sorted((sign * d.pooled.low, sign * d.pooled.high))
        out[metric] = {"difference": sign * d.pooled.value, "ci95": [lo, hi], "resolved": d.resolved,
                       "text": ("" if d.resolved else "not resolved: ") + f"{sign * d.pooled.value:+.3g} [{lo:+.3g}, {hi:+.3g}]"}
    out["mcnemar"] = mcnemar_exact(job["final_hits"], baseline["final_hits"])
    out["identical_hits"] = job["final_hits"] == baseline["final_hits"]
    return out


def scalar_agreement(results: dict, reference: dict, devices: tuple[str, ...], rnd: int = 1) -> dict:
    """Relative difference of each page's scalars (``results``) from the Python device's for the
    same device id and round (``reference``): both jobs assign the same work, and in round 1 both
    replicas are the base model (later rounds: ``by_round``, where the replicas also differ by the
    earlier rounds' float noise)."""
    def rel(device, r):
        got, ref = (np.asarray(x[f"{device}/{r}"]["scalars"], dtype=np.float64) for x in (results, reference))
        return got, ref, float(np.max(np.abs(got - ref) / np.abs(ref)))

    out = {}
    for device in devices:
        got, ref, worst = rel(device, rnd)
        rounds = sorted(int(k.split("/")[1]) for k in results if k.startswith(f"{device}/") and k in reference)
        out[device] = {"page": got.tolist(), "python": ref.tolist(), "max_relative_difference": worst,
                       "by_round": {str(r): rel(device, r)[2] for r in rounds}}
    return out


def check_result(doc: dict) -> None:
    """The result file's shape (what the docs and the summary read): raises naming what is missing."""
    for key in ("settings", "machine", "jobs"):
        if key not in doc:
            raise ValueError(f"result file has no {key!r}")
    for name, job in doc["jobs"].items():
        missing = [k for k in REQUIRED_JOB_KEYS if k not in job]
        if missing:
            raise ValueError(f"job {name!r} lacks {missing}")
        if len(job["final_hits"]) != len(job["final_label_logprobs"]):
            raise ValueError(f"job {name!r}: {len(job['final_hits'])} hits but {len(job['final_label_logprobs'])} log-probs")
    if len(doc["jobs"]) == 2 and "comparison" not in doc:
        raise ValueError("two jobs but no 'comparison'")


def _median(values: list[float]) -> str:
    return f"{float(np.median(values)):.1f}" if values else "-"


def summary_table(doc: dict) -> str:
    rows = ["| job | devices | acc round 0 | acc final | loss round 0 | loss final | wall s | median round s |", "|" + " --- |" * 8]
    for name, j in doc["jobs"].items():
        rows.append(f"| {name} | {j['devices']} | {100 * j['round0_accuracy']:.2f}% | {100 * j['final_accuracy']:.2f}% | "
                    f"{j['round0_eval_loss']:.4f} | {j['final_eval_loss']:.4f} | {j['wall_s']:.0f} | {_median(j['round_seconds'][:-1])} |")
    if "comparison" in doc:
        c = doc["comparison"]
        rows.append(f"\nmixed - python4, final accuracy: {c['accuracy']['text']} (McNemar exact: {c['mcnemar']['only_a']} vs "
                    f"{c['mcnemar']['only_b']} discordant, p = {c['mcnemar']['p_value']:.3g}); final loss: {c['eval_loss']['text']}")
        for device, s in c.get("round1_scalars", {}).items():
            rows.append(f"round-1 scalars of {device}, page vs Python device: {s['max_relative_difference']:.2e} relative")
    return "\n".join(rows)


# -- the I/O: processes, pages, the broker's traffic, the machine's load -----------------------------
class LoadSampler:
    """The 1-minute load average every ``every`` seconds, and the processes outside this benchmark
    that used the CPU while it ran (the machine is shared: say what else ran)."""

    def __init__(self, every: float = 10.0):
        self.samples: list[float] = []
        self.every, self._stop = every, threading.Event()
        self._mine = self._own_pids()
        self._cpu0 = self._others()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def _own_pids() -> set[int]:
        return {os.getpid(), *(p.pid for p in psutil.Process().children(recursive=True))}

    def _others(self) -> dict:
        out = {}
        for proc in psutil.process_iter(["pid", "nice", "cmdline", "cpu_times"]):
            if proc.info["pid"] not in self._mine and proc.info["cpu_times"] is not None:
                t = proc.info["cpu_times"]
                out[proc.info["pid"]] = (t.user + t.system, proc.info["nice"], " ".join(proc.info["cmdline"] or [])[:120])
        return out

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.samples.append(round(os.getloadavg()[0], 2))
            self._mine |= self._own_pids()  # this benchmark's processes (devices, browsers) are not "other" load

    def stop(self, seconds: float) -> dict:
        self._stop.set()
        self._thread.join()
        end = self._others()
        busy = [{"pid": pid, "nice": nice, "cmd": cmd, "cpu_share": round((cpu - self._cpu0.get(pid, (0.0,))[0]) / seconds, 2)}
                for pid, (cpu, nice, cmd) in end.items() if cpu - self._cpu0.get(pid, (0.0,))[0] > 0.05 * seconds]
        s = self.samples or [os.getloadavg()[0]]
        return {"load_1min_median": float(np.median(s)), "load_1min_min": min(s), "load_1min_max": max(s), "samples_every_s": self.every,
                "load_1min_samples": s, "other_busy_processes": busy}


class ResultRecorder:
    """Every device's Result of the job, from the embedded broker's TCP listener."""

    def __init__(self, port: int, run: str):
        self.results: dict[str, dict] = {}
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"browser-job-recorder-{run}")
        self.client.on_connect = lambda c, u, f, rc, p=None: c.subscribe(f"edgezo/{run}/result/#", qos=1)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client, userdata, msg) -> None:
        if msg.payload:
            r = m.decode(msg.payload, m.Result)
            self.results[f"{r.device}/{r.round}"] = {"scalars": m.unpack_scalars(r.scalars).tolist(), "loss": r.loss,
                                                     "compute_s": r.compute_s, "attempt": r.attempt}

    def close(self) -> dict:
        self.client.loop_stop()
        self.client.disconnect()
        return self.results


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def edgezo_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "edgezo", *args]


def settings_with(overrides: dict[str, str]) -> list[str]:
    """SETTINGS with some options' values replaced (``{"--rounds": "1"}``: a quick check of the harness)."""
    out = list(SETTINGS)
    for option, value in overrides.items():
        if option not in out:
            raise ValueError(f"{option} is not one of the job's settings {SETTINGS[::2]}")
        out[out.index(option) + 1] = value
    return out


def job_commands(name: str, out: Path, port: int, web_port: int, pages: tuple[int, ...], settings: list[str]) -> dict:
    """The coordinator's and the Python devices' command lines, and the pages' link suffixes."""
    web = ["--web-port", str(web_port), "--web-data", str(DATA)] if pages else []
    coordinator = edgezo_command("coordinate", *settings, "--data", str(DATA), "--run", name, "--port", str(port),
                                 "--out", str(out), "--overwrite", *web)
    joins = {f"dev{i}": edgezo_command("join", "--broker", f"127.0.0.1:{port}", "--run", name, "--device-id", f"dev{i}", "--data", str(DATA),
                                       "--shard", f"{i}/{DEVICES}", "--announce-timeout", "1800", "--quiet")
             for i in range(DEVICES) if i not in pages}
    links = {f"dev{i}": f"&device-id=dev{i}&shard={i}/{DEVICES}&threads=1" for i in pages}
    return {"coordinator": coordinator, "python_devices": joins, "page_link_suffix": links}


def wait_until(what: str, predicate, procs: dict, timeout: float, poll: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        dead = {n: p.returncode for n, p in procs.items() if p.poll() not in (None, 0)}
        if dead:
            raise RuntimeError(f"{dead} exited while waiting for {what}")
        time.sleep(poll)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")


class Pages:
    """Headless Chromium pages as devices: one browser, each page in its own context (so neither is
    a background tab of the other), opening the coordinator's join link."""

    def __init__(self):
        from playwright.sync_api import sync_playwright  # lazily: only the mixed job needs a browser

        self._pw = sync_playwright().start()
        self.browser = self._pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        self.pages: dict[str, object] = {}

    def open(self, device: str, url: str) -> None:
        page = self.browser.new_context().new_page()
        page.goto(url)
        self.pages[device] = page

    def states(self) -> dict:
        return {d: p.evaluate("window.edgezoState ? JSON.parse(JSON.stringify(window.edgezoState)) : null") for d, p in self.pages.items()}

    def failed(self) -> dict:
        return {d: s.get("error") for d, s in self.states().items() if s and s.get("error")}

    def close(self) -> None:
        self.browser.close()
        self._pw.stop()


def start(name: str, cmd: list[str], logs: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(cmd, stdout=open(logs / f"{name}.log", "w"), stderr=subprocess.STDOUT, env=env, cwd=ROOT)


def drive(name: str, commands: dict, logs: Path, port: int, pages_wanted: bool) -> tuple[dict, dict]:
    """Starts the coordinator, the Python devices and the pages; waits for the job to end; returns
    (the devices' results as the broker carried them, the pages' last states)."""
    procs = {"coordinator": start("coordinator", commands["coordinator"], logs)}
    pages, recorder = None, None
    try:
        wait_until("the embedded broker", lambda: port_accepts("127.0.0.1", port), procs, 600)
        recorder = ResultRecorder(port, name)
        for device, cmd in commands["python_devices"].items():
            procs[device] = start(device, cmd, logs)
        if pages_wanted:
            log = logs / "coordinator.log"
            link = wait_until("the join link", lambda: re.search(r"browser devices join at (\S+)", log.read_text(errors="replace")), procs, 1200)
            pages = Pages()
            for device, suffix in commands["page_link_suffix"].items():
                pages.open(device, link.group(1) + suffix)
        while procs["coordinator"].poll() is None:
            if pages is not None and pages.failed():
                raise RuntimeError(f"a page failed: {pages.failed()}")
            time.sleep(5)
        if procs["coordinator"].returncode != 0:
            raise RuntimeError(f"the coordinator exited {procs['coordinator'].returncode}: see {logs / 'coordinator.log'}")
        states = pages.states() if pages is not None else {}
        for device in commands["python_devices"]:
            procs[device].wait(120)
        return recorder.results, states
    finally:
        if pages is not None:
            pages.close()
        if recorder is not None:
            recorder.close()
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def run_job(name: str, work: Path, settings: list[str]) -> dict:
    """One job, start to end, with its figures, commands and the machine's load while it ran."""
    pages = JOBS[name]
    out, logs = work / name / "out", work / name / "logs"
    shutil.rmtree(work / name, ignore_errors=True)
    logs.mkdir(parents=True)
    port = free_port()
    commands = job_commands(name, out, port, free_port(), pages, settings)
    sampler, t0 = LoadSampler(), time.monotonic()
    results, states = drive(name, commands, logs, port, bool(pages))
    wall = time.monotonic() - t0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    examples = [json.loads(line) for line in (out / "eval_examples.jsonl").read_text().splitlines()]
    return {"devices": f"{DEVICES - len(pages)} Python + {len(pages)} browser", "browser_devices": [f"dev{i}" for i in pages],
            "commands": {k: v if k == "page_link_suffix" else _shell(v) for k, v in commands.items()},
            "wall_s": round(wall, 1), **job_figures(rows, examples), "devices_per_round": [r.get("devices") for r in rows],
            "results": results, "page_states": states, "load": sampler.stop(wall)}


def _shell(cmd) -> str | dict:
    if isinstance(cmd, dict):
        return {k: _shell(v) for k, v in cmd.items()}
    return " ".join(["OMP_NUM_THREADS=1", "python", *cmd[1:]])


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), "")
    return {"cpu": f"{cpu} ({psutil.cpu_count()} logical)", "memory_gb": round(psutil.virtual_memory().total / 2**30, 1)}


def compare(doc: dict) -> None:
    a, b = doc["jobs"]["mixed"], doc["jobs"]["python4"]
    doc["comparison"] = {"what": "mixed minus python4, final evaluation, the same 872 examples", **paired_final(a, b),
                         "round1_scalars": scalar_agreement(a["results"], b["results"], tuple(a["browser_devices"])),
                         "round1_python_devices_bit_equal": all(a["results"][f"dev{i}/1"]["scalars"] == b["results"][f"dev{i}/1"]["scalars"]
                                                                for i in range(DEVICES) if f"dev{i}" not in a["browser_devices"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/edgezo-browser-job"), help="the jobs' output folders and logs")
    parser.add_argument("--out", type=Path, default=RESULT)
    parser.add_argument("--redo", action="append", default=[], choices=sorted(JOBS), help="run this job again even if cached")
    parser.add_argument("--rounds", help="instead of SETTINGS' (a quick check of the harness: --rounds 1 --eval-samples 16 --out /tmp/x.json)")
    parser.add_argument("--eval-samples", help="instead of SETTINGS'")
    args = parser.parse_args()
    settings = settings_with({k: v for k, v in (("--rounds", args.rounds), ("--eval-samples", args.eval_samples)) if v is not None})
    doc = json.loads(args.out.read_text()) if args.out.exists() else {}
    if doc.get("settings", settings) != settings:
        raise SystemExit(f"{args.out} holds jobs run with other settings ({doc['settings']}): give another --out")
    doc.update({"settings": settings, "machine": machine(), "jobs": doc.get("jobs", {})})
    for name in JOBS:
        if name in doc["jobs"] and name not in args.redo:
            print(f"{name}: cached in {args.out}")
            continue
        print(f"{name}: running (logs in {args.work / name / 'logs'})", flush=True)
        doc["jobs"][name] = run_job(name, args.work, settings)
        doc.pop("comparison", None)
        args.out.write_text(json.dumps(doc, indent=1) + "\n")
    compare(doc)
    check_result(doc)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(summary_table(doc))


if __name__ == "__main__":
    main()
