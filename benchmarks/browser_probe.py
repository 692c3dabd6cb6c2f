"""Per-probe time of SmolLM2-135M in a browser page against the Python devices (issue 26 figures).

    OMP_NUM_THREADS=1 python benchmarks/browser_probe.py [--repeats 3] [--threads 2] [--out FILE]

One probe is the pair of forwards of a central difference, (L(w + eps z) - L(w - eps z)) / 2 eps,
on the same batch (16 SST-2 validation prompts, as the job tokenises them) and the same direction,
timed in four places on this machine:

* ``torch``: the Python torch device's executor (one thread, full forwards through both blocks);
* ``onnxruntime``: the ONNX export browser devices download, in Python onnxruntime (one thread);
* ``chromium-wasm-1``: the same export in headless Chromium (Debian's), onnxruntime-web WASM, one
  thread, loaded from the coordinator's web server (``coordinator/web_server.py``);
* ``chromium-wasm-N``: the same with ``--threads`` WASM threads (the page is cross-origin isolated:
  COOP/COEP headers, and 127.0.0.1 is a secure context).

The repeats are interleaved (torch, onnxruntime, wasm-1, wasm-N, then again), so load from other
processes falls on all of them alike; the medians are reported with every sample. Also: the
export's download size, the page's download and session-creation times, the peak resident memory
of the browser's processes (sampled every 0.1 s with psutil: all processes and the largest one),
and each runtime's probe scalar against torch's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import torch

from edgezo.backends.torch.factory import build_torch_executor
from edgezo.backends.torch.onnx_check import label_loss, onnx_outputs, onnx_session, trainable_values
from edgezo.backends.torch.onnx_export import cached_export
from edgezo.config import JobConfig
from edgezo.coordinator.web_server import BrokerWebSocket, WebJob, WebServer
from edgezo.coordinator.web_serving import assets_folder, base_trainable_file, tokenizer_file
from edgezo.jobdata import load_job_data, make_batcher
from edgezo.keys import Direction

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
BENCH_PAGE = """<!doctype html><meta charset="utf-8"><title>edgezo probe benchmark</title>
<script type="module">
import * as ort from "/assets/ort.wasm.bundle.min.mjs";
ort.env.wasm.wasmPaths = "/assets/";
window.benchLoad = async (threads) => {
  ort.env.wasm.numThreads = threads;
  const t0 = performance.now();
  const bytes = new Uint8Array(await (await fetch("/job/model.onnx")).arrayBuffer());
  const t1 = performance.now();
  window.session = await ort.InferenceSession.create(bytes, { executionProviders: ["wasm"] });
  return { download_s: (t1 - t0) / 1000, create_s: (performance.now() - t1) / 1000, isolated: self.crossOriginIsolated };
};
const feeds = (ids, mask, shape, trainables) => {
  const f = { input_ids: new ort.Tensor("int64", BigInt64Array.from(ids.map(BigInt)), shape),
              attention_mask: new ort.Tensor("int64", BigInt64Array.from(mask.map(BigInt)), shape) };
  for (const [name, values, dims] of trainables) f[name] = new ort.Tensor("float32", Float32Array.from(values), dims);
  return f;
};
window.benchProbe = async (ids, mask, shape, plus, minus) => {
  const fp = feeds(ids, mask, shape, plus), fm = feeds(ids, mask, shape, minus);
  const t0 = performance.now();
  const a = await window.session.run(fp);
  const b = await window.session.run(fm);
  return { seconds: (performance.now() - t0) / 1000, plus: Array.from(a.label_logits.data), minus: Array.from(b.label_logits.data) };
};
window.benchReady = true;
</script>"""


class MemorySampler:
    """Peak RSS of a process tree (the browser), sampled on a thread."""

    def __init__(self, root_pid: int, every: float = 0.1):
        self.root, self.every, self.peak_total, self.peak_one = psutil.Process(root_pid), every, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = []
            for proc in [self.root, *self.root.children(recursive=True)]:
                try:
                    rss.append(proc.memory_info().rss)
                except psutil.Error:
                    pass
            self.peak_total, self.peak_one = max(self.peak_total, sum(rss)), max(self.peak_one, max(rss, default=0))
            self._stop.wait(self.every)

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        return {"peak_rss_all_mb": round(self.peak_total / 2**20), "peak_rss_largest_process_mb": round(self.peak_one / 2**20)}


def probe_scalar(plus_logits, minus_logits, labels, eps: float) -> float:
    return (label_loss(plus_logits, labels) - label_loss(minus_logits, labels)) / (2 * eps)


def torch_probe(ex, batch, direction, eps):
    t0 = time.perf_counter()
    losses = [ex.forward_block2(ex.forward_block1(batch, [(direction, s)]), batch, [(direction, s)]) for s in (eps, -eps)]
    return time.perf_counter() - t0, (losses[0] - losses[1]) / (2 * eps)


def ort_probe(session, batch, plus, minus, labels, eps):
    t0 = time.perf_counter()
    a, _ = onnx_outputs(session, batch, plus)
    b, _ = onnx_outputs(session, batch, minus)
    return time.perf_counter() - t0, probe_scalar(a, b, labels, eps)


def page_trainables(ex, values: dict) -> list:
    return [[n, values[n].reshape(-1).tolist(), list(values[n].shape)] for n in ex.names]


def open_bench_page(context, base: str, threads: int) -> tuple:
    page = context.new_page()
    headers = {"Content-Type": "text/html", "Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp"}
    page.route(f"{base}/bench", lambda route: route.fulfill(status=200, headers=headers, body=BENCH_PAGE))
    page.goto(f"{base}/bench")
    page.wait_for_function("window.benchReady === true", timeout=60_000)
    return page, page.evaluate("(t) => window.benchLoad(t)", threads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/browser_probe.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = JobConfig(eval_samples=64).validate()
    data = load_job_data(cfg, need_train=False)
    ex, info = build_torch_executor(cfg, data.task)
    batch = make_batcher(ex, data.task, data.dev)(list(range(16)))
    labels, direction, eps = batch.labels.numpy(), Direction(cfg.seed, 1, 0, 0, 0, 0), cfg.eps
    export = cached_export(ex, batch, info.digest, cfg.trainable, say=print)
    plus, minus = trainable_values(ex, direction, eps), trainable_values(ex, direction, -eps)
    session = onnx_session(export.path)
    files = Path(tempfile.mkdtemp(prefix="edgezo-bench-"))
    job = WebJob("bench", BrokerWebSocket(url="ws://127.0.0.1:9"), export.path, export.sha256,
                 tokenizer_file(ex, info.path, files / "tokenizer.json"), base_trainable_file(ex, files), assets_folder())
    server = WebServer(job, "127.0.0.1", 0).start()
    ids, mask, shape = batch.input_ids.reshape(-1).tolist(), batch.attention_mask.reshape(-1).tolist(), list(batch.input_ids.shape)
    page_plus, page_minus = page_trainables(ex, plus), page_trainables(ex, minus)
    times = {k: [] for k in ("torch", "onnxruntime", "chromium-wasm-1", f"chromium-wasm-{args.threads}")}
    scalars = {}
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p, tempfile.TemporaryDirectory() as profile:
        context = p.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        browser_pid = next(proc.pid for proc in psutil.process_iter(["cmdline"]) if profile in " ".join(proc.info["cmdline"] or [])
                           and "--type=" not in " ".join(proc.info["cmdline"] or []))
        sampler = MemorySampler(browser_pid)
        pages, loads = {}, {}
        for threads in (1, args.threads):
            pages[threads], loads[threads] = open_bench_page(context, server.url(), threads)
            print(f"chromium, {threads} thread(s): {loads[threads]}")
        for r in range(args.repeats):
            t, scalars["torch"] = torch_probe(ex, batch, direction, eps)
            times["torch"].append(t)
            t, scalars["onnxruntime"] = ort_probe(session, batch, plus, minus, labels, eps)
            times["onnxruntime"].append(t)
            for threads, page in pages.items():
                out = page.evaluate("([i, m, s, a, b]) => window.benchProbe(i, m, s, a, b)", [ids, mask, shape, page_plus, page_minus])
                times[f"chromium-wasm-{threads}"].append(out["seconds"])
                scalars[f"chromium-wasm-{threads}"] = probe_scalar(np.array(out["plus"]).reshape(16, -1), np.array(out["minus"]).reshape(16, -1), labels, eps)
            print(f"repeat {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()))
        memory = sampler.stop()
        context.close()
    server.stop()
    result = {
        "model": info.name, "batch": shape, "real_tokens": int(batch.attention_mask.sum()), "direction": list(direction.fields()),
        "eps": eps, "cpu": _cpu(), "load_average_1min_at_end": round(psutil.getloadavg()[0], 2),
        "probe_seconds_median": {k: round(statistics.median(v), 3) for k, v in times.items()},
        "probe_seconds_samples": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "probe_scalar": {k: v for k, v in scalars.items()},
        "probe_scalar_rel_diff_vs_torch": {k: abs(v - scalars["torch"]) / abs(scalars["torch"]) for k, v in scalars.items() if k != "torch"},
        "download_mb": round(export.bytes / 1e6, 1), "page_load": {str(k): v for k, v in loads.items()}, "page_memory": memory,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()} ({psutil.cpu_count()} logical)"
    return ""


if __name__ == "__main__":
    main()
