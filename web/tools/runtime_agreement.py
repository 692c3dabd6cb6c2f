"""How far onnxruntime-web's WASM and WebGPU runtimes are from Python onnxruntime on a job's export,
and how long they take, in headless Chromium (the measurement behind docs/browser.md's "WebGPU:
shipped only on request"). Builds the page with the WebGPU files into a temporary folder, serves
the export with edgezo's web server, and runs one batch of the job's validation prompts with the
trainables moved ``--moved`` along a probe direction, in a fresh Chromium per runtime
(``--enable-unsafe-webgpu``: without a GPU, WebGPU is SwiftShader's software adapter).

    OMP_NUM_THREADS=1 python web/tools/runtime_agreement.py EXPORT.onnx [--trainable norm] [--model PATH] [--rows 4] [--tokens 32]

EXPORT.onnx: an export of the same job (``~/.cache/edgezo/onnx/<key>/model.onnx``, written by
``edgezo coordinate --web-port``). Prints one line per runtime.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from edgezo.backends.torch.factory import build_torch_executor
from edgezo.backends.torch.onnx_check import onnx_outputs, onnx_session, trainable_values
from edgezo.config import JobConfig
from edgezo.coordinator.server.web_server import BrokerWebSocket, WebJob, WebServer
from edgezo.coordinator.server.web_serving import base_trainable_file, check_batches
from edgezo.jobdata import load_job_data
from edgezo.keys import Direction

WEB = Path(__file__).resolve().parents[1]
PAGE = """<!doctype html><meta charset="utf-8"><script type="module">
const ep = new URLSearchParams(location.search).get("ep");
const ort = await import(ep === "webgpu" ? "/assets/ort.webgpu.bundle.min.mjs" : "/assets/ort.wasm.bundle.min.mjs");
ort.env.wasm.wasmPaths = "/assets/"; ort.env.wasm.numThreads = 1;
window.forward = async (ids, mask, shape, trainables) => {
  const bytes = new Uint8Array(await (await fetch("/job/model.onnx")).arrayBuffer());
  const t0 = performance.now();
  const session = await ort.InferenceSession.create(bytes, { executionProviders: [ep] });
  const t1 = performance.now();
  const feeds = { input_ids: new ort.Tensor("int64", BigInt64Array.from(ids.map(BigInt)), shape),
                  attention_mask: new ort.Tensor("int64", BigInt64Array.from(mask.map(BigInt)), shape) };
  for (const [name, vals, dims] of trainables) feeds[name] = new ort.Tensor("float32", Float32Array.from(vals), dims);
  await session.run(feeds);
  const t2 = performance.now();
  const out = await session.run(feeds);
  const t3 = performance.now();
  return { logits: Array.from(out.label_logits.data), create_s: (t1 - t0) / 1000, first_s: (t2 - t1) / 1000, second_s: (t3 - t2) / 1000 };
};
window.ready = true;
</script>"""
HEADERS = {"Content-Type": "text/html", "Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp"}


def job_batch(args):
    """The job's executor, one seeded batch of its validation prompts, and trainables moved off the base."""
    torch.set_num_threads(1)
    cfg = JobConfig(**({"model": args.model} if args.model else {}), task="sst2", data=args.data, trainable=args.trainable,
                    batch_size=args.rows, max_length=args.tokens, eval_samples=64).validate()
    data = load_job_data(cfg, need_train=False)
    ex, _ = build_torch_executor(cfg, data.task)
    return ex, check_batches(ex, data, cfg, 1)[0], trainable_values(ex, Direction(cfg.seed, 1, 0, 0, 0, 0), args.moved)


def in_chromium(server: WebServer, ep: str, forward_args: list) -> dict:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=["--headless", "--no-sandbox", "--enable-unsafe-webgpu"])
        try:
            page = browser.new_page()
            url = f"{server.url()}/runtime?ep={ep}"
            page.route(url, lambda route: route.fulfill(status=200, headers=HEADERS, body=PAGE))
            page.goto(url)
            page.wait_for_function("window.ready === true", timeout=60_000)
            return page.evaluate("([i, m, s, t]) => window.forward(i, m, s, t)", forward_args)
        finally:
            browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("export")
    parser.add_argument("--trainable", default="norm")
    parser.add_argument("--model", default=None, help="the job's model (default: SmolLM2-135M)")
    parser.add_argument("--data", default="/work/shared/data/sst2")
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--moved", type=float, default=0.05)
    args = parser.parse_args()
    ex, batch, values = job_batch(args)
    t0 = time.perf_counter()
    expected = onnx_outputs(onnx_session(args.export), batch, values)[0]
    print(f"{args.export} ({args.trainable}), batch {tuple(batch.input_ids.shape)}: Python onnxruntime {time.perf_counter() - t0:.2f} s, "
          f"label logits up to {np.abs(expected).max():.3g}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        assets = Path(tmp) / "assets"
        subprocess.run(["node", str(WEB / "build.mjs"), "--webgpu", "--out", str(assets)], check=True, capture_output=True)
        job = WebJob("runtime", BrokerWebSocket(url="ws://127.0.0.1:9"), Path(args.export), "", Path(tmp) / "none",
                     base_trainable_file(ex, Path(tmp)), assets)
        server = WebServer(job, "127.0.0.1", 0).start()
        forward_args = [batch.input_ids.reshape(-1).tolist(), batch.attention_mask.reshape(-1).tolist(), list(batch.input_ids.shape),
                        [[n, values[n].reshape(-1).tolist(), list(values[n].shape)] for n in ex.names]]
        try:
            for ep in ("wasm", "webgpu"):
                try:
                    r = in_chromium(server, ep, forward_args)
                except Exception as exc:  # a runtime that cannot load the export: say so, measure the other
                    print(f"  {ep}: failed: {str(exc)[:300]}", flush=True)
                    continue
                got = np.array(r["logits"]).reshape(expected.shape)
                print(f"  {ep}: label logits within {np.abs(got - expected).max():.3g} of Python's; session {r['create_s']:.2f} s, "
                      f"first forward {r['first_s']:.2f} s, second {r['second_s']:.2f} s", flush=True)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
