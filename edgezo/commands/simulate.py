"""`edgezo simulate`: N virtual devices fine-tune a model together in one process."""

from __future__ import annotations

import time
from dataclasses import asdict

import click
from tqdm.auto import tqdm

from edgezo.commands.options import AGGREGATION_OPTIONS, JOB_OPTIONS, PLAN_CAP_OPTIONS, TRAIN_SAMPLES, aggregation_for, apply
from edgezo.config import build_config, load_toml
from edgezo.engine import RoundRecord
from edgezo.errors import EdgezoError
from edgezo.evaluate import make_evaluator
from edgezo.jobdata import device_shards, load_job_data, make_batcher
from edgezo.outputs import RunOutputs, round_line
from edgezo.seedlog import SeedLog
from edgezo.simulation import SimulatedDevice, run_simulation


@click.command(context_settings={"show_default": True})
@apply(JOB_OPTIONS + [TRAIN_SAMPLES] + AGGREGATION_OPTIONS)
@click.option("--devices", "devices_spec", help="Heterogeneous devices from profiles: NAME:COUNT,... (measured or reference names, or files) or a TOML file of [[devices]] profile/count; sets --clients. Each device's round time is simulated from its profile.")
@click.option("--round-seconds", type=float, help="Round deadline in simulated seconds (with --devices): devices that cannot answer in time are left out of the round; the planning budget of --plan.")
@click.option("--plan", is_flag=True, help="Give each device of --devices its own K, P1, P2 and batch from its profile and --round-seconds (otherwise everyone does the job's).")
@apply(PLAN_CAP_OPTIONS)
@click.option("--backend", "backend_spec", default="auto", help="Executor of the devices: auto, torch, mlx or int8, or a comma-separated list given to the devices in turn (torch,mlx,int8: a mixed-backend job). auto: torch here (mlx on Apple silicon); with --devices, each device's planned backend when it is installed.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def simulate(config_file, train_samples, rule, trim, clip, devices_spec, round_seconds, plan, max_p1, max_p2, backend_spec, quiet, **options):
    """Fine-tune a model with N virtual devices in one process.

    Evaluates before training (round 0) and after the last round, and writes to --out:
    metrics.jsonl (one JSON object per round), summary.json (settings, accuracy, fingerprint of
    the final global model), seedlog.jsonl (the global model = base + replay of this log),
    accuracy_vs_flops.png and model/ (safetensors, loadable with transformers' from_pretrained).

    With --devices, metrics also carry sim_time_s, the simulated wall clock of those devices.

    Examples: edgezo simulate --task sst2 --clients 4 --rounds 30 --out runs/sst2;
    edgezo simulate --devices pi5:2,laptop-x86:2 --round-seconds 60 --plan;
    edgezo simulate --backend torch,mlx,int8 --clients 3 (one device per backend)

    Accuracy is that of the first listed backend's replica (torch's with --devices); every
    replica applies the same global updates.
    """
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    fleet = None
    if devices_spec:
        from edgezo.fleet import parse_fleet

        fleet = parse_fleet(devices_spec)
        if options.get("clients") is not None and options["clients"] != len(fleet):
            raise EdgezoError(f"--clients {options['clients']} disagrees with --devices, which lists {len(fleet)} devices; drop --clients")
        options["clients"] = len(fleet)
        if plan and round_seconds is None:
            raise EdgezoError("--plan needs a round budget: pass --round-seconds")
        if round_seconds is not None and not round_seconds > 0:
            raise EdgezoError(f"--round-seconds must be positive (got {round_seconds})")
    elif plan or round_seconds is not None:
        raise EdgezoError("--plan and --round-seconds simulate heterogeneous devices: give them with --devices NAME:COUNT,...")
    from edgezo.backends.choice import parse_backends, require

    requested = parse_backends(backend_spec)
    for backend in set(requested) - {"auto"}:
        require(backend)  # a missing extra fails before any data or model is read
    cfg = build_config(load_toml(config_file) if config_file else {}, options)
    aggregation = aggregation_for(cfg, rule, trim, clip)
    if train_samples is not None and train_samples < cfg.clients:
        raise EdgezoError(f"--train-samples {train_samples} is fewer than --clients {cfg.clients}")
    data = load_job_data(cfg, train_samples)
    shards = device_shards(cfg, data.train)

    from edgezo.backends.torch.factory import save_trained_model

    say = (lambda msg: None) if quiet else (lambda msg: tqdm.write(msg))
    executors = BackendPool(cfg, data.task, say)
    ex, info = executors.get(_first_backend(requested, fleet is not None))
    say(
        f"{info.name}: {ex.num_layers} layers, split at {ex.split}; trainable {cfg.trainable}: "
        f"{ex.trainable_numel(1):,} + {ex.trainable_numel(2):,} parameters (block 1 + block 2); "
        f"{len(data.train):,} train examples over {cfg.clients} devices, {len(data.dev)} validation"
    )
    works, clock = [None] * cfg.clients, None
    extra = {"aggregation": asdict(aggregation)}
    if fleet is not None:
        plans, clock = _plan_fleet(cfg, ex, info, data, fleet, round_seconds, plan, max_p1, max_p2, say)
        works = [p.work for p in plans]
        extra |= {"planned": plan, "round_seconds": round_seconds,
                  "devices": [{"device": p.device, "backend": p.backend, "k": p.work.k, "p1": p.work.p1, "p2": p.work.p2,
                               "batch": p.work.batch, "predicted_round_s": round(p.round_s, 3)} for p in plans]}
        device_backends = [_planned_backend(p.backend, requested, d, say) for d, p in enumerate(plans)]
    else:
        device_backends = [requested[d % len(requested)] for d in range(cfg.clients)]
    device_executors = [executors.get(b)[0] for b in device_backends]
    mixed = len({id(e) for e in device_executors} | {id(ex)}) > 1
    if mixed:
        extra["device_backends"] = [e.backend for e in device_executors]
        say("devices' backends: " + ", ".join(f"{d}:{e.backend}" for d, e in enumerate(device_executors)))
    outputs = RunOutputs(cfg.out)
    seedlog = SeedLog(outputs.out / "seedlog.jsonl")
    seedlog.path.unlink(missing_ok=True)
    bar = tqdm(total=cfg.rounds * cfg.clients, desc="devices x rounds", unit="dev", disable=quiet, dynamic_ncols=True)

    def on_round(record: RoundRecord, entry) -> None:
        outputs.add(record)
        if entry is not None:
            seedlog.append(entry)
        say(round_line(record, cfg.rounds))

    started = time.perf_counter()
    devices = [SimulatedDevice(shard, e, executors.batcher(e, data.train), work)
               for shard, e, work in zip(shards, device_executors, works)]
    run_simulation(cfg, devices, ex, make_evaluator(ex, data.task, data.dev, quiet), aggregation, clock,
                   on_round=on_round, on_device=lambda: bar.update(1))
    bar.close()
    if clock is not None:
        extra["sim_time_s"] = round(clock.now, 3)
    if mixed:
        extra["replica_fingerprints"] = {e.backend: e.fingerprint() for e in executors.all()}
    summary = outputs.finish(cfg, ex, info, started, lambda folder: save_trained_model(cfg, data.task, ex, folder), extra)
    simulated = f", {clock.now:,.0f} simulated s" if clock is not None else ""
    click.echo(
        f"accuracy {100 * summary['initial_accuracy']:.1f}% -> {100 * summary['final_accuracy']:.1f}% "
        f"after {cfg.rounds} rounds ({summary['flops']:.3g} forward FLOPs, {summary['wall_s']:.0f} s{simulated}); wrote {outputs.out}/"
    )


def _plan_fleet(cfg, ex, info, data, fleet, round_seconds, plan, max_p1, max_p2, say):
    """Each simulated device's work and the simulated clock that times it."""
    from edgezo.backends.torch.profiling import model_shape, typical_tokens
    from edgezo.config import job_work
    from edgezo.fleet import plan_fleet
    from edgezo.simulation import SimulatedClock

    shape = model_shape(ex, info.name, info.digest)
    tokens = typical_tokens(ex, data.task, data.train, cfg.batch_size, cfg.seed)
    plans = plan_fleet(fleet, shape, tokens, job_work(cfg), round_seconds, plan, max_p1, max_p2)
    clock = SimulatedClock([p.round_s for p in plans], [prof.network_latency_ms / 1e3 for _, prof in fleet], round_seconds)
    say(f"{'planned' if plan else 'fixed'} work per device ({tokens} tokens per sequence, deadline "
        f"{f'{round_seconds:g} s' if round_seconds else 'none'}):")
    for d, p in enumerate(plans):
        say("  " + p.describe() + ("" if clock.included(d) else "  -- misses the deadline: left out of every round"))
    return plans, clock


class BackendPool:
    """One executor (one model replica) per backend the job uses, built on first use."""

    def __init__(self, cfg, task, say):
        self.cfg, self.task, self.say = cfg, task, say
        self._built: dict[str, tuple] = {}
        self._batchers: dict[int, object] = {}
        self._auto: str | None = None

    def get(self, backend: str):
        from edgezo.backends.choice import build_executor, resolve_backend

        if backend == "auto":
            if self._auto is None:
                choice = resolve_backend("auto", self.cfg.model)
                self.say(f"backend {choice.backend} ({choice.reason})")
                self._auto = choice.backend
            backend = self._auto
        if backend not in self._built:
            self.say(f"loading model {self.cfg.model or '(default) SmolLM2-135M-Instruct'} on the {backend} backend ...")
            self._built[backend] = build_executor(backend, self.cfg, self.task)
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
    from edgezo.backends.choice import BACKENDS, is_installed

    if requested != ["auto"]:
        return requested[device % len(requested)]
    if planned in BACKENDS and is_installed(planned):
        return planned
    say(f"device {device}: its planned backend {planned} is not installed here; simulating it on torch")
    return "torch"
