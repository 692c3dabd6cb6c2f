"""`edgezo coordinate`: run a federated job over an MQTT broker."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path

import click
from tqdm.auto import tqdm

from edgezo.commands.options import AGGREGATION_OPTIONS, BROKER_OPTIONS, JOB_OPTIONS, PLAN_CAP_OPTIONS, aggregation_for, apply, broker_settings
from edgezo.config import build_config, job_work, load_toml
from edgezo.errors import EdgezoError
from edgezo.evaluate import make_evaluator
from edgezo.jobdata import load_job_data
from edgezo.methods import method_of
from edgezo.outputs import RunOutputs, round_line


@click.command(context_settings={"show_default": True})
@apply(JOB_OPTIONS)
@click.option("--broker", help="MQTT broker HOST[:PORT]. Without it, an embedded broker (amqtt) is started on this machine.")
@apply(BROKER_OPTIONS)
@click.option("--port", "embedded_port", type=int, default=1883, help="Port of the embedded broker (without --broker).")
@click.option("--run", "run_name", default="edgezo", help="Job name: the MQTT topic prefix edgezo/<run>/.")
@click.option("--state", type=click.Path(file_okay=False), help="State folder (seed log, job, checkpoints); restart with the same one to resume after a crash. [default: OUT/state]")
@click.option("--min-devices", type=int, default=1, help="Devices that must be online before a round opens.")
@click.option("--devices-per-round", type=int, default=0, help="Devices sampled per round (0: every online device).")
@click.option("--round-timeout", type=float, default=300.0, help="Seconds a round waits for answers; then whoever answered is aggregated. With --plan, also each device's time budget.")
@click.option("--quorum", type=float, default=1.0, help="Close a round early once this fraction of its devices answered (devices that go offline are not waited for).")
@apply(AGGREGATION_OPTIONS)
@click.option("--checkpoint-every", type=int, default=10, help="Rounds between checkpoints served over HTTP to devices that are far behind (0: never).")
@click.option("--http-port", type=int, default=0, help="Port of the checkpoint HTTP server (0: any free port).")
@click.option("--advertise-host", help="Host name devices use to reach the checkpoint server. [default: the broker host, or 127.0.0.1]")
@click.option("--plan", is_flag=True, help="Plan each device's work from its profile (edgezo join --profile): the batch (the job's, lowered only if memory requires), K (up to --local-steps), P1 and P2 (up to --max-p1/--max-p2) that fit --round-timeout and the device's memory budget. A device nothing fits is left out of rounds. Without --plan every device gets the job's --local-steps, --p1, --p2 and --batch-size.")
@apply(PLAN_CAP_OPTIONS)
@click.option("--default-profile", help="With --plan: profile (a .toml file, or a measured or reference name such as pi5) for devices that send none. [default: such devices get the job's fixed K, P1, P2 and batch]")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def coordinate(config_file, broker, embedded_port, run_name, state, min_devices, devices_per_round, round_timeout, quorum,
               clip, rule, trim, checkpoint_every, http_port, advertise_host, plan, max_p1, max_p2, default_profile, quiet,
               username, password, tls_ca, tls_cert, tls_key, tls_insecure, **options):
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
    from edgezo.coordinator.rounds import RoundPolicy
    from edgezo.coordinator.server import Coordinator, CoordinatorSettings
    from edgezo.coordinator.topics import check_name
    from edgezo.coordinator.transport import MqttLink

    cfg = build_config(load_toml(config_file) if config_file else {}, options)
    check_name("run", run_name)
    if method_of(cfg.method).backprop:
        raise EdgezoError(f"{cfg.method} moves full weights every round; over MQTT only seeds and scalars travel. Use it with `edgezo simulate`")
    aggregation = aggregation_for(cfg, rule, trim, clip)
    if not 0 < quorum <= 1:
        raise EdgezoError(f"--quorum must be in (0, 1] (got {quorum})")
    if min_devices < 1 or round_timeout <= 0:
        raise EdgezoError("--min-devices must be at least 1 and --round-timeout positive")
    limits, fallback = None, None
    if plan:
        from edgezo.planner import Limits
        from edgezo.profiles import resolve_profile

        if max_p1 < 1 or max_p2 < 1:
            raise EdgezoError(f"--max-p1 and --max-p2 must be at least 1 (got {max_p1} and {max_p2})")
        limits = Limits(job_work(cfg), p1=max_p1, p2=max_p2)
        fallback = resolve_profile(default_profile) if default_profile else None
    else:
        ctx = click.get_current_context()
        given = [f"--{n.replace('_', '-')}" for n in ("max_p1", "max_p2", "default_profile")
                 if ctx.get_parameter_source(n) == click.core.ParameterSource.COMMANDLINE]
        if given:
            raise EdgezoError(f"{', '.join(given)} only {'matters' if len(given) == 1 else 'matter'} with --plan (per-device planning); add --plan or drop it")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    say = tqdm.write  # round lines are the job's log; --quiet only drops the progress bar
    data = load_job_data(cfg, need_train=False)

    import transformers

    from edgezo.backends.torch.factory import build_torch_executor
    from edgezo.backends.torch.loading import save_model
    from edgezo.coordinator.messages import ModelRef

    transformers.utils.logging.set_verbosity_error()
    say(f"loading model {cfg.model or '(default) SmolLM2-135M-Instruct'} ...")
    ex, info = build_torch_executor(cfg, data.task)
    planning = None
    if plan:
        from edgezo.backends.torch.profiling import model_shape, typical_tokens
        from edgezo.coordinator.server import Planning

        tokens = typical_tokens(ex, data.task, data.dev, cfg.batch_size, seed=cfg.seed)
        planning = Planning(model_shape(ex, info.name, info.digest), tokens, limits, round_timeout, fallback)
        say(f"planning per device: {tokens} tokens per sequence (a typical batch), {round_timeout:g} s rounds, "
            f"at most K {limits.k}, batch {limits.batch}, P1 {limits.p1}, P2 {limits.p2}; devices without a profile get "
            + (f"the {fallback.kind} profile {fallback.name!r}" if fallback else "the job's fixed work"))
    out = Path(cfg.out)
    state_dir = Path(state) if state else out / "state"
    settings = CoordinatorSettings(
        run=run_name, state=state_dir, min_devices=min_devices, devices_per_round=devices_per_round,
        policy=RoundPolicy(round_timeout, quorum, aggregation), checkpoint_every=checkpoint_every,
        http_port=http_port, advertise_host=advertise_host, planning=planning,
    )
    embedded = None
    if broker is None:
        from edgezo.coordinator.broker import EmbeddedBroker

        embedded = EmbeddedBroker(port=embedded_port)
        say(f"no --broker given: started an embedded MQTT broker (amqtt) on {embedded.host}:{embedded.port} "
            f"(this machine only; devices here join with: edgezo join --broker {embedded.host}:{embedded.port}). "
            "For devices on other machines run mosquitto and pass --broker")
        broker = f"{embedded.host}:{embedded.port}"
    bs = broker_settings(broker, 1883, username, password, tls_ca, tls_cert, tls_key, tls_insecure)
    if settings.advertise_host is None and bs.host not in ("127.0.0.1", "localhost", "::1"):
        settings.advertise_host = bs.host
    link = MqttLink(bs, client_id=f"edgezo-coordinator-{run_name}", protocol=embedded.protocol if embedded else "auto")
    try:
        link.connect()
        started = time.perf_counter()
        model = ModelRef(info.name, info.revision or "", info.digest)
        outputs: RunOutputs | None = None  # opened once the coordinator has replayed its state

        def on_record(record):
            outputs.add(record)
            if record.round:
                bar.update(1)
            say(round_line(record, cfg.rounds, f"  devices {record.devices}/{record.assigned}"))

        coordinator = Coordinator(cfg, settings, link, ex, model, make_evaluator(ex, data.task, data.dev, quiet),
                                  on_record, say=say)
        outputs = RunOutputs(out, resume_round=coordinator.round or None)
        if outputs.records:
            coordinator.continue_totals(outputs.records[-1])
        bar = tqdm(total=cfg.rounds, initial=coordinator.round, desc="rounds", unit="round", disable=quiet, dynamic_ncols=True)
        coordinator.run()
        bar.close()
        summary = outputs.finish(cfg, ex, info, started, lambda folder: save_model(ex.model, ex.tokenizer, folder), {"run": run_name, "aggregation": asdict(aggregation), "rejected_messages": coordinator.rejected})
        acc = summary["final_accuracy"]
        click.echo(f"job {run_name} finished: {summary['rounds_completed']} rounds, accuracy "
                   f"{100 * acc:.1f}%; wrote {out}/" if acc is not None else f"job {run_name} finished; wrote {out}/")
    finally:
        link.close()
        if embedded is not None:
            embedded.stop()

