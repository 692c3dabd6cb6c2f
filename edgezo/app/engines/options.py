"""The options of ``edgezo simulate`` that choose where its virtual devices run.

They are gathered into one ``engine`` argument (None: in this process; a ``RaySettings``: as Ray
actors), so a command takes them with one decorator and one parameter.
"""

from __future__ import annotations

import functools

import click

from edgezo.app.engines.ray_engine import RaySettings

_OPTIONS = [
    click.option("--engine", "engine_name", type=click.Choice(["local", "ray"]), default="local", show_default=True,
                 help="Where the virtual devices run: local (this process) or ray (Ray actors, each holding a model "
                      "replica; the same final model bit for bit; needs pip install 'edgezo[ray]')."),
    click.option("--ray-address", help="With --engine ray: the Ray cluster to join (e.g. ray://head:10001). [default: "
                                       "start a local Ray]"),
    click.option("--ray-workers", type=int, default=2, show_default=True, help="With --engine ray: worker actors "
                                                                                 "(one model replica per backend each)."),
    click.option("--ray-cpus", type=float, default=1.0, show_default=True, help="With --engine ray: CPUs each worker "
                                                                                 "reserves (and its compute threads, "
                                                                                 "unless OMP_NUM_THREADS is set)."),
    click.option("--ray-memory-mb", type=float, help="With --engine ray: memory each worker reserves."),
    click.option("--ray-gpus", type=float, default=0.0, show_default=True, help="With --engine ray: GPUs each worker "
                                                                                 "reserves."),
]
_NAMES = ("engine_name", "ray_address", "ray_workers", "ray_cpus", "ray_memory_mb", "ray_gpus")


def engine_options(command):
    """Add the engine options to ``command``, which receives them as ``engine`` (None or RaySettings)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        name, address, workers, cpus, memory_mb, gpus = (kwargs.pop(n) for n in _NAMES)
        if name == "local" and (address or workers != 2 or cpus != 1.0 or memory_mb or gpus):
            raise click.UsageError("the --ray-* options need --engine ray")
        kwargs["engine"] = None if name == "local" else RaySettings(address, workers, cpus, memory_mb, gpus)
        return command(*args, **kwargs)

    for option in reversed(_OPTIONS):
        wrapper = option(wrapper)
    return wrapper
