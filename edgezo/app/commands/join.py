"""`edgezo join`: contribute this device's compute and private data to a federated job.

A thin layer: options -> ``edgezo.app.jobs.join.JoinJob`` -> ``run()``."""

from __future__ import annotations

import signal
import sys

import click

from edgezo.app.commands.options import BROKER_OPTIONS, DEVICE_OPTION, QUIET_HELP, TRAIN_SAMPLES, apply, given_options
from edgezo.app.jobs.coordinate import configure_logging
from edgezo.app.jobs.join import PROFILE_LIMIT, JoinJob, connect_patiently, default_device_id, device_profile
from edgezo.app.settings import JoinSettings
from edgezo.backends.choice import CHOICES

S = JoinSettings


@click.command(context_settings={"show_default": True})
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="TOML file with any of these options (underscored or dashed keys: broker, device_id, data, ...); options on the command line win.")
@click.option("--broker", help="MQTT broker HOST[:PORT] (or a clustered broker's nodes, comma-separated: clients fail over between them) the coordinator uses (required, here or in --config).")
@apply(BROKER_OPTIONS)
@click.option("--device-id", help="This device's name (MQTT topics, ACL user name). [default: the host name and a random suffix, made once and kept in ~/.config/edgezo/device-id]")
@click.option("--run", help="Job to join. [default: the one job announced on the broker]")
@click.option("--model", help="Local copy of the job's model (hub id, folder or .gguf); its digest must match the announced one. [default: SmolLM2-135M-Instruct]")
@click.option("--data", help="Folder with this device's task files (the announced task's layout). [default: ../shared/data/<task> or $EDGEZO_DATA]")
@click.option("--shard", help="Use only shard i of N of the training data (i/N, 0-based), as simulated device i would.")
@apply([TRAIN_SAMPLES])
@click.option("--profile", help="This device's profile, sent to the coordinator, which plans this device's batch, K, P1 and P2 from it (coordinate --plan): a .toml file, or a name (a measured profile in the user profile folder, else a reference shipped in device_profiles/). [default: the measured profile named after this host in the user profile folder (edgezo profile writes it), if there is one]")
@click.option("--memory-gb", type=float, help="Memory in GB this device lets training use; the coordinator's planner keeps a step's peak under it. [default: the profile's memory_available_gb]")
@click.option("--backend", type=click.Choice(CHOICES), default=S.backend, help="Executor: torch (fp32), mlx (Apple MLX), int8 (llama.cpp-style 8-bit blocks, about a third of the memory). auto: mlx on Apple silicon, else torch, or int8 when fp32 does not fit --memory-gb (or the free memory).")
@DEVICE_OPTION
@click.option("--catch-up", type=click.Choice(["auto", "replay", "checkpoint"]), default=S.catch_up, help="How to reach the current global model when behind: replay the seed log, download the coordinator's checkpoint, or whichever is cheaper.")
@click.option("--stay", is_flag=True, help="After the job finishes, wait for the next one instead of exiting.")
@click.option("--announce-timeout", type=float, default=S.announce_timeout, help="Seconds to wait for a job announcement.")
@click.option("--key", type=click.Path(dir_okay=False), help="This device's signing key, used when the job is signed (coordinate --enrolled); its public line must be enrolled there (`edgezo keys show`). [default: the key `edgezo keys init` made, ~/.config/edgezo/device.key, if it exists]")
@click.option("--coordinator-key", help="The coordinator's public line 'ed25519:<base64> ...' (it prints it; also STATE/coordinator.pub), or a file holding it: messages on the job's topics not signed by it are ignored, so nobody else can send this device rounds, updates or announcements.")
@click.option("--quiet", is_flag=True, help=QUIET_HELP)
@click.pass_context
def join(ctx, config_file, **options):
    """Join a federated job as a device: answer the coordinator's rounds until the job ends.

    The device loads the announced model (checking its digest), keeps a replica of the global
    model, and sends only scalars; it reconnects with backoff if the broker goes away and catches
    up on missed rounds. Exits 0 when the coordinator announces the end of the job.

    With a profile (--profile, or the one `edgezo profile` measured on this host) a coordinator
    run with --plan gives this device work that fits its round deadline and memory.

    Example: edgezo join --broker server.local --data ~/my-sst2 --profile pi5
    """
    job = JoinJob.from_options(config_file, **given_options(ctx, options))
    configure_logging()
    job.say = click.echo
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # leave cleanly when stopped by a service manager
    raise SystemExit(job.run())
