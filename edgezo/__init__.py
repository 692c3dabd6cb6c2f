"""edgezo: federated fine-tuning of language models on edge devices with FedSPZO.

The core (this package) never touches framework tensors: it derives perturbation keys,
runs the estimators against an executor protocol, aggregates scalars and keeps the seed log.
Executors live in ``edgezo.backends``. The Python API (``edgezo.simulate``, ``edgezo.SimulateJob``,
``edgezo.CoordinateJob``, ``edgezo.JoinJob`` and their settings) is ``edgezo.app.api``, importable
from here; it is loaded on first use, so ``import edgezo`` stays light.
"""

__version__ = "0.1.0"

_API = (
    "Callback", "ConfigError", "CoordinateJob", "CoordinateSettings", "EdgezoError", "JobConfig", "JobResult", "JobStopped",
    "JoinJob", "JoinSettings", "OutputError", "RoundRecord", "SimulateJob", "SimulateSettings", "accuracy_figure", "simulate",
)
__all__ = ["__version__", *_API]


def __getattr__(name):
    if name in _API:
        from edgezo.app import api

        return getattr(api, name)
    raise AttributeError(f"module 'edgezo' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_API])
