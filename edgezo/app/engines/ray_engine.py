"""Virtual devices as Ray actors: ``edgezo simulate --engine ray``.

Why this shape: a device's round depends only on (run seed, round, device index), its shard and
the global model, so the only state that has to move is the round's scalars (up) and the round's
update (down). Each actor (:class:`DeviceWorker`) holds one model replica per backend its devices
use, built from the same job settings as the driver's; it computes its devices' rounds with
``edgezo.engine.device_round``, as the in-process loop and a real device do, and follows the
global model by applying each round's update, exactly as a real device does. The driver keeps the round engine, the
aggregation and the seed log, so the job is the in-process job: the same final fingerprint, bit for
bit, and the same metrics except wall time (given the same thread count per replica: a matmul's
last bits depend on it, so the actors run with the driver's ``OMP_NUM_THREADS``).

Results are collected per device index and handed back in index order, because the aggregation
sums floats and a sum's bits depend on its order. A worker that dies (its process killed, its node
lost) is replaced by a new actor that rebuilds the base model and replays every update so far
(``base + replay(seed log)``, the invariant every device relies on), and the devices whose results
it still owed are re-run there; results already returned are kept (they are deterministic).

Ray is an optional dependency (``pip install 'edgezo[ray]'``): nothing here imports it before
:meth:`RayEngine.start`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from edgezo.backends.choice import build_executor
from edgezo.config import JobConfig, job_work, probe_config
from edgezo.costmodel import Work
from edgezo.engine import DeviceTurn, device_round
from edgezo.errors import EdgezoError
from edgezo.estimators import LocalRound
from edgezo.jobdata import make_batcher
from edgezo.methods import Method
from edgezo.methods.base import Update
from edgezo.simulation import Results, RoundStart
from edgezo.tasks import get_task

RAY_EXTRA = "pip install 'edgezo[ray]' (Ray 2.60)"


def require_ray():
    """The ``ray`` module, or one line naming the extra that provides it."""
    try:
        import ray
    except ImportError:
        raise EdgezoError(f"--engine ray needs Ray, which is not installed: {RAY_EXTRA}; or drop --engine ray") from None
    return ray


@dataclass(frozen=True)
class RaySettings:
    """Where the actors run and what each one reserves.

    ``address``: an existing cluster (``ray://host:10001`` or ``host:6379``; None starts a local
    Ray on this machine). ``workers``: actors (each one model replica per backend). ``cpus``,
    ``memory_mb``, ``gpus``: what each actor reserves from Ray's scheduler. ``threads``: the
    compute threads of each replica (None: the driver's ``OMP_NUM_THREADS``, else ``cpus``).
    ``replacements``: how many dead workers a job may replace before it gives up.
    """

    address: str | None = None
    workers: int = 2
    cpus: float = 1.0
    memory_mb: float | None = None
    gpus: float = 0.0
    threads: int | None = None
    replacements: int = 8

    def __post_init__(self):
        if self.workers < 1:
            raise EdgezoError(f"--ray-workers must be at least 1 (got {self.workers})")
        if not self.cpus > 0:
            raise EdgezoError(f"--ray-cpus must be positive (got {self.cpus})")
        if self.gpus < 0 or (self.memory_mb is not None and not self.memory_mb > 0):
            raise EdgezoError("--ray-gpus must be >= 0 and --ray-memory-mb positive")

    def replica_threads(self) -> int:
        if self.threads is not None:
            return self.threads
        env = os.environ.get("OMP_NUM_THREADS", "")
        return int(env) if env.isdigit() and int(env) > 0 else max(1, int(self.cpus))


@dataclass(frozen=True)
class RemoteDevice:
    """What a worker needs to compute one virtual device's rounds (the picklable half of a
    ``SimulatedDevice``: its executor and batcher are rebuilt on the worker)."""

    index: int
    shard: tuple[int, ...]
    backend: str
    work: Work


class DeviceWorker:
    """A Ray actor's state: one replica per backend, the devices given to it, the round's start.

    Written as a plain class (``ray.remote`` wraps it at start) so it imports without Ray.
    """

    def __init__(self, cfg: JobConfig, method: Method, train: list, devices: Sequence[RemoteDevice], threads: int,
                 history: Sequence[Update] = ()):
        _limit_threads(threads)

        task = get_task(cfg.task)
        self.cfg = cfg
        self.method = method  # resolved once, by the driver
        self.devices = {d.index: d for d in devices}
        self.replicas: dict[str, Any] = {}
        self.batchers: dict[str, Callable] = {}
        for backend in sorted({d.backend for d in devices}):
            ex, _ = build_executor(backend, cfg, task)
            self.replicas[backend] = ex
            self.batchers[backend] = make_batcher(ex, task, train)
        for update in history:  # a replacement catches up: base + replay(seed log)
            for ex in self.replicas.values():
                ex.apply_update(update)
        self._round: int | None = None
        self._start: dict[str, Any] = {}

    def ready(self) -> tuple[int, dict[str, str]]:
        """This worker's process id and its replicas' fingerprints (the driver checks them)."""
        return os.getpid(), self.fingerprints()

    def fingerprints(self) -> dict[str, str]:
        return {b: ex.fingerprint() for b, ex in self.replicas.items()}

    def run(self, rnd: int, lr: float, index: int) -> tuple[int, LocalRound, float]:
        """Device ``index``'s round ``rnd``, from the round's starting weights."""
        if self._round != rnd:
            self._start = {b: ex.snapshot() for b, ex in self.replicas.items()}
            self._round = rnd
        device = self.devices[index]
        ex = self.replicas[device.backend]
        ex.restore(self._start[device.backend])
        turn = DeviceTurn(index, index + 1, device.work.k, device.work.batch,
                          probe_config(self.cfg, device.work.p1, device.work.p2))
        result = device_round(self.method, ex, self.batchers[device.backend], device.shard, turn, self.cfg.seed, rnd, lr)
        return index, result, float(result.examples)

    def follow(self, rnd: int, update: Update) -> None:
        """Move every replica to the new global model, as the driver moves its own (``apply_reviewed``)."""
        for backend, ex in self.replicas.items():
            if self._round == rnd:
                ex.restore(self._start[backend])
            ex.apply_update(update)
        self._round, self._start = None, {}


def _limit_threads(threads: int) -> None:
    """Pin the replica's compute threads (the actor's environment says so too; torch, once imported,
    reads only its own setting)."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[name] = str(threads)
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(threads)


class RayEngine:
    """The driver's side: places devices on workers, gathers their results, replaces dead workers.

    ``run_simulation(..., round_fn=engine.round, follow=engine.follow)`` has the devices' rounds
    computed here and tells the workers each global update.
    """

    def __init__(self, ray, settings: RaySettings, cfg: JobConfig, method: Method, train_ref, devices: list[RemoteDevice],
                 started_ray: bool, history: Sequence[Update] = ()):
        self.ray, self.settings, self.cfg, self.method = ray, settings, cfg, method
        self.devices = devices
        self._train_ref, self._started_ray = train_ref, started_ray
        self._actor_class = ray.remote(DeviceWorker)
        self.history: list[Update] = list(history)
        self.replaced = 0
        self.workers: list[Any] = [None] * settings.workers
        self.pids: list[int] = [0] * settings.workers
        self.fingerprints: list[dict[str, str]] = [{}] * settings.workers
        for slot in range(settings.workers):
            self.workers[slot] = self._spawn(slot)
        for slot in range(settings.workers):
            self._await_ready(slot)

    # -- setup ----------------------------------------------------------------------------------
    @classmethod
    def start(cls, settings: RaySettings, cfg: JobConfig, train: list, shards: Sequence[Sequence[int]],
              backends: Sequence[str], works: Sequence[Work | None],
              driver_replicas: dict[str, Any] | None = None, history: Sequence[Update] = ()) -> "RayEngine":
        """Connect to (or start) Ray, start the workers and check that each replica begins on the
        driver's model (``driver_replicas``: backend -> the driver's executor of that backend).
        ``history``: the updates of rounds already done (a resumed job), replayed on every worker."""
        ray = require_ray()
        method = cfg.resolved_method
        if method.backprop or method.moves_model:
            raise EdgezoError(f"--engine ray runs the methods whose rounds move scalars only; {cfg.method} moves full "
                              "model deltas: run it without --engine ray")
        devices = [RemoteDevice(d, tuple(int(i) for i in shard), backend, work or job_work(cfg))
                   for d, (shard, backend, work) in enumerate(zip(shards, backends, works))]
        started = False
        if not ray.is_initialized():
            started = True
            _init_ray(ray, settings)
        engine = cls(ray, settings, cfg, method, ray.put(list(train)), devices, started, history)
        if driver_replicas:
            engine.check({b: ex.fingerprint() for b, ex in driver_replicas.items()}, "the base model")
        return engine

    def _assigned(self, slot: int) -> list[RemoteDevice]:
        return [d for d in self.devices if d.index % self.settings.workers == slot]

    def _spawn(self, slot: int):
        s = self.settings
        threads = s.replica_threads()
        options = {"num_cpus": s.cpus, "num_gpus": s.gpus, "max_restarts": 0, "max_task_retries": 0,
                   "runtime_env": {"env_vars": {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
                                                "TOKENIZERS_PARALLELISM": "false"}}}
        if s.memory_mb is not None:
            options["memory"] = int(s.memory_mb * 2**20)
        devices = self._assigned(slot) or self.devices[:1]  # an idle worker still holds a replica
        return self._actor_class.options(**options).remote(self.cfg, self.method, self._train_ref, devices, threads,
                                                           list(self.history))

    def _await_ready(self, slot: int) -> None:
        try:
            self.pids[slot], self.fingerprints[slot] = self.ray.get(self.workers[slot].ready.remote())
        except self.ray.exceptions.RayActorError as exc:
            raise EdgezoError(f"Ray worker {slot} failed while loading the model ({_first_line(exc)}); "
                              "check --ray-memory-mb and that every Ray node has edgezo and the model") from None

    def check(self, expected: dict[str, str], when: str) -> None:
        """Every worker's replicas hold the driver's model (fingerprints per backend), or one line."""
        for slot, prints in enumerate(self.fingerprints):
            for backend, fp in prints.items():
                if backend in expected and fp != expected[backend]:
                    raise EdgezoError(f"Ray worker {slot}'s {backend} replica differs from the driver's at {when} "
                                      f"({fp[:12]} != {expected[backend][:12]}): every Ray node needs the same edgezo, "
                                      "backend versions and model files")

    # -- rounds ---------------------------------------------------------------------------------
    def round(self, start: RoundStart, on_device: Callable[[], None]) -> Results:
        """The included devices' results of the round (a ``run_simulation`` ``round_fn``), in device order."""
        ray, rnd, lr, included = self.ray, start.rnd, start.lr, start.included
        done: dict[int, tuple[LocalRound, float]] = {}
        pending: dict[Any, tuple[int, int]] = {}  # object ref -> (worker slot, device index)

        def submit(slot: int, indices: Sequence[int]) -> None:
            for index in indices:
                pending[self.workers[slot].run.remote(rnd, lr, index)] = (slot, index)

        for slot in range(self.settings.workers):
            submit(slot, [i for i in included if i % self.settings.workers == slot])
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            slot, index = pending.pop(ready[0])
            try:
                _, result, weight = ray.get(ready[0])
            except ray.exceptions.RayActorError as exc:
                lost = [i for ref, (s, i) in list(pending.items()) if s == slot] + [index]
                for ref in [ref for ref, (s, _) in pending.items() if s == slot]:
                    del pending[ref]
                self._replace(slot, exc)
                submit(slot, sorted(i for i in lost if i not in done))
                continue
            done[index] = (result, weight)
            on_device()
        return [done[i] for i in sorted(done)]

    def follow(self, rnd: int, update: Update | None) -> None:
        """Send the round's update to every worker (they apply it before their next round)."""
        if update is None:
            return
        self.history.append(update)
        for worker in self.workers:
            worker.follow.remote(rnd, update)

    def _replace(self, slot: int, exc: BaseException) -> None:
        """A worker died: start another in its slot, caught up by replaying every update so far."""
        self.replaced += 1
        if self.replaced > self.settings.replacements:
            raise EdgezoError(f"{self.replaced} Ray workers died in this job (last: {_first_line(exc)}); "
                              "check the Ray nodes' memory and logs") from None
        try:
            self.ray.kill(self.workers[slot])
        except Exception:  # noqa: BLE001 - it is dead already
            pass
        self.workers[slot] = self._spawn(slot)
        self._await_ready(slot)

    def close(self) -> None:
        """Stop the workers, and the local Ray if this engine started it."""
        for worker in self.workers:
            try:
                self.ray.kill(worker)
            except Exception:  # noqa: BLE001 - already gone
                pass
        if self._started_ray:
            self.ray.shutdown()


def start_engine(settings: RaySettings | None, cfg: JobConfig, train: list, shards, device_executors: Sequence[Any],
                 works, replicas: Sequence[Any], resume=None) -> RayEngine | None:
    """The engine a simulation job asked for (None: its devices run in its own process), started on
    the job's devices and checked against the driver's replicas; a resumed job's workers replay its
    seed log first."""
    if settings is None:
        return None
    history = [] if resume is None else [entry.update for entry in resume.entries]
    return RayEngine.start(settings, cfg, train, shards, [e.backend for e in device_executors], works,
                           {e.backend: e for e in replicas} if resume is None else None, history)


def _init_ray(ray, settings: RaySettings) -> None:
    """Join ``settings.address``, or start a local Ray sized for the workers asked for."""
    import logging

    kwargs = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING,
              "configure_logging": True}
    try:
        if settings.address:
            ray.init(address=settings.address, **kwargs)
        else:
            cpus = max(os.cpu_count() or 1, int(settings.workers * settings.cpus + 0.999))
            ray.init(num_cpus=cpus, num_gpus=None if settings.gpus else 0, object_store_memory=256 * 2**20, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {settings.address}" if settings.address else "a local Ray"
        raise EdgezoError(f"cannot start {where} ({_first_line(exc)}); check --ray-address, or leave it out to start "
                          "a local Ray") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
