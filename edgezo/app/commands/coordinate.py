"""`edgezo coordinate`: run a federated job over an MQTT broker.

A thin layer: options -> ``edgezo.app.jobs.coordinate.CoordinateJob`` -> ``run()``."""

from __future__ import annotations

import click
from tqdm.auto import tqdm

from edgezo.app.commands.options import (AGGREGATION_OPTIONS, BROKER_OPTIONS, PLAN_CAP_OPTIONS, QUIET_HELP, TASK_OPTIONS, apply, given_options,
                                     job_options)
from edgezo.app.jobs.coordinate import CoordinateJob, configure_logging
from edgezo.app.settings import CoordinateSettings

S = CoordinateSettings


@click.command(context_settings={"show_default": True})
@apply(job_options("coordinate") + TASK_OPTIONS)
@click.option("--broker", help="MQTT broker HOST[:PORT] (or a clustered broker's nodes, comma-separated: clients fail over between them). Without it, an embedded broker (amqtt) is started on this machine.")
@apply(BROKER_OPTIONS)
@click.option("--port", type=int, default=S.port, help="Port of the embedded broker (without --broker).")
@click.option("--run", default=S.run, help="Job name: the MQTT topic prefix edgezo/<run>/.")
@click.option("--state", type=click.Path(file_okay=False), help="State folder (seed log, job, checkpoints); restart with the same one to resume after a crash. [default: OUT/state]")
@click.option("--min-devices", type=int, default=S.min_devices, help="Devices that must be online before a round opens.")
@click.option("--devices-per-round", type=int, default=S.devices_per_round, help="Devices sampled per round (0: every online device).")
@click.option("--round-timeout", type=float, default=S.round_timeout, help="Seconds a round waits for answers; then whoever answered is aggregated. With --plan, also each device's time budget.")
@click.option("--quorum", type=float, default=S.quorum, help="Close a round early once this fraction of its devices answered (devices that go offline are not waited for).")
@click.option("--max-missed", type=int, default=S.max_missed, help="Rounds in a row a device may miss before it is dropped from the job (0: never).")
@apply(AGGREGATION_OPTIONS)
@click.option("--checkpoint-every", type=int, default=S.checkpoint_every, help="Rounds between checkpoints served over HTTP to devices that are far behind (0: never).")
@click.option("--http-port", type=int, default=S.http_port, help="Port of the checkpoint HTTP server (0: any free port).")
@click.option("--advertise-host", help="Host name devices use to reach the checkpoint server. [default: the broker host, or 127.0.0.1]")
@click.option("--plan", is_flag=True, help="Plan each device's work from its profile (edgezo join --profile): the batch (the job's, lowered only if memory requires), K (up to --local-steps), P1 and P2 (up to --max-p1/--max-p2) that fit --round-timeout and the device's memory budget. A device nothing fits is left out of rounds. Without --plan every device gets the job's --local-steps, --p1, --p2 and --batch-size.")
@apply(PLAN_CAP_OPTIONS)
@click.option("--default-profile", help="With --plan: profile (a .toml file, or a measured or reference name such as pi5) for devices that send none. [default: such devices get the job's fixed K, P1, P2 and batch]")
@click.option("--overwrite", is_flag=True, help="Replace a run in --out that is not this job's (a restart with the same state folder resumes without it).")
@click.option("--enrolled", type=click.Path(dir_okay=False), help="Signed messages (Ed25519, needs the signing extra): a file of the devices' public lines, 'ed25519:<base64> <device-id>' each (what `edgezo keys show` prints on a device). Every status, result and log request must then be signed by the enrolled key of the device its topic names, and the coordinator signs what it publishes: on a broker without an ACL no stranger can answer for a device or announce a fake one. [default: unsigned]")
@click.option("--key", type=click.Path(dir_okay=False), help="With --enrolled: the coordinator's signing key (a PEM file, `edgezo keys init --key PATH`). [default: STATE/coordinator.key, made on first use; its public line is printed and kept in STATE/coordinator.pub]")
@click.option("--web-port", type=int, help="Serve browser devices on this port (0: any free port): a phone or laptop joins by opening the printed URL (or scanning its QR code); the page runs the job's model as an ONNX export (made once, cached, checked against the torch executor) and speaks MQTT over WebSockets. See docs/browser.md. [default: no browser devices]")
@click.option("--web-host", default=S.web_host, help="With --web-port: the only address the web server (and the embedded broker's WebSocket listener) binds; 0.0.0.0 for phones on the network.")
@click.option("--web-data", type=click.Path(file_okay=False), help="With --web-port: a task data folder whose training examples pages may fetch by shard, /join?device-id=NAME&shard=I/N (as `join --data FOLDER --shard I/N`), for demos and tests. [default: the page asks for a file]")
@click.option("--web-broker", help="With --web-port and --broker: the URL pages reach that broker's WebSocket listener at, ws://HOST:PORT or wss://HOST:PORT. [default: with the embedded broker, its own WebSocket listener]")
@click.option("--web-passwords", type=click.Path(dir_okay=False), help="With --web-port and --broker (mosquitto): mosquitto's password file to add browser-device accounts to (its other accounts are kept); the broker must reload it (SIGHUP), and the command prints how. Each page that opens the join link gets the next account. [default: pages log in with the token of a URL you give them]")
@click.option("--web-devices", type=int, default=S.web_devices, help="With --web-passwords: how many browser-device accounts to pre-issue (the join link refuses pages after that many).")
@click.option("--certfile", type=click.Path(dir_okay=False), help="With --web-port: serve HTTPS with this PEM certificate (browsers run WASM threads only in a secure context; the embedded broker then serves wss://).")
@click.option("--keyfile", type=click.Path(dir_okay=False), help="The private key of --certfile. [default: in --certfile]")
@click.option("--quiet", is_flag=True, help=QUIET_HELP)
@click.pass_context
def coordinate(ctx, config_file, **options):
    """Coordinate a federated fine-tuning job over MQTT.

    Devices join with `edgezo join --broker HOST`. Each round the coordinator assigns work (the
    round's shared seeds, P1/P2, local steps, batch), aggregates the scalars of whoever answered
    by the deadline, appends the update to the seed log (fsync'd) and publishes it. It evaluates on
    the validation split of its own --data, and writes the same outputs as `simulate`.

    With --plan each device gets its own batch, K, P1 and P2, planned from the profile it sends
    (or --default-profile) so that its round fits --round-timeout and its memory; devices that
    evaluated different directions are averaged per direction over those that evaluated it.

    Example: edgezo coordinate --broker localhost --min-devices 3 --rounds 30 --out runs/job
    """
    job = CoordinateJob.from_options(config_file, **given_options(ctx, options, {"rule": "aggregation"}))
    configure_logging()
    job.say, job.progress = tqdm.write, not job.settings.quiet
    result = job.run()
    acc, run = result.summary["final_accuracy"], job.settings.run
    click.echo(f"job {run} finished: {result.summary['rounds_completed']} rounds, accuracy "
               f"{100 * acc:.1f}%; wrote {result.out}/" if acc is not None else f"job {run} finished; wrote {result.out}/")
