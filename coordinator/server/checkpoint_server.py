"""The coordinator's checkpoint HTTP server: ``GET /checkpoint.json`` (the index) and
``GET /checkpoint`` (the newest file, with its round, SHA-256 and fingerprint in headers), from a
daemon thread. Nothing else is served (no listing, no traversal); the server does not re-hash
gigabytes per request: the device's check of the SHA-256 is the one that counts."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from edgezo.coordinator.wire.atomic_files import CHUNK
from edgezo.coordinator.wire.checkpoint_format import CheckpointInfo, latest_checkpoint

logger = logging.getLogger("edgezo.checkpoint")


class _Handler(BaseHTTPRequestHandler):
    """Serves exactly two paths; everything else is a JSON 404, so no listing or traversal."""

    server_version = "edgezo-checkpoint/1"
    folder: Path  # set on the per-server subclass

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - stdlib signature
        logger.debug("%s - " + format, self.address_string(), *args)

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        path = urllib.parse.urlsplit(self.path).path
        if path == "/checkpoint.json":
            self._serve_index()
        elif path == "/checkpoint":
            self._serve_file()
        else:
            self._send_json(404, {"error": "not found: only /checkpoint and /checkpoint.json are served"})

    def _send_json(self, status: int, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _no_checkpoint(self) -> None:
        self._send_json(404, {"error": "coordinator has no checkpoint yet"})

    def _serve_index(self) -> None:
        info = latest_checkpoint(self.folder)
        if info is None:
            return self._no_checkpoint()
        self._send_json(200, info.to_json())

    def _open_latest(self) -> tuple[CheckpointInfo, object] | None:
        """Open the newest file; a concurrent write may delete it between reading the index and
        opening, so retry a few times. Once open, a later delete does not disturb the send (POSIX)."""
        for _ in range(3):
            info = latest_checkpoint(self.folder)
            if info is None:
                return None
            try:
                f = open(info.path, "rb")
            except FileNotFoundError:
                continue
            if os.fstat(f.fileno()).st_size == info.bytes:
                return info, f
            f.close()
        return None

    def _serve_file(self) -> None:
        opened = self._open_latest()
        if opened is None:
            return self._no_checkpoint()
        info, f = opened
        with f:
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(info.bytes))
            self.send_header("X-Edgezo-Round", str(info.round))
            self.send_header("X-Edgezo-Sha256", info.sha256)
            self.send_header("X-Edgezo-Fingerprint", info.fingerprint)
            self.end_headers()
            try:
                shutil.copyfileobj(f, self.wfile, CHUNK)
            except (BrokenPipeError, ConnectionResetError) as e:
                logger.debug("client %s left mid-download: %s", self.address_string(), e)


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a stalled download must not keep the coordinator alive


class _Server6(_Server):
    address_family = socket.AF_INET6


class CheckpointServer:
    """Serves a checkpoint folder over HTTP from a daemon thread (``GET /checkpoint[.json]``)."""

    def __init__(self, folder: Path, host: str = "0.0.0.0", port: int = 0, advertise_host: str | None = None):
        self.folder = Path(folder)
        self.host = host
        self.port = port
        if advertise_host is None:
            # a wildcard address is not dialable; loopback is right for local runs, and a real
            # deployment passes the address devices should use
            advertise_host = "127.0.0.1" if host in ("0.0.0.0", "127.0.0.1", "", "::") else host
        self.advertise_host = advertise_host
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> "CheckpointServer":
        """Bind (port 0 picks a free port) and serve in the background; returns self."""
        if self._server is not None:
            return self
        handler = type("_BoundHandler", (_Handler,), {"folder": self.folder})
        server_cls = _Server6 if ":" in self.host else _Server
        self._server = server_cls((self.host, self.port), handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},  # how long stop() waits at most
            name=f"edgezo-checkpoint:{self.port}",
            daemon=True,
        )
        self._thread.start()
        logger.debug("serving checkpoints from %s at %s", self.folder, self.url)
        return self

    def stop(self) -> None:
        """Stop accepting requests and release the port; safe to call twice."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    @property
    def url(self) -> str:
        """Base URL devices are told (``http://HOST:PORT``); valid once started."""
        if self._server is None:
            raise RuntimeError("CheckpointServer.url is known only after start()")
        host = f"[{self.advertise_host}]" if ":" in self.advertise_host else self.advertise_host
        return f"http://{host}:{self.port}"

    def __enter__(self) -> "CheckpointServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
