"""The Python API (edgezo.simulate, SimulateJob): the same job as the CLI, to the same bits;
per-round callbacks; stopping and --resume to the uninterrupted model; no global matplotlib state."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import edgezo
from edgezo.errors import ConfigError, EdgezoError, JobStopped, OutputError

ROUNDS = 4


def job_options(tiny_llama, sst2_dir) -> dict:
    return dict(model=str(tiny_llama), data=str(sst2_dir), clients=2, rounds=ROUNDS, local_steps=1, p1=1, p2=2, split=2,
                trainable="norm", lr=1e-2, batch_size=4, max_length=32, eval_samples=16, train_samples=60, seed=3)


def cli_args(options: dict) -> list[str]:
    return [a for k, v in options.items() for a in (f"--{k.replace('_', '-')}", str(v))]


def run_cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "edgezo", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.fixture
def one_thread():
    """The CLI runs here with OMP_NUM_THREADS=1; matmul reductions (the last bits) depend on it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cli_run(tiny_llama, sst2_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli")
    done = run_cli("simulate", *cli_args(job_options(tiny_llama, sst2_dir)), "--out", str(out), "--quiet")
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "summary.json").read_text())


def test_the_api_runs_the_cli_job_to_the_same_fingerprint_with_callbacks(cli_run, tiny_llama, sst2_dir, tmp_path, one_thread):
    seen = []

    class Recorder(edgezo.Callback):
        def on_round(self, record):
            seen.append(record.round)

        def on_job_end(self, result):
            seen.append("end")

    losses = []
    result = edgezo.simulate(**job_options(tiny_llama, sst2_dir), out=str(tmp_path / "api"),
                             callbacks=[Recorder(), lambda record: losses.append(record.train_loss)])
    assert result.fingerprint == cli_run["fingerprint"]
    assert seen == [0, 1, 2, 3, 4, "end"] and losses[0] is None and all(x > 0 for x in losses[1:])
    assert [r.round for r in result.records] == [0, 1, 2, 3, 4] and result.records[-1].fingerprint == result.fingerprint
    for path in (result.metrics_path, result.summary_path, result.seedlog_path, result.plot_path, result.model_path / "config.json"):
        assert path.exists(), path
    assert result.final_accuracy == cli_run["final_accuracy"]


def test_a_stopped_run_resumes_to_the_uninterrupted_model(cli_run, tiny_llama, sst2_dir, tmp_path, one_thread):
    out = tmp_path / "stopped"

    def stop_after_two(record):
        if record.round == 2:
            raise JobStopped("enough for now")

    stopped = edgezo.simulate(**job_options(tiny_llama, sst2_dir), out=str(out), callbacks=stop_after_two)
    assert stopped.stopped and stopped.summary is None and [r.round for r in stopped.records] == [0, 1, 2]
    assert not (out / "summary.json").exists()
    # a crash between a round's metrics row and its seed-log entry: the row is redone
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"round": 3, "fingerprint": "torn"}) + "\n")
    refused = run_cli("simulate", "--out", str(out), "--quiet")
    assert refused.returncode == 2 and "--overwrite" in refused.stderr and "--resume" in refused.stderr
    disagree = run_cli("simulate", "--out", str(out), "--resume", "--rounds", "9")
    assert disagree.returncode == 2 and "rounds (4 there, 9 here)" in disagree.stderr
    resumed = run_cli("simulate", "--out", str(out), "--resume", "--quiet")  # the stopped run's settings
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["fingerprint"] == cli_run["fingerprint"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1, 2, 3, 4] and rows[-1]["flops"] == pytest.approx(cli_run["flops"])


def test_a_previous_run_is_replaced_only_with_overwrite(tmp_path, tiny_llama, sst2_dir):
    out = tmp_path / "run"
    out.mkdir()
    (out / "summary.json").write_text("{}")
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="already holds a run"):
        edgezo.simulate(model="/no/such/model", out=str(out))  # refused before the model is looked at
    with pytest.raises(EdgezoError, match="no/such/model"):
        edgezo.simulate(model="/no/such/model", out=str(out), overwrite=True)
    assert not (out / "summary.json").exists() and (out / "notes.txt").read_text() == "mine"


def test_typed_errors_not_system_exit(tmp_path):
    with pytest.raises(ConfigError, match="clients must be a whole number"):
        edgezo.simulate(clients=4.5, out=str(tmp_path))
    with pytest.raises(ConfigError, match="unknown key colour"):
        edgezo.simulate(colour="red", out=str(tmp_path))
    with pytest.raises(ConfigError, match="--overwrite and --resume"):
        edgezo.SimulateSettings(overwrite=True, resume=True).validate()
    with pytest.raises(ConfigError, match="--rounds must be at least 1"):
        edgezo.SimulateJob(edgezo.JobConfig(rounds=0))


def test_plotting_leaves_matplotlib_global_state_alone(tmp_path):
    import matplotlib

    from edgezo.app.plot import plot_accuracy_vs_flops

    matplotlib.use("svg")
    import matplotlib.pyplot as plt

    plot_accuracy_vs_flops([{"flops": 1.0, "eval_accuracy": 0.5}, {"flops": 2.0, "eval_accuracy": 0.6}], tmp_path / "p.png", "t")
    assert matplotlib.get_backend() == "svg" and plt.get_fignums() == []
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    fig = edgezo.accuracy_figure([{"flops": 1.0, "eval_accuracy": 0.5}], "t")
    assert fig.axes[0].get_ylabel() == "validation accuracy (%)"


def test_the_example_runs(tiny_llama, sst2_dir, tmp_path):
    example = __import__("pathlib").Path(__file__).parents[1] / "examples" / "simulate_api.py"
    done = subprocess.run([sys.executable, str(example), "--model", str(tiny_llama), "--data", str(sst2_dir), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "stopped: True" in done.stdout and "round 4:" in done.stdout and (tmp_path / "example.png").exists()
