"""A simulation as a library object: N virtual devices fine-tune a model in one process.

    job = SimulateJob(JobConfig(model="...", clients=3, rounds=3), SimulateSettings(train_samples=300))
    result = job.run()          # records, summary, output paths

``edgezo simulate`` is this object built from its options. Everything that can be checked
without the model (settings, backends, the output folder) is checked before the model loads;
``--resume`` continues a stopped run from its seed log and metrics to the same final model.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable

from tqdm.auto import tqdm

from edgezo import calibration as cal
from edgezo.app.engines.ray_engine import require_ray, start_engine
from edgezo.app.fleet import parse_fleet, plan_fleet
from edgezo.app.jobs.calibrating import calibrate, descent_of, reuse
from edgezo.app.jobs.common import Callback, JobResult, JobShell, calibrated_settings, callbacks_of, file_and_options, job_config, save_model
from edgezo.app.outputs import RunOutputs
from edgezo.app.runfolder import JOB_FILE, prepare_out, read_job, write_job
from edgezo.app.settings import SimulateSettings
from edgezo.backends.choice import BACKENDS, build_executor, check_device, is_installed, parse_backends, require, resolve_backend
from edgezo.backends.hf.shape import model_shape, typical_tokens
from edgezo.config import JobConfig, job_work
from edgezo.engine import RoundRecord
from edgezo.errors import ConfigError, JobStopped, OutputError
from edgezo.evaluate import make_evaluator
from edgezo.jobdata import device_shards, load_job_data, make_batcher
from edgezo.seedlog import SeedLog
from edgezo.simulation import Resume, SimulatedClock, SimulatedDevice, run_simulation
from edgezo.taskfile import TaskOptions, with_task_options

RUN_FLAGS = ("quiet", "overwrite", "resume", "device")  # how to run, not what: never compared on --resume


def _settings_record(settings: SimulateSettings) -> dict:
    return {k: v for k, v in asdict(settings).items() if k not in RUN_FLAGS}


@dataclass
class Placement:
    """Where the devices run: each device's executor and work (None: the job's), the simulated
    clock (with --devices), whether the devices use several replicas, and the summary's lines
    about them."""

    executors: list
    works: list
    clock: SimulatedClock | None
    mixed: bool
    extra: dict


def _quiet_transformers() -> None:
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


class SimulateJob:
    """A simulation job: ``JobConfig`` (the job), ``SimulateSettings`` (simulate's own options),
    per-round ``callbacks`` (``edgezo.Callback`` objects or functions of a ``RoundRecord``), and
    how to report: ``say`` gets the log's events (None: silent), ``progress`` adds a progress bar
    and the per-round lines (what ``--quiet`` leaves out)."""

    def __init__(self, config: JobConfig | None = None, settings: SimulateSettings | None = None, *,
                 callbacks: list[Callback | Callable] | Callback | Callable | None = None,
                 say: Callable[[str], None] | None = None, progress: bool = False, engine=None):
        self.config = (config if config is not None else JobConfig()).validate()
        self.settings = (settings if settings is not None else SimulateSettings()).validate()
        self.callbacks = callbacks_of(callbacks)
        self.say = say or (lambda msg: None)
        self.progress = progress
        self.engine = engine  # None: devices run here; an edgezo.app.engines.ray_engine.RaySettings: as Ray actors

    @classmethod
    def from_options(cls, config_file: str | Path | None = None, **options) -> "SimulateJob":
        """From option values as the CLI names them (``clients=3``, ``train_samples=300``,
        ``resume=True``, a task as ``train=``/``template=``/``labels=`` (``TaskOptions``)...), over
        a TOML file's; with ``resume``, the stopped run's settings
        (from its job.json) are the base, and a given option that disagrees with them is an error."""
        run_kw = {k: options.pop(k) for k in ("callbacks", "say", "progress", "engine") if k in options}

        job, sim, task = file_and_options(config_file, options, JobConfig, SimulateSettings, TaskOptions, prepare=calibrated_settings)
        job = with_task_options(job, TaskOptions(**task))  # --train/--template/...: the task as JSON text
        if sim.get("resume"):
            job, sim = _resumed(job, sim)
        return cls(job_config(job), SimulateSettings(**sim), **run_kw)

    # -- running ----------------------------------------------------------------------------
    def run(self) -> JobResult:
        """Run the job to its last round (or until a callback raises JobStopped); returns the
        records and the paths of what it wrote to ``config.out``. What needs neither data nor
        model is checked first, then the data, and only then the model loads."""
        cfg, s, say = self.config, self.settings, self.say
        _quiet_transformers()
        fleet = self._fleet()
        requested, torch_device = self._checked_backends()
        aggregation = s.aggregation_rule(cfg)
        if s.train_samples is not None and s.train_samples < cfg.clients:
            raise ConfigError(f"--train-samples {s.train_samples} is fewer than --clients {cfg.clients}")
        out = prepare_out(cfg.out, s.overwrite, s.resume)  # before the model loads
        data = load_job_data(cfg, s.train_samples, eval_seed=s.eval_seed)
        shards = device_shards(cfg, data.train)  # too few examples for the devices: before the model loads
        executors = BackendPool(cfg, data.task, say, device=s.device)
        ex, info = executors.get(_first_backend(requested, fleet is not None))
        calibration = self._calibrated(out, ex, info, data, executors, fleet)
        if calibration is not None and cfg.split != ex.split:  # --split auto moved block 2's start: the replica is built there
            executors = BackendPool(cfg, data.task, say, device=s.device)
            ex, info = executors.get(_first_backend(requested, fleet is not None))
        say(f"{info.name}: {ex.num_layers} layers, split at {ex.split}; trainable {cfg.trainable}: "
            f"{ex.trainable_numel(1):,} + {ex.trainable_numel(2):,} parameters (block 1 + block 2); "
            f"{len(data.train):,} train examples over {cfg.clients} devices, {len(data.dev)} validation")
        extra = {"aggregation": asdict(aggregation)} | ({} if calibration is None else {"calibration": calibration})
        placed = self._placed(ex, info, data, fleet, requested, executors, torch_device, extra)
        seedlog = SeedLog(out / "seedlog.jsonl")
        resume, outputs = self._outputs(out, seedlog, calibration)
        done = 0 if resume is None else resume.last["round"]
        bar = tqdm(total=cfg.rounds * cfg.clients, initial=done * cfg.clients, desc="devices x rounds", unit="dev",
                   disable=not self.progress, dynamic_ncols=True)
        shell = JobShell(outputs, make_evaluator(ex, data.task, data.dev, not self.progress), cfg.rounds, self.callbacks,
                         say, self.progress)
        started = time.perf_counter()
        try:
            self._simulate(shell, seedlog, data, shards, ex, executors, placed, aggregation, resume, lambda: bar.update(1))
        except JobStopped as e:
            say(f"stopped after round {outputs.records[-1]['round']}: {e}; continue with --resume")
            return shell.stopped()
        finally:
            bar.close()
        extra = self._finished_extra(placed, executors, torch_device)
        return shell.finish(cfg, ex, info, started, lambda folder: save_model(cfg, data.task, ex, folder, info), extra)

    def _checked_backends(self):
        """The --backend list and the torch device, checked before any data or model is read: a
        missing extra, an unusable --device (cuda without a GPU) or a missing Ray fail in one line."""
        from edgezo.backends.torch.device import resolve_device

        s = self.settings
        requested = parse_backends(s.backend)
        for backend in set(requested) - {"auto"}:
            require(backend)
            check_device(backend, s.device)
        torch_device = resolve_device(s.device)
        if self.engine is not None:
            require_ray()
        return requested, torch_device

    def _placed(self, ex, info, data, fleet, requested, executors: "BackendPool", torch_device, extra: dict) -> "Placement":
        """Each device's executor and work (planned with --devices, else the job's) and what the
        summary says about them, added to ``extra``."""
        cfg, s, say = self.config, self.settings, self.say
        works, clock = [None] * cfg.clients, None
        if fleet is not None:
            calibration = extra.get("calibration")
            descent = descent_of(calibration, cfg.variant) if calibration is not None and s.p2_auto else None
            plans, clock = _plan_fleet(cfg, ex, info, data, fleet, s, say, descent)
            works = [p.work for p in plans]
            extra |= {"planned": s.plan, "round_seconds": s.round_seconds,
                      "devices": [{"device": p.device, "backend": p.backend, "k": p.work.k, "p1": p.work.p1, "p2": p.work.p2,
                                   "batch": p.work.batch, "predicted_round_s": round(p.round_s, 3)} for p in plans]}
            device_backends = [_planned_backend(p.backend, requested, d, say) for d, p in enumerate(plans)]
        else:
            device_backends = [requested[d % len(requested)] for d in range(cfg.clients)]
        device_executors = [executors.get(b)[0] for b in device_backends]
        mixed = len({id(e) for e in device_executors} | {id(ex)}) > 1
        if any(e.backend == "torch" for e in executors.all()):
            from edgezo.backends.torch.device import describe

            extra["device"] = describe(torch_device)  # where the torch replica ran (its rounding depends on it)
        if mixed:
            extra["device_backends"] = [e.backend for e in device_executors]
            say("devices' backends: " + ", ".join(f"{d}:{e.backend}" for d, e in enumerate(device_executors)))
        return Placement(device_executors, works, clock, mixed, extra)

    def _outputs(self, out: Path, seedlog: SeedLog, calibration: dict | None = None):
        """(where a resumed run continues, or None; the output folder's metrics, opened): a new
        run starts its seed log afresh and records its settings (and its calibration, which a
        resumed run reuses) in job.json."""
        cfg, s = self.config, self.settings
        resume = self._resume_point(out, seedlog) if s.resume else None
        outputs = RunOutputs(out, resume_round=None if resume is None else resume.last["round"])
        if resume is None:
            seedlog.path.unlink(missing_ok=True)
            write_job(out, {"job": cfg.to_dict(), "simulate": _settings_record(s)}
                      | ({} if calibration is None else {"calibration": calibration}))
        else:
            self.say(f"resuming after round {resume.last['round']} of {cfg.rounds}")
        return resume, outputs

    def _calibrated(self, out: Path, ex, info, data, executors: "BackendPool", fleet) -> dict | None:
        """--p2 auto / --split auto: the calibration's record, with the job's P2 and split set to
        its choice, ranked by descent per second on the slowest --devices profile (per FLOP
        without --devices: virtual devices have no profile); a resumed run takes the record from
        its job.json (the choice is never re-made, so the resumed rounds are those of the
        uninterrupted run)."""
        s, cfg = self.settings, self.config
        if not (s.p2_auto or s.split_auto):
            return None
        if s.resume:
            record = read_job(out).get("calibration")
            if record is None:
                raise OutputError(f"--resume: {out / JOB_FILE} records no calibration, so the stopped run did not use "
                                  "--p2/--split auto; drop auto to continue it")
            return reuse(cfg, record, self.say, f"{out / JOB_FILE}")
        shape = model_shape(ex, ex.model.config, info.name, info.digest)
        tokens = typical_tokens(ex, data.task, data.train, cfg.batch_size, cfg.seed)
        profile = None if fleet is None else cal.slowest_profile([p for _, p in fleet], shape, tokens, job_work(cfg))
        return calibrate(cfg, ex, shape, tokens, executors.batcher(ex, data.train), len(data.train),
                         s.p2_auto, s.split_auto, self.say, profile)

    def _simulate(self, shell: JobShell, seedlog: SeedLog, data, shards, ex, executors: "BackendPool", placed: "Placement",
                  aggregation, resume, on_device: Callable[[], None]) -> None:
        """The rounds: every device in this process, or (with an engine) their rounds computed
        elsewhere; each round written, then logged (metrics first: a crash between the two
        leaves a row the resumed run redoes), then reported."""
        cfg = self.config

        def on_round(record: RoundRecord, entry) -> None:
            shell.write(record)
            if entry is not None:
                seedlog.append(entry)
            shell.report(record)

        devices = [SimulatedDevice(shard, e, executors.batcher(e, data.train), work)
                   for shard, e, work in zip(shards, placed.executors, placed.works)]
        remote = None if self.engine is None else start_engine(self.engine, cfg, data.train, shards, placed.executors,
                                                               placed.works, executors.all(), resume)
        elsewhere = {} if remote is None else {"round_fn": remote.round, "follow": remote.follow}  # its devices' rounds
        try:
            run_simulation(cfg, devices, ex, shell.evaluator, aggregation, placed.clock,
                           on_round=on_round, on_device=on_device, resume=resume, **elsewhere)
        finally:
            if remote is not None:
                remote.close()

    def _finished_extra(self, placed: "Placement", executors: "BackendPool", torch_device) -> dict:
        """The summary's job-specific part: the simulated time, the GPU's peak memory, and each
        replica's fingerprint when the devices ran on several backends."""
        from edgezo.backends.torch.device import peak_memory_mib

        extra = placed.extra
        if placed.clock is not None:
            extra["sim_time_s"] = round(placed.clock.now, 3)
        if "device" in extra and (peak := peak_memory_mib(torch_device)) is not None:
            extra["peak_gpu_mib"] = peak  # the GPU's own peak: the process's RSS does not see it
        if placed.mixed:
            extra["replica_fingerprints"] = {e.backend: e.fingerprint() for e in executors.all()}
        return extra

    def _fleet(self):
        """The --devices fleet (which sets the number of clients), or None."""
        s, cfg = self.settings, self.config
        if not s.devices:
            return None

        fleet = parse_fleet(s.devices)
        if cfg.clients != len(fleet):
            if cfg.clients != JobConfig.clients:
                raise ConfigError(f"--clients {cfg.clients} disagrees with --devices, which lists {len(fleet)} devices; drop --clients")
            cfg.clients = len(fleet)
        return fleet

    def _resume_point(self, out: Path, seedlog: SeedLog):
        entries = list(seedlog.entries())
        rows = RunOutputs.read_rows(out / "metrics.jsonl")
        kept = [r for r in rows if r.get("round", -1) <= len(entries)]
        if not kept:
            raise OutputError(f"--resume: {out} has no completed round to continue from; start it again with --overwrite")
        # metrics are written before the seed-log entry: a crash between them leaves a row whose
        # update never reached the log, which the resumed run redoes.
        return Resume(entries[: kept[-1]["round"]], kept[-1])


def _resumed(job: dict, sim: dict) -> tuple[dict, dict]:
    """--resume: the stopped run's settings, with the given ones checked against them."""
    out = Path(job.get("out", JobConfig.out))

    if not (out / JOB_FILE).is_file():
        raise ConfigError(f"--resume: {out} holds no stopped run ({JOB_FILE} missing); run without --resume to start one")
    stored = read_job(out)
    base_job, base_sim = stored.get("job", {}), stored.get("simulate", {})
    differ = [f"{k} ({base_job.get(k)!r} there, {v!r} here)" for k, v in job.items() if k in base_job and base_job[k] != v]
    differ += [f"{k} ({base_sim.get(k)!r} there, {v!r} here)" for k, v in sim.items()
               if k not in RUN_FLAGS and k in base_sim and base_sim[k] != v]
    if differ:
        raise ConfigError(f"--resume: the stopped run in {out} was started with other settings: {'; '.join(differ)}; "
                          "drop those options to continue it, or start a new run in another --out")
    known_job = {f.name for f in fields(JobConfig)}
    known_sim = {f.name for f in fields(SimulateSettings)}
    return ({**{k: v for k, v in base_job.items() if k in known_job}, **job},
            {**{k: v for k, v in base_sim.items() if k in known_sim}, **sim})


def _plan_fleet(cfg, ex, info, data, fleet, s: SimulateSettings, say, descent=None):
    """Each simulated device's work and the simulated clock that times it (with --plan and
    --p2 auto, each device's P2 from the calibration's ``descent`` table and its own profile)."""
    shape = model_shape(ex, ex.model.config, info.name, info.digest)
    tokens = typical_tokens(ex, data.task, data.train, cfg.batch_size, cfg.seed)
    plans = plan_fleet(fleet, shape, tokens, job_work(cfg), s.round_seconds, s.plan, s.max_p1, s.max_p2, descent)
    clock = SimulatedClock([p.round_s for p in plans], [prof.network_latency_ms / 1e3 for _, prof in fleet], s.round_seconds)
    say(f"{'planned' if s.plan else 'fixed'} work per device{' (P2 by descent per second: --p2 auto)' if s.plan and descent else ''} ({tokens} tokens per sequence, deadline "
        f"{f'{s.round_seconds:g} s' if s.round_seconds else 'none'}):")
    for d, p in enumerate(plans):
        say("  " + p.describe() + ("" if clock.included(d) else "  -- misses the deadline: left out of every round"))
    return plans, clock


class BackendPool:
    """One executor (one model replica) per backend the job uses, built on first use."""

    def __init__(self, cfg, task, say, device: str = "cpu"):
        self.cfg, self.task, self.say = cfg, task, say
        self.device = device  # --device: where the torch replica runs
        self._built: dict[str, tuple] = {}
        self._batchers: dict[int, object] = {}
        self._auto: str | None = None

    def get(self, backend: str):
        if backend == "auto":
            if self._auto is None:
                choice = resolve_backend("auto", self.cfg.model)
                self.say(f"backend {choice.backend} ({choice.reason})")
                self._auto = choice.backend
            backend = self._auto
        if backend not in self._built:
            where = ""
            if backend == "torch":
                from edgezo.backends.torch.device import describe, resolve_device

                where = f" ({describe(resolve_device(self.device))})"
            self.say(f"loading model {self.cfg.model or '(default) SmolLM2-135M-Instruct'} on the {backend} backend{where} ...")
            self._built[backend] = build_executor(backend, self.cfg, self.task, self.device)
        return self._built[backend]

    def all(self) -> list:
        return [ex for ex, _ in self._built.values()]

    def batcher(self, ex, examples):
        """The executor's make_batch over the training examples (one per executor: prompts once)."""
        if id(ex) not in self._batchers:
            self._batchers[id(ex)] = make_batcher(ex, self.task, examples)
        return self._batchers[id(ex)]


def _first_backend(requested: list[str], planned: bool) -> str:
    """The backend whose replica is evaluated and saved: the first listed, or torch with
    --devices (the planner reads the model's shape from the torch executor)."""
    return "torch" if planned else requested[0]


def _planned_backend(planned: str, requested: list[str], device: int, say) -> str:
    """A --devices device runs its planned backend when --backend is auto and that backend is
    installed here (else torch, which computes the same model); otherwise the listed one."""
    if requested != ["auto"]:
        return requested[device % len(requested)]
    if planned in BACKENDS and is_installed(planned):
        return planned
    say(f"device {device}: its planned backend {planned} is not installed here; simulating it on torch")
    return "torch"
