"""The gradient-quality bench's statistics on cases with a known answer.

The closed-form second moments (``gradient_quality_stats``) are checked against Monte-Carlo
draws of edgezo's own method code (``Method.step`` + ``update_rule``) on the quadratic toy
executor, whose gradient is exact and whose central differences are exact directional
derivatives; the cost accounting against the forward counts the methods themselves report; the
U-statistic, jackknife and figures against synthetic batch gradients with a known mean.
"""

from __future__ import annotations

import json
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import gradient_quality_stats as st  # noqa: E402
from edgezo import perturb  # noqa: E402
from edgezo.estimators import ProbeConfig, update_rule  # noqa: E402
from edgezo.methods import method_of  # noqa: E402
from edgezo.methods.fedavg import FedAvg  # noqa: E402
from toy_executor import QuadraticExecutor, estimated_gradient  # noqa: E402

N1, N2, COUPLING = 6, 10, 0.3


def probe_of(s: st.Setting, eps: float) -> ProbeConfig:
    if s.estimator.startswith("spzo"):
        return ProbeConfig("spzo", s.p1, s.p2, eps, s.estimator.split("-")[1])
    return ProbeConfig("decomfl", s.p1, 1, eps, difference=s.estimator)


DRAWS = 800


@lru_cache(maxsize=None)
def monte_carlo(s: st.Setting, eps: float, draws: int = DRAWS):
    """g·ĝ and ‖ĝ‖² of ``draws`` steps of the method itself on the toy (each round a fresh set
    of seeds); cached, as two tests read the joint setting's draws."""
    ex = QuadraticExecutor(N1, N2, COUPLING, seed=1)
    probe = probe_of(s, eps)
    method = method_of(probe.method)
    g = ex.gradient(0.0)
    dots, norms = [], []
    for rnd in range(draws):
        result = method.step(ex, 0.0, probe, 3, rnd, 0)
        ghat = estimated_gradient(result.scalars, lambda sc: update_rule(sc, 1.0, probe.variant), ex)
        dots.append(g @ ghat)
        norms.append(ghat @ ghat)
    return np.array(dots), np.array(norms)


def forward_q2(ex: QuadraticExecutor, eps: float) -> float:
    """E[q²] of the toy, q = (eps/2) zᵀHz: H = I plus the coupling c between θ1[:m] and θ2[:m],
    so zᵀHz = d + 2c Σ_k z1_k z2_k and E[q²] = (eps/2)² (d² + 4c²m) for Rademacher z."""
    d, m = N1 + N2, min(N1, N2)
    return (eps / 2) ** 2 * (d**2 + 4 * COUPLING**2 * m)


@pytest.mark.parametrize("setting, eps", [
    (st.Setting("spzo-joint", 2, 3), 1e-3),
    (st.Setting("spzo-joint", 1, 4), 1e-3),
    (st.Setting("spzo-clean", 2, 3), 1e-3),
    (st.Setting("central", 3), 1e-3),
    (st.Setting("forward", 2), 0.05),  # eps large enough that the curvature term counts
])
def test_closed_form_moments_match_the_methods_own_estimates(setting, eps):
    ex = QuadraticExecutor(N1, N2, COUPLING, seed=1)
    h = ex.gradient(0.0)
    a1, a2 = h[:N1] @ h[:N1], h[N1:] @ h[N1:]
    q2 = forward_q2(ex, eps) if setting.estimator == "forward" else 0.0
    dots, norms = monte_carlo(setting, eps)
    dot, dot_se = st.mean_and_se(dots)
    norm, norm_se = st.mean_and_se(norms)
    assert abs(dot - h @ h) < 4 * dot_se  # unbiased: E[g·ĝ] = ‖g‖²
    expected = float(setting.second_moment(a1, a2, N1, N2, q2))
    assert abs(norm - expected) < 4 * norm_se, (norm, norm_se, expected)
    assert norm_se < 0.06 * expected  # the check can fail: the MC is precise enough to tell terms apart


def test_the_joint_variants_shared_block1_probe_is_not_independent_probing():
    """The joint and clean moments differ by terms the MC resolves (the test above would not
    tell them apart otherwise): joint block 2 carries block 1's gradient as noise."""
    ex = QuadraticExecutor(N1, N2, COUPLING, seed=1)
    h = ex.gradient(0.0)
    a1, a2 = h[:N1] @ h[:N1], h[N1:] @ h[N1:]
    joint = st.Setting("spzo-joint", 2, 3).second_moment(a1, a2, N1, N2)
    clean = st.Setting("spzo-clean", 2, 3).second_moment(a1, a2, N1, N2)
    _, norms = monte_carlo(st.Setting("spzo-joint", 2, 3), 1e-3)
    mean, se = st.mean_and_se(norms)
    assert abs(joint - clean) > 6 * se
    assert abs(mean - clean) > 4 * se


@pytest.mark.parametrize("setting", [st.Setting("spzo-joint", 2, 4), st.Setting("spzo-clean", 3, 2),
                                     st.Setting("central", 4), st.Setting("forward", 4)])
def test_cost_is_the_forward_count_the_method_reports(setting):
    ex = QuadraticExecutor(N1, N2, COUPLING)
    probe = probe_of(setting, 1e-3)
    result = method_of(probe.method).step(ex, 0.0, probe, 0, 1, 0)
    assert (result.forwards1, result.forwards2) == setting.forwards()
    assert result.flops == pytest.approx(float(setting.flops(*ex.forward_flops(0.0))))


def test_backprop_cost_is_what_fedavg_charges():
    class FirstOrderToy(QuadraticExecutor):
        def loss_and_grad(self, batch):
            g = self.gradient(batch)
            return self.loss(batch), {"block1.w": g[:N1], "block2.w": g[N1:]}

        def add_to_trainable(self, deltas, scale=1.0):
            for name, delta in deltas.items():
                self.theta[name] += np.float32(scale) * delta.astype(np.float32)

        def backward_flops(self, batch):
            return sum(self.forward_flops(batch))  # activation gradients only: no trainable matrix

    ex = FirstOrderToy(N1, N2, COUPLING)
    out = FedAvg().local_round(ex, [0.0], None, 0.1, 0, 1)
    assert out.flops == pytest.approx(float(st.Setting("backprop").flops(*ex.forward_flops(0.0))))


def synthetic_checkpoint(n=40, seed=0, sigma=0.5):
    """Batch gradients h_b = G + N(0, σ²I) over 4 layers and a head, with a known G."""
    rng = np.random.default_rng(seed)
    units = ["embed", "layers.0", "layers.1", "layers.2", "layers.3", "head"]
    dims = np.array([0, 30, 30, 30, 30, 10])
    index = np.repeat(np.arange(len(units)), dims)
    G = np.concatenate([np.full(k, scale) for k, scale in zip(dims, (0, 0.1, 0.1, 0.3, 0.3, 0.5))])
    grads = G + sigma * rng.normal(size=(n, dims.sum()))
    flops = np.array([[[s, 1e9 * s, 1e9 * (4 - s)] for s in (1, 2, 3)]] * n)
    return st.Checkpoint(st.gram_by_unit(grads, index, len(units)), dims, units, flops), G, index


def test_leave_one_out_pair_means_are_the_deleted_statistic():
    ck, _, _ = synthetic_checkpoint(n=7)
    total = ck.gram.sum(0)
    loo = st.leave_one_out_pair_means(total)
    for b in range(7):
        keep = [a for a in range(7) if a != b]
        assert loo[b] == pytest.approx(st.pair_mean(total[np.ix_(keep, keep)]))


def test_figures_land_within_their_se_of_the_known_answer():
    """Central SPSA with one probe on the synthetic gradients: r = ‖G‖² / (d·E‖h‖²) with
    E‖h‖² = ‖G‖² + dσ²; block 2's share at split 2 is that of layers 2, 3 and the head."""
    sigma, misses = 0.5, 0
    for seed in range(20):
        ck, G, index = synthetic_checkpoint(seed=seed, sigma=sigma)
        d = int(ck.dims.sum())
        known = (G @ G) / (d * (G @ G + d * sigma**2))
        s = st.Setting("central", 1, 1, 2)
        fig = st.figures(ck, s, st.setting_terms(ck, s))
        misses += abs(fig["descent_ratio"] - known) > 2 * fig["descent_ratio_se"]
        assert fig["per_flop_vs_default"] == pytest.approx(1.0)
        share, share_se = st.block_share(ck, 2)
        known_share = (G[index >= 3] @ G[index >= 3]) / (G @ G)
        assert abs(share - known_share) < 4 * share_se
    assert misses <= 4  # a 2-SE interval covers the known answer about 95% of the time


def test_settings_grid_keeps_the_default_and_every_family():
    grid = st.settings_grid()
    assert st.DEFAULT in grid
    assert {s.estimator for s in grid} == set(st.ESTIMATORS)
    assert len(grid) == 2 * 3 * 25 + 2 * 5 + 1


@pytest.mark.slow
def test_the_real_pipeline_on_a_tiny_model(tiny_llama, sst2_dir, tmp_path):
    """Backprop gradients, the mid-training checkpoint, the linearisation check through the
    methods' own steps and every figure, on a tiny Llama over real SST-2 examples."""
    import gradient_quality as gq
    import gradient_quality_grads as grads

    bench = grads.load_bench("norm", model=str(tiny_llama), data=str(sst2_dir), cache=tmp_path)
    result = gq.trainable_result(bench, {"base": 6, "mid": 5}, [2, 3], (1, 4))
    assert set(result["checkpoints"]) == {"base", "mid"}
    for ck in result["checkpoints"].values():
        central = [r for r in ck["linearisation"] if r["difference"] == "central"]
        assert all(r["relative_difference"] < 0.05 for r in central), central
        rows = {s["setting"]: s for s in ck["settings"]}
        # backprop's E‖ĝ‖² is far below a zero-order estimate's (the ratio does not depend on ‖G‖²'s noisy estimate)
        assert rows["backprop"]["step_size_vs_default"] > 10
        # joint SPZO with one probe of each block is one whole-model SPSA probe: same figures
        assert rows["spzo-joint P1=1 P2=1 split=3"]["descent_per_gflop"] == pytest.approx(rows["central P=1"]["descent_per_gflop"])
        assert rows[result["default"]]["per_flop_vs_default"] == pytest.approx(1.0)
    assert result["checkpoints"]["mid"]["checkpoint"]["steps"] == grads.MID_STEPS
    again = gq.trainable_result(bench, {"base": 6}, [2, 3], (1, 4))  # from the cache: the same figures
    assert again["checkpoints"]["base"]["settings"] == result["checkpoints"]["base"]["settings"]


def test_report_section_is_written_once_at_the_end_and_keeps_the_rest(tmp_path):
    import gradient_quality as gq
    import gradient_quality_report as rep

    ck, _, _ = synthetic_checkpoint()
    default = st.Setting("spzo-joint", 1, 4, 2)
    figures = gq.checkpoint_figures(ck, st.settings_grid((1, 2), (1, 4), default), default, [1, 2], 16)
    validation = [{"method": "decomfl", "variant": None, "difference": "central", "relative_difference": 0.004}]
    checkpoint = {"checkpoint": {"checkpoint": "base", "steps": 0}, "mean_batch_loss": 0.5, "curvature_q2": 0.1,
                  "curvature_q2_se": 0.01, "linearisation": validation, **figures}
    result = {"trainable": "norm", "elements": 130, "tensors": 5, "model": "synthetic", "tensor_names_digest": "abc", "task": "sst2", "batch": 16,
              "max_length": 128, "eps": 1e-3, "distribution": "rademacher", "default": default.label,
              "command": "python benchmarks/gradient_quality.py run", "checkpoints": {"base": checkpoint}}
    md = tmp_path / "RESULTS.md"
    md.write_text("# Results\n\n## Other section\n\nkept\n")
    for _ in range(2):  # a rerun replaces the section instead of adding a second one
        rep.write_section(md, rep.section({"norm": result, "bitfit": {**result, "trainable": "bitfit"}}, tmp_path))
    text = md.read_text()
    assert "`--trainable bitfit` selects exactly the tensors `norm` selects" in text
    assert text.count(rep.HEADING) == 1 and text.startswith("# Results\n\n## Other section\n\nkept\n")
    assert text.rstrip().endswith(rep.END)
    assert f"| {default.label} **(default)** |" in text


# -- probes with a per-tensor scale (issue 27) ----------------------------------------------------


class ScaledProbeToy(QuadraticExecutor):
    """The toy whose probes and updates carry a fixed per-tensor scale s_t (z = s ⊙ r), the way an
    executor would apply it: the methods' own step and update code run unchanged on top."""

    def __init__(self, scales: dict, **kw):
        super().__init__(**kw)
        self.scales = scales

    def _value(self, name, perturbation):
        return super()._value(name, [(d, s * self.scales[name]) for d, s in perturbation])

    def apply_update(self, update):
        for name, v in self.theta.items():
            for d, coeff in sorted(update):
                if d.covers(self.block[name]):
                    v += np.float32(coeff * self.scales[name]) * perturb.generate(d.tensor_key(name), 0, v.size, self.distribution)


def toy_checkpoint(ex: QuadraticExecutor, eps: float) -> tuple[st.TensorCheckpoint, np.ndarray]:
    """The toy as a one-batch TensorCheckpoint (h = g exactly) and its gradient."""
    g = ex.gradient(0.0)
    parts = [g[:N1], g[N1:]]
    gram = np.array([[[p @ p]] for p in parts])
    q2 = (eps / 2) ** 2 * ((N1 + N2) ** 2 + 4 * ex.c**2 * min(N1, N2))  # E[q²] of an isotropic probe (forward_q2)
    return st.TensorCheckpoint(gram, np.array([N1, N2]), np.array([1.0]), q2), g


@pytest.mark.parametrize("scales, difference, p, eps, coupling", [
    ((0.5, 2.0), "central", 3, 1e-3, COUPLING),
    ((0.0, 1.0), "central", 2, 1e-3, COUPLING),  # block 1 never probed: the B-only case
    ((0.5, 2.0), "forward", 4, 1e-3, COUPLING),
    ((0.7, 1.5), "forward", 2, 0.05, 0.0),  # H = I: the curvature model E[q_s²] = E[q²](‖s‖²/d)² is exact
])
def test_scaled_probe_moments_match_the_methods_own_steps(scales, difference, p, eps, coupling):
    ex = ScaledProbeToy({"block1.w": scales[0], "block2.w": scales[1]}, n1=N1, n2=N2, coupling=coupling, seed=1)
    tck, g = toy_checkpoint(ex, eps)
    w = np.array(scales) ** 2
    probe = ProbeConfig("decomfl", p, 1, eps, difference=difference)
    method = method_of("decomfl")
    dots, norms = [], []
    for rnd in range(DRAWS):
        result = method.step(ex, 0.0, probe, 5, rnd, 0)
        ghat = estimated_gradient(result.scalars, lambda sc: update_rule(sc, 1.0), ex)
        dots.append(g @ ghat)
        norms.append(ghat @ ghat)
    dot, dot_se = st.mean_and_se(dots)
    norm, norm_se = st.mean_and_se(norms)
    expected_dot = w[0] * (g[:N1] @ g[:N1]) + w[1] * (g[N1:] @ g[N1:])  # E[g·ĝ] = Σ_t w_t ‖g_t‖²
    assert abs(dot - expected_dot) < 4 * dot_se
    expected = float(st.scaled_terms(tck, st.ScaledProbe("toy", difference, p, w)).y[0])
    assert abs(norm - expected) < 4 * norm_se, (norm, norm_se, expected)
    assert norm_se < 0.06 * expected


def test_unit_scales_reproduce_the_whole_model_rows():
    """s = 1 is DeComFL: the scaled figures equal the bench's central/forward rows on the same batches."""
    ck, _, index = synthetic_checkpoint()
    ck.q2 = 0.3
    tck = st.TensorCheckpoint(ck.gram, ck.dims, ck.flops[:, 1, 1] + ck.flops[:, 1, 2], ck.q2)
    default = st.Setting("central", 5, 1, 2)
    refs = {"decomfl_p5": st.setting_terms(ck, default)}
    for difference in ("central", "forward"):
        scaled = st.scaled_figures(tck, st.ScaledProbe("iso", difference, 4, np.ones(len(ck.dims))), refs)
        plain = st.figures(ck, st.Setting(difference, 4, 1, 2), refs["decomfl_p5"])
        assert scaled["descent_ratio"] == pytest.approx(plain["descent_ratio"])
        assert scaled["per_flop_vs_decomfl_p5"] == pytest.approx(plain["per_flop_vs_default"])
        assert scaled["bias_cosine"] == pytest.approx(1.0)


def test_dropping_a_tensor_without_gradient_divides_the_noise_by_its_share_of_the_elements():
    """With G and every h zero on some tensors, probing only the others keeps E[G·ĝ] and divides
    E‖ĝ‖² by d/d_kept (P = 1, central): LoRA's A while B = 0."""
    ck, _, _ = synthetic_checkpoint()
    gram = ck.gram.copy()
    gram[1] = 0.0  # layers.0 carries no gradient
    tck = st.TensorCheckpoint(gram, ck.dims, np.ones(ck.batches), 0.0)
    keep = (ck.dims > 0) & (np.arange(len(ck.dims)) != 1)
    refs = {"iso": st.scaled_terms(tck, st.ScaledProbe("iso", "central", 1, np.ones(len(ck.dims))))}
    fig = st.scaled_figures(tck, st.ScaledProbe("kept", "central", 1, keep.astype(float)), refs)
    assert fig["per_flop_vs_iso"] == pytest.approx(ck.dims.sum() / ck.dims[keep].sum())


def test_a_short_history_gives_an_isotropic_scale_and_a_long_one_the_oracle():
    ck, _, _ = synthetic_checkpoint()
    tck = st.TensorCheckpoint(ck.gram, ck.dims, np.ones(ck.batches), 0.0)
    live = ck.dims > 0
    short = st.history_weights(tck, 1, 1)[live]
    assert short.max() / short.min() < 1.01
    np.testing.assert_allclose(st.history_weights(tck, 10**9, 16)[live], st.oracle_rms_weights(tck)[live], rtol=1e-4)
    assert float(st.oracle_rms_weights(tck) @ tck.numel) == pytest.approx(tck.numel.sum())  # ‖s‖² = d


def test_the_best_scale_is_at_least_the_oracle_and_halves_split_the_batches():
    ck, _, _ = synthetic_checkpoint()
    tck = st.TensorCheckpoint(ck.gram, ck.dims, np.ones(ck.batches), 0.0)
    refs = {"iso": st.scaled_terms(tck, st.ScaledProbe("iso", "forward", 16, np.ones(len(ck.dims))))}
    rms = st.scaled_figures(tck, st.ScaledProbe("rms", "forward", 16, st.oracle_rms_weights(tck)), refs)
    best = st.scaled_figures(tck, st.ScaledProbe("best", "forward", 16, st.best_weights(tck, "forward", 16)), refs)
    assert best["descent_ratio"] >= rms["descent_ratio"] * (1 - 1e-6)
    assert rms["per_flop_vs_iso"] > 1.0  # the synthetic G is uneven across layers: a scale pays
    even, odd = st.half(tck, 0), st.half(tck, 1)
    assert even.gram.shape[1] + odd.gram.shape[1] == ck.batches
    assert even.gram[0, 1, 1] == tck.gram[0, 2, 2] and odd.gram[0, 0, 0] == tck.gram[0, 1, 1]


def test_the_scaled_screen_lands_in_the_report_section_beside_its_trainable_set(tmp_path):
    """``scaled`` rows on the synthetic checkpoint (as ``gradient_quality_scaled`` computes them)
    appear under their trainable set's table, with every reference column."""
    import gradient_quality as gq
    import gradient_quality_report as rep
    import gradient_quality_scaled as sc

    ck, _, _ = synthetic_checkpoint()
    tck = st.TensorCheckpoint(ck.gram, ck.dims, ck.flops[:, 1, 1] + ck.flops[:, 1, 2], 0.0)
    default = st.Setting("spzo-joint", 1, 4, 2)
    names = [f"model.layers.{u}.self_attn.{p}.lora_{f}" for u, (p, f) in enumerate(
        [("q_proj", "A"), ("q_proj", "B"), ("v_proj", "A"), ("v_proj", "B"), ("v_proj", "B"), ("q_proj", "B")])]
    screen = sc.checkpoint_screen(tck, ck, names, default)
    labels = [s["setting"] for s in screen["settings"]]
    assert "b-only v_proj forward P=16" in labels and "oracle-rms (cross-fitted) forward P=16" in labels
    assert {f["factor"] for f in screen["lora_factor_shares"]} == {"q_proj.lora_A", "q_proj.lora_B", "v_proj.lora_A", "v_proj.lora_B"}
    (tmp_path / "scaled_lora.json").write_text(json.dumps({"command": "python benchmarks/gradient_quality.py scaled",
                                                          "checkpoints": {"base": screen}}))
    figures = gq.checkpoint_figures(ck, st.settings_grid((2,), (1, 4), default), default, [2], 16)
    checkpoint = {"checkpoint": {"checkpoint": "base", "steps": 0}, "mean_batch_loss": 0.5, "curvature_q2": 0.0,
                  "curvature_q2_se": 0.0, "linearisation": [], **figures}
    result = {"trainable": "lora", "elements": 130, "tensors": 6, "model": "synthetic", "tensor_names_digest": "x", "task": "sst2",
              "batch": 16, "max_length": 128, "eps": 1e-3, "distribution": "rademacher", "default": default.label,
              "command": "python benchmarks/gradient_quality.py run", "checkpoints": {"base": checkpoint}}
    text = "\n".join(rep.section({"lora": result}, tmp_path))
    assert "#### lora: where the probes go" in text and "| b-only v_proj forward P=16 |" in text
    assert "base: vs DeComFL-fwd P=5" in text and "v_proj.lora_B" in text


def test_fisher_curvature_is_the_batch_noise_per_element_and_leaves_isotropic_probes_alone():
    """Batch gradients G + N(0, σ_t²) with σ 0.2 on two layers and 0.8 on the others: the
    curvature proxy is σ_t² over the element-weighted mean, and a single isotropic probe's moment
    (Σ_t n_t c_t = d) does not change with it (with P > 1 the signal's own term does)."""
    rng = np.random.default_rng(3)
    dims = np.array([40, 40, 40, 40])
    sigma = np.repeat([0.2, 0.2, 0.8, 0.8], dims)
    grads = 0.1 + sigma * rng.normal(size=(400, dims.sum()))
    gram = st.gram_by_unit(grads, np.repeat(np.arange(4), dims), 4)
    tck = st.TensorCheckpoint(gram, dims, np.ones(400), 0.0)
    c = st.fisher_curvature(tck)
    np.testing.assert_allclose(c, np.array([0.04, 0.04, 0.64, 0.64]) / 0.34, rtol=0.05)
    iso = st.ScaledProbe("iso", "central", 1, np.ones(4))
    curved = st.TensorCheckpoint(gram, dims, np.ones(400), 0.0, c)
    np.testing.assert_allclose(st.scaled_terms(curved, iso).y, st.scaled_terms(tck, iso).y, rtol=1e-9)
    low = st.ScaledProbe("low-noise layers", "central", 1, np.array([1.0, 1.0, 0.0, 0.0]))
    assert st.scaled_terms(curved, low).y.mean() < st.scaled_terms(tck, low).y.mean() / 5  # their curvature is 0.12x the mean


def test_curvature_ratios_and_the_probe_view_that_measures_them(tiny_llama, sst2_dir):
    """κ ratios by the delta method (the reference's own ratio exactly 1), and the bench's probe
    view: perturbing no tensor leaves the loss alone, perturbing all is the executor's own probe."""
    import gradient_quality_curvature as cv
    import gradient_quality_grads as grads
    from edgezo.keys import Direction

    rows = cv.with_ratios({"B only": {"kappa": 2.0, "kappa_se": 0.2}, "B of v_proj only": {"kappa": 6.0, "kappa_se": 1.2}})
    assert rows["B only"]["kappa_vs_b_only"] == 1.0 and rows["B only"]["kappa_vs_b_only_se"] == 0.0
    assert rows["B of v_proj only"]["kappa_vs_b_only"] == pytest.approx(3.0)
    assert rows["B of v_proj only"]["kappa_vs_b_only_se"] == pytest.approx(3.0 * np.hypot(0.2, 0.1))
    bench = grads.load_bench("norm", model=str(tiny_llama), data=str(sst2_dir))
    batch, d = bench.batch(0), [(Direction(1, 0, 0, 0, 0), 0.05)]
    base = cv.loss(bench.ex, batch)
    assert cv.loss(cv.probe_view(bench.ex, lambda n: False), batch, d) == base
    assert cv.loss(cv.probe_view(bench.ex, lambda n: True), batch, d) == cv.loss(bench.ex, batch, d) != base
