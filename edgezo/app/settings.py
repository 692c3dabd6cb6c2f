"""The settings of each command beyond the job (``JobConfig``): one dataclass per command, with
the defaults the CLI shows and the Python API uses, type-checked by ``edgezo.schema`` and
range-checked by ``validate``. A TOML ``--config`` file may hold any key of the job and of the
command's own settings; options given on the command line win.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from edgezo.aggregate import Aggregation
from edgezo.backends.choice import CHOICES, parse_device
from edgezo.config import JobConfig
from edgezo.coordinator.wire.transport import broker_settings_for
from edgezo.errors import ConfigError
from edgezo.planner import Limits

COORDINATE_OUT = "runs/coordinate"  # coordinate's --out default (simulate's is JobConfig.out)
BACKENDS = CHOICES  # --backend: auto and every backend of the registry (backends/registry.py)
CATCH_UP = ("auto", "replay", "checkpoint")


def _positive(name: str, value: float | None) -> None:
    if value is not None and not (value > 0 and math.isfinite(value)):
        raise ConfigError(f"--{name.replace('_', '-')} must be a positive number (got {value})")


def _at_least(name: str, value: int | None, least: int) -> None:
    if value is not None and value < least:
        raise ConfigError(f"--{name.replace('_', '-')} must be at least {least} (got {value})")


def _device(value: str) -> str:
    """--device checked (auto, cpu or cuda); whether cuda is usable is asked when the job runs."""
    return parse_device(value)


@dataclass
class AggregationSettings:
    """--aggregation, --trim, --clip; None: ``Aggregation``'s own default (one place)."""

    aggregation: str | None = None
    trim: float | None = None
    clip: float | None = None

    def aggregation_rule(self, cfg: JobConfig) -> Aggregation:
        """The aggregation of a job, checked against its method."""
        given = {"rule": self.aggregation, "trim": self.trim, "clip": self.clip}
        rule = Aggregation(**{k: v for k, v in given.items() if v is not None})
        cfg.resolved_method.check_aggregation(rule)
        return rule


@dataclass
class SimulateSettings(AggregationSettings):
    """`edgezo simulate`'s own options."""

    backend: str = "auto"  # auto, torch, mlx, int8, or a comma-separated list given to the devices in turn
    device: str = "auto"  # where the torch backend runs: auto (a GPU when usable), cpu or cuda
    train_samples: int | None = None  # only the first N training examples (after a seeded shuffle)
    eval_seed: int | None = None  # draws the --eval-samples subset (None: the run's seed); equal for every run compared
    devices: str | None = None  # heterogeneous devices from profiles: NAME:COUNT,... or a TOML file
    round_seconds: float | None = None  # simulated round deadline (with devices)
    plan: bool = False  # plan each device's work from its profile
    max_p1: int = Limits.p1
    max_p2: int = Limits.p2
    quiet: bool = False  # no progress bar and no per-round lines
    overwrite: bool = False  # replace a previous run in --out
    resume: bool = False  # continue a stopped run in --out
    p2_auto: bool = False  # --p2 auto: a calibration before round 0 chooses P2 (edgezo.calibration)
    split_auto: bool = False  # --split auto: it chooses the split

    def validate(self) -> "SimulateSettings":
        self.device = _device(self.device)
        _at_least("train_samples", self.train_samples, 1)
        _at_least("eval_seed", self.eval_seed, 0)
        _positive("round_seconds", self.round_seconds)
        _at_least("max_p1", self.max_p1, 1)
        _at_least("max_p2", self.max_p2, 1)
        if self.overwrite and self.resume:
            raise ConfigError("--overwrite and --resume contradict each other: --resume continues the run in --out, --overwrite replaces it")
        if self.devices is None and (self.plan or self.round_seconds is not None):
            raise ConfigError("--plan and --round-seconds simulate heterogeneous devices: give them with --devices NAME:COUNT,...")
        if self.plan and self.round_seconds is None:
            raise ConfigError("--plan needs a round budget: pass --round-seconds")
        return self


@dataclass
class BrokerConnection:
    """How to reach the MQTT broker (coordinate, join)."""

    broker: str | None = None  # HOST[:PORT], or a cluster's nodes HOST:PORT,HOST:PORT; coordinate without it starts an embedded broker
    username: str | None = None
    password: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_insecure: bool = False

    def broker_settings(self, broker: str | None = None, default_port: int = 1883):
        return broker_settings_for(broker or self.broker, default_port, username=self.username, password=self.password,
                                   tls_ca=self.tls_ca, tls_cert=self.tls_cert, tls_key=self.tls_key, tls_insecure=self.tls_insecure)


@dataclass
class CoordinateSettings(AggregationSettings, BrokerConnection):
    """`edgezo coordinate`'s own options (the job's are ``JobConfig``'s)."""

    port: int = 1883  # the embedded broker's port (without --broker)
    run: str = "edgezo"  # job name: the MQTT topic prefix edgezo/<run>/
    state: str | None = None  # seed log, job, checkpoints; None: OUT/state
    min_devices: int = 1
    devices_per_round: int = 0  # 0: every online device
    round_timeout: float = 300.0
    quorum: float = 1.0
    max_missed: int = 3  # rounds in a row a device may miss before it is dropped (0: never)
    checkpoint_every: int = 10
    http_port: int = 0
    advertise_host: str | None = None
    plan: bool = False
    max_p1: int = Limits.p1
    max_p2: int = Limits.p2
    default_profile: str | None = None
    quiet: bool = False
    overwrite: bool = False  # replace a finished or different run in --out (a resume needs no flag)
    enrolled: str | None = None  # signed messages: the file of the devices' public lines (None: unsigned)
    key: str | None = None  # the coordinator's signing key; None: STATE/coordinator.key, made on first use
    web_port: int | None = None  # serve browser devices (the page, the ONNX export) on this port; None: no
    web_host: str = "127.0.0.1"  # the only address the web server (and the embedded broker's WebSocket listener) binds
    web_data: str | None = None  # a task data folder whose training shards pages may fetch (/job/data?shard=I/N)
    web_broker: str | None = None  # ws(s)://HOST:PORT pages use to reach --broker's WebSocket listener
    web_passwords: str | None = None  # mosquitto's password file: browser-device accounts are added to it (--broker only)
    web_devices: int = 8  # with web_passwords: how many browser-device accounts are made up front
    certfile: str | None = None  # HTTPS (and wss:// on the embedded broker) for the web server
    keyfile: str | None = None
    p2_auto: bool = False  # --p2 auto: a calibration on the coordinator's replica chooses P2 (edgezo.app.jobs.calibrating)
    split_auto: bool = False  # --split auto: it chooses the split

    def validate(self) -> "CoordinateSettings":
        self._validate_web()
        self._validate_web_accounts()
        _at_least("min_devices", self.min_devices, 1)
        _at_least("devices_per_round", self.devices_per_round, 0)
        _positive("round_timeout", self.round_timeout)
        if not 0 < self.quorum <= 1:
            raise ConfigError(f"--quorum must be in (0, 1] (got {self.quorum})")
        _at_least("checkpoint_every", self.checkpoint_every, 0)
        _at_least("max_missed", self.max_missed, 0)
        if self.key is not None and self.enrolled is None:
            raise ConfigError("--key signs the coordinator's messages in a signed job: add --enrolled FILE (the devices' "
                              "public lines), or drop --key")
        for name in ("port", "http_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise ConfigError(f"--{name.replace('_', '-')} must be a port number, 0 to 65535 (got {getattr(self, name)})")
        _at_least("max_p1", self.max_p1, 1)
        _at_least("max_p2", self.max_p2, 1)
        if not self.plan:
            given = [f"--{n.replace('_', '-')}" for n in ("max_p1", "max_p2", "default_profile")
                     if getattr(self, n) != getattr(CoordinateSettings, n)]
            if given:
                raise ConfigError(f"{', '.join(given)} only {'matters' if len(given) == 1 else 'matter'} with --plan "
                                  "(per-device planning); add --plan or drop it")
        return self


    def _validate_web(self) -> None:
        """The browser-device options: each needs --web-port; --broker needs --web-broker."""
        if self.web_port is None:
            given = [f"--{n.replace('_', '-')}" for n in ("web_data", "web_broker", "web_passwords", "certfile", "keyfile")
                     if getattr(self, n) is not None] + (["--web-host"] if self.web_host != CoordinateSettings.web_host else [])
            if given:
                raise ConfigError(f"{', '.join(given)} only {'matters' if len(given) == 1 else 'matter'} when serving browser "
                                  "devices: add --web-port PORT, or drop it")
            return
        if not 0 <= self.web_port <= 65535:
            raise ConfigError(f"--web-port must be a port number, 0 to 65535 (got {self.web_port})")
        if self.keyfile is not None and self.certfile is None:
            raise ConfigError("--keyfile is the key of --certfile: add --certfile CERT.pem (HTTPS), or drop --keyfile")
        if self.web_broker is not None and not self.web_broker.startswith(("ws://", "wss://")):
            raise ConfigError(f"--web-broker must be a WebSocket URL, ws://HOST:PORT or wss://HOST:PORT (got {self.web_broker!r})")
        if self.broker is not None and self.web_broker is None:
            raise ConfigError("browser devices reach the broker over WebSockets: with --broker, pass --web-broker ws://HOST:PORT "
                              "(its WebSocket listener; mosquitto: `listener 9001` then `protocol websockets`), or drop --broker "
                              "to let the embedded broker open one")
        if self.web_broker is not None and self.broker is None:
            raise ConfigError("--web-broker names another broker's WebSocket listener: with the embedded broker (no --broker) "
                              "the coordinator opens its own; drop --web-broker or add --broker")

    def _validate_web_accounts(self) -> None:
        """--web-passwords/--web-devices: accounts for pages on a mosquitto given by --broker (the
        embedded broker checks the tokens it issues itself, and has no password file)."""
        if self.web_passwords is None:
            if self.web_devices != CoordinateSettings.web_devices:
                raise ConfigError("--web-devices is how many browser-device accounts --web-passwords writes: add --web-passwords "
                                  "FILE (mosquitto's password file), or drop --web-devices")
            return
        if self.broker is None:
            raise ConfigError("--web-passwords adds browser-device accounts to mosquitto's password file: with the embedded broker "
                              "(no --broker) the coordinator checks the pages' tokens itself; drop --web-passwords or add --broker")
        _at_least("web_devices", self.web_devices, 1)


@dataclass
class JoinSettings(BrokerConnection):
    """`edgezo join`'s options: everything else comes in the job's announcement."""

    device_id: str | None = None  # None: this device's default id
    run: str | None = None  # None: the one job announced on the broker
    model: str | None = None
    data: str | None = None
    shard: str | None = None  # i/N
    train_samples: int | None = None
    profile: str | None = None
    memory_gb: float | None = None
    backend: str = "auto"
    device: str = "auto"  # where the torch backend runs: auto (a GPU when usable), cpu or cuda
    catch_up: str = "auto"
    stay: bool = False
    announce_timeout: float = 60.0
    quiet: bool = False  # only warnings and errors
    key: str | None = None  # signing key for a signed job; None: the `edgezo keys init` one, if it exists
    coordinator_key: str | None = None  # the coordinator's public line (or a file of it): ignore what it did not sign

    def validate(self) -> "JoinSettings":
        if self.broker is None:
            raise ConfigError("join needs the broker the coordinator uses: pass --broker HOST[:PORT] (or broker = \"HOST\" in --config)")
        _at_least("train_samples", self.train_samples, 1)
        _positive("memory_gb", self.memory_gb)
        _positive("announce_timeout", self.announce_timeout)
        if self.backend not in BACKENDS:
            raise ConfigError(f"--backend must be one of {', '.join(BACKENDS)} (got {self.backend!r})")
        self.device = _device(self.device)
        if self.catch_up not in CATCH_UP:
            raise ConfigError(f"--catch-up must be one of {', '.join(CATCH_UP)} (got {self.catch_up!r})")
        return self


@dataclass
class ProfileSettings:
    """`edgezo profile`'s options: what to measure, and the budgets of --plan."""

    model: str | None = None
    split: int | None = None
    trainable: str = "norm"
    seq_len: int = 64  # SST-2 prompts are 30-60 tokens
    batch_sizes: str = "1,2,4,8,16"
    repeats: int = 3
    quick: bool = False
    name: str | None = None
    out: str | None = None  # the profile file; None: the user profile folder
    use: str | None = None  # plan from this existing profile instead of measuring
    plan: bool = False
    round_seconds: float = 60.0
    memory_gb: float | None = None  # the plan's memory budget; None: what was available when profiled
    local_steps: int = JobConfig.local_steps
    batch_size: int = JobConfig.batch_size
    max_p1: int = Limits.p1
    max_p2: int = Limits.p2
    quiet: bool = False

    def validate(self) -> "ProfileSettings":
        import re

        if self.name is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", self.name):
            raise ConfigError(f"--name {self.name!r}: use letters, digits, '.', '_' and '-' (it becomes a file name)")
        _at_least("seq_len", self.seq_len, 2)
        _at_least("repeats", self.repeats, 1)
        _positive("round_seconds", self.round_seconds)
        _positive("memory_gb", self.memory_gb)
        for name in ("local_steps", "batch_size", "max_p1", "max_p2"):
            _at_least(name, getattr(self, name), 1)
        return self


def settings_keys(*classes) -> list[str]:
    return list(dict.fromkeys(f.name for cls in classes for f in fields(cls)))
