"""Learning-rate schedules: decay from lr to lr/10 over all rounds or over --lr-decay-rounds."""

from __future__ import annotations

import pytest

from edgezo.config import JobConfig, build_config, lr_at
from edgezo.errors import EdgezoError


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_decay_goes_from_lr_to_a_tenth_by_the_last_round(schedule):
    rates = [lr_at(1.0, schedule, r, 30) for r in range(1, 31)]
    assert rates[0] == 1.0 and rates[-1] == pytest.approx(0.1)
    assert all(a > b for a, b in zip(rates, rates[1:]))
    assert lr_at(1.0, "constant", 17, 30) == 1.0


def test_decay_rounds_reach_the_floor_earlier_and_hold_it():
    held = [lr_at(1.0, "cosine", r, 30, decay_rounds=20) for r in range(1, 31)]
    assert held[:20] == [lr_at(1.0, "cosine", r, 20) for r in range(1, 21)]  # the 20-round schedule
    assert held[19:] == pytest.approx([0.1] * 11)
    assert [lr_at(1.0, "cosine", r, 30, decay_rounds=0) for r in range(1, 31)] == [lr_at(1.0, "cosine", r, 30) for r in range(1, 31)]
    assert lr_at(1.0, "linear", 30, 30, decay_rounds=99) == pytest.approx(0.1)  # longer than the job: the job's length


def test_negative_decay_rounds_is_a_clear_error():
    with pytest.raises(EdgezoError, match="--lr-decay-rounds"):
        build_config({}, {"lr_decay_rounds": -1})
    assert JobConfig().lr_decay_rounds == 0


# -- typed configuration: every command's options from the command line or a TOML --config ------------

import textwrap  # noqa: E402

from edgezo.app.cli import main  # noqa: E402
from edgezo.errors import ConfigError  # noqa: E402
from edgezo.schema import checked  # noqa: E402
from edgezo.app.settings import CoordinateSettings, JoinSettings, SimulateSettings  # noqa: E402


def cli(capsys, *args) -> tuple[int, str]:
    """Run the CLI in this process: (exit status, stderr)."""
    try:
        main(list(args))
        code = 0
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("line,needle", [
    ("clients = 4.5", "clients must be a whole number (got 4.5)"),
    ("trainable = 5", "trainable must be a string (got 5)"),
    ("rounds = true", "rounds must be a whole number (got True)"),
    ('rounds = "one"', "rounds must be a whole number (got 'one')"),
    ('lr = "fast"', "lr must be a number (got 'fast')"),
    ("train_samples = 2.5", "train_samples must be a whole number"),
    ("plan = 1", "plan must be true or false"),
    ("colour = 1", "unknown keys ['colour']"),
])
def test_a_bad_toml_value_is_one_line_naming_the_key(line, needle, tmp_path, capsys):
    job = tmp_path / "job.toml"
    job.write_text(line + "\n")
    code, err = cli(capsys, "simulate", "--config", str(job), "--out", str(tmp_path / "out"))
    assert code == 2 and needle in one_error_line(err)
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_the_schema_converts_only_what_is_safe():
    assert checked(SimulateSettings, {"round_seconds": 3, "max_p1": 2}, "x") == {"round_seconds": 3.0, "max_p1": 2}
    assert isinstance(checked(JobConfig, {"lr": 1}, "x")["lr"], float)
    for bad in ({"max_p1": 2.0}, {"round_seconds": True}, {"devices": 3}):
        with pytest.raises(ConfigError):
            checked(SimulateSettings, bad, "x")
    with pytest.raises(ConfigError, match="--quorum"):
        CoordinateSettings(quorum=1.5).validate()
    with pytest.raises(ConfigError, match="--max-p1 only matters with --plan"):
        CoordinateSettings(max_p1=4).validate()
    with pytest.raises(ConfigError, match="--broker"):
        JoinSettings().validate()


def test_simulate_reads_its_own_options_from_the_file(tmp_path, capsys, tiny_llama, sst2_dir):
    """backend and train_samples (refused before) come from the file; the job runs on them."""
    job = tmp_path / "job.toml"
    job.write_text(textwrap.dedent(f"""\
        model = "{tiny_llama}"
        data = "{sst2_dir}"
        backend = "torch"
        train-samples = 2
        clients = 3
    """))
    code, err = cli(capsys, "simulate", "--config", str(job), "--out", str(tmp_path / "out"))
    assert code == 2 and "--train-samples 2 is fewer than --clients 3" in one_error_line(err)


def test_coordinate_reads_broker_min_devices_and_round_timeout_from_the_file(tmp_path, capsys, sst2_dir):
    job = tmp_path / "job.toml"
    job.write_text(f'broker = "127.0.0.1:1"\nmin_devices = 3\nround_timeout = 10\ndata = "{sst2_dir}"\nmodel = "/no/such/model"\n')
    code, err = cli(capsys, "coordinate", "--config", str(job), "--out", str(tmp_path / "out"))
    line = one_error_line(err)
    assert code == 2 and "127.0.0.1:1" in line and "no/such/model" not in line  # the broker before the model
    job.write_text("min_devices = 0\n")
    code, err = cli(capsys, "coordinate", "--config", str(job), "--out", str(tmp_path / "out2"))
    assert code == 2 and "--min-devices must be at least 1" in one_error_line(err)
    job.write_text("clients = 3\n")
    code, err = cli(capsys, "coordinate", "--config", str(job), "--out", str(tmp_path / "out3"))
    assert code == 2 and "coordinate has no clients setting" in one_error_line(err)


def test_coordinate_help_lists_neither_clients_nor_fedavg_and_has_its_own_out(capsys):
    try:
        main(["coordinate", "--help"])
    except SystemExit:
        pass
    text = capsys.readouterr().out
    assert "--clients" not in text and "fedavg" not in text and "runs/coordinate" in text
    code, err = cli(capsys, "coordinate", "--method", "fedavg")
    assert code == 2 and "fedavg" in err


def test_join_takes_a_config_file(tmp_path, capsys):
    conf = tmp_path / "device.toml"
    conf.write_text('broker = "127.0.0.1:1"\ndevice_id = "dev-a"\nannounce_timeout = 1\nrun = "job"\n')
    code, err = cli(capsys, "join", "--config", str(conf))
    assert code == 2 and "127.0.0.1:1" in err.splitlines()[-1]
    conf.write_text('device_id = "dev-a"\n')
    code, err = cli(capsys, "join", "--config", str(conf))
    assert code == 2 and "--broker" in one_error_line(err)
    conf.write_text('broker = "h"\nmemory_gb = "lots"\n')
    code, err = cli(capsys, "join", "--config", str(conf))
    assert code == 2 and "memory_gb must be a number (got 'lots')" in one_error_line(err)
