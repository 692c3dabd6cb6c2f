"""The pure parts of benchmarks/browser_job.py (issue 26's 2 Python + 2 browser job against 4 Python):
the paired statistics on small cases whose answer is known by hand, the figures read from a job's
outputs, and the result file's shape. The benchmark itself (two 15-25 minute jobs) is not a test."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.append(str(Path(__file__).resolve().parents[1] / "benchmarks"))

import browser_job as bj  # noqa: E402


def test_mcnemar_exact_counts_the_discordant_examples_and_gives_the_binomial_p_value():
    a = [1] * 10 + [0] * 2 + [1, 0]  # a alone right on 10, b alone right on 2, both right on 1, both wrong on 1
    b = [0] * 10 + [1] * 2 + [1, 0]
    got = bj.mcnemar_exact(a, b)
    assert (got["only_a"], got["only_b"]) == (10, 2)
    assert got["p_value"] == pytest.approx(2 * sum(math.comb(12, i) for i in range(3)) / 2**12)  # 0.0386
    assert bj.mcnemar_exact([1, 0, 1], [1, 0, 1])["p_value"] == 1.0
    with pytest.raises(ValueError, match="not the same evaluation set"):
        bj.mcnemar_exact([1, 0], [1, 0, 1])


def job(hits, logprobs) -> dict:
    return {"final_hits": list(hits), "final_label_logprobs": list(logprobs)}


def test_identical_final_results_are_a_zero_difference_not_resolved():
    rng = np.random.default_rng(3)
    hits, lp = rng.integers(0, 2, 200), -rng.random(200)
    got = bj.paired_final(job(hits, lp), job(hits, lp), replicates=200)
    assert got["accuracy"]["difference"] == 0.0 and got["accuracy"]["ci95"] == [0.0, 0.0]
    assert not got["accuracy"]["resolved"] and got["accuracy"]["text"].startswith("not resolved")
    assert got["identical_hits"] and got["mcnemar"]["p_value"] == 1.0


def test_a_clear_difference_is_resolved_with_the_sign_of_job_minus_baseline():
    n = 400
    base_hits, better_hits = np.zeros(n, int), np.ones(n, int)
    base_hits[:200] = 1  # baseline 50%, job 100%: +0.5
    got = bj.paired_final(job(better_hits, np.full(n, -0.1)), job(base_hits, np.full(n, -0.7)), replicates=300)
    acc = got["accuracy"]
    assert acc["difference"] == pytest.approx(0.5) and acc["resolved"] and 0.4 < acc["ci95"][0] <= 0.5 <= acc["ci95"][1] < 0.6
    loss = got["eval_loss"]  # the job's loss is 0.1, the baseline's 0.7: job minus baseline is -0.6 exactly, every replicate
    assert loss["difference"] == pytest.approx(-0.6) and loss["ci95"] == pytest.approx([-0.6, -0.6]) and loss["resolved"]
    assert got["mcnemar"]["only_a"] == 200 and got["mcnemar"]["only_b"] == 0 and got["mcnemar"]["p_value"] < 1e-50


def test_job_figures_read_round_zero_and_the_end_and_the_round_times():
    rows = [{"round": 0, "eval_accuracy": 0.5, "eval_loss": 0.7, "wall_s": 100.0},
            {"round": 1, "eval_accuracy": None, "wall_s": 130.0},
            {"round": 2, "eval_accuracy": 0.75, "eval_loss": 0.6, "wall_s": 260.0}]
    examples = [{"round": 0, "hits": [1, 0], "label_logprobs": [-0.1, -1.3]}, {"round": 2, "hits": [1, 1], "label_logprobs": [-0.2, -0.5]}]
    got = bj.job_figures(rows, examples)
    assert (got["round0_accuracy"], got["final_accuracy"], got["round0_eval_loss"], got["final_eval_loss"]) == (0.5, 0.75, 0.7, 0.6)
    assert got["round_seconds"] == [30.0, 130.0] and got["final_hits"] == [1, 1] and got["final_label_logprobs"] == [-0.2, -0.5]
    with pytest.raises(ValueError, match="evaluates at round 0 and at the end"):
        bj.job_figures(rows[:2], examples[:1])


def test_scalar_agreement_is_relative_to_the_python_device():
    page = {"dev2/1": {"scalars": [1.0001, -2.0]}}
    python = {"dev2/1": {"scalars": [1.0, -2.0]}}
    got = bj.scalar_agreement(page, python, ("dev2",))
    assert got["dev2"]["max_relative_difference"] == pytest.approx(1e-4) and got["dev2"]["by_round"] == pytest.approx({"1": 1e-4})


def full_job() -> dict:
    return {k: [] if k in ("final_hits", "final_label_logprobs", "round_seconds") else {} for k in bj.REQUIRED_JOB_KEYS}


def test_the_result_file_shape_is_checked():
    doc = {"settings": bj.SETTINGS, "machine": {}, "jobs": {"python4": full_job()}}
    bj.check_result(doc)
    broken = {**doc, "jobs": {"python4": {k: v for k, v in full_job().items() if k != "final_hits"}}}
    with pytest.raises(ValueError, match="lacks \\['final_hits'\\]"):
        bj.check_result(broken)
    with pytest.raises(ValueError, match="no 'comparison'"):
        bj.check_result({**doc, "jobs": {"python4": full_job(), "mixed": full_job()}})
    with pytest.raises(ValueError, match="has no 'machine'"):
        bj.check_result({"settings": [], "jobs": {}})


def test_settings_overrides_replace_values_and_refuse_unknown_options():
    got = bj.settings_with({"--rounds": "1"})
    assert got[got.index("--rounds") + 1] == "1" and len(got) == len(bj.SETTINGS)
    assert bj.SETTINGS[bj.SETTINGS.index("--rounds") + 1] == "8"  # the job's own settings untouched
    with pytest.raises(ValueError, match="--lr is not one of the job's settings"):
        bj.settings_with({"--lr": "1"})


def test_thread_ratios_pair_each_repeat_and_give_the_sign_test():
    import browser_probe as bp  # the probe benchmark's pure part (its module loads torch)

    samples = {"chromium-wasm-1 gguf": [10.0, 20.0, 30.0, 40.0], "chromium-wasm-2 gguf": [5.0, 30.0, 60.0, 44.0], "torch": [1.0] * 4}
    got = bp.thread_ratios(samples, (1, 2))
    assert list(got) == ["gguf"] and got["gguf"]["ratios"] == [0.5, 1.5, 2.0, 1.1] and got["gguf"]["median"] == 1.3
    assert (got["gguf"]["slower_in"], got["gguf"]["of"]) == (3, 4) and got["gguf"]["sign_test_p"] == pytest.approx(2 * 5 / 16)
