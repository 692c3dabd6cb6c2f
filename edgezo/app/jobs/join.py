"""A device's side of a federation as a library object (``edgezo join``).

Its profile, backend, signing key and broker (reachability, credentials) are checked before the
job's model is loaded; it signs its messages only for a signed job (one whose announcement is
signed), and then a missing key is one line saying how to make and enrol one. ``run()`` answers
the coordinator's rounds until the job ends and returns the exit status (0: the job finished).
"""

from __future__ import annotations

import math
import os
import re
import secrets
import socket
import sys
import time
from pathlib import Path
from typing import Callable

from edgezo import signing
from edgezo.app.jobs.common import file_and_options
from edgezo.app.settings import JoinSettings
from edgezo.backends.choice import build_executor, check_device, require, resolve_backend
from edgezo.coordinator.wire import messages as m
from edgezo.coordinator.device.device import Device, DeviceSettings, find_job, signing_mismatch
from edgezo.coordinator.wire.messages import PROTOCOL_VERSION, Status, encode
from edgezo.coordinator.wire.signed_link import SignedLink, device_trust
from edgezo.coordinator.wire.topics import Topics, check_name
from edgezo.coordinator.wire.transport import BrokerUnreachable, MqttLink
from edgezo.errors import EdgezoError
from edgezo.jobdata import parse_shard
from edgezo.profiles import host_profile_name, load_profile, resolve_profile, user_profile_dir

ROUND_LINE = re.compile(r"round \d+: \d+ scalars")  # a device's per-round line (coordinator.device)
PROFILE_LIMIT = 64 * 1024  # most bytes a profile may add to the Status message (the payload limit is 1 MiB)


class JoinJob:
    """This device in a federated job: ``JoinSettings``; ``say`` gets the log lines (None: silent)."""

    def __init__(self, settings: JoinSettings, *, say: Callable[[str], None] | None = None):
        self.settings = settings.validate()
        self.say = say or (lambda msg: None)  # with settings.quiet, the per-round lines are left out
        self.device = None

    @classmethod
    def from_options(cls, config_file: str | Path | None = None, say: Callable[[str], None] | None = None, **options) -> "JoinJob":
        """From option values as the CLI names them, over a TOML file's (options win)."""
        (settings,) = file_and_options(config_file, options, JoinSettings)
        return cls(JoinSettings(**settings), say=say)

    def run(self) -> int:
        """Answer the job's rounds until it ends; the exit status (0: the job finished). What can
        fail here (names, backend, device, profile, key files) fails before connecting; the
        broker and its credentials before the model loads."""
        s = self.settings
        say = _without_round_lines(self.say) if s.quiet else self.say
        device_id, run_name, profile, memory_budget = self._checked_locally(say)
        settings = DeviceSettings(device_id=device_id, run=run_name, model=s.model, data=s.data,
                                  shard=parse_shard(s.shard) if s.shard else None, train_samples=s.train_samples, stay=s.stay,
                                  catch_up=s.catch_up, announce_timeout=s.announce_timeout, profile=profile, memory_gb=memory_budget)
        key = signing.device_key(s.key)  # before connecting: a missing or foreign key file fails here
        coordinator = signing.read_public(s.coordinator_key) if s.coordinator_key else None
        signed = False
        if run_name is None or key is not None:  # the last will names the run, and is signed in a signed job: find it first
            run_name, signed = self._find_run(device_id, run_name, coordinator, say)
            if signed and key is None:
                raise signing_mismatch(run_name, device_id, True)
            settings.run = run_name
        if key is not None and not signed:
            if s.key is not None:
                say(f"job {run_name!r} does not use signed messages: this device does not sign (--key unused)")
            key = None  # sign only for a signed job: unsigned jobs keep their bytes
        link = self._link(settings, key, coordinator, say)
        connect_patiently(link, s.announce_timeout, say)  # broker and credentials before the model loads
        self.device = Device(settings, link, self._builder(memory_budget, say), say)
        try:
            return self.device.run()
        except (KeyboardInterrupt, SystemExit):
            self.device.leave()  # a clean disconnect sends no last will: say we are gone ourselves
            raise
        finally:
            link.close()

    def _checked_locally(self, say):
        """(device id, run name or None, profile, memory budget): what this device can check
        without the broker (a missing backend extra, --device cuda without a GPU, a bad profile)."""
        s = self.settings
        device_id = check_name("device", default_device_id() if s.device_id is None else s.device_id)
        run_name = check_name("run", s.run) if s.run else None
        if s.backend != "auto":
            require(s.backend)
            check_device(s.backend, s.device)
        if s.device != "auto":
            from edgezo.backends.torch.device import resolve_device

            resolve_device(s.device)
        profile, memory_budget = device_profile(s.profile, s.memory_gb, say)
        return device_id, run_name, profile, memory_budget

    def _find_run(self, device_id: str, run_name: str | None, coordinator, say) -> tuple[str, bool]:
        """(the job's run name, whether its announcement is signed), read from the broker over a
        short-lived probe connection."""
        s = self.settings
        with MqttLink(s.broker_settings(), client_id=f"edgezo-{device_id}-probe") as probe:
            connect_patiently(probe, s.announce_timeout, say)
            signers: dict = {}
            run_name = find_job(SignedLink(probe, trust=device_trust(coordinator, None)), run_name, s.announce_timeout,
                                s.stay, signers).run
        return run_name, signers.get(run_name) is not None

    def _link(self, settings: DeviceSettings, key, coordinator, say) -> SignedLink:
        """The device's link, with its last will: the coordinator hears at once that this device
        is gone (the will names this process's instance, so a replayed will of an earlier process
        is not taken for this one's); signed, and signing, in a signed job."""
        settings.instance = secrets.token_hex(6)
        offline = Status(v=PROTOCOL_VERSION, run=settings.run, device=settings.device_id, state="offline",
                         instance=settings.instance)
        topic, will = Topics(settings.run).status(settings.device_id), encode(offline)
        if key is not None:
            will = signing.seal(key, topic, will)
            say(f"signing this device's messages with {key.text}")
        mqtt = MqttLink(self.settings.broker_settings(), client_id=f"edgezo-{settings.device_id}-{os.getpid()}",
                        will=(topic, will, True))
        return SignedLink(mqtt, key, trust=device_trust(coordinator, key.public if key is not None else None))

    def _builder(self, memory_budget: float, say):
        """How the device builds its executor once the job's announcement names the model."""
        s = self.settings

        def build(cfg, task):
            import transformers

            transformers.utils.logging.set_verbosity_error()
            choice = resolve_backend(s.backend, cfg.model, memory_budget * 1024 if memory_budget else None)
            say(f"backend {choice.backend} ({choice.reason})")
            return build_executor(choice.backend, cfg, task, s.device)

        return build


def default_device_id() -> str:
    """This device's own id: the host name (made safe for MQTT topics) and a random suffix,
    generated once and kept in the user's config folder (``$XDG_CONFIG_HOME/edgezo/device-id``),
    so it is stable across restarts (catch-up works) and two devices never share one, not even
    clones of one image (every Raspberry Pi image is ``raspberrypi``). If the folder cannot be
    written, the id lives for this process only (and the warning says so)."""
    path = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "edgezo" / "device-id"
    try:
        kept = path.read_text(encoding="utf-8").strip()
        check_name("device", kept)
        return kept
    except (OSError, EdgezoError):
        pass
    host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:51] or "device"
    new = f"{host}-{secrets.token_hex(6)}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(new + "\n", encoding="utf-8")
        tmp.replace(path)
    except OSError as e:
        print(f"warning: cannot keep the device id in {path} ({e.strerror or e}); using {new} for this run "
              "(pass --device-id to keep one)", file=sys.stderr)
    return new


def device_profile(spec: str | None, memory_gb: float | None, say=print) -> tuple[dict, float]:
    """(profile dict, memory budget in GB) this device sends in its Status; ({}, 0.0 or --memory-gb)
    without a profile. An explicit ``spec`` that cannot be read is an error; the implicit default
    (the measured profile named after this host in the user profile folder) is skipped with a
    warning when it is broken, since the device works without one."""
    if memory_gb is not None and not (math.isfinite(memory_gb) and memory_gb > 0):
        raise EdgezoError(f"--memory-gb must be a positive number of GB (got {memory_gb})")
    profile = None
    if spec is not None:
        profile = resolve_profile(spec)
    else:
        default = user_profile_dir() / f"{host_profile_name()}.toml"
        if default.is_file():
            try:
                profile = load_profile(default)
            except Exception as e:
                say(f"warning: ignoring this host's profile {default}: {e}; re-run `edgezo profile` or pass --profile")
    if profile is None:
        return {}, float(memory_gb or 0.0)
    data = profile.to_dict()
    size = len(m.encode(m.Status(v=m.PROTOCOL_VERSION, run="", device="", state="online", profile=data)))
    if size > PROFILE_LIMIT:
        raise EdgezoError(f"profile {profile.path or profile.name} takes {size:,} bytes in the status message; "
                          f"the most is {PROFILE_LIMIT:,} (trim its sources or measured rows)")
    budget = memory_gb if memory_gb is not None else profile.memory_available_gb
    say(f"profile: {profile.kind} profile {profile.name!r} ({profile.path or 'reference'}), memory budget {budget:g} GB")
    return data, float(budget)


def connect_patiently(link, timeout: float, say) -> None:
    """Devices are often started before the broker (or the coordinator's embedded one): retry an
    unreachable broker for ``timeout`` seconds; refused credentials fail at once."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            link.connect()
            return
        except BrokerUnreachable as e:
            if time.monotonic() + 2 > deadline:
                raise
            say(f"{e}; retrying for up to {timeout:.0f} s")
            time.sleep(2)


def _without_round_lines(say: Callable[[str], None]) -> Callable[[str], None]:
    """--quiet: the device's events stay, its per-round lines go."""
    return lambda msg: None if ROUND_LINE.match(msg) else say(msg)
