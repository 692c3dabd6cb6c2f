"""Output and state folders, checked before any work: a folder that cannot be created or written
is one clear line before the model loads (not a traceback 8-50 s later), and a folder holding a
previous run is never silently overwritten.

A run folder is recognised by the files a job writes (``RUN_FILES``); other files in it (a
benchmark's own log, a spec) are not a run and are left alone.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import uuid
from pathlib import Path

from edgezo.errors import OutputError

RUN_FILES = ("metrics.jsonl", "summary.json", "seedlog.jsonl", "job.json", "accuracy_vs_flops.png", "model", "state")
JOB_FILE = "job.json"  # what a simulation was started with: --resume checks and reuses it


def writable_folder(path: str | Path, option: str) -> Path:
    """Create ``path`` (and its parents) and prove it writable, or raise one OutputError line
    naming ``option``, the folder and what to do."""
    p = Path(path)
    blocker = next((q for q in [p, *p.parents] if q.exists() and not q.is_dir()), None)
    if blocker is not None:
        raise OutputError(f"{option} {p}: {blocker} is a file, not a folder; pass another {option}")
    try:
        p.mkdir(parents=True, exist_ok=True)
        probe = p / f".edgezo-write-test-{uuid.uuid4().hex}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        why = {errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
               errno.EPERM: "permission denied", errno.ENOSPC: "no space left on the device"}.get(e.errno, e.strerror or str(e))
        raise OutputError(f"{option} {p} cannot be written ({why}); pass a folder you can write to") from None
    return p


def previous_run(out: Path) -> list[str]:
    """The run files present in ``out`` (empty: no previous run there)."""
    return [name for name in RUN_FILES if (out / name).exists()]


def prepare_out(out: str | Path, overwrite: bool, resume: bool = False, option: str = "--out") -> Path:
    """Check ``out`` before the job starts: writable; holding no previous run unless ``resume``
    (which needs one) or ``overwrite`` (which removes its run files, so no stale summary or model
    is left beside new metrics)."""
    p = writable_folder(out, option)
    found = previous_run(p)
    if resume:
        if not (p / JOB_FILE).is_file():
            raise OutputError(f"--resume: {p} holds no stopped run ({JOB_FILE} missing); run without --resume to start one")
    elif found and not overwrite:
        raise OutputError(f"{option} {p} already holds a run ({', '.join(found)}); pass --overwrite to replace it"
                          + (", --resume to continue it" if (p / JOB_FILE).is_file() else "") + f", or another {option}")
    elif found:
        for name in found:
            target = p / name
            shutil.rmtree(target) if target.is_dir() and not target.is_symlink() else target.unlink()
    return p


def write_job(out: Path, job: dict) -> None:
    """``job.json``, atomically: what --resume must find again."""
    tmp = out / f"{JOB_FILE}.tmp"
    tmp.write_text(json.dumps(job, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, out / JOB_FILE)


def read_job(out: Path) -> dict:
    path = out / JOB_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise OutputError(f"--resume: {path} cannot be read ({e}); start a new run with --overwrite") from None
