"""A real job with a browser device (issue 26), behind the ``browser`` marker (.ci/run runs it):
mosquitto with a WebSocket listener, ``edgezo coordinate --web-port`` on a tiny LLaMA, one Python
``edgezo join`` and one headless Chromium page (Debian's chromium through Playwright) that joins by
opening ``/join?device-id=web0&shard=1/2`` (and the same with the embedded broker's own WebSocket
listener instead of mosquitto; with LoRA trainables, both factors or B alone; with Gaussian
directions). The job must complete with both devices in every round, the page's results must carry
the global model's fingerprint (its replica, replayed from the seed log, is the coordinator's),
and the page's scalars must be what the Python executor computes for the same assignment (its
shard, the round's seeds, the replica the seed log gives), to 1e-4 relative plus the float32
resolution of the losses the torch device rounds to (see ``scalar_tolerance``).
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest

from edgezo.config import JobConfig, config_keys, probe_config
from edgezo.coordinator.wire import messages as m
from support.ports import free_port
from edgezo.engine import DeviceTurn, device_round
from edgezo.jobdata import device_shards, load_job_data, make_batcher
from edgezo.methods import method_of
from edgezo.seedlog import decode_entry, replay
from support.procs import Procs

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
RUN, ROUNDS, EPS = "webjob", 4, 1e-2  # 4: after round 2 the job needs py0 for at least one more round
ASSETS = Path(__file__).resolve().parents[1] / "edgezo" / "web_assets"


class Recorder:
    """Every Announce, Assign and Result of the run, decoded, as the broker delivered them."""

    def __init__(self, broker, login: tuple[str, str] | None = None):
        self.announces: list[m.Announce] = []
        self.assigns: dict[int, m.Assign] = {}
        self.results: dict[tuple[str, int], m.Result] = {}
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="edgezo-test-recorder")
        self.client.on_connect = lambda c, u, f, rc, p=None: c.subscribe(f"edgezo/{RUN}/#", qos=1)
        self.client.on_message = self._on_message
        if login is not None:
            self.client.username_pw_set(*login)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def _on_message(self, client, userdata, msg) -> None:
        if not msg.payload:
            return
        kind = msg.topic.split("/")[2]
        with self.lock:
            if kind == "announce":
                self.announces.append(m.decode(msg.payload, m.Announce))
            elif kind == "round":
                assign = m.decode(msg.payload, m.Assign)
                self.assigns[assign.round] = assign
            elif kind == "result":
                result = m.decode(msg.payload, m.Result)
                self.results[(result.device, result.round)] = result

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def small_sst2(sst2_dir: Path, folder: Path, train: int = 240, dev: int = 48) -> Path:
    folder.mkdir()
    for name, rows in (("train.tsv", train), ("dev.tsv", dev)):
        lines = (sst2_dir / name).read_text(encoding="utf-8").splitlines(keepends=True)[: rows + 1]
        (folder / name).write_text("".join(lines), encoding="utf-8")
    return folder


def replica_scalars(job: dict, model: Path, data: Path, log: list, assign: m.Assign, device: str, shard: tuple[int, int]) -> np.ndarray:
    """What a Python device holding ``shard`` computes for ``device``'s task in ``assign``, on the
    replica the seed log gives before that round: the reference for the page's scalars. It runs on
    one thread, as the job's processes do (tests/support/procs.py): a matmul's last bits depend on
    the thread count, and py0's scalars must be reproduced bit for bit."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _replica_scalars(job, model, data, log, assign, device, shard)
    finally:
        torch.set_num_threads(threads)


def _replica_scalars(job: dict, model: Path, data: Path, log: list, assign: m.Assign, device: str, shard: tuple[int, int]) -> np.ndarray:
    from edgezo.backends.torch.factory import build_torch_executor

    cfg = JobConfig(**{k: v for k, v in job.items() if k in config_keys()}, model=str(model), data=str(data)).validate()
    data_ = load_job_data(cfg, need_dev=False)
    ex, _ = build_torch_executor(cfg, data_.task)
    replay(ex, log[: assign.round - 1], verify=True)
    task = next(t for t in assign.tasks if t.device == device)
    position = 1 + [t.device for t in assign.tasks].index(device)
    turn = DeviceTurn(shard[0], position, task.k, task.batch, probe_config(cfg, task.p1, task.p2))
    method = method_of(cfg.method)
    out = device_round(method, ex, make_batcher(ex, data_.task, data_.train), device_shards(cfg, data_.train, shard[1])[shard[0]],
                       turn, cfg.seed, assign.round, assign.lr)
    return np.array([out.scalars[d] for d in turn.directions(method, cfg.seed, assign.round)], dtype=np.float64)


def scalar_tolerance(reference: np.ndarray, losses: float) -> np.ndarray:
    """1e-4 relative, plus what float32 losses can resolve: the torch device rounds each of L+ and
    L- to float32 (half an ulp each) before (L+ - L-) / (2 eps); the page computes them in float64
    from float32 logits, which differ from torch's in the last bits. Four ulps of the loss cover both."""
    return 1e-4 * np.abs(reference) + 4 * np.spacing(np.float32(losses)) / (2 * EPS)


def wait_for(what: str, predicate, procs: Procs, timeout: float, page=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        for name, proc in procs.procs.items():
            if proc.poll() not in (None, 0):
                pytest.fail(f"{name} died (exit {proc.returncode}) waiting for {what}:\n{procs.log(name)[-3000:]}")
        time.sleep(0.2)
    state = page.evaluate("window.edgezoState") if page is not None else None
    pytest.fail(f"timed out waiting for {what}; page state {state}; coordinator log:\n{procs.log('coordinator')[-3000:]}")


@contextlib.contextmanager
def paused(proc):
    """SIGSTOP a device for a few seconds (well under its 15 s keepalive, so the broker keeps it)."""
    proc.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        proc.send_signal(signal.SIGCONT)


def screenshot_mid_job(page, path: Path, tries: int = 20) -> tuple[dict, str]:
    """The page's state, its visible text and a screenshot, taken while the state held still
    (the same before and after the screenshot), so the three show the same moment."""
    for _ in range(tries):
        before = page.evaluate("JSON.stringify(window.edgezoState)")
        page.screenshot(path=str(path), full_page=True)
        text = page.inner_text("body")
        if page.evaluate("JSON.stringify(window.edgezoState)") == before:
            return json.loads(before), text
        time.sleep(0.2)
    pytest.fail("the page's state kept changing while it was being shot")


@pytest.fixture
def page_browser(tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(str(tmp_path / "chromium-profile"), executable_path=CHROMIUM,
                                                       headless=True, args=CHROMIUM_ARGS)
        try:
            yield context
        finally:
            context.close()


@dataclass
class Address:
    host: str
    port: int


ACL_EXAMPLE = Path(__file__).resolve().parents[1] / "coordinator" / "mosquitto.acl.example"
ACCOUNTS = {"coordinator": "c-secret", "py0": "p-secret", "web0": "w-token-5f1c"}


def login_options(user: str | None) -> list[str]:
    return ["--username", user, "--password", ACCOUNTS[user]] if user else []


@pytest.mark.parametrize("broker_kind,job_settings", [
    ("mosquitto", {"trainable": "norm"}), ("embedded", {"trainable": "norm"}), ("accounts", {"trainable": "norm"}),
    ("mosquitto", {"trainable": "lora:r=4"}), ("embedded", {"trainable": "lora:r=4,factors=B"}),
    ("mosquitto", {"trainable": "norm", "distribution": "gaussian"})],
    ids=["mosquitto", "embedded", "accounts", "lora", "lora-factors-B", "gaussian"])
def test_a_browser_page_trains_with_a_python_device(broker_kind, job_settings, tmp_path, tiny_llama, sst2_dir, mosquitto_factory, page_browser):
    """mosquitto with a WebSocket listener (--broker, --web-broker); the embedded amqtt broker,
    which opens its own WebSocket listener for the page; mosquitto with accounts and the example
    ACL (PROTOCOL.md 12), the page logging in as its device id with the token of its join URL.
    LoRA (PROTOCOL.md 9.3): the adapters are the graph's trainable inputs, the page starts from the
    served round-0 adapters (lora_A seeded by the run seed, which the page re-derives and checks)
    and replays the seed log onto them; with ``factors=B`` only lora_B is trainable and lora_A is a
    constant of the export. Gaussian directions: the page's updates round as the torch executor's
    (one float32 rounding of w + s*z), or its replica would leave the global model at round 1."""
    assert (ASSETS / "index.html").is_file(), "build the page first: npm ci && npm run build in web/"
    data = small_sst2(sst2_dir, tmp_path / "sst2")
    accounts = broker_kind == "accounts"
    if broker_kind == "embedded":
        broker = Address("127.0.0.1", free_port())
        coordinator_broker = ["--port", str(broker.port)]
    else:
        broker = mosquitto_factory(websocket=True, **({"password_file": ACCOUNTS, "acl_file": ACL_EXAMPLE.read_text()} if accounts else {}))
        coordinator_broker = ["--broker", broker.address, "--web-broker", broker.ws_url, *login_options("coordinator" if accounts else None)]
    token = f"&token={ACCOUNTS['web0']}" if accounts else ""
    procs, recorder = Procs(tmp_path), None
    web_port, out = free_port(), tmp_path / "coord"
    try:
        procs.start("coordinator", "coordinate", "--model", str(tiny_llama), "--data", str(data), "--run", RUN, "--rounds", str(ROUNDS),
                    "--local-steps", "2", "--p1", "1", "--p2", "2", "--batch-size", "4", "--max-length", "32", "--eps", str(EPS),
                    "--eval-samples", "16", "--seed", "7", "--min-devices", "2",
                    *[arg for key, value in job_settings.items() for arg in (f"--{key}", value)], "--round-timeout", "240", "--out", str(out),
                    "--web-port", str(web_port), "--web-data", str(data), *coordinator_broker, broker=None)
        wait_for("the coordinator's web server", lambda: "browser devices join at" in procs.log("coordinator"), procs, 300)
        recorder = Recorder(broker, ("coordinator", ACCOUNTS["coordinator"]) if accounts else None)  # before any round
        procs.start("py0", "join", "--run", RUN, "--device-id", "py0", "--model", str(tiny_llama), "--data", str(data), "--shard", "0/2",
                    *login_options("py0" if accounts else None), broker=f"{broker.host}:{broker.port}")
        if accounts:  # a wrong token: the broker refuses the page, which says so (and never joins the job)
            stranger = page_browser.new_page()
            stranger.goto(f"http://127.0.0.1:{web_port}/join?device-id=web0&shard=1/2&token=wrong")
            refused = wait_for("the refused page's error", lambda: (stranger.evaluate("window.edgezoState || null") or {}).get("error"),
                               procs, 120, stranger)
            stranger.close()
        page = page_browser.new_page()
        if broker_kind == "embedded":  # the embedded broker admits pages with the tokens the printed link issues them
            link = re.search(r"browser devices join at (\S+)", procs.log("coordinator")).group(1)
            assert "?key=" in link, link
            page.goto(f"{link}&device-id=web0&shard=1/2")
            assert "token=" in page.url and "key=" not in page.url, page.url
        else:
            page.goto(f"http://127.0.0.1:{web_port}/join?device-id=web0&shard=1/2{token}")
        wait_for("the page in round 2", lambda: ((page.evaluate("window.edgezoState || null") or {}).get("round") or 0) >= 2,
                 procs, 300, page)
        shot = tmp_path / "page-mid-job.png"
        with paused(procs.procs["py0"]):  # the job waits for py0, so the page holds still while it is shot
            state, text = screenshot_mid_job(page, shot)
        procs.wait("coordinator", "py0")
    finally:
        procs.kill_all()
        if recorder is not None:
            recorder.close()

    check_screenshot(shot, state, text)
    check_job(out, recorder, tiny_llama, data, job_settings)
    if accounts:  # it said why, and never joined
        assert "refused device web0's credentials" in refused and "join link" in refused, refused


def check_screenshot(shot: Path, state: dict, text: str) -> None:
    """The screenshot mid-job is a real image, and the page showed the round and the loss it held."""
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 5000
    assert state["phase"] != "finished" and 2 <= state["round"] <= ROUNDS, state
    assert f"{state['round']} of {ROUNDS}" in text and f"{state['loss']:.4f}" in text, text[:600]


def check_job(out: Path, recorder: Recorder, model: Path, data: Path, job_settings: dict) -> None:
    """Both devices in every round, the export's digest announced, the page's replica fingerprint
    (in its results) the global model's, and the page's scalars what the Python executor computes
    for its assignment (the reference reproducing py0's own first)."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == list(range(ROUNDS + 1)) and all(r["devices"] == 2 for r in rows[1:])
    for rnd in range(1, ROUNDS + 1):
        assert {t.device for t in recorder.assigns[rnd].tasks} == {"py0", "web0"}
        assert ("web0", rnd) in recorder.results, f"the page sent no result in round {rnd}"
    onnx_sha = {a.onnx_sha256 for a in recorder.announces}
    assert len(onnx_sha) == 1 and len(onnx_sha.pop()) == 64

    log = [decode_entry(line) for line in (out / "state" / "seedlog.jsonl").read_text().splitlines()]
    job = recorder.announces[-1].job
    assert {key: job[key] for key in job_settings} == job_settings
    starts = [recorder.announces[0].fingerprint] + [entry.fingerprint for entry in log]  # the global model before each round
    assert len(set(starts)) == len(starts) and all(len(f) == 64 for f in starts)  # every round moved it
    worst = 0.0
    for rnd in range(1, ROUNDS + 1):
        assign = recorder.assigns[rnd]
        mine = replica_scalars(job, model, data, log, assign, "py0", (0, 2))
        assert np.array_equal(mine, m.unpack_scalars(recorder.results[("py0", rnd)].scalars).astype(np.float64)), \
            "the reference does not reproduce the Python device bit for bit: it is not the reference"
        reference = replica_scalars(job, model, data, log, assign, "web0", (1, 2))
        page_result = recorder.results[("web0", rnd)]
        assert page_result.fingerprint == starts[rnd - 1], f"the page's replica is not the global model of round {rnd}"
        got = m.unpack_scalars(page_result.scalars).astype(np.float64)
        assert got.shape == reference.shape
        tolerance = scalar_tolerance(reference, page_result.loss)
        assert np.all(np.abs(got - reference) <= tolerance), (rnd, got, reference)
        worst = max(worst, float(np.max(np.abs(got - reference) / np.abs(reference))))
    print(f"page vs Python scalars: worst relative difference {worst:.2e} over {ROUNDS} rounds")
