"""Checkpoints of the trainable parameters, served over HTTP so a lagging device can catch up.

The global model is the base weights plus a replay of the seed log. A device that missed a few
rounds replays the missing entries; one that missed many would spend longer regenerating
directions than downloading the trainable parameters, so the coordinator periodically writes a
checkpoint (safetensors, trainable tensors only) and serves it here. Weights never travel over
MQTT: the broker carries only the checkpoint's URL and round (see ``Announce.checkpoint_url``).

Layout of the coordinator's folder::

    checkpoint-<round>.safetensors   the newest checkpoint (older ones are deleted)
    checkpoint.json                  {"round", "file", "sha256", "bytes", "fingerprint"}

Both are written atomically (temporary file, fsync, ``os.replace``) and the JSON is written
after the tensors, so a reader that follows ``checkpoint.json`` never sees a half-written file
(a crash leaves at most a stray temporary file, which nothing reads). The download verifies the
SHA-256 end to end: the server does not re-hash gigabytes per request, the device's check is the
one that counts.

Only stdlib, numpy and safetensors are imported, so a device without torch can use this module.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import re
import shutil
import socket
import struct
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

import numpy as np
import safetensors
import safetensors.numpy

from edgezo.errors import EdgezoError

logger = logging.getLogger("edgezo.checkpoint")

FORMAT = "edgezo-checkpoint-1"
INDEX_NAME = "checkpoint.json"
_FILE_RE = re.compile(r"checkpoint-(\d+)\.safetensors")
_CHUNK = 1 << 20
_MAX_HEADER = 100 << 20  # safetensors' own limit on the JSON header


@dataclass(frozen=True)
class CheckpointInfo:
    """What ``checkpoint.json`` says about the newest checkpoint, after checking the file."""

    round: int
    path: Path
    sha256: str
    bytes: int
    fingerprint: str

    def to_json(self) -> dict:
        """The index as served on ``/checkpoint.json`` (file name only: paths stay private)."""
        return {
            "round": self.round,
            "file": self.path.name,
            "sha256": self.sha256,
            "bytes": self.bytes,
            "fingerprint": self.fingerprint,
        }


# --------------------------------------------------------------------------- writing


def _file_name(round: int) -> str:
    return f"checkpoint-{round}.safetensors"


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable; a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _temp_path(folder: Path, name: str) -> Path:
    """A fresh hidden temporary beside the target, so ``os.replace`` stays on one filesystem."""
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
    os.close(fd)
    return Path(tmp)


def _sync_and_hash(path: Path) -> tuple[str, int]:
    """fsync the finished temporary and hash exactly the bytes that will be renamed into place."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "r+b") as f:  # writable: fsync needs it on some platforms
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
        os.fsync(f.fileno())
    return digest.hexdigest(), size


def _write_json_atomic(path: Path, payload: dict) -> None:
    tmp = _temp_path(path.parent, path.name)
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _prune(folder: Path, keep: str) -> None:
    """Keep only the newest checkpoint: edge disks are small and older ones are never served."""
    for old in folder.glob("checkpoint-*.safetensors"):
        if old.name != keep and _FILE_RE.fullmatch(old.name):
            try:
                old.unlink()
            except FileNotFoundError:
                pass
            except OSError as e:  # e.g. still open for download on Windows: next write retries
                logger.warning("could not delete old checkpoint %s: %s", old, e)


def write_checkpoint(folder: Path, round: int, tensors: dict[str, np.ndarray], fingerprint: str) -> Path:
    """Write ``folder/checkpoint-<round>.safetensors`` and point ``checkpoint.json`` at it.

    Order matters for crash safety: tensors first (atomically), then the index (atomically), then
    the old files are deleted. At every instant the index names a complete file. Returns the path.
    """
    if not isinstance(round, int) or isinstance(round, bool) or round < 0:
        raise ValueError(f"round must be a non-negative int, got {round!r}")
    if not isinstance(fingerprint, str):
        raise ValueError(f"fingerprint must be a str, got {type(fingerprint).__name__}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    name = _file_name(round)
    final = folder / name
    # safetensors reads raw memory: arrays must be contiguous (and stay alive until saved)
    arrays = {key: np.ascontiguousarray(value) for key, value in tensors.items()}
    metadata = {"round": str(round), "fingerprint": fingerprint, "format": FORMAT}
    tmp = _temp_path(folder, name)
    try:
        safetensors.numpy.save_file(arrays, tmp, metadata=metadata)
        sha256, size = _sync_and_hash(tmp)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(folder)
    index = {"round": round, "file": name, "sha256": sha256, "bytes": size, "fingerprint": fingerprint}
    _write_json_atomic(folder / INDEX_NAME, index)
    _prune(folder, keep=name)
    logger.debug("wrote checkpoint %s (round %d, %d bytes, sha256 %s)", final, round, size, sha256)
    return final


# --------------------------------------------------------------------------- reading


def _read_metadata(path: Path, size: int) -> dict[str, str]:
    """Parse only the safetensors header (cheap): a torn or foreign file fails here."""
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) != 8:
            raise ValueError("file shorter than a safetensors header")
        (n,) = struct.unpack("<Q", prefix)
        if n > _MAX_HEADER or 8 + n > size:
            raise ValueError(f"header length {n} does not fit a {size}-byte file")
        header = json.loads(f.read(n))
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(metadata, dict):
        raise ValueError("no safetensors metadata")
    return metadata


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _parse_index(raw: object) -> tuple[int, str, str, int, str]:
    """Validate ``checkpoint.json``; the file name must be a bare ``checkpoint-N.safetensors`` so a
    tampered index cannot point the server outside its folder."""
    if not isinstance(raw, dict):
        raise ValueError("not a JSON object")
    round, name, sha256, size, fingerprint = (raw.get(k) for k in ("round", "file", "sha256", "bytes", "fingerprint"))
    if not isinstance(round, int) or round < 0:
        raise ValueError(f"bad round {round!r}")
    if not isinstance(name, str) or not _FILE_RE.fullmatch(name) or int(_FILE_RE.fullmatch(name)[1]) != round:
        raise ValueError(f"bad file name {name!r}")
    if not isinstance(sha256, str) or not re.fullmatch(r"[0-9a-f]{64}", sha256):
        raise ValueError(f"bad sha256 {sha256!r}")
    if not isinstance(size, int) or size < 8:
        raise ValueError(f"bad size {size!r}")
    if not isinstance(fingerprint, str):
        raise ValueError(f"bad fingerprint {fingerprint!r}")
    return round, name, sha256, size, fingerprint


def latest_checkpoint(folder: Path, verify: bool = False) -> CheckpointInfo | None:
    """The checkpoint ``folder/checkpoint.json`` names, or None if there is none usable.

    Only the index is followed, so stray temporaries and unindexed files never count. The file
    must exist, have the indexed size and a safetensors header whose metadata agrees with the
    index; anything else is logged as a warning and treated as no checkpoint (the coordinator
    writes a fresh one, devices replay the log meanwhile). ``verify=True`` also re-hashes the
    whole file, which is slow for big models and unnecessary for serving (devices verify).
    """
    folder = Path(folder)
    index_path = folder / INDEX_NAME
    try:
        raw = json.loads(index_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        logger.warning("ignoring unreadable %s: %s", index_path, e)
        return None
    try:
        round, name, sha256, size, fingerprint = _parse_index(raw)
    except ValueError as e:
        logger.warning("ignoring malformed %s: %s", index_path, e)
        return None
    path = folder / name
    try:
        actual = path.stat().st_size
        if actual != size:
            raise ValueError(f"has {actual} bytes, the index says {size} (torn or replaced)")
        meta = _read_metadata(path, actual)
        if meta.get("format") != FORMAT or meta.get("round") != str(round) or meta.get("fingerprint") != fingerprint:
            raise ValueError(f"metadata {meta} does not match the index")
        if verify and _sha256_file(path) != sha256:
            raise ValueError("SHA-256 does not match the index")
    except FileNotFoundError:
        logger.warning("%s names %s, which is missing", index_path, path)
        return None
    except (OSError, ValueError) as e:
        logger.warning("ignoring checkpoint %s: %s", path, e)
        return None
    return CheckpointInfo(round=round, path=path, sha256=sha256, bytes=size, fingerprint=fingerprint)


# --------------------------------------------------------------------------- serving


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
                shutil.copyfileobj(f, self.wfile, _CHUNK)
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


# --------------------------------------------------------------------------- downloading


def _checkpoint_url(url: str) -> str:
    """Accept the base URL (as announced) or the full ``.../checkpoint`` URL."""
    base = url.rstrip("/")
    return base if base.endswith("/checkpoint") else base + "/checkpoint"


def _open(url: str, timeout: float):
    """GET with errors turned into messages that say what to do."""
    try:
        return urllib.request.urlopen(urllib.request.Request(url), timeout=timeout)
    except urllib.error.HTTPError as e:
        detail = ""
        try:
            detail = json.loads(e.read() or b"{}").get("error", "")
        except (ValueError, OSError, AttributeError):
            pass
        if e.code == 404:
            raise EdgezoError(
                f"coordinator has no checkpoint yet at {url}: catch up by replaying the seed log, "
                "or retry after the coordinator writes one"
            ) from None
        raise EdgezoError(f"checkpoint server at {url} answered HTTP {e.code} {detail or e.reason}") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
        reason = getattr(e, "reason", e)
        raise EdgezoError(
            f"cannot reach the checkpoint server at {url} ({reason}): check that the coordinator is "
            "running and that this device can reach its advertised host and port (firewall, "
            "--advertise-host), or catch up by replaying the seed log"
        ) from None


def _stream_to(response, tmp: Path, total: int, progress: Callable[[int, int], None] | None) -> tuple[str, int]:
    """Copy the body to ``tmp`` while hashing, so the bytes are read once and never held whole."""
    digest = hashlib.sha256()
    done = 0
    with open(tmp, "wb") as f:
        while chunk := response.read(_CHUNK):
            f.write(chunk)
            digest.update(chunk)
            done += len(chunk)
            if progress is not None:
                progress(done, total)
        f.flush()
        os.fsync(f.fileno())
    return digest.hexdigest(), done


def _header_int(response, name: str, url: str) -> int:
    value = response.headers.get(name)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise EdgezoError(f"{url} sent no valid {name} header: is it an edgezo coordinator's checkpoint URL?") from None


def _check_sha(url: str, got: str, expected: str) -> None:
    if got != expected.lower():
        raise EdgezoError(
            f"checkpoint from {url} failed its SHA-256 check (got {got}, expected {expected}); it was discarded"
        )


def _check_metadata(path: Path, url: str, round: int) -> str:
    """The file must say what the headers said; returns its fingerprint."""
    with safetensors.safe_open(path, framework="np") as f:
        meta = f.metadata() or {}
    if meta.get("format") != FORMAT or meta.get("round") != str(round):
        raise EdgezoError(
            f"checkpoint from {url} is not an {FORMAT} file for round {round} (metadata {meta}); it was discarded"
        )
    return meta.get("fingerprint", "")


def download_checkpoint(
    url: str,
    dest_folder: Path,
    expected_sha256: str | None = None,
    timeout: float = 30,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[int, dict[str, np.ndarray], str]:
    """Fetch ``url/checkpoint``, verify it, and return ``(round, tensors, fingerprint)``.

    The body streams to a temporary file in ``dest_folder`` while being hashed; it must match
    both the server's ``X-Edgezo-Sha256`` and ``expected_sha256`` (e.g. from a trusted announce)
    when given, else it is deleted and ``EdgezoError`` raised. A verified file is kept as
    ``dest_folder/checkpoint-<round>.safetensors`` (older ones deleted) so a restart need not
    download again. ``progress(done, total)`` is called after every chunk. ``timeout`` applies
    to connecting and to each read, not to the whole transfer.
    """
    full = _checkpoint_url(url)
    dest_folder = Path(dest_folder)
    dest_folder.mkdir(parents=True, exist_ok=True)
    with _open(full, timeout) as response:
        round = _header_int(response, "X-Edgezo-Round", full)
        total = _header_int(response, "Content-Length", full)
        served_sha = (response.headers.get("X-Edgezo-Sha256") or "").strip().lower()
        if not served_sha:
            raise EdgezoError(f"{full} sent no X-Edgezo-Sha256 header: is it an edgezo coordinator's checkpoint URL?")
        tmp = _temp_path(dest_folder, _file_name(round))
        try:
            try:
                got, done = _stream_to(response, tmp, total, progress)
            except (OSError, http.client.HTTPException) as e:  # timeouts and resets are OSErrors
                raise EdgezoError(
                    f"download of {full} broke off ({e}); retry, or catch up by replaying the seed log"
                ) from None
            if done != total:
                raise EdgezoError(
                    f"download of {full} was cut short ({done} of {total} bytes); it was discarded, retry"
                )
            _check_sha(full, got, served_sha)
            if expected_sha256 is not None:
                _check_sha(full, got, expected_sha256)
            fingerprint = _check_metadata(tmp, full, round)
            final = dest_folder / _file_name(round)
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    _prune(dest_folder, keep=final.name)
    tensors = safetensors.numpy.load_file(final)
    logger.debug("downloaded checkpoint round %d from %s (%d bytes)", round, full, total)
    return round, tensors, fingerprint


# --------------------------------------------------------------------------- policy


def checkpoint_worth_it(
    missing_rounds: int,
    directions_per_round: int,
    trainable_numel: int,
    generate_rate: float = 2e8,
    download_rate: float = 1.25e7,
) -> bool:
    """Whether downloading a checkpoint beats replaying the missed seed-log entries.

    Cost model (seconds), deliberately simple since both sides are rough:

    * replay: every missed round regenerates each of its directions over the trainable
      parameters, ``missing_rounds * directions_per_round * trainable_numel / generate_rate``
      (``generate_rate``: elements of random direction generated and applied per second,
      default 2e8);
    * download: float32 weights, ``4 * trainable_numel / download_rate + 1``
      (``download_rate`` in bytes/s, default 1.25e7 = 100 Mbit/s; the 1 s covers connecting,
      verifying and loading).

    Returns True when the download is strictly cheaper. E.g. 1M trainable parameters with 8
    directions per round: replay costs 0.04 s a round, a download 1.32 s, so download from 34
    missed rounds on.
    """
    if min(missing_rounds, directions_per_round, trainable_numel) < 0:
        raise ValueError("missing_rounds, directions_per_round and trainable_numel must be >= 0")
    if generate_rate <= 0 or download_rate <= 0:
        raise ValueError("generate_rate and download_rate must be > 0")
    replay_s = missing_rounds * directions_per_round * trainable_numel / generate_rate
    download_s = 4 * trainable_numel / download_rate + 1.0
    return download_s < replay_s
