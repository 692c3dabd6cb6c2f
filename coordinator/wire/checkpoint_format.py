"""The checkpoint folder's format: ``checkpoint-<round>.safetensors`` (the trainable tensors, with
``round``, ``fingerprint`` and ``format`` in the safetensors metadata) and ``checkpoint.json``
(``{"round", "file", "sha256", "bytes", "fingerprint"}``), which names the one complete file.

Writing order is what makes it crash safe: tensors first (atomically), then the index
(atomically), then older files are deleted, so at every instant the index names a complete file.
Reading follows only the index, so stray temporaries and unindexed files never count.
"""

from __future__ import annotations

import json
import logging
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import safetensors.numpy

from edgezo.coordinator.wire.atomic_files import fsync_dir, sha256_file, sync_and_hash, temp_path, write_json_atomic

logger = logging.getLogger("edgezo.checkpoint")

FORMAT = "edgezo-checkpoint-1"
INDEX_NAME = "checkpoint.json"
FILE_RE = re.compile(r"checkpoint-(\d+)\.safetensors")
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


def file_name(round: int) -> str:
    return f"checkpoint-{round}.safetensors"


def prune(folder: Path, keep: str) -> None:
    """Keep only the newest checkpoint: edge disks are small and older ones are never served."""
    for old in folder.glob("checkpoint-*.safetensors"):
        if old.name != keep and FILE_RE.fullmatch(old.name):
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
    name = file_name(round)
    final = folder / name
    # safetensors reads raw memory: arrays must be contiguous (and stay alive until saved)
    arrays = {key: np.ascontiguousarray(value) for key, value in tensors.items()}
    metadata = {"round": str(round), "fingerprint": fingerprint, "format": FORMAT}
    tmp = temp_path(folder, name)
    try:
        safetensors.numpy.save_file(arrays, tmp, metadata=metadata)
        sha256, size = sync_and_hash(tmp)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(folder)
    index = {"round": round, "file": name, "sha256": sha256, "bytes": size, "fingerprint": fingerprint}
    write_json_atomic(folder / INDEX_NAME, index)
    prune(folder, keep=name)
    logger.debug("wrote checkpoint %s (round %d, %d bytes, sha256 %s)", final, round, size, sha256)
    return final


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


def _parse_index(raw: object) -> tuple[int, str, str, int, str]:
    """Validate ``checkpoint.json``; the file name must be a bare ``checkpoint-N.safetensors`` so a
    tampered index cannot point the server outside its folder."""
    if not isinstance(raw, dict):
        raise ValueError("not a JSON object")
    round, name, sha256, size, fingerprint = (raw.get(k) for k in ("round", "file", "sha256", "bytes", "fingerprint"))
    if not isinstance(round, int) or round < 0:
        raise ValueError(f"bad round {round!r}")
    if not isinstance(name, str) or not FILE_RE.fullmatch(name) or int(FILE_RE.fullmatch(name)[1]) != round:
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
        if verify and sha256_file(path) != sha256:
            raise ValueError("SHA-256 does not match the index")
    except FileNotFoundError:
        logger.warning("%s names %s, which is missing", index_path, path)
        return None
    except (OSError, ValueError) as e:
        logger.warning("ignoring checkpoint %s: %s", path, e)
        return None
    return CheckpointInfo(round=round, path=path, sha256=sha256, bytes=size, fingerprint=fingerprint)
