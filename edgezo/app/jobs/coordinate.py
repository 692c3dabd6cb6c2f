"""The coordinator side of a federation as a library object (``edgezo coordinate``).

Operator errors come before any work, in the order they are cheap to find: settings, the
output and state folders, the data, then the broker (reachability and credentials), and only
then the model (8-50 s). A restart with the same state folder resumes the job.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, fields
from pathlib import Path
from typing import Callable

from tqdm.auto import tqdm

from edgezo import signing
from edgezo.app.jobs.calibrating import calibrate, check_method, descent_of, reuse
from edgezo.app.jobs.common import Callback, JobResult, JobShell, calibrated_settings, callbacks_of, file_and_options, job_config, save_model
from edgezo.app.outputs import RunOutputs
from edgezo.app.runfolder import prepare_out, writable_folder
from edgezo.app.settings import COORDINATE_OUT, CoordinateSettings
from edgezo.backends.hf.shape import model_shape, typical_tokens
from edgezo.config import JobConfig, job_work
from edgezo.coordinator.server.broker import EmbeddedBroker
from edgezo.coordinator.wire.messages import ModelRef
from edgezo.coordinator.server.rounds import RoundPolicy
from edgezo.coordinator.server.coordinator import Coordinator, CoordinatorSettings, Planning
from edgezo.coordinator.wire.signed_link import SignedLink
from edgezo.coordinator.wire.topics import check_name
from edgezo.coordinator.wire.transport import MqttLink
from edgezo.coordinator.server.web_serving import start_for_job, websocket_listener
from edgezo.coordinator.wire.atomic_files import write_json_atomic
from edgezo.errors import ConfigError, EdgezoError
from edgezo.evaluate import make_evaluator
from edgezo.jobdata import load_job_data, make_batcher
from edgezo.planner import Limits
from edgezo.profiles import resolve_profile
from edgezo.taskfile import TaskOptions, with_task_options


CALIBRATION_FILE = "calibration.json"  # in the state folder, beside job.json: --p2/--split auto's record


def web_broker_accounts(s: CoordinateSettings) -> tuple[Path, int] | None:
    """--web-passwords, --web-devices: (mosquitto's password file, how many browser-device accounts
    to write there up front), or None (the embedded broker, or pages given their tokens by hand)."""
    return (Path(s.web_passwords), s.web_devices) if s.web_passwords else None


class CoordinateJob:
    """A federated job over MQTT: ``JobConfig`` (the job devices get), ``CoordinateSettings``
    (broker, rounds' policy, planning, state), per-round ``callbacks``; ``say`` gets the log's
    events, ``progress`` adds a progress bar and the per-round lines (what ``--quiet`` leaves out)."""

    def __init__(self, config: JobConfig | None = None, settings: CoordinateSettings | None = None, *,
                 callbacks: list[Callback | Callable] | Callback | Callable | None = None,
                 say: Callable[[str], None] | None = None, progress: bool = False):
        self.config = (config if config is not None else JobConfig(out=COORDINATE_OUT)).validate()
        self.settings = (settings if settings is not None else CoordinateSettings()).validate()
        self.callbacks = callbacks_of(callbacks)
        self.say = say or (lambda msg: None)
        self.progress = progress
        self.rejected = 0
        self.onnx_sha256 = ""  # with --web-port: the browser devices' ONNX export, announced

    @classmethod
    def from_options(cls, config_file: str | Path | None = None, **options) -> "CoordinateJob":
        """From option values as the CLI names them, over a TOML file's (options win)."""
        run_kw = {k: options.pop(k) for k in ("callbacks", "say", "progress") if k in options}

        job, settings, task = file_and_options(config_file, options, JobConfig, CoordinateSettings, TaskOptions, prepare=calibrated_settings)
        job = with_task_options(job, TaskOptions(**task))  # --train/--template/...: announced to every device
        if "clients" in job:
            raise ConfigError("coordinate has no clients setting: its devices are whoever joins (see min_devices and devices_per_round)")
        job.setdefault("out", COORDINATE_OUT)
        return cls(job_config(job), CoordinateSettings(**settings), **run_kw)

    def _checked(self):
        """Everything that needs neither the model nor the broker: the aggregation, the planner's
        limits and fallback profile, the folders."""
        cfg, s = self.config, self.settings
        check_name("run", s.run)
        if cfg.resolved_method.backprop:
            raise ConfigError(f"{cfg.method} moves full weights every round; over MQTT only seeds and scalars travel. Use it with `edgezo simulate`")
        aggregation = s.aggregation_rule(cfg)
        limits = fallback = None
        if s.plan:
            limits = Limits(job_work(cfg), p1=s.max_p1, p2=s.max_p2)
            fallback = resolve_profile(s.default_profile) if s.default_profile else None
        out = Path(cfg.out)
        state = Path(s.state) if s.state else out / "state"
        if (state / "job.json").is_file() and not s.overwrite:
            writable_folder(out, "--out")  # a restart: the state folder resumes the job
        else:
            prepare_out(out, s.overwrite)
        writable_folder(state, "--state")
        return aggregation, limits, fallback, out, state

    def run(self) -> JobResult:
        """Coordinate the job until its last round; returns the records and output paths."""
        cfg, s = self.config, self.settings
        aggregation, limits, fallback, out, state = self._checked()
        enrolment, key = self._signing(state)
        data = load_job_data(cfg, need_train=False)
        recorded, train = self._calibration_inputs(state)  # before the broker and the model: cheap errors first
        cfg.task = data.task.ref  # a user task travels whole (template, label words); devices read their own data
        link, embedded = self._connect()  # broker and credentials before the model loads
        if enrolment is not None:
            link = SignedLink(link, key, enrolment=enrolment)  # signs what it publishes; the pump checks the devices'
        web = None
        try:
            ex, info = self._load_model(data)
            calibration = self._calibrated(ex, info, data, train, recorded, state, fallback)
            if calibration is not None and cfg.split != ex.split:  # --split auto moved block 2's start: the replica is built there
                ex, info = self._load_model(data)

            web = start_for_job(s, ex, info, cfg, data, embedded, self.say, web_broker_accounts(s))  # --web-port: browser devices
            self.onnx_sha256 = web[1] if web else ""
            descent = descent_of(calibration, cfg.variant) if calibration is not None and s.p2_auto else None
            planning = self._planning(ex, info, data, limits, fallback, descent) if s.plan else None
            extra = {f.name: getattr(s, f.name) for f in fields(CoordinatorSettings) if f.name == "max_missed"}
            settings = CoordinatorSettings(
                run=s.run, state=state, min_devices=s.min_devices, devices_per_round=s.devices_per_round,
                policy=RoundPolicy(s.round_timeout, s.quorum, aggregation), checkpoint_every=s.checkpoint_every,
                http_port=s.http_port, advertise_host=s.advertise_host, planning=planning, **extra,
            )
            if settings.advertise_host is None and link.settings.host not in ("127.0.0.1", "localhost", "::1"):
                settings.advertise_host = link.settings.host
            return self._coordinate(settings, link, ex, info, data, aggregation, out, calibration)
        finally:
            if web is not None:
                web[0].stop()
            link.close()
            if embedded is not None:
                embedded.stop()

    def _signing(self, state: Path):
        """With --enrolled: (the enrolment, this coordinator's key), both read before any work; the
        key is STATE/coordinator.key unless --key, made on first use, its public line printed and
        kept in STATE/coordinator.pub for the devices' --coordinator-key. Without: (None, None)."""
        s = self.settings
        if s.enrolled is None:
            return None, None
        enrolment = signing.load_enrolment(s.enrolled)
        if s.key is not None:
            key, made = signing.load_key(s.key), False
        else:
            key, made = signing.key_or_new(state / "coordinator.key")
        line = key.line(f"{s.run}-coordinator")
        try:
            (state / "coordinator.pub").write_text(line + "\n", encoding="utf-8")
        except OSError:
            pass  # the line is printed too
        self.say(f"signed messages: {len(enrolment.keys)} device(s) enrolled from {s.enrolled}; "
                 f"{'made' if made else 'using'} the coordinator's key {s.key or state / 'coordinator.key'}; devices check "
                 f"this coordinator with --coordinator-key '{line}' (also in {state / 'coordinator.pub'})")
        return enrolment, key

    def _connect(self):
        """The MQTT link, connected (an embedded broker started first when no broker is given)."""
        s, embedded, broker = self.settings, None, self.settings.broker
        if broker is None:
            embedded = EmbeddedBroker(port=s.port, websocket=websocket_listener(s))  # browser devices: MQTT over WebSockets
            self.say(f"no --broker given: started an embedded MQTT broker (amqtt) on {embedded.host}:{embedded.port} "
                     f"(this machine only; devices here join with: edgezo join --broker {embedded.host}:{embedded.port}). "
                     "For devices on other machines run mosquitto and pass --broker")
            broker = f"{embedded.host}:{embedded.port}"
        link = MqttLink(s.broker_settings(broker), client_id=f"edgezo-coordinator-{s.run}",
                        protocol=embedded.protocol if embedded else "auto")
        try:
            link.connect()
        except BaseException:
            link.close()
            if embedded is not None:
                embedded.stop()
            raise
        return link, embedded

    def _load_model(self, data):
        import transformers

        from edgezo.backends.torch.factory import build_torch_executor

        transformers.utils.logging.set_verbosity_error()
        self.say(f"loading model {self.config.model or '(default) SmolLM2-135M-Instruct'} ...")
        return build_torch_executor(self.config, data.task)

    def _calibration_inputs(self, state: Path) -> tuple[dict | None, list]:
        """With --p2/--split auto: (the record a restarted coordinator reuses, else None; the
        training examples of the coordinator's own --data the calibration measures on, else []).
        The coordinator calibrates on its own copy of the task's data, never on a device's: no
        device sends more than seeds and scalars, and the energies need examples at the start."""
        cfg, s = self.config, self.settings
        if not (s.p2_auto or s.split_auto):
            return None, []
        check_method(cfg)
        record_file = state / CALIBRATION_FILE
        if (state / "job.json").is_file() and not s.overwrite:  # a restart: the recorded choice, never re-made
            if not record_file.is_file():
                raise ConfigError(f"{state} holds a job started without --p2/--split auto ({record_file.name} missing); "
                                  "restart it with the numbers it was started with, or use another --state")
            return json.loads(record_file.read_text(encoding="utf-8")), []
        try:
            train = load_job_data(cfg, need_dev=False).train
        except EdgezoError as e:
            raise ConfigError(f"--p2/--split auto calibrate on the training split of the coordinator's own --data "
                              f"(no device's data leaves its device), which cannot be read: {e}") from e
        return None, train

    def _calibrated(self, ex, info, data, train: list, recorded: dict | None, state: Path, fallback) -> dict | None:
        """The calibration's record (None without auto), its choice set on the job: measured on the
        coordinator's replica and ranked on --default-profile's seconds (per FLOP without it: the
        devices' own profiles arrive only after the job is announced with its P2, and with --plan
        each device's P2 comes from the measured table and its own profile), written to
        STATE/calibration.json before the state folder's job.json; a restart reuses it."""
        cfg, s = self.config, self.settings
        if recorded is not None:
            return reuse(cfg, recorded, self.say, str(state / CALIBRATION_FILE))
        if not train:
            return None
        shape = model_shape(ex, ex.model.config, info.name, info.digest)
        tokens = typical_tokens(ex, data.task, train, cfg.batch_size, seed=cfg.seed)
        record = calibrate(cfg, ex, shape, tokens, make_batcher(ex, data.task, train), len(train), s.p2_auto, s.split_auto,
                           self.say, fallback)
        write_json_atomic(state / CALIBRATION_FILE, record)
        return record

    def _planning(self, ex, info, data, limits, fallback, descent=None):
        cfg, s = self.config, self.settings
        tokens = typical_tokens(ex, data.task, data.dev, cfg.batch_size, seed=cfg.seed)
        self.say(f"planning per device: {tokens} tokens per sequence (a typical batch), {s.round_timeout:g} s rounds, "
                 f"at most K {limits.k}, batch {limits.batch}, P1 {limits.p1}, P2 {limits.p2}; devices without a profile get "
                 + (f"the {fallback.kind} profile {fallback.name!r}" if fallback else "the job's fixed work"))
        return Planning(model_shape(ex, ex.model.config, info.name, info.digest), tokens, limits, s.round_timeout, fallback,
                        descent=descent)

    def _coordinate(self, settings, link, ex, info, data, aggregation, out: Path, calibration: dict | None = None) -> JobResult:
        cfg, say = self.config, self.say
        started = time.perf_counter()
        model = ModelRef(info.name, info.revision or "", info.digest)
        evaluator = make_evaluator(ex, data.task, data.dev, not self.progress)
        shell: JobShell | None = None  # its outputs open once the coordinator has replayed its state
        bar = None

        def on_record(record):
            shell.write(record)
            if record.round and bar is not None:
                bar.update(1)
            shell.report(record, f"  devices {record.devices}/{record.assigned}")

        coordinator = Coordinator(cfg, settings, link, ex, model, evaluator, on_record, say=say)
        coordinator.logs.onnx_sha256 = self.onnx_sha256  # announced: browser devices check their download
        outputs = RunOutputs(out, resume_round=coordinator.round or None)
        shell = JobShell(outputs, evaluator, cfg.rounds, self.callbacks, say, self.progress)
        if outputs.records:
            coordinator.continue_totals(outputs.records[-1])
        bar = tqdm(total=cfg.rounds, initial=coordinator.round, desc="rounds", unit="round", disable=not self.progress, dynamic_ncols=True)
        try:
            coordinator.run()
        finally:
            bar.close()
        self.rejected = coordinator.rejected
        return shell.finish(cfg, ex, info, started, lambda folder: save_model(cfg, data.task, ex, folder, info),
                            {"run": settings.run, "aggregation": asdict(aggregation), "rejected_messages": coordinator.rejected}
                            | ({} if calibration is None else {"calibration": calibration}))


def configure_logging() -> None:
    """The coordinator's and devices' log (events: connections, rejected messages, dropped
    devices), the same with or without --quiet, which only leaves out progress."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")


__all__ = ["CoordinateJob", "configure_logging"]
