"""The web server browser devices join through (``edgezo coordinate --web-port``; issue 26).

A phone has no Python: it joins by opening ``/join?device-id=NAME``, a page (``edgezo/web_assets``,
built from ``web/``) that downloads the job's ONNX export and tokenizer from here and then speaks
the MQTT protocol over WebSockets like any device. Routes (``web/CONTRACT.md``):

* ``/join`` -> the page (without ``device-id``: a redirect to a fresh random one, so every phone
  that scans the same QR code gets its own id); with per-device tokens (:class:`DeviceTokens`, the
  embedded broker), ``/join?key=K`` (the printed link) redirects to the page with the device's own
  id and token, and a link with neither key nor a valid token is refused with a page saying why;
* ``/assets/<file>`` -> a file of the built page;
* ``/job/config.json`` -> where the broker's WebSocket listener is and what to download;
* ``/job/model.onnx``, ``/job/tokenizer.json`` -> the export and the model's tokenizer;
* ``/job/trainable.safetensors`` -> the base model's trainable tensors (round 0; the page replays
  the seed log from there, the graph takes them as inputs);
* ``/job/data?shard=I/N`` -> a shard of ``--web-data``'s training examples (demos and tests).

Every response carries the cross-origin isolation headers (COOP/COEP/CORP): WASM threads need
them. A stdlib ``ThreadingHTTPServer`` on a daemon thread, bound only to the host given; HTTPS
when given a certificate (a browser allows WASM threads only in a secure context, and then only
``wss://`` to the broker). Nothing here knows the model or the job beyond :class:`WebJob`.
"""

from __future__ import annotations

import hmac
import html
import json
import logging
import re
import secrets
import shutil
import socket
import ssl
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Mapping
from urllib.parse import parse_qs, urlencode, urlsplit

from edgezo.errors import EdgezoError

from edgezo.coordinator.wire.transport import format_address

log = logging.getLogger("edgezo.web")

ISOLATION_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
}
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".mjs": "text/javascript; charset=utf-8",
    ".wasm": "application/wasm", ".json": "application/json", ".css": "text/css; charset=utf-8",
    ".onnx": "application/octet-stream", ".map": "application/json", ".svg": "image/svg+xml", ".png": "image/png",
}
PAGE = "index.html"


@dataclass(frozen=True)
class BrokerWebSocket:
    """Where pages reach the broker: ``url`` as given (``--web-broker``), or else ``scheme`` and
    ``port`` on the host name the page itself was loaded from (the embedded broker's listener)."""

    url: str | None = None
    scheme: str = "ws"
    port: int | None = None

    def for_host(self, page_host: str) -> str:
        if self.url is not None:
            return self.url
        return f"{self.scheme}://{format_address(page_host, self.port)}"


DEVICE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # a device id a page may ask for (no MQTT wildcards or slashes)


class DeviceTokens:
    """Per-device broker credentials for browser devices. The join link the coordinator prints
    carries the job's ``join_key``; a page opening it is issued its own device id and token (a
    redirect puts them in its URL, so a reload keeps them), and the broker's WebSocket listener
    admits a client only as a device with its token and that device's client id. A token is issued
    once per device id: a second phone cannot take over an id in use. Thread-safe (the web server
    issues, the broker's loop checks)."""

    def __init__(self, join_key: str | None = None, pool: Mapping[str, str] | None = None):
        self.join_key = join_key or secrets.token_urlsafe(12)
        self._tokens: dict[str, str] = {}
        self._pool = dict(pool or {})  # made in advance (a broker that cannot learn new accounts): handed out in order
        self._pool_mode = pool is not None
        self._lock = threading.Lock()

    @classmethod
    def preissued(cls, count: int) -> "DeviceTokens":
        """``count`` device ids and tokens made now, for a broker given its accounts up front (mosquitto's
        password file, :func:`edgezo.coordinator.server.web_serving.write_device_accounts`); pages then get them in turn."""
        return cls(pool={f"web-{secrets.token_hex(4)}": secrets.token_urlsafe(16) for _ in range(count)})

    @property
    def accounts(self) -> dict[str, str]:
        """Every device id and token made so far (issued or still in the pool)."""
        with self._lock:
            return {**self._pool, **self._tokens}

    def issue(self, device_id: str | None) -> tuple[str, str] | None:
        """(device id, token) for a page: a new pair (``device_id``, or a fresh id when None), or with a
        pool the next pair of it (a requested id only if it is in the pool); None when the id already
        has a token or the pool is used up."""
        with self._lock:
            if device_id in self._tokens:
                return None
            if self._pool_mode:
                device_id = device_id if device_id in self._pool else (None if device_id else next(iter(self._pool), None))
                if device_id is None:
                    return None
                self._tokens[device_id] = self._pool.pop(device_id)
            else:
                device_id = device_id or f"web-{secrets.token_hex(4)}"
                self._tokens[device_id] = secrets.token_urlsafe(16)
            return device_id, self._tokens[device_id]

    def valid(self, device_id: str | None, token: str | None) -> bool:
        with self._lock:
            known = self._tokens.get(device_id or "")
        return known is not None and token is not None and hmac.compare_digest(known.encode(), token.encode())

    def admits(self, username: str | None, password: str | None, client_id: str | None) -> bool:
        """The broker's check: a device with its token, connecting as one of that device's clients
        (the page's ``edgezo-<id>-<instance>`` and its discovery ``edgezo-<id>-probe``)."""
        return self.valid(username, password) and (client_id or "").startswith(f"edgezo-{username}-")


@dataclass(frozen=True)
class WebJob:
    """What the pages of one job are served: the run (topic prefix ``edgezo/<run>/``), the broker,
    the export and its SHA-256, the tokenizer file, the base trainables (a round-0 checkpoint file),
    the built page's folder, and ``shard(i, n)`` -> JSONL bytes (None: no ``--web-data``)."""

    run: str
    broker: BrokerWebSocket
    model_path: Path
    model_sha256: str
    tokenizer_path: Path
    trainable_path: Path
    assets: Path
    shard: Callable[[int, int], bytes] | None = None
    pad_token_id: int | None = None  # the Python tokenizer's pad id (tokenizer.json may not say which it is)
    tokens: DeviceTokens | None = None  # per-device broker credentials (None: the broker does not ask pages for any)

    def join_path(self) -> str:
        """The link to print (and put in the QR code): ``/join``, with the join key when pages need tokens."""
        return "/join" if self.tokens is None else f"/join?{urlencode({'key': self.tokens.join_key})}"

    def config(self, page_host: str) -> dict:
        """``/job/config.json``."""
        config = {"run": self.run, "broker_ws": self.broker.for_host(page_host), "prefix": f"edgezo/{self.run}/",
                  "model_url": "/job/model.onnx", "model_sha256": self.model_sha256, "tokenizer_url": "/job/tokenizer.json",
                  "trainable_url": "/job/trainable.safetensors", "data_url": "/job/data" if self.shard is not None else None}
        if self.pad_token_id is not None:
            config["pad_token_id"] = int(self.pad_token_id)
        return config


def parse_shard_query(text: str) -> tuple[int, int]:
    """``I/N`` with ``0 <= I < N`` (as ``join --shard``), else ValueError with the reason."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"shard {text!r} must look like I/N, e.g. 0/4") from None
    if not 0 <= i < n:
        raise ValueError(f"shard {text!r}: need 0 <= I < N")
    return i, n


def page_host(host_header: str) -> str:
    """The host name of a ``Host`` header (``name``, ``name:port``, ``[v6]`` or ``[v6]:port``)."""
    if host_header.startswith("["):
        return host_header[1:].split("]", 1)[0]
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


def check_free(host: str, port: int) -> None:
    """Fail early (before a minutes-long export) when the web server could not bind ``host:port``."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise EdgezoError(f"cannot serve browser devices on {format_address(host, port)} ({exc.strerror or exc}); "
                              "choose another --web-port or --web-host") from None


class _Handler(BaseHTTPRequestHandler):
    server_version = "edgezo-web"
    timeout = 60  # seconds a connection may idle (a phone that went away does not hold a thread for ever)
    job: WebJob  # set on the subclass the server makes

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        route = {"/join": self._join, "/job/config.json": self._config, "/job/model.onnx": self._model,
                 "/job/tokenizer.json": self._tokenizer, "/job/trainable.safetensors": self._trainable,
                 "/job/data": self._data}.get(url.path)
        try:
            if route is not None:
                route(query)
            elif url.path.startswith("/assets/"):
                self._asset(url.path[len("/assets/"):])
            elif url.path == "/":
                self._redirect("/join")
            else:
                self._error(404, f"no such page: {url.path} (browser devices join through the link the coordinator printed, /join...)")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the browser went away mid-download

    def _join(self, query: dict) -> None:
        params = {k: v[0] for k, v in query.items()}
        tokens = self.job.tokens
        if tokens is not None and "key" in params:
            self._issue_token(tokens, params)
        elif tokens is not None and not tokens.valid(params.get("device-id"), params.get("token")):
            what = "has no device token" if "token" not in params else f"carries no valid token for device {params.get('device-id')!r}"
            self._refuse(403, f"This join link {what}: open the link the coordinator printed (or scan its QR code again), "
                              "which gives this page its own device id and token.")
        elif not params.get("device-id"):
            self._redirect("/join?" + urlencode({"device-id": f"web-{secrets.token_hex(4)}", **params}))
        else:
            self._file(self.job.assets / PAGE, no_store=True)

    def _issue_token(self, tokens: DeviceTokens, params: dict) -> None:
        """``/join?key=K[&device-id=NAME]...`` -> the page's URL with its own device id and token."""
        if not hmac.compare_digest(params.pop("key").encode(), tokens.join_key.encode()):
            self._refuse(403, "This join link's key is not this job's: open the link the coordinator printed, or scan its QR code again.")
            return
        asked = params.pop("device-id", None)
        if asked is not None and not DEVICE_ID.fullmatch(asked):
            self._refuse(400, f"Device id {asked!r} is not allowed: use letters, digits, '.', '_' or '-' (at most 64).")
            return
        pair = tokens.issue(asked)
        if pair is None:
            self._refuse(409, f"Device id {asked!r} is already taken in this job (or is not one of its accounts): open the join link without device-id to get one."
                         if asked else "Every device account of this job is in use: ask its operator for more.")
            return
        params.pop("token", None)
        self._redirect("/join?" + urlencode({"device-id": pair[0], "token": pair[1], **params}))

    def _config(self, query: dict) -> None:
        host = page_host(self.headers.get("Host") or self.server.server_address[0])
        self._bytes(json.dumps(self.job.config(host)).encode(), "application/json", no_store=True)

    def _model(self, query: dict) -> None:
        self._file(self.job.model_path)

    def _tokenizer(self, query: dict) -> None:
        self._file(self.job.tokenizer_path)

    def _trainable(self, query: dict) -> None:
        self._file(self.job.trainable_path)

    def _data(self, query: dict) -> None:
        if self.job.shard is None:
            self._error(404, "this coordinator serves no training data (start it with --web-data FOLDER); pick a file on the page")
            return
        try:
            i, n = parse_shard_query(query.get("shard", [""])[0])
            body = self.job.shard(i, n)
        except (ValueError, EdgezoError) as exc:
            self._error(400, str(exc))
            return
        self._bytes(body, "application/x-ndjson", no_store=True)

    def do_HEAD(self) -> None:  # noqa: N802 - the stdlib's name
        """Headers only, for assets: the page asks whether the WebGPU build is served before it
        imports it (web/src/runtime.js); every other path answers 404 without a body."""
        url = urlsplit(self.path)
        path = self._asset_path(url.path[len("/assets/"):]) if url.path.startswith("/assets/") else None
        try:
            if path is None:
                self._headers(404, "text/plain; charset=utf-8", 0)
            else:
                self._headers(200, CONTENT_TYPES.get(path.suffix, "application/octet-stream"), path.stat().st_size)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _asset_path(self, name: str) -> Path | None:
        folder = self.job.assets
        if "/" in name or "\\" in name or name.startswith(".") or not (folder / name).is_file():
            return None
        return folder / name

    def _asset(self, name: str) -> None:
        path = self._asset_path(name)
        if path is None:
            self._error(404, f"no such asset: {name}")
            return
        self._file(path)

    # -- responses -------------------------------------------------------------------------
    def _headers(self, status: int, content_type: str, length: int, no_store: bool = False) -> None:
        self.send_response(status)
        for key, value in ISOLATION_HEADERS.items():
            self.send_header(key, value)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(length))
        self.send_header("Cache-Control", "no-store" if no_store else "no-cache")
        self.end_headers()

    def _bytes(self, body: bytes, content_type: str, status: int = 200, no_store: bool = False) -> None:
        self._headers(status, content_type, len(body), no_store)
        self.wfile.write(body)

    def _file(self, path: Path, no_store: bool = False) -> None:
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed below
        except OSError:
            self._error(404, f"{path.name} is not available on this coordinator")
            return
        with f:
            size = Path(path).stat().st_size
            self._headers(200, CONTENT_TYPES.get(Path(path).suffix, "application/octet-stream"), size, no_store)
            shutil.copyfileobj(f, self.wfile, 1 << 20)

    def _redirect(self, location: str) -> None:
        self.send_response(302)
        for key, value in ISOLATION_HEADERS.items():
            self.send_header(key, value)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _refuse(self, status: int, message: str) -> None:
        """A page (not JSON: a person reads it on a phone) saying why it cannot join."""
        body = (f'<!doctype html><meta charset="utf-8"><meta name="viewport" content="width=device-width">'
                f"<title>edgezo: cannot join</title><h1>Cannot join this job</h1><p>{html.escape(message)}</p>")
        self._bytes(body.encode(), "text/html; charset=utf-8", status, no_store=True)

    def _error(self, status: int, message: str) -> None:
        self._bytes(json.dumps({"error": message}).encode(), "application/json", status, no_store=True)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the stdlib's signature
        log.debug("web %s: %s", self.address_string(), format % args)


class WebServer:
    """The job's web server on ``host:port`` (0: a free port), on a daemon thread; HTTPS with
    ``certfile``/``keyfile``. ``start()`` returns once it listens; ``stop()`` ends it."""

    def __init__(self, job: WebJob, host: str = "127.0.0.1", port: int = 0,
                 certfile: str | None = None, keyfile: str | None = None):
        if not (job.assets / PAGE).is_file():
            raise EdgezoError(f"the browser device's page is missing ({job.assets / PAGE}): build it with `npm ci && npm run build` "
                              "in web/, or reinstall edgezo")
        self.job = job
        handler = type("WebHandler", (_Handler,), {"job": job})
        try:
            self._server = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            raise EdgezoError(f"cannot serve browser devices on {format_address(host, port)} ({exc.strerror or exc}); "
                              "choose another --web-port or --web-host") from None
        self._server.daemon_threads = True
        self.scheme = "http"
        if certfile is not None:
            # The handshake happens in the connection's own thread (on its first read), not in accept():
            # a client that connects and says nothing must not stop the server from accepting others.
            self._server.socket = _tls_context(certfile, keyfile).wrap_socket(self._server.socket, server_side=True,
                                                                             do_handshake_on_connect=False)
            self.scheme = "https"
        self.host, self.port = host, self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="edgezo-web", daemon=True)

    def start(self) -> "WebServer":
        self._thread.start()
        return self

    def url(self, host: str | None = None) -> str:
        return f"{self.scheme}://{format_address(host or self.host, self.port)}"

    def stop(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()


def _tls_context(certfile: str, keyfile: str | None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(certfile, keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise EdgezoError(f"cannot use the certificate {certfile} (key {keyfile or 'in the same file'}): {exc}; "
                          "pass a PEM certificate with --certfile and its key with --keyfile") from None
    return context


__all__ = ["BrokerWebSocket", "DeviceTokens", "ISOLATION_HEADERS", "WebJob", "WebServer", "check_free", "page_host", "parse_shard_query"]
