"""The pure parts of the DeComFL reference check (benchmarks/decomfl_reference.py): the forward
counts it compares (tied to edgezo's real step), the seed encoding of the matched mode, and its
report on run results written the way its runs write them. The runs themselves need the
authors' code (not committed) and minutes of CPU; they are the benchmark, not a test."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import decomfl_reference as dr  # noqa: E402
from toy_executor import QuadraticExecutor  # noqa: E402

from edgezo.estimators import ProbeConfig  # noqa: E402
from edgezo.methods.single_block import single_block_step  # noqa: E402


@pytest.mark.parametrize("difference", ["forward", "central"])
@pytest.mark.parametrize("p", [1, 5])
def test_the_edgezo_count_is_what_its_step_runs_and_theirs_adds_one_logging_forward(p, difference):
    ex = QuadraticExecutor(seed=p)
    result = single_block_step(ex, 0.0, ProbeConfig("decomfl", p, 1, 1e-3, "joint", difference), run_seed=0, rnd=1, step=0)
    assert result.forwards1 == result.forwards2 == dr.edgezo_forwards_per_round(p, 1, difference)
    assert dr.edgezo_forwards_per_round(p, 3, difference) == 3 * result.forwards1
    assert dr.reference_forwards_per_round(p, 3, difference) == 3 * (result.forwards1 + 1)
    assert dr.edgezo_forwards_per_round(5, 1, "forward") == 6 and dr.reference_forwards_per_round(5, 1, "forward") == 7


def test_matched_seeds_name_every_round_and_step_from_round_one():
    seeds = dr.EncodedSeeds(k=2)
    drawn = [seeds.randint(0, 1000000) for _ in range(6)]
    assert [dr.decode_seed(x) for x in drawn] == [(1, 0), (1, 1), (2, 0), (2, 1), (3, 0), (3, 1)]
    assert seeds.sample(range(4), 4) == [0, 1, 2, 3]  # every client, in edgezo's device order


def write_runs(folder: Path, gap: float, seeds=(0, 1, 2)) -> None:
    """Result files as run_one writes them: 10 rounds, 64 evaluation examples, theirs = edgezo + gap."""
    settings = dr.asdict(dr.Settings(rounds=10))
    for seed in seeds:
        rng = np.random.default_rng(seed)
        curve = list(0.8 - 0.02 * np.arange(10) + rng.normal(0, 0.05, 10))
        before, after = list(rng.uniform(0.5, 1.0, 64)), list(rng.uniform(0.3, 0.8, 64))
        for impl, shift in (("reference", gap), ("edgezo", 0.0)):
            rows = [{"round": r + 1, "loss": c + shift + rng.normal(0, 0.002), "logged_loss": c, "forwards_per_client": [7, 7] if impl == "reference" else 6.0,
                     "scalars": [[1.0, -2.0, 0.5, 0.1, 3.0]]} for r, c in enumerate(curve)]
            data = {"impl": impl, "mode": "native", "seed": seed, "settings": settings, "rounds": rows, "cpu_s_in_process": 1.0,
                    "eval_before": {"loss": before, "hit": [1] * 64},
                    "eval_after": {"loss": [x + shift + rng.normal(0, 0.002) for x in after], "hit": [1] * 64}}
            out = folder / f"native-{impl}-seed{seed}"
            out.mkdir(parents=True)
            (out / "result.json").write_text(json.dumps(data))


def test_equal_curves_are_within_noise_and_shifted_ones_are_not(tmp_path, monkeypatch):
    write_runs(tmp_path / "same", gap=0.0)
    monkeypatch.setattr(dr, "RUNS", tmp_path / "same")
    same = dr.native_summary(dr.load_runs())
    assert dr.includes_zero(same["late_gap"]) and dr.includes_zero(same["eval_gap"])
    assert same["eval_drop_edgezo"]["low"] > 0  # the fixture's training lowers the loss: the check can see a change
    assert dr.forwards_summary(dr.load_runs())["reference_observed"] == [7]
    write_runs(tmp_path / "shifted", gap=0.1)
    monkeypatch.setattr(dr, "RUNS", tmp_path / "shifted")
    shifted = dr.native_summary(dr.load_runs())
    assert shifted["late_gap"]["low"] > 0.05 and not dr.includes_zero(shifted["eval_gap"])
    report = {"settings": dr.asdict(dr.Settings()), "forwards": dr.forwards_summary(dr.load_runs()), "matched": None,
              "native": shifted, "differences": [list(d) for d in dr.DIFFERENCES]}
    text = dr.render_markdown(report)
    assert "NOT within noise" in text and text.startswith(dr.BEGIN) and text.endswith(dr.END)


def test_the_section_goes_before_the_gradient_quality_one_then_is_replaced_in_place(tmp_path, monkeypatch):
    results = tmp_path / "RESULTS.md"
    results.write_text(f"# Results\n\nintro\n\n{dr.ANCHOR}\nbench\n")
    monkeypatch.setattr(dr, "RESULTS_MD", results)
    dr.insert_section(f"{dr.BEGIN}\nfirst\n{dr.END}")
    dr.insert_section(f"{dr.BEGIN}\nsecond\n{dr.END}")
    text = results.read_text()
    assert text.count(dr.BEGIN) == 1 and "first" not in text
    assert text.index("second") < text.index(dr.ANCHOR) and text.endswith("bench\n")
    results.write_text(f"# Results\n\nintro\n\n## Gradient quality\n\n{dr.ANCHOR}\nbench\n")
    dr.insert_section(f"{dr.BEGIN}\nthird\n{dr.END}")
    dr.insert_section(f"{dr.BEGIN}\nfourth\n{dr.END}")
    text = results.read_text()  # before the heading that opens the next section, which its writer rewrites from
    assert text.count(dr.BEGIN) == 1 and "third" not in text and text.index("fourth") < text.index("## Gradient quality")


def test_no_runs_and_no_authors_code_are_clear_errors(tmp_path, monkeypatch):
    monkeypatch.setattr(dr, "RUNS", tmp_path)
    with pytest.raises(SystemExit, match="no finished runs"):
        dr.load_runs()
    monkeypatch.setenv("DECOMFL_REPO", str(tmp_path / "absent"))
    with pytest.raises(SystemExit, match="git clone https://github.com/ZidongLiu/DeComFL"):
        dr.load_reference()


def test_matched_summary_reports_the_largest_gaps_and_each_side_s_forwards(tmp_path, monkeypatch):
    settings = dr.asdict(dr.Settings(local_steps=2))
    for impl, shift, forwards in (("reference", 0.0, [14, 14]), ("edgezo", 1e-3, 12.0)):
        rows = [{"round": r, "loss": 0.5 + r * shift, "forwards_per_client": forwards,
                 "scalars": [[1.0 + shift, -4.0], [2.0, 0.5 - shift]]} for r in (1, 2, 3)]
        data = {"impl": impl, "mode": "matched-k2", "seed": 0, "settings": settings, "rounds": rows, "cpu_s_in_process": 1.0,
                "eval_after": {"loss": [0.7 + shift, 0.6], "hit": [1, 0]}}
        (tmp_path / f"matched-k2-{impl}-seed0").mkdir()
        (tmp_path / f"matched-k2-{impl}-seed0" / "result.json").write_text(json.dumps(data))
    monkeypatch.setattr(dr, "RUNS", tmp_path)
    m = dr.matched_summary(dr.load_runs(), "matched-k2")
    assert m["scalars"] == 12 and m["max_abs_scalar"] == 4.0 and m["local_steps"] == 2
    assert m["max_scalar_gap"] == pytest.approx(1e-3) and m["max_loss_gap"] == pytest.approx(3e-3)
    assert m["forwards_reference"] == [14.0] and m["forwards_edgezo"] == [12.0]
    assert dr.matched_summary(dr.load_runs()) is None  # no K = 1 matched pair here
