"""Estimators on a quadratic with known gradient: unbiased, and they decrease the loss."""

import numpy as np
import pytest

from edgezo.aggregate import Aggregation, average_scalars
from edgezo.errors import EdgezoError
from edgezo.estimators import ProbeConfig, update_rule
from edgezo.keys import Direction
from edgezo.methods import method_of
from toy_executor import QuadraticExecutor, estimated_gradient

CASES = [
    ProbeConfig("spzo", p1=2, p2=4, variant="joint"),
    ProbeConfig("spzo", p1=2, p2=4, variant="clean"),
    ProbeConfig("mezo", p1=4, p2=1),
    ProbeConfig("decomfl", p1=4, p2=1, difference="forward"),
    ProbeConfig("fedzo", p1=4, p2=1, difference="forward"),
]


@pytest.mark.parametrize("cfg", CASES, ids=lambda c: f"{c.method}-{c.variant}-{c.difference}")
def test_gradient_estimate_is_unbiased(cfg):
    ex = QuadraticExecutor(seed=1)
    true = ex.gradient()
    estimates = []
    for seed in range(1500):
        result = method_of(cfg.method).step(ex, 0.0, cfg, run_seed=seed, rnd=1, step=0)
        estimates.append(estimated_gradient(result.scalars, lambda s: update_rule(s, 1.0, cfg.variant), ex))
    mean = np.mean(estimates, axis=0)
    assert np.linalg.norm(mean - true) / np.linalg.norm(true) < 0.12
    # and it is an estimate, not the gradient: single draws scatter
    assert np.linalg.norm(estimates[0] - true) > 0.05 * np.linalg.norm(true)


def test_forward_counts():
    ex = QuadraticExecutor()
    spzo, fedzo = method_of("spzo"), method_of("fedzo")
    joint = spzo.step(ex, 0.0, ProbeConfig("spzo", p1=2, p2=8), 0, 1, 0)
    assert (joint.forwards1, joint.forwards2) == (4, 32)  # 2*P1 block-1, 2*P1*P2 block-2
    clean = spzo.step(ex, 0.0, ProbeConfig("spzo", p1=2, p2=8, variant="clean"), 0, 1, 0)
    assert (clean.forwards1, clean.forwards2) == (1 + 4, 4 + 32)
    fwd = fedzo.step(ex, 0.0, ProbeConfig("fedzo", p1=5, difference="forward"), 0, 1, 0)
    assert (fwd.forwards1, fwd.forwards2) == (6, 6)  # P+1 full forwards
    assert joint.flops == 4 * 6 + 32 * 10


@pytest.mark.parametrize("cfg", CASES, ids=lambda c: f"{c.method}-{c.variant}-{c.difference}")
def test_local_rounds_decrease_the_loss(cfg):
    ex = QuadraticExecutor(seed=2)
    start = ex.loss()
    for rnd in range(1, 41):
        method_of(cfg.method).local_round(ex, [0.0] * 3, cfg, lr=0.05, run_seed=5, rnd=rnd)
    assert ex.loss() < 0.5 * start


def test_update_rule_joint_coefficients():
    g = {Direction(0, 1, 0, 2, i, j): float(10 * i + j) for i in range(2) for j in range(3)}
    update = dict(update_rule(g, lr=0.5))
    assert update[Direction(0, 1, 0, 2, 1, 2)] == pytest.approx(-0.5 * 12 / 6)
    assert update[Direction(0, 1, 0, 1, 1, 0)] == pytest.approx(-0.5 * np.mean([10, 11, 12]) / 2)
    assert update[Direction(0, 1, 0, 1, 0, 0)] == pytest.approx(-0.5 * 1.0 / 2)
    assert len(update) == 6 + 2


def test_average_scalars_per_direction_over_devices_that_evaluated_it():
    d = [Direction(0, 1, 0, 2, 0, j) for j in range(4)]
    a = {d[0]: 1.0, d[1]: 2.0, d[2]: 3.0, d[3]: 4.0}  # P2 = 4
    b = {d[0]: 3.0, d[1]: 6.0}  # P2 = 2: did not evaluate j = 2, 3
    avg = average_scalars([(a, 1.0), (b, 3.0)])
    assert avg[d[0]] == pytest.approx((1 + 9) / 4)
    assert avg[d[1]] == pytest.approx((2 + 18) / 4)
    assert avg[d[2]] == 3.0 and avg[d[3]] == 4.0  # not pulled towards zero by b
    assert average_scalars([({d[0]: float("nan")}, 1.0), ({d[0]: 2.0}, 1.0)])[d[0]] == 2.0


def test_mixed_p2_aggregate_is_unbiased():
    ex = QuadraticExecutor(seed=3)
    spzo = method_of("spzo")
    true = ex.gradient()
    estimates = []
    for seed in range(1500):
        results = []
        for p2 in (1, 4):
            r = spzo.step(ex, 0.0, ProbeConfig("spzo", p1=1, p2=p2), seed, 1, 0)
            results.append((r.scalars, 1.0))
        estimates.append(estimated_gradient(None, lambda _: spzo.aggregate(results, 1.0, "joint", Aggregation()), ex))
    assert np.linalg.norm(np.mean(estimates, axis=0) - true) / np.linalg.norm(true) < 0.12


def test_fedzo_update_is_the_mean_of_device_updates():
    ex = QuadraticExecutor(seed=4)
    cfg = ProbeConfig("fedzo", p1=2, difference="forward")
    fedzo = method_of("fedzo")
    results = [(fedzo.step(ex, 0.0, cfg, 0, 1, 0, stream=k + 1).scalars, 1.0) for k in range(3)]
    update = fedzo.aggregate(results, 0.1, "joint", Aggregation())
    assert len(update) == 6 and {d.stream for d, _ in update} == {1, 2, 3}
    alone = dict(update_rule(results[0][0], 0.1))
    for d, c in update:
        if d.stream == 1:
            assert c == pytest.approx(alone[d] / 3)


@pytest.mark.parametrize("bad", [dict(p1=0), dict(p2=0), dict(eps=0.0), dict(eps=float("nan")), dict(variant="x"),
                                 dict(difference="backward")])
def test_bad_probe_config_is_a_clear_error(bad):
    with pytest.raises(EdgezoError):
        ProbeConfig(**bad)


def test_a_method_builds_only_the_probes_it_can_run():
    """The method-dependent checks are the method's (the estimators import no method): an
    unknown name at the edge, a difference the method does not use, a backpropagating method."""
    with pytest.raises(EdgezoError, match="unknown method 'sgd'"):
        method_of("sgd")
    with pytest.raises(EdgezoError, match="spzo uses central differences"):
        method_of("spzo").probe(1, 4, 1e-3, "joint", "forward")
    assert method_of("fedavg").probe(1, 1, 1e-3, "joint", "central") is None
    assert method_of("mezo").probe(2, 4, 1e-3, "joint", "forward") == ProbeConfig("mezo", 2, 1, 1e-3, "joint", "forward")


def test_nan_loss_is_a_clear_error():
    ex = QuadraticExecutor()
    ex.theta["block2.w"][0] = np.nan
    with pytest.raises(EdgezoError, match="NaN"):
        method_of("spzo").step(ex, 0.0, ProbeConfig("spzo"), 0, 1, 0)
