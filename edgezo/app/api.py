"""The Python API: what the CLI does, for notebooks and scripts.

    import edgezo

    result = edgezo.simulate(model="path/to/model", clients=3, rounds=3, out="runs/nb",
                             callbacks=[lambda r: print(r.round, r.train_loss)])
    result.fingerprint, result.final_accuracy, result.records, result.metrics_path

or, with the settings as objects (the same dataclasses the CLI fills):

    job = edgezo.SimulateJob(edgezo.JobConfig(clients=3, rounds=3), edgezo.SimulateSettings(train_samples=300))
    result = job.run()

Errors are ``edgezo.EdgezoError`` subclasses (``ConfigError`` for a bad option, ``OutputError``
for a folder that cannot be written or would be overwritten), never ``SystemExit``; nothing
changes matplotlib's global state. ``CoordinateJob`` and ``JoinJob`` are the federation's two
sides (``edgezo coordinate`` and ``edgezo join``).
"""

from __future__ import annotations

from pathlib import Path

from edgezo.app.jobs.common import Callback, JobResult
from edgezo.app.jobs.coordinate import CoordinateJob
from edgezo.app.jobs.join import JoinJob
from edgezo.app.jobs.simulate import SimulateJob
from edgezo.app.plot import accuracy_figure
from edgezo.app.settings import CoordinateSettings, JoinSettings, SimulateSettings
from edgezo.config import JobConfig
from edgezo.engine import RoundRecord
from edgezo.errors import ConfigError, EdgezoError, JobStopped, OutputError

__all__ = [
    "Callback", "ConfigError", "CoordinateJob", "CoordinateSettings", "EdgezoError", "JobConfig", "JobResult", "JobStopped",
    "JoinJob", "JoinSettings", "OutputError", "RoundRecord", "SimulateJob", "SimulateSettings", "accuracy_figure", "simulate",
]


def simulate(config: str | Path | None = None, *, callbacks=None, say=None, progress: bool = False, **options) -> JobResult:
    """Run ``edgezo simulate`` in this process: ``options`` are its options by their settings
    names (``clients=3``, ``train_samples=300``, ``aggregation="median"``, ``overwrite=True``...),
    over the TOML file ``config``; ``say`` gets the log lines (``print`` to see them)."""
    return SimulateJob.from_options(config, callbacks=callbacks, say=say, progress=progress, **options).run()
