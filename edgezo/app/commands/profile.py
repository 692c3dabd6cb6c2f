"""`edgezo profile`: measure this device, so a coordinator can give it work that fits."""

from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path

import click
from tqdm.auto import tqdm

from edgezo import __version__
from edgezo.app.commands.options import PLAN_CAP_OPTIONS, QUIET_HELP, given_options
from edgezo.app.jobs.common import file_and_options
from edgezo.app.runfolder import writable_folder
from edgezo.app.settings import ProfileSettings
from edgezo.config import JobConfig
from edgezo.costmodel import Work
from edgezo.errors import EdgezoError
from edgezo.planner import Budget, Limits, plan_device
from edgezo.profiles import Profile, host_profile_name, resolve_profile, save_profile, user_profile_dir
from edgezo.tasks import get_task

S = ProfileSettings

QUICK_BATCHES = (1, 8)
FULL_BATCHES = (1, 2, 4, 8, 16)


def _batch_list(text: str) -> list[int]:
    try:
        sizes = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise EdgezoError(f"--batch-sizes must be comma-separated integers like 1,4,16 (got {text!r})") from None
    if not sizes or sizes[0] < 1:
        raise EdgezoError(f"--batch-sizes needs positive sizes (got {text!r})")
    return sizes


def memory_gb() -> tuple[float, float]:
    """(total, available) memory of this device."""
    import psutil

    vm = psutil.virtual_memory()
    return vm.total / 2**30, vm.available / 2**30


def plan_options(f):
    """The planner's budgets and limits, for --plan."""
    for option in reversed([
        click.option("--plan", is_flag=True, help="Also print the work the planner gives this device for the budgets below."),
        click.option("--round-seconds", type=float, default=S.round_seconds, help="Round-time budget for --plan: the coordinator's round deadline."),
        click.option("--memory-gb", type=float, help="Memory budget for --plan. [default: the memory available when profiled]"),
        click.option("--local-steps", type=int, default=S.local_steps, help="Most local steps K a device is given (the job's K)."),
        click.option("--batch-size", type=int, default=S.batch_size, help="Most examples per step (the job's batch); lowered only when memory requires."),
        *PLAN_CAP_OPTIONS,
    ]):
        f = option(f)
    return f


@click.command(context_settings={"show_default": True})
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="TOML file with any of these options (underscored or dashed keys); options on the command line win.")
@click.option("--model", help="Hub id, local folder, or .gguf file. [default: SmolLM2-135M-Instruct]")
@click.option("--split", type=int, help="Layer index where block 2 starts. [default: two thirds of the layers]")
@click.option("--trainable", default=S.trainable, help="Trainable set (as in simulate): decides perturbation and update costs.")
@click.option("--seq-len", type=int, default=S.seq_len, help="Tokens per sequence of the measured batches (SST-2 prompts are 30-60 tokens).")
@click.option("--batch-sizes", default=S.batch_sizes, help="Batch sizes whose forward times are measured.")
@click.option("--repeats", type=int, default=S.repeats, help="Timed repeats per measurement (the median is kept).")
@click.option("--quick", is_flag=True, help=f"A ~20-second version: batch sizes {','.join(map(str, QUICK_BATCHES))}, one repeat.")
@click.option("--name", help="Profile name (what `join --profile` and `simulate --devices` call it). [default: the host name]")
@click.option("--out", type=click.Path(dir_okay=False), help="Profile file to write. [default: <user profile folder>/<name>.toml]")
@click.option("--use", "use", help="Plan from this existing profile (a file, or a measured or reference name) instead of measuring.")
@plan_options
@click.option("--quiet", is_flag=True, help=QUIET_HELP)
@click.pass_context
def profile(ctx, config_file, **options):
    """Measure this device for a model and split, and write a profile (TOML).

    Measures, on every backend available here, the time of a block-1 and a block-2 forward per
    batch size, the throughput of canonical perturbations and updates, the memory the model
    takes, the peak memory of an SPZO step, and the memory this device has. The coordinator turns
    a profile into this device's batch, K, P1 and P2 (`edgezo join --profile NAME`).

    Examples: edgezo profile --quick;  edgezo profile --plan --round-seconds 30 --memory-gb 2;
    edgezo profile --use pi5 --plan --round-seconds 120
    """
    (values,) = file_and_options(config_file, given_options(ctx, options), ProfileSettings)
    run_profile(ProfileSettings(**values).validate())


def run_profile(s: ProfileSettings) -> None:
    """Measure (or read) a profile, write it, and print it and the plan."""
    import transformers

    from edgezo.backends.torch.factory import build_torch_executor
    from edgezo.backends.torch.profiling import model_shape, rss_mb

    batches = list(QUICK_BATCHES) if s.quick else _batch_list(s.batch_sizes)
    repeats = 1 if s.quick else s.repeats
    path = Path(s.out) if s.out else None
    if path is not None and not s.use:
        writable_folder(path.parent if str(path.parent) else Path("."), "--out's folder")  # before the model loads
    runtime_mb = rss_mb()  # interpreter + torch + transformers, before any model
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    cfg = JobConfig(model=s.model, split=s.split, trainable=s.trainable, max_length=s.seq_len).validate()
    click.echo(f"loading model {s.model or '(default) SmolLM2-135M-Instruct'} ...", err=True)
    ex, info = build_torch_executor(cfg, get_task("sst2"))
    shape = model_shape(ex, info.name, info.digest)

    if s.use:
        prof = resolve_profile(s.use)
        click.echo(f"using the {prof.kind} profile {prof.name} ({prof.path})")
    else:
        prof = _measure(ex, shape, s.trainable, s.seq_len, batches, repeats, runtime_mb, s.name, s.quiet)
        path = path or user_profile_dir() / f"{prof.name}.toml"
        save_profile(prof, path)
        click.echo(profile_table(prof))
        click.echo(f"wrote {path}")
    if s.plan:
        limits = Limits(Work(k=s.local_steps, batch=s.batch_size), p1=s.max_p1, p2=s.max_p2)
        chosen = plan_device(prof, shape, s.seq_len, Budget(s.round_seconds, s.memory_gb), limits)
        click.echo("plan: " + chosen.describe())
        if chosen.suggested_split != shape.split:
            click.echo(f"suggestion: with P2={chosen.work.p2}, split {chosen.suggested_split} (instead of {shape.split}) balances "
                       "block-1 and block-2 forwards; the split is the job's choice (coordinate --split)")


def _measure(ex, shape, trainable, seq_len, batches, repeats, runtime_mb, name, quiet=False):
    from edgezo.backends.torch.profiling import cpu_name, profile_torch

    steps = len(batches) + 1 + min(2, len(batches))
    with tqdm(total=steps, desc="profiling torch", unit="step", dynamic_ncols=True, disable=quiet) as bar:
        torch_profile = profile_torch(ex, shape, trainable, seq_len, batches, repeats, runtime_mb, lambda: bar.update(1))
    total, available = memory_gb()
    return Profile(
        name=name or host_profile_name(),
        kind="measured",
        description=f"measured by edgezo {__version__} with {shape.name}, split {shape.split}/{shape.layers}, {seq_len} tokens",
        memory_total_gb=round(total, 2),
        memory_available_gb=round(min(available, total), 2),
        backends=[torch_profile],  # only torch is measured so far; int8 and mlx figures come from reference profiles
        cpu=cpu_name(),
        cores=os.cpu_count() or 0,
        os=f"{platform.system()} {platform.release()}",
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )


def profile_table(prof) -> str:
    """A readable summary of a profile."""
    lines = [f"{prof.kind} profile {prof.name}: {prof.cpu or '?'} ({prof.cores} cores), "
             f"memory {prof.memory_available_gb:.1f} of {prof.memory_total_gb:.1f} GB available"]
    for b in prof.backends:
        lines.append(f"  backend {b.name} ({b.dtype}): {b.gflops:.1f} GFLOP/s effective, {b.overhead_ms:.2f} ms per layer call, "
                     f"perturb {b.perturb_melems_s:.0f} M/s, update {b.update_melems_s:.0f} M/s, {b.call_us:.0f} us per tensor call")
        m = b.measured
        if m is None:
            continue
        lines.append(f"  {m.model}, split {m.split}/{m.layers}: load {m.load_mb:,.0f} MB, runtime {b.runtime_mb:,.0f} MB")
        lines.append("    batch  tokens  block-1 s  block-2 s  block-1 us/token  block-2 us/token")
        for r in m.forwards:
            p1, p2 = r.per_token
            lines.append(f"    {r.batch:5d}  {r.tokens:6d}  {r.block1_s:9.4f}  {r.block2_s:9.4f}  {1e6 * p1:16.1f}  {1e6 * p2:16.1f}")
        for p in m.memory:
            lines.append(f"    SPZO step peak memory at batch {p.batch}: {p.peak_mb:,.0f} MB")
    return "\n".join(lines)
