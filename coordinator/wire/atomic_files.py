"""Atomic, durable file writes: write a hidden temporary beside the target, fsync it, ``os.replace``
it into place, fsync the folder. A crash leaves either the old file or the new one (and at most a
stray temporary that nothing reads); the checkpoint files and the coordinator's state use it."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

CHUNK = 1 << 20  # bytes read at a time when hashing


def fsync_dir(folder: Path) -> None:
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


def temp_path(folder: Path, name: str) -> Path:
    """A fresh hidden temporary beside the target, so ``os.replace`` stays on one filesystem."""
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
    os.close(fd)
    return Path(tmp)


def sync_and_hash(path: Path) -> tuple[str, int]:
    """fsync the finished temporary and hash exactly the bytes that will be renamed into place."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "r+b") as f:  # writable: fsync needs it on some platforms
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
        os.fsync(f.fileno())
    return digest.hexdigest(), size


def write_json_atomic(path: Path, payload: dict) -> None:
    tmp = temp_path(path.parent, path.name)
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
    fsync_dir(path.parent)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
