"""Operator errors before work: folders that cannot be written and a broker that refuses us are
one line and a non-zero exit before the model loads (the model here does not even exist, so an
error naming it would mean the check came too late)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

NO_MODEL = "/no/such/model"


def run_cli(*args, timeout=120):
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "edgezo", *args], capture_output=True, text=True, timeout=timeout)
    return done, time.monotonic() - started


def one_line(done) -> str:
    assert done.returncode == 2, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.strip() and "Loading" not in line]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert NO_MODEL not in lines[0]
    return lines[0]


@pytest.fixture
def a_file(tmp_path):
    f = tmp_path / "a-file"
    f.write_text("not a folder")
    return f


@pytest.mark.parametrize("command", ["simulate", "coordinate"])
def test_an_out_under_a_file_is_refused_before_the_model_loads(command, a_file, sst2_dir):
    done, _ = run_cli(command, "--model", NO_MODEL, "--data", str(sst2_dir), "--out", str(a_file / "run"))
    assert f"{a_file} is a file, not a folder" in one_line(done)


def test_an_out_that_cannot_be_written_is_refused(sst2_dir):
    done, _ = run_cli("simulate", "--model", NO_MODEL, "--data", str(sst2_dir), "--out", "/proc/edgezo-run")
    assert "--out /proc/edgezo-run cannot be written" in one_line(done)


def test_a_state_under_a_file_is_refused(a_file, sst2_dir, tmp_path):
    done, _ = run_cli("coordinate", "--model", NO_MODEL, "--data", str(sst2_dir), "--out", str(tmp_path / "out"),
                      "--state", str(a_file / "state"))
    assert "--state" in one_line(done)


def test_wrong_credentials_are_refused_before_the_model_loads(mosquitto_factory, sst2_dir, tmp_path):
    broker = mosquitto_factory(password_file={"coord": "right"}, allow_anonymous=False)
    done, _ = run_cli("coordinate", "--model", NO_MODEL, "--data", str(sst2_dir), "--out", str(tmp_path / "out"),
                      "--broker", broker.address, "--username", "coord", "--password", "wrong")
    assert "bad username or password" in one_line(done)


def test_an_unreachable_broker_is_refused_before_the_model_loads(sst2_dir, tmp_path):
    done, _ = run_cli("coordinate", "--model", NO_MODEL, "--data", str(sst2_dir), "--out", str(tmp_path / "out"),
                      "--broker", "127.0.0.1:1")
    assert "127.0.0.1:1" in one_line(done)
