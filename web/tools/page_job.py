"""A short real job with one browser page on the default model (SmolLM2-135M): ``edgezo coordinate``
with the embedded broker and ``--web-port``, one ``edgezo join`` (shard 0/2) and one headless
Chromium page opening the printed link (shard 1/2); prints what the page shows as it goes and the
job's metrics (``devices`` per round: a result counts only when its replica fingerprint is the
global model's). The export is made on first use (minutes) and cached.

    OMP_NUM_THREADS=1 python web/tools/page_job.py [--trainable lora] [--rounds 2] [--data /work/shared/data/sst2] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(out: Path, args) -> tuple[subprocess.Popen, int]:
    port = free_port()
    command = ["edgezo", "coordinate", "--data", args.data, "--run", "pagejob", "--rounds", str(args.rounds), "--local-steps", "1",
               "--p1", "1", "--p2", "1", "--batch-size", "4", "--max-length", "32", "--eval-samples", "16", "--min-devices", "2",
               "--trainable", args.trainable, "--round-timeout", "900", "--out", str(out / "coord"), "--port", str(port),
               "--web-port", str(free_port()), "--web-data", args.data]
    return subprocess.Popen(command, stdout=open(out / "coord.log", "w"), stderr=subprocess.STDOUT), port


def watch_page(link: str, coord: subprocess.Popen, out: Path, t0: float, timeout: float) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(str(out / "profile"), executable_path="/usr/bin/chromium", headless=True,
                                                       args=["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"])
        page = context.new_page()
        page.goto(f"{link}&device-id=web0&shard=1/2")
        last = None
        while coord.poll() is None and time.time() - t0 < timeout:
            state = page.evaluate("window.edgezoState || null") or {}
            view = {k: state.get(k) for k in ("phase", "round", "loss", "probeSeconds", "backend", "error")}
            if view != last:
                print(f"{time.time() - t0:5.0f} s  page: {view}", flush=True)
                last = view
            if state.get("error"):
                break
            time.sleep(2)
        context.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trainable", default="lora")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--data", default="/work/shared/data/sst2")
    parser.add_argument("--out", default=None, help="keep the logs and the coordinator's output here (default: a temporary folder)")
    parser.add_argument("--timeout", type=float, default=2400)
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="edgezo-page-job-"))
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    coord, port = start(out, args)
    py = None
    try:
        while "browser devices join at" not in (out / "coord.log").read_text():
            if coord.poll() is not None:
                raise SystemExit((out / "coord.log").read_text()[-3000:])
            time.sleep(2)
        text = (out / "coord.log").read_text()
        print(f"{time.time() - t0:5.0f} s  " + next(line for line in text.splitlines() if "checked against" in line), flush=True)
        py = subprocess.Popen(["edgezo", "join", "--data", args.data, "--run", "pagejob", "--device-id", "py0", "--shard", "0/2",
                               "--broker", f"127.0.0.1:{port}"], stdout=open(out / "py0.log", "w"), stderr=subprocess.STDOUT)
        watch_page(re.search(r"browser devices join at (\S+)", text).group(1), coord, out, t0, args.timeout)
        coord.wait(timeout=120)
    finally:
        for proc in (coord, py):
            if proc is not None and proc.poll() is None:
                proc.terminate()
    metrics = out / "coord" / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
    print("rounds (round, devices):", [(r["round"], r.get("devices")) for r in rows], f"; {time.time() - t0:.0f} s in all; logs in {out}")
    if args.out is None and rows and all(r.get("devices") == 2 for r in rows[1:]):
        shutil.rmtree(out / "profile", ignore_errors=True)


if __name__ == "__main__":
    main()
