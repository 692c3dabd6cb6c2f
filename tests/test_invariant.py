"""Issue 13's invariant: the fixed jobs of ``invariant_jobs.py`` give, bit for bit, the
fingerprints, losses, accuracies, forward counts, FLOPs and bytes recorded before the redesign."""

from __future__ import annotations

import json

import pytest

from invariant_jobs import FEDERATION_JOB, GOLDEN, SIMULATE_JOBS, environment, run_federation, run_simulate

GOLDEN_DATA = json.loads(GOLDEN.read_text())


@pytest.fixture(scope="module")
def same_environment():
    recorded, here = GOLDEN_DATA["environment"], environment()
    if recorded != here:
        pytest.skip(f"golden values were recorded with {recorded}; this machine has {here} (other kernels round "
                    "differently): run `python tests/invariant_jobs.py --record` on the old code to compare here")


def assert_same(name: str, got: dict) -> None:
    want = GOLDEN_DATA["jobs"][name]
    assert len(got["rows"]) == len(want["rows"]), f"{name}: {len(got['rows'])} metrics rows, recorded {len(want['rows'])}"
    for g, w in zip(got["rows"], want["rows"]):
        assert g == w, f"{name}: round {w.get('round')} differs from the recorded run"
    assert got == want


@pytest.mark.parametrize("name", list(SIMULATE_JOBS))
def test_simulate_job_is_unchanged(name, same_environment, tiny_llama, sst2_dir, tmp_path):
    assert_same(name, run_simulate(name, tiny_llama, sst2_dir, tmp_path))


def test_federation_job_is_unchanged(same_environment, tiny_llama, sst2_dir, tmp_path, mosquitto):
    assert_same(FEDERATION_JOB, run_federation(tiny_llama, sst2_dir, tmp_path, mosquitto.address))
