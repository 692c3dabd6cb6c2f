"""The five-seed report of the default job (benchmarks/default_job_seeds.py): its pairing and
intervals on run folders written the way ``edgezo simulate`` writes them."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import default_job_seeds as djs  # noqa: E402


def write_run(folder: Path, before: list[int], after: list[int], lp_before: float, lp_after: float) -> None:
    folder.mkdir(parents=True)
    lines = [{"round": 0, "hits": before, "label_logprobs": [lp_before] * len(before)},
             {"round": 30, "hits": after, "label_logprobs": [lp_after] * len(after)}]
    (folder / "eval_examples.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (folder / "summary.json").write_text(json.dumps({"flops": 9.4e13, "wall_s": 1300.0, "rounds": 30}))


def test_a_gain_on_every_seed_is_resolved_and_a_null_one_is_not(tmp_path):
    rng = np.random.default_rng(0)
    before = [list(rng.integers(0, 2, 200)) for _ in range(3)]
    for seed, b in enumerate(before):
        improved = [1 if i % 4 == 0 else h for i, h in enumerate(b)]  # ~12% of the examples flip to right
        write_run(djs.run_folder(seed, tmp_path / "gain"), [int(x) for x in b], [int(x) for x in improved], -0.7, -0.5)
        write_run(djs.run_folder(seed, tmp_path / "null"), [int(x) for x in b], [int(x) for x in b], -0.7, -0.7)
    gain = djs.summarise([0, 1, 2], tmp_path / "gain")
    assert gain["accuracy"]["gain_resolved"] and 0 < gain["accuracy"]["gain_low"] <= gain["accuracy"]["gain"]
    assert gain["eval_loss"]["before"] == pytest.approx(0.7) and gain["eval_loss"]["after_mean"] == pytest.approx(0.5)
    assert gain["eval_loss"]["gain"] == pytest.approx(-0.2)  # the loss went down by 0.2
    null = djs.summarise([0, 1, 2], tmp_path / "null")
    assert not null["accuracy"]["gain_resolved"] and null["accuracy"]["gain"] == 0
    text = djs.render(null)
    assert "not resolved" in text and text.startswith(djs.BEGIN) and text.endswith(djs.END)


def test_an_unfinished_seed_is_left_out_and_none_finished_is_a_clear_error(tmp_path):
    write_run(djs.run_folder(3, tmp_path), [0, 1] * 50, [1, 1] * 50, -0.7, -0.6)
    (djs.run_folder(4, tmp_path)).mkdir()  # started, no summary.json yet
    assert djs.summarise([3, 4], tmp_path)["seeds"] == [3]
    with pytest.raises(SystemExit, match="no finished run"):
        djs.summarise([0], tmp_path)


def test_the_section_replaces_itself_in_results(tmp_path):
    md = tmp_path / "RESULTS.md"
    md.write_text("# Results\n\nbefore\n")
    djs.write_section(f"{djs.BEGIN}\nfirst\n{djs.END}", md)
    djs.write_section(f"{djs.BEGIN}\nsecond\n{djs.END}", md)
    text = md.read_text()
    assert "second" in text and "first" not in text and text.count(djs.BEGIN) == 1 and "before" in text


def test_the_runs_are_the_default_job_with_only_the_seed_and_folder(tmp_path):
    out = tmp_path / "seed-3"
    assert djs.command(3, out) == ["--seed", "3", "--out", str(out), "--overwrite", "--quiet"]
    out.mkdir()
    (out / "job.json").write_text("{}")  # a run stopped part way continues
    assert djs.command(3, out) == ["--seed", "3", "--out", str(out), "--resume", "--quiet"]
