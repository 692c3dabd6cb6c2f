"""Job configuration: one dataclass shared by ``simulate``, ``coordinate`` and ``join`` (which gets
it in the job's announcement), from CLI options or a TOML file with the same keys. Defaults are the
ones measured to work on SmolLM2-135M-Instruct and SST-2 (see the README's table of the grid that
chose them)."""

from __future__ import annotations

import math
import tomllib
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from edgezo.costmodel import Work
from edgezo.errors import ConfigError, EdgezoError
from edgezo.estimators import VARIANTS, ProbeConfig
from edgezo.methods import DEFAULT_METHOD, Method, method_of
from edgezo.perturb import DISTRIBUTIONS
from edgezo.schema import build, checked

PARTITIONS = ("iid", "dirichlet")
LR_SCHEDULES = ("constant", "cosine", "linear")


def lr_at(lr: float, schedule: str, rnd: int, rounds: int, final_fraction: float = 0.1, decay_rounds: int = 0) -> float:
    """The learning rate of round ``rnd`` (1-based). Decaying schedules go from ``lr`` in round 1
    to ``final_fraction * lr`` in round ``decay_rounds`` (0: the last round) and hold it after.
    The rate is baked into the coefficients the seed log records, so replay never needs the
    schedule."""
    span = min(decay_rounds or rounds, rounds)
    if schedule == "constant" or span <= 1:
        return lr
    t = min(1.0, (rnd - 1) / (span - 1))
    if schedule == "linear":
        shape = 1 - t
    elif schedule == "cosine":
        shape = 0.5 * (1 + math.cos(math.pi * t))
    else:
        raise EdgezoError(f"unknown lr schedule {schedule!r}; use one of {', '.join(LR_SCHEDULES)}")
    return lr * (final_fraction + (1 - final_fraction) * shape)


@dataclass
class JobConfig:
    model: str | None = None  # hub id, local folder or .gguf; None: SmolLM2-135M-Instruct
    task: str = "sst2"
    data: str | None = None  # task folder (original TSV/JSONL files); None: ../shared/data/<task> or $EDGEZO_DATA
    method: str = DEFAULT_METHOD
    clients: int = 4
    rounds: int = 30
    local_steps: int = 2
    p1: int = 1
    p2: int = 4
    split: int | None = None  # layer index where block 2 starts; None: two thirds of the layers
    lr: float = 5e-4
    lr_schedule: str = "cosine"  # constant, cosine or linear decay to a tenth of lr
    lr_decay_rounds: int = 0  # rounds the decay takes, then the rate holds at a tenth (0: all rounds)
    eps: float = 1e-3
    batch_size: int = 16
    max_length: int = 128
    trainable: str = "norm"
    seed: int = 0
    eval_every: int = 0  # also evaluate every N rounds (0: round 0 and the last round only)
    eval_samples: int = 0  # 0: the whole validation split
    out: str = "runs/simulate"
    partition: str = "iid"
    alpha: float = 0.5  # Dirichlet concentration for --partition dirichlet
    variant: str = "joint"
    difference: str | None = None  # central/forward; None: the method's own default
    distribution: str = "rademacher"

    def validate(self) -> "JobConfig":
        for key, value in checked(JobConfig, asdict(self), "job configuration").items():
            setattr(self, key, value)  # JobConfig(clients=4.5) is refused as a TOML file's value is
        method = self.resolved_method
        for name in ("clients", "rounds", "local_steps", "batch_size", "max_length"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(self, name)})")
        if self.p1 < 1 or self.p2 < 1:
            raise ConfigError(f"--p1 and --p2 must be at least 1 (got P1={self.p1}, P2={self.p2})")
        for name in ("lr", "eps"):
            v = getattr(self, name)
            if not (v > 0 and math.isfinite(v)):
                raise ConfigError(f"--{name} must be a positive number (got {v})")
        if self.lr_decay_rounds < 0:
            raise ConfigError(f"--lr-decay-rounds must be 0 (decay over all rounds) or more (got {self.lr_decay_rounds})")
        if self.eval_every < 0 or self.eval_samples < 0:
            raise ConfigError("--eval-every and --eval-samples must be 0 or more")
        if self.partition not in PARTITIONS:
            raise ConfigError(f"unknown partition {self.partition!r}; use iid or dirichlet")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"unknown lr schedule {self.lr_schedule!r}; use one of {', '.join(LR_SCHEDULES)}")
        if self.variant not in VARIANTS:
            raise ConfigError(f"unknown SPZO variant {self.variant!r}; use joint or clean")
        if self.distribution not in DISTRIBUTIONS:
            raise ConfigError(f"unknown distribution {self.distribution!r}; use rademacher or gaussian")
        if self.difference is None:
            self.difference = method.default_difference
        method.check_difference(self.difference)
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def resolved_method(self) -> Method:
        """The job's method as an object. The job names it (``method``: what options, TOML files
        and announcements carry); this is where that name is resolved, so the code below the
        configuration (the simulation, the planner, the coordinator's rounds) is handed the
        ``Method`` and never looks a name up."""
        return method_of(self.method)

    def round_lr(self, rnd: int) -> float:
        """The learning rate of round ``rnd`` (1-based) under the job's schedule."""
        return lr_at(self.lr, self.lr_schedule, rnd, self.rounds, decay_rounds=self.lr_decay_rounds)


def probe_config(cfg: JobConfig, p1: int | None = None, p2: int | None = None) -> ProbeConfig | None:
    """How a device probes the loss with the job's P1 and P2, or its own (None for a method that
    backpropagates)."""
    return cfg.resolved_method.probe(cfg.p1 if p1 is None else p1, cfg.p2 if p2 is None else p2, cfg.eps, cfg.variant, cfg.difference)


def job_work(cfg: JobConfig) -> Work:
    """What the job asks of each device in a round (the planner's starting point and caps)."""
    method = cfg.resolved_method
    return Work(cfg.local_steps, cfg.p1, method.effective_p2(cfg.p2), cfg.batch_size, method, cfg.variant, cfg.difference)


def config_keys() -> list[str]:
    return [f.name for f in fields(JobConfig)]


def load_toml(path: str | Path, known: list[str] | None = None) -> dict:
    """Read a TOML file of options (a job's, and a command's own when ``known`` lists them);
    unknown keys are an error (a typo must not silently use a default). Types are checked
    where the values meet their dataclass (``edgezo.schema``)."""
    p = Path(path)
    if not p.is_file():
        raise EdgezoError(f"config file {p} does not exist")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise EdgezoError(f"config file {p} is not valid TOML: {e}") from e
    data = {k.replace("-", "_"): v for k, v in data.items()}
    known = config_keys() if known is None else known
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"config file {p} has unknown keys {unknown}; known keys: {', '.join(known)}")
    return data


def build_config(file_values: dict, cli_values: dict, where: str = "config file") -> JobConfig:
    """TOML values first, then the options given on the command line (None means not given);
    every value type-checked, naming its key."""
    merged = checked(JobConfig, dict(file_values), where)
    merged.update(checked(JobConfig, {k: v for k, v in cli_values.items() if v is not None}, "options"))
    return build(JobConfig, merged, where).validate()
