"""`edgezo join`: contribute this device's compute and private data to a federated job."""

from __future__ import annotations

import logging
import math
import re
import signal
import socket
import sys

import click

from edgezo.commands.options import BROKER_OPTIONS, TRAIN_SAMPLES, apply, broker_settings
from edgezo.errors import EdgezoError


PROFILE_LIMIT = 64 * 1024  # most bytes a profile may add to the Status message (the payload limit is 1 MiB)


def default_device_id() -> str:
    """The host name, made safe for MQTT topics: stable across restarts, so catch-up works."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:64] or "device"


def device_profile(spec: str | None, memory_gb: float | None, say=print) -> tuple[dict, float]:
    """(profile dict, memory budget in GB) this device sends in its Status; ({}, 0.0 or --memory-gb)
    without a profile. An explicit ``spec`` that cannot be read is an error; the implicit default
    (the measured profile named after this host in the user profile folder) is skipped with a
    warning when it is broken, since the device works without one."""
    from edgezo.coordinator import messages as m
    from edgezo.profiles import host_profile_name, load_profile, resolve_profile, user_profile_dir

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


@click.command(context_settings={"show_default": True})
@click.option("--broker", required=True, help="MQTT broker HOST[:PORT] the coordinator uses.")
@apply(BROKER_OPTIONS)
@click.option("--device-id", help="This device's name (MQTT topics, ACL user name). [default: the host name]")
@click.option("--run", "run_name", help="Job to join. [default: the one job announced on the broker]")
@click.option("--model", help="Local copy of the job's model (hub id, folder or .gguf); its digest must match the announced one. [default: SmolLM2-135M-Instruct]")
@click.option("--data", help="Folder with this device's task files (the announced task's layout). [default: ../shared/data/<task> or $EDGEZO_DATA]")
@click.option("--shard", help="Use only shard i of N of the training data (i/N, 0-based), as simulated device i would.")
@apply([TRAIN_SAMPLES])
@click.option("--profile", "profile_spec", help="This device's profile, sent to the coordinator, which plans this device's batch, K, P1 and P2 from it (coordinate --plan): a .toml file, or a name (a measured profile in the user profile folder, else a reference shipped in device_profiles/). [default: the measured profile named after this host in the user profile folder (edgezo profile writes it), if there is one]")
@click.option("--memory-gb", type=float, help="Memory in GB this device lets training use; the coordinator's planner keeps a step's peak under it. [default: the profile's memory_available_gb]")
@click.option("--backend", type=click.Choice(["auto", "torch", "mlx", "int8"]), default="auto", help="Executor: torch (fp32), mlx (Apple MLX), int8 (llama.cpp-style 8-bit blocks, about a third of the memory). auto: mlx on Apple silicon, else torch, or int8 when fp32 does not fit --memory-gb (or the free memory).")
@click.option("--catch-up", type=click.Choice(["auto", "replay", "checkpoint"]), default="auto", help="How to reach the current global model when behind: replay the seed log, download the coordinator's checkpoint, or whichever is cheaper.")
@click.option("--stay", is_flag=True, help="After the job finishes, wait for the next one instead of exiting.")
@click.option("--announce-timeout", type=float, default=60.0, help="Seconds to wait for a job announcement.")
@click.option("--quiet", is_flag=True, help="Only warnings and errors.")
def join(broker, username, password, tls_ca, tls_cert, tls_key, tls_insecure, device_id, run_name, model, data, shard,
         train_samples, profile_spec, memory_gb, backend, catch_up, stay, announce_timeout, quiet):
    """Join a federated job as a device: answer the coordinator's rounds until the job ends.

    The device loads the announced model (checking its digest), keeps a replica of the global
    model, and sends only scalars; it reconnects with backoff if the broker goes away and catches
    up on missed rounds. Exits 0 when the coordinator announces the end of the job.

    With a profile (--profile, or the one `edgezo profile` measured on this host) a coordinator
    run with --plan gives this device work that fits its round deadline and memory.

    Example: edgezo join --broker server.local --data ~/my-sst2 --profile pi5
    """
    from edgezo.coordinator.device import Device, DeviceSettings, find_job
    from edgezo.coordinator.messages import encode, PROTOCOL_VERSION, Status
    from edgezo.coordinator.topics import Topics, check_name
    from edgezo.coordinator.transport import MqttLink
    from edgezo.jobdata import parse_shard

    device_id = check_name("device", device_id or default_device_id())
    if run_name:
        check_name("run", run_name)
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    say = (lambda msg: None) if quiet else click.echo
    if backend != "auto":
        from edgezo.backends.choice import require

        require(backend)  # before connecting: a missing extra fails here, in one line
    profile, memory_budget = device_profile(profile_spec, memory_gb, say)  # before connecting: a bad one fails here
    settings = DeviceSettings(device_id=device_id, run=run_name, model=model, data=data,
                              shard=parse_shard(shard) if shard else None, train_samples=train_samples, stay=stay,
                              catch_up=catch_up, announce_timeout=announce_timeout, profile=profile, memory_gb=memory_budget)
    bs = broker_settings(broker, 1883, username, password, tls_ca, tls_cert, tls_key, tls_insecure)
    if run_name is None:  # the last will names the run: find it first
        with MqttLink(bs, client_id=f"edgezo-{device_id}-probe") as probe:
            connect_patiently(probe, announce_timeout, say)
            run_name = find_job(probe, None, announce_timeout, stay).run
        settings.run = run_name
    # The last will: the coordinator hears at once that this device is gone.
    offline = Status(v=PROTOCOL_VERSION, run=run_name, device=device_id, state="offline")
    link = MqttLink(bs, client_id=f"edgezo-{device_id}", will=(Topics(run_name).status(device_id), encode(offline), True))

    def build(cfg, task):
        import transformers

        from edgezo.backends.choice import build_executor, resolve_backend

        transformers.utils.logging.set_verbosity_error()
        choice = resolve_backend(backend, cfg.model, memory_budget * 1024 if memory_budget else None)
        say(f"backend {choice.backend} ({choice.reason})")
        return build_executor(choice.backend, cfg, task)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # leave cleanly when stopped by a service manager
    connect_patiently(link, announce_timeout, say)
    device = Device(settings, link, build, say)
    try:
        code = device.run()
    except (KeyboardInterrupt, SystemExit):
        device.leave()  # a clean disconnect sends no last will: say we are gone ourselves
        raise
    finally:
        link.close()
    raise SystemExit(code)


def connect_patiently(link, timeout: float, say) -> None:
    """Devices are often started before the broker (or the coordinator's embedded one): retry an
    unreachable broker for ``timeout`` seconds; refused credentials fail at once."""
    import time

    from edgezo.coordinator.transport import BrokerUnreachable

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
