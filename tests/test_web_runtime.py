"""Which onnxruntime-web build a page runs on (web/src/runtime.js), in headless Chromium against
the real web server and a tiny LLaMA's export (browser marker: a Chromium per case).

Headless Chromium here has no WebGPU adapter by default and a software one (SwiftShader, a
fallback adapter) with ``--enable-unsafe-webgpu``; no real GPU adapter is available on this
machine, so the WebGPU path itself is exercised only on SwiftShader. Checked: the page picks WASM
on both, and a page built with the WebGPU files (``npm run build -- --webgpu``) requests none of
them unless WebGPU is chosen; ``?ep=webgpu`` forces it (on SwiftShader, with a warning) or, where
it cannot run, says why.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import torch

from edgezo.backends.torch.factory import build_torch_executor
from edgezo.backends.torch.onnx_export import cached_export
from edgezo.config import JobConfig
from edgezo.coordinator.server.web_server import BrokerWebSocket, WebJob, WebServer
from edgezo.coordinator.server.web_serving import assets_folder, base_trainable_file, check_batches, tokenizer_file
from edgezo.jobdata import load_job_data
from tiny import save_tiny

pytestmark = pytest.mark.browser

WEB = Path(__file__).resolve().parents[1] / "web"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--no-first-run", "--disable-background-networking", "--disable-component-update"]
SOFTWARE_WEBGPU = ["--enable-unsafe-webgpu"]  # SwiftShader's WebGPU adapter (isFallbackAdapter)
WEBGPU_FILES = ("ort.webgpu.bundle.min.mjs", "ort-wasm-simd-threaded.asyncify.wasm", "ort-wasm-simd-threaded.asyncify.mjs")


@pytest.fixture(scope="module")
def served(tmp_path_factory, sst2_dir):
    """``job(assets, broker)``: a tiny LLaMA job's files (export, tokenizer, round-0 trainables, one
    shard of examples) served with the page in ``assets``; pages reach ``broker``'s WebSocket
    listener, where no coordinator announces a job, so a page that got that far waits "discovering"."""
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("runtime")
    model = save_tiny(folder / "tiny-llama-2", "llama", layers=2)
    cfg = JobConfig(model=str(model), task="sst2", batch_size=4, eval_samples=16, seed=3).validate()
    data = load_job_data(cfg, need_train=False)
    ex, info = build_torch_executor(cfg, data.task)
    made = cached_export(ex, check_batches(ex, data, cfg, 1)[0], info.digest, cfg.trainable, folder / "onnx")
    lines = "".join(json.dumps({**e.fields, "label": e.label}) + "\n" for e in data.dev[:8]).encode()
    files = folder / "files"
    files.mkdir()
    return lambda assets, broker: WebJob("runtime", BrokerWebSocket(url=broker.ws_url), made.path, made.sha256,
                                 tokenizer_file(ex, info.path, files / "tokenizer.json"), base_trainable_file(ex, files), assets,
                                 lambda i, n: lines, getattr(ex.tokenizer, "pad_token_id", None))


@pytest.fixture(scope="module")
def webgpu_assets(tmp_path_factory) -> Path:
    """The page built with onnxruntime-web's WebGPU files (what `npm run build -- --webgpu` ships)."""
    out = tmp_path_factory.mktemp("webgpu-assets")
    subprocess.run(["node", str(WEB / "build.mjs"), "--webgpu", "--out", str(out)], check=True, capture_output=True, timeout=300)
    assert all((out / f).is_file() for f in WEBGPU_FILES)
    return out


def open_page(job: WebJob, query: str, flags: list[str], profile: Path) -> tuple[dict, list[str], float]:
    """Open the join page; (its state once it chose a runtime, loaded the model, ran its measuring
    forwards and reached the broker, or failed; every URL it requested; seconds to that point)."""
    from playwright.sync_api import sync_playwright

    server = WebServer(job, "127.0.0.1", 0).start()
    requests: list[str] = []
    try:
        with sync_playwright() as p:
            context = p.chromium.launch_persistent_context(str(profile), executable_path="/usr/bin/chromium", headless=True,
                                                           args=CHROMIUM_ARGS + flags)
            page = context.new_page()
            page.on("request", lambda r: requests.append(r.url))
            t0 = time.monotonic()
            page.goto(f"{server.url()}/join?device-id=rt0&shard=0/1{query}")
            page.wait_for_function("() => { const s = window.edgezoState; return s && (s.error || s.phase === 'discovering'); }",
                                   timeout=180_000)
            seconds = time.monotonic() - t0
            state = page.evaluate("window.edgezoState")
            context.close()
    finally:
        server.stop()
    return state, requests, seconds


def webgpu_requests(requests: list[str]) -> list[str]:
    return [u for u in requests if any(f in u for f in WEBGPU_FILES)]


def test_auto_picks_wasm_on_a_software_adapter_and_never_fetches_the_webgpu_files(served, webgpu_assets, tmp_path, mosquitto_factory):
    state, requests, _ = open_page(served(webgpu_assets, mosquitto_factory(websocket=True)), "", SOFTWARE_WEBGPU, tmp_path / "p")
    assert state["error"] is None and state["phase"] == "discovering" and state["backend"].startswith("onnxruntime-web wasm"), state
    assert "swiftshader is a software fallback" in state["backend"], state["backend"]
    assert webgpu_requests(requests) == [] and any(u.endswith("/assets/ort-wasm-simd-threaded.wasm") for u in requests)


def test_auto_picks_wasm_without_an_adapter(served, tmp_path, mosquitto_factory):
    state, requests, _ = open_page(served(assets_folder(), mosquitto_factory(websocket=True)), "", [], tmp_path / "p")
    assert state["error"] is None and state["backend"].startswith("onnxruntime-web wasm") and "(no WebGPU adapter)" in state["backend"], state
    assert webgpu_requests(requests) == []


def test_forced_webgpu_runs_on_the_software_adapter_with_a_warning(served, webgpu_assets, tmp_path, mosquitto_factory):
    state, requests, seconds = open_page(served(webgpu_assets, mosquitto_factory(websocket=True)), "&ep=webgpu", SOFTWARE_WEBGPU, tmp_path / "p")
    print(f"forced WebGPU on SwiftShader: {state['phase']!r} after {seconds:.1f} s; error {state['error']!r}")
    assert "software fallback" in (state["warning"] or ""), state
    assert any(u.endswith("/assets/ort.webgpu.bundle.min.mjs") for u in requests)
    if state["error"]:  # where SwiftShader cannot run a kernel, the page says so and how to run on WASM
        assert "could not be loaded on WebGPU" in state["error"] and "without ?ep=webgpu" in state["error"], state["error"]
    else:  # it ran the measuring forwards on WebGPU and went on to the broker
        assert state["phase"] == "discovering" and state["backend"].startswith("onnxruntime-web webgpu (forced by ?ep=webgpu"), state


@pytest.mark.parametrize("flags,why", [([], "offers no WebGPU adapter"), (SOFTWARE_WEBGPU, "built without WebGPU")])
def test_forced_webgpu_that_cannot_run_says_why(flags, why, served, tmp_path, mosquitto_factory):
    """The shipped (WASM-only) page: ``?ep=webgpu`` with no adapter, and with an adapter."""
    state, requests, _ = open_page(served(assets_folder(), mosquitto_factory(websocket=True)), "&ep=webgpu", flags, tmp_path / "p")
    assert why in (state["error"] or "") and "without ?ep=webgpu to run on WASM" in state["error"], state
    assert state["phase"] == "error" and not any("/job/model.onnx" in u for u in requests)  # refused before the download
