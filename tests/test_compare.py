"""The comparison harness (benchmarks/compare.py) end to end on a tiny model: real `edgezo
simulate` children, cached rows, resume after an interruption, the report; and the sweep
definitions' equal-compute and cost arithmetic."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest

sys.path.append(str(Path(__file__).resolve().parents[1] / "benchmarks"))  # compare, compare_report, sweeps

import compare  # noqa: E402
import compare_report  # noqa: E402
import sweeps  # noqa: E402
import sweeps_gpu  # noqa: E402
from sweeps import GridSpec, Method, Settings, TaskSettings  # noqa: E402

CLIENTS, K, P2, FEDZO_P = 2, 2, 2, 2


@pytest.fixture(scope="module")
def tiny_settings(tiny_llama) -> Settings:
    """spzo and fedzo on a tiny SST-2 job: 2 devices, K=2, 2 rounds, seeds 0 and 1. No grid rows
    exist (the grid point differs from the fallback), so the runs use the stated fallbacks."""
    task = TaskSettings("sst2", max_length=32, eval_samples=16, budget_flops=1e9, seeds=(0, 1),
                        train_flops_per_example=1e6, eval_flops_per_example=1e6, cpu_flops_per_s=1e9,
                        train_samples=64, rounds=2)
    methods = (Method("spzo", "spzo", p=1, p2=P2), Method("fedzo", "fedzo", p=FEDZO_P))
    return Settings(model=str(tiny_llama), layers=4, default_split=2, clients=CLIENTS, local_steps=K, batch_size=4,
                    tasks={"sst2": task}, methods=methods, grid={m.label: GridSpec((2e-3,)) for m in methods},
                    fallback={m.label: (1e-3, 1e-3) for m in methods}, ablation=(), dirichlet_methods=())


@pytest.fixture(scope="module")
def swept(tiny_settings, tmp_path_factory):
    """The main sweep run once with two children at a time; returns (rows dir, runs dir, runner)."""
    root = tmp_path_factory.mktemp("compare")
    rows, runs = root / "rows", root / "runs"
    runner = compare.run_sweeps(tiny_settings, ["main"], rows, runs, jobs=2, say=lambda msg: None)
    return rows, runs, runner


def test_every_run_leaves_a_row(swept, tiny_settings):
    rows_dir, runs_dir, runner = swept
    assert runner.failed == [] and runner.launched == 4
    rows = compare.load_rows(rows_dir)
    specs = sweeps.build_sweep(tiny_settings, "main", rows)
    assert sorted(rows) == sorted(s.key for s in specs) and len(rows) == 4
    for spec in specs:
        row = rows[spec.key]
        assert (row["label"], row["seed"], row["rounds"], row["lr"]) == (spec.name, spec.seed, 2, 1e-3)
        assert [p["round"] for p in row["curve"]] == [0, 1, 2]  # --eval-every 1 for 2 rounds
        assert row["flops"] == row["curve"][-1]["flops"] > row["curve"][1]["flops"] > 0
        assert 0 <= row["final_accuracy"] <= 1 and row["best_accuracy"] >= row["final_accuracy"]
        assert row["peak_rss_mib"] > 50 and row["cpu_s"] > 0 and row["wall_s"] > 0
        assert not (runs_dir / spec.key / "model").exists()  # the 540 MB copy is deleted
        assert (runs_dir / spec.key / "metrics.jsonl").is_file()


def test_forward_difference_is_counted_with_its_real_forwards(swept):
    """FedZO with P=2: P+1 = 3 full forwards per step per device; SPZO (central): 2*P1 block-1
    and 2*P1*P2 block-2 forwards."""
    rows = list(compare.load_rows(swept[0]).values())
    per_step = CLIENTS * K
    for row in rows:
        first = row["first_round"]
        if row["label"] == "fedzo":
            assert first["forwards_block1"] == first["forwards_block2"] == per_step * (FEDZO_P + 1)
            assert row["forwards_block1"] == 2 * per_step * (FEDZO_P + 1)
        else:
            assert first["forwards_block1"] == per_step * 2 and first["forwards_block2"] == per_step * 2 * P2
    fedzo, spzo = (next(r for r in rows if r["label"] == label and r["seed"] == 0) for label in ("fedzo", "spzo"))
    # FedZO uploads the full trainable delta; SPZO K*P1*P2 scalars
    assert fedzo["bytes_up_per_device"] > 10 * spzo["bytes_up_per_device"]


def test_cached_runs_are_not_recomputed_and_stopped_ones_without_a_seed_log_are_redone(swept, tiny_settings):
    rows_dir, runs_dir, _ = swept
    rows = compare.load_rows(rows_dir)
    victim = sorted(rows)[0]
    (rows_dir / f"{victim}.json").unlink()  # as if the harness had died while this child ran
    (runs_dir / victim / "junk").write_text("from the interrupted run")
    (runs_dir / victim / "seedlog.jsonl").unlink()  # as FedAvg's runs: nothing to continue from
    before = {k: (rows_dir / f"{k}.json").stat().st_mtime_ns for k in rows if k != victim}
    runner = compare.run_sweeps(tiny_settings, ["main"], rows_dir, runs_dir, jobs=2, say=lambda msg: None)
    assert runner.launched == 1 and runner.failed == []
    assert {k: (rows_dir / f"{k}.json").stat().st_mtime_ns for k in before} == before
    assert (rows_dir / f"{victim}.json").is_file() and not (runs_dir / victim / "junk").exists()


def test_a_stopped_zero_order_run_continues_from_its_seed_log(swept, tiny_settings):
    """A run stopped after round 1 (its row never written) is continued by `simulate --resume`, not
    redone: it reaches the uninterrupted run's fingerprint, and its row charges both attempts."""
    rows_dir, runs_dir, _ = swept
    rows = compare.load_rows(rows_dir)
    key = next(k for k, r in sorted(rows.items()) if r["label"] == "spzo")
    out, whole = runs_dir / key, rows[key]
    (rows_dir / f"{key}.json").unlink()
    (out / "summary.json").unlink()
    for name, keep in (("metrics.jsonl", lambda d: d["round"] <= 1), ("seedlog.jsonl", lambda d: d["round"] <= 1)):
        lines = [x for x in (out / name).read_text().splitlines() if keep(json.loads(x))]
        (out / name).write_text("\n".join(lines) + "\n")
    first = (out / compare.ATTEMPTS).read_text()
    assert compare.status(next(r for r in sweeps.build_sweep(tiny_settings, "main", {}) if r.key == key), {}, runs_dir) == "resumes"
    runner = compare.run_sweeps(tiny_settings, ["main"], rows_dir, runs_dir, jobs=1, say=lambda msg: None)
    assert runner.launched == 1 and runner.failed == []
    row = compare.load_rows(rows_dir)[key]
    assert row["fingerprint"] == whole["fingerprint"] and [p["round"] for p in row["curve"]] == [0, 1, 2]
    attempts = [json.loads(x) for x in (out / compare.ATTEMPTS).read_text().splitlines()]
    assert (out / compare.ATTEMPTS).read_text().startswith(first) and [a["resumed"] for a in attempts] == [False, True]
    assert row["attempts"] == 2 and row["usage_complete"] and row["cpu_s"] == pytest.approx(sum(a["cpu_s"] for a in attempts), abs=0.2)
    assert "resuming after round 1" in (out / "log.txt").read_text()


def test_a_failed_run_is_redone_from_scratch(swept, tiny_settings):
    rows_dir, runs_dir, _ = swept
    key = sorted(compare.load_rows(rows_dir))[-1]
    (rows_dir / f"{key}.json").unlink()
    (runs_dir / key / "FAILED").write_text("exit status 1")
    assert not compare.resumable(runs_dir / key)
    runner = compare.run_sweeps(tiny_settings, ["main"], rows_dir, runs_dir, jobs=1, say=lambda msg: None)
    assert runner.launched == 1 and compare.load_rows(rows_dir)[key]["attempts"] == 1


def test_dry_run_lists_cached_runs(swept, tiny_settings, capsys):
    rows_dir, runs_dir, _ = swept
    assert compare.main(["run", "--dry-run", "--sweep", "main", "--rows", str(rows_dir), "--runs", str(runs_dir)], tiny_settings) == 0
    out = capsys.readouterr().out
    assert out.count("cached ") == 4 and "no grid rows yet; using the fallback" in out
    assert "0.00 CPU-h still to run" in out


def test_report_section_and_figure(swept, tiny_settings, tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text(f"# Results\n\nkeep me\n\n{compare_report.BEGIN}\nstale\n{compare_report.END}\n\ntail kept\n")
    compare_report.write_report(tiny_settings, compare.load_rows(swept[0]), results, tmp_path / "results")
    text = results.read_text()
    assert "keep me" in text and "tail kept" in text and "stale" not in text
    section = text.split(compare_report.BEGIN)[1].split(compare_report.END)[0]
    assert "![sst2: accuracy against cumulative FLOPs](results/compare_sst2.png)" in section
    assert "| fedzo | 2 |" in section and "main 4/4" in section and "backward" in section
    assert (tmp_path / "results" / "compare_sst2.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fresh = tmp_path / "new" / "RESULTS.md"  # an absent file is created with the markers
    fresh.parent.mkdir()
    compare_report.write_report(tiny_settings, compare.load_rows(swept[0]), fresh, tmp_path / "new" / "results")
    assert fresh.read_text().count(compare_report.BEGIN) == 1


# -- the sweep definitions (no runs) ------------------------------------------------------------
def test_equal_compute_rounds_follow_the_forward_count_model():
    s, task = sweeps.SETTINGS, sweeps.SETTINGS.tasks["sst2"]
    for m in s.methods:
        spent = sweeps.rounds_for(s, task, m, task.budget_flops) * sweeps.round_flops(s, task, m)
        assert abs(spent / task.budget_flops - 1) < 0.1, m.label
    f1, f2 = sweeps.block_fractions(s, task, 20)
    assert f1 + f2 == pytest.approx(1) and 0.6 < f1 < 2 / 3
    spzo, fedzo, decomfl = (s.method(label) for label in ("spzo", "fedzo", "decomfl"))
    assert spzo.step_forwards(f1, f2) == pytest.approx(2 * (f1 + 4 * f2))
    assert fedzo.step_forwards(f1, f2) == 6 and decomfl.step_forwards(f1, f2) == 10
    assert replace(spzo, variant="clean").step_forwards(f1, f2) == pytest.approx(f1 + 2 + 8 * f2)


def test_the_required_sweep_fits_the_cpu_budget():
    s = sweeps.SETTINGS
    specs = {r.key: r for name in sweeps.SWEEPS for r in sweeps.build_sweep(s, name, {})}
    assert sum(r.est_cpu_s for r in specs.values()) / 3600 <= 10.0
    main = sweeps.build_sweep(s, "main", {})
    for task, seeds in (("sst2", 3), ("rte", 3), ("boolq", 1), ("wic", 1)):
        assert len({r.seed for r in main if r.task == task}) >= seeds
    assert all(2 <= r.eval_count <= 10 for r in main)


def test_grid_winner_and_target_arithmetic():
    s = sweeps.SETTINGS
    grid = [r for r in sweeps.grid_runs(s) if r.name == "spzo"]
    rows = {r.key: {"final_accuracy": 0.80, "best_accuracy": 0.81} for r in grid}
    rows[grid[2].key] = {"final_accuracy": 0.83, "best_accuracy": 0.83}
    winners = sweeps.choose_winners(s, rows)
    assert (winners["spzo"]["lr"], winners["spzo"]["eps"]) == (grid[2].lr, grid[2].eps) and winners["spzo"]["source"] == "grid"
    assert winners["fedzo"]["source"] == "fallback"
    row = {"flops": 30.0, "curve": [{"accuracy": 0.70, "flops": 0.0}, {"accuracy": 0.72, "flops": 10.0},
                                    {"accuracy": 0.76, "flops": 20.0}, {"accuracy": 0.75, "flops": 30.0}]}
    hit = compare_report.flops_to_target(row, 0.04)  # +4 points: between 10 (+2) and 20 (+6) FLOPs
    assert hit.reached and hit.flops == pytest.approx(15.0)
    miss = compare_report.flops_to_target(row, 0.07)
    assert not miss.reached and miss.flops == 30.0
    value, bound = compare_report.ratio(hit, miss)
    assert value == pytest.approx(2.0) and bound == ">"


def test_no_target_where_the_best_gain_is_within_the_evaluation_noise():
    s = sweeps.SETTINGS
    main = sweeps.build_sweep(s, "main", {})
    floor = compare_report.noise_floor(s.tasks["rte"].eval_samples)
    assert floor == pytest.approx(0.5 / s.tasks["rte"].eval_samples ** 0.5)

    def pairs(gain_of_task):
        return [(r, {"final_accuracy": 0.5 + gain_of_task[r.task], "initial_accuracy": 0.5}) for r in main]

    below = compare_report.targets(s, pairs({t: 0.9 * compare_report.noise_floor(ts.eval_samples) for t, ts in s.tasks.items()}))
    assert all(v is None for v in below.values())
    above = compare_report.targets(s, pairs({t: 0.10 for t in s.tasks}))
    assert all(v == pytest.approx(compare_report.TARGET_FRACTION * 0.10) for v in above.values())


# -- presets ------------------------------------------------------------------------------------
COMMITTED_ROWS = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "compare" / "rows"


def test_every_committed_row_is_still_a_run_of_the_cpu_sweep():
    """A committed row is found again by its cache key: a change to the sweeps' arguments (a new
    option passed, a default spelled out) would silently orphan the measured rows."""
    rows = compare.load_rows(COMMITTED_ROWS)
    if not rows:
        pytest.fail(f"no rows under {COMMITTED_ROWS}: the committed sweep is missing")
    keys = {r.key for name in sweeps.SWEEPS for r in sweeps.build_sweep(sweeps.SETTINGS, name, rows)}
    # MeZO first ran the shared grid and diverged (why MEZO_GRID is lower); those rows stay as evidence.
    keys |= {r.key for r in sweeps.grid_runs(replace(sweeps.SETTINGS, grid={"mezo": sweeps.ZO_GRID}))}
    assert set(rows) <= keys, sorted(set(rows) - keys)


@pytest.mark.parametrize("name", sorted(sweeps_gpu.MODELS))
def test_a_gpu_preset_is_the_cpu_sweep_on_the_papers_model(name):
    from edgezo.app.commands.simulate import simulate

    shape, cpu = sweeps_gpu.MODELS[name], sweeps.SETTINGS
    s = sweeps_gpu.preset(name)
    main = sweeps.build_sweep(s, "main", {})
    assert len(main) == len(sweeps.build_sweep(cpu, "main", {}))
    for spec in main:
        args = list(spec.args)
        assert args[args.index("--model") + 1] == shape.hub_id and args[args.index("--device") + 1] == "cuda"
        assert args[args.index("--eval-samples") + 1] == str(sweeps_gpu.FULL_VALIDATION[spec.task])
        simulate.make_context("simulate", args)  # every argument is one the real CLI accepts
    spzo = next(r for r in main if r.name == "spzo" and r.task == "sst2")
    cpu_spzo = next(r for r in sweeps.build_sweep(cpu, "main", {}) if r.name == "spzo" and r.task == "sst2")
    assert abs(spzo.rounds / cpu_spzo.rounds - sweeps_gpu.ROUNDS_SCALE) < 1.5
    assert f"--split {shape.default_split}" in " ".join(spzo.args)
    splits = [c["split"] for _, c in s.ablation if "split" in c]
    assert shape.default_split in splits and all(0 < x < shape.layers for x in splits)


def test_gpu_preset_has_its_own_rows_and_report(tmp_path, capsys):
    paths = compare.preset_paths("roberta-large")
    assert paths["rows"] != compare.ROWS and paths["results"].name == "RESULTS.md" and "compare-roberta-large" in str(paths["rows"])
    assert compare.main(["--preset", "roberta-large", "run", "--sweep", "main", "--dry-run",
                         "--rows", str(tmp_path / "rows"), "--runs", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert "GPU-h" in out and "CPU-h" not in out


def test_a_reports_header_names_the_rows_it_was_made_from(tmp_path):
    assert compare.shown_path(compare.ROWS) == "benchmarks/results/compare/rows/"
    gpu_rows = compare.preset_paths("opt-1.3b")["rows"]
    assert compare.shown_path(gpu_rows) == "benchmarks/results/compare-opt-1.3b/rows/"
    assert "from benchmarks/results/compare-opt-1.3b/rows/;" in compare_report.render(
        sweeps_gpu.preset("opt-1.3b"), {}, tmp_path, tmp_path, compare.shown_path(gpu_rows)).splitlines()[0]


def test_the_harness_runs_a_masked_lm_with_an_explicit_device(tiny_models, tiny_settings, tmp_path):
    """What a RoBERTa preset runs, at tiny scale: a masked LM through the harness, --device passed."""
    s = replace(tiny_settings, model=str(tiny_models["roberta"]), device="cpu",
                tasks={"sst2": replace(tiny_settings.tasks["sst2"], seeds=(0,), rounds=1)},
                methods=(tiny_settings.method("spzo"), Method("fedavg", "fedavg", zero_order=False)),
                grid={"spzo": GridSpec((2e-3,)), "fedavg": GridSpec((2e-3,))}, fallback={"spzo": (1e-3, 1e-3), "fedavg": (1e-3, 1e-3)})
    runner = compare.run_sweeps(s, ["main"], tmp_path / "rows", tmp_path / "runs", jobs=1, say=lambda msg: None)
    assert runner.failed == [] and runner.launched == 2
    for row in compare.load_rows(tmp_path / "rows").values():
        assert row["args"][row["args"].index("--device") + 1] == "cpu" and len(row["curve"]) == 2
        assert row["peak_gpu_mib"] is None  # recorded on a GPU only


def test_a_gpu_reports_memory_is_the_gpus_own_peak():
    s = sweeps_gpu.preset("roberta-large")
    spec = next(r for r in sweeps.build_sweep(s, "main", {}) if r.name == "spzo")
    row = {"peak_rss_mib": 3000.0, "peak_gpu_mib": 1234.0, "bytes_up_per_device": 480, "bytes_down_per_device": 480,
           "rounds": 10, "cpu_s": 60.0}
    gpu = "\n".join(compare_report.memory_lines(s, [(spec, row)]))
    cpu = "\n".join(compare_report.memory_lines(sweeps.SETTINGS, [(spec, row)]))
    assert "| spzo | 1234 |" in gpu and "max_memory_allocated" in gpu
    assert "| spzo | 3000 |" in cpu


def test_seed_level_targets_where_the_task_has_none():
    """SST-2's mean gain can sit in the noise while one seed's clears it: the one-seed tables
    (ablation, Dirichlet) then use that seed's own target, and the task section lists it."""
    s = sweeps.SETTINGS
    main = [r for r in sweeps.build_sweep(s, "main", {}) if r.task == "sst2"]
    floor = compare_report.noise_floor(s.tasks["sst2"].eval_samples)

    def row(spec):
        g = 2 * floor if spec.seed == 0 and spec.name == "spzo" else (-2 * floor if spec.name == "spzo" else 0.0)
        return {"initial_accuracy": 0.5, "final_accuracy": 0.5 + g, "flops": 10.0,
                "curve": [{"accuracy": 0.5, "flops": 0.0}, {"accuracy": 0.5 + g, "flops": 10.0}]}

    pairs = [(spec, row(spec)) for spec in main]
    goal = compare_report.targets(s, pairs)
    assert goal["sst2"] is None  # seed 0's +2 floors is cancelled by seeds 1 and 2's -2
    target, says = compare_report.single_seed_target(s, pairs, goal, "sst2", 0)
    assert target == pytest.approx(compare_report.TARGET_FRACTION * 2 * floor) and "seed 0's own" in says
    assert compare_report.single_seed_target(s, pairs, goal, "sst2", 1)[0] is None
    line = " ".join(compare_report.seed_level_lines(s, "sst2", pairs))
    assert "seed 0 (target" in line and "seed 1 (" not in line and "fedzo >1.25×" in line  # FedSPZO at 80% of its run, the rest never


@pytest.mark.parametrize("name", sorted(sweeps_gpu.MODELS))
def test_a_gpu_lora_preset_is_the_paired_regime_on_the_papers_model(name):
    """The GPU presets test more trained weights too: NAME-lora is compare_regime's paired LoRA
    regime (tuning seed apart, one evaluation set, whole validation split) on SST-2 and RTE."""
    from edgezo.app.commands.simulate import simulate

    shape, s = sweeps_gpu.MODELS[name], compare.preset(f"{name}-lora")
    assert s.trainable == "lora" and s.harness == sweeps.PAIRED_HARNESS_VERSION and s.eval_seed is not None
    main, grid = sweeps.build_sweep(s, "main", {}), sweeps.build_sweep(s, "grid", {})
    assert {r.task for r in main} == {"sst2", "rte"} and s.grid_seed not in {r.seed for r in main}
    assert {r.seed for r in grid} == {s.grid_seed}
    for spec in main:
        args = list(spec.args)
        assert args[args.index("--model") + 1] == shape.hub_id and args[args.index("--trainable") + 1] in ("lora", "lora:factors=B")
        assert args[args.index("--eval-samples") + 1] == str(sweeps_gpu.FULL_VALIDATION[spec.task])
        assert spec.eval_count >= 10
        simulate.make_context("simulate", args)  # every argument is one the real CLI accepts
    bench = next(r for r in main if r.name == "spzo-bench")
    assert 0 < int(bench.args[bench.args.index("--split") + 1]) == round(shape.layers / 3)
    assert compare.preset_paths(f"{name}-lora")["rows"].parent.name == f"compare-{name}-lora"
