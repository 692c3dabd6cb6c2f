"""The coordinator's state folder: ``job.json`` (what the job is), the append-only, fsync'd and
hash-chained ``seedlog.jsonl`` and ``checkpoints/``. It refuses to resume a different job, and its
seed log is verified on reading (``edgezo.seedlog``): a log that was edited is one clear error."""

from __future__ import annotations

import json
from pathlib import Path

from edgezo.config import JobConfig
from edgezo.errors import EdgezoError
from edgezo.seedlog import LogEntry, SeedLog

from edgezo.coordinator.wire import messages as m
from edgezo.coordinator.wire.atomic_files import write_json_atomic

# Keys of JobConfig that only matter on the coordinator's machine: they are not announced, and
# a resumed job may change them.
LOCAL_KEYS = ("model", "data", "out", "eval_every", "eval_samples", "clients")


def shared_job(cfg: JobConfig) -> dict:
    """The job settings every device gets in the announcement."""
    return {k: v for k, v in cfg.to_dict().items() if k not in LOCAL_KEYS}


class StateFolder:
    """``job.json`` + ``seedlog.jsonl`` + ``checkpoints/``; refuses to resume a different job."""

    def __init__(self, path: Path, job: dict, model: m.ModelRef, run: str):
        self.path = Path(path)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise EdgezoError(f"cannot create the state folder {self.path} ({e.strerror or e}); pass a writable --state") from None
        self.seedlog = SeedLog(self.path / "seedlog.jsonl")
        self.checkpoints = self.path / "checkpoints"
        identity = {"run": run, "job": job, "model_digest": model.digest}
        job_file = self.path / "job.json"
        if job_file.exists():
            try:
                old = json.loads(job_file.read_text(encoding="utf-8"))
            except ValueError as e:
                raise EdgezoError(f"{job_file} is corrupt ({e}); delete the state folder to start over") from e
            if old != identity:
                diff = sorted(k for k in set(old.get("job", {})) | set(job) if old.get("job", {}).get(k) != job.get(k))
                what = f"settings {diff}" if diff else "run name or model"
                raise EdgezoError(
                    f"state folder {self.path} belongs to another job (different {what}); "
                    "pass another --state, or the same settings to resume it"
                )
        else:
            write_json_atomic(job_file, identity)

    def entries(self) -> list[LogEntry]:
        """The logged rounds, hash chain checked, numbered 1, 2, ... without gaps."""
        entries = list(self.seedlog.entries())
        for k, e in enumerate(entries, 1):
            if e.round != k:
                raise EdgezoError(f"seed log {self.seedlog.path} skips from round {k - 1} to {e.round}; it is corrupt")
        return entries
