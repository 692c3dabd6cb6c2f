"""Downloading a checkpoint (a device catching up): the body streams to a temporary file while
being hashed, is checked against the served SHA-256 (and an expected one when given) and its
safetensors metadata, and only then renamed into the device's cache. Errors say what to do (most
often: catch up by replaying the seed log instead)."""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

import numpy as np
import safetensors
import safetensors.numpy

from edgezo.coordinator.wire.atomic_files import CHUNK, temp_path
from edgezo.coordinator.wire.checkpoint_format import FORMAT, file_name, prune
from edgezo.errors import EdgezoError

logger = logging.getLogger("edgezo.checkpoint")


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
        while chunk := response.read(CHUNK):
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
        tmp = temp_path(dest_folder, file_name(round))
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
            final = dest_folder / file_name(round)
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    prune(dest_folder, keep=final.name)
    tensors = safetensors.numpy.load_file(final)
    logger.debug("downloaded checkpoint round %d from %s (%d bytes)", round, full, total)
    return round, tensors, fingerprint
