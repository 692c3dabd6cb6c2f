"""The coordinator's pure round logic and the wire messages, without a broker."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgezo.aggregate import Aggregation, average_scalars, robust_average
from edgezo.coordinator.wire import messages as m
from edgezo.coordinator.server.rounds import OffenderLedger, RoundCollector, RoundPolicy, sample_devices
from edgezo.estimators import ProbeConfig
from edgezo.keys import Direction
from edgezo.methods import method_of
from toy_executor import QuadraticExecutor

RUN, SEED, RND = "r", 7, 3
PROBE = ProbeConfig("spzo", 1, 4, 1e-3)


def result(device="a", round=RND, attempt=0, values=None, examples=8, **kw) -> m.Result:
    values = [0.5] * 8 if values is None else values
    return m.Result(v=1, run=RUN, round=round, attempt=attempt, device=device, scalars=m.pack_scalars(values),
                    examples=examples, loss=0.7, forwards1=4, forwards2=16, flops=1.0, compute_s=0.1, fingerprint="", **kw)


def collector(devices=("a", "b"), policy=None, probe=PROBE) -> RoundCollector:
    tasks = [m.DeviceTask(d, 2, 1, 4, 4) for d in devices]
    return RoundCollector(RUN, SEED, RND, 0, tasks, probe, policy or RoundPolicy(timeout_s=10), opened_at=100.0,
                          method=method_of(probe.method))


@pytest.mark.parametrize("method,variant", [("spzo", "joint"), ("spzo", "clean"), ("mezo", "joint"), ("fedzo", "joint")])
def test_a_methods_directions_are_the_keys_its_local_round_produces(method, variant):
    ex = QuadraticExecutor()
    cfg = ProbeConfig(method, 2, 3, 1e-3, variant, "forward" if method == "fedzo" else "central")
    out = method_of(method).local_round(ex, [ex.encode([""] * 4, [0] * 4)] * 3, cfg, 1e-3, SEED, RND, stream=5 if method == "fedzo" else 0)
    assert sorted(out.scalars) == method_of(method).directions(cfg, SEED, RND, 3, 5 if method == "fedzo" else 0)


def test_messages_round_trip_and_bad_payloads_are_refused():
    r = result()
    assert m.decode(m.encode(r), m.Result) == r
    update = [(Direction(SEED, RND, 0, 2, 0, j), 0.1 * j - 0.05) for j in range(4)]
    msg = m.Update(v=1, run=RUN, round=RND, run_seed=SEED, rows=m.pack_update(update), fingerprint="f")
    assert m.unpack_update(m.decode(m.encode(msg), m.Update)) == update
    with pytest.raises(m.BadMessage, match="malformed"):
        m.decode(b"\xc1garbage")
    with pytest.raises(m.BadMessage, match="oversized"):
        m.decode(b"\x00" * (m.MAX_PAYLOAD_BYTES + 1))
    with pytest.raises(m.BadMessage, match="expected a Result"):
        m.decode(m.encode(msg), m.Result)
    with pytest.raises(m.BadMessage, match="protocol version"):
        m.decode(m.encode(m.Status(v=99, run=RUN, device="a", state="online")))
    nan_update = m.Update(v=1, run=RUN, round=RND, run_seed=SEED, rows=m.pack_update([(update[0][0], math.nan)]), fingerprint="")
    with pytest.raises(m.BadMessage, match="non-finite"):
        m.unpack_update(nan_update)


def test_a_result_counts_once_and_only_if_it_is_what_was_assigned():
    c = collector()
    assert c.offer("a", result()) is None
    assert "duplicate" in c.offer("a", result())
    assert "not assigned" in c.offer("x", result(device="x"))
    assert "claims device" in c.offer("b", result(device="a"))
    assert "round 2" in c.offer("b", result(device="b", round=2))
    assert "attempt 1" in c.offer("b", result(device="b", attempt=1))
    assert "non-finite" in c.offer("b", result(device="b", values=[math.inf] + [0.0] * 7))
    assert "asked for 8" in c.offer("b", result(device="b", values=[0.0] * 3))
    assert "implausible" in c.offer("b", result(device="b", examples=1000))
    c.fingerprint = "global"
    assert "not the global model" in c.offer("b", result(device="b"))
    c.fingerprint = ""
    bad_run = result(device="b")
    bad_run.run = "other"
    assert "run" in c.offer("b", bad_run)
    assert list(c.answers) == ["a"]


def test_a_round_closes_when_everyone_answered_gone_or_at_the_deadline():
    c = collector()
    assert not c.should_close(100.0)
    c.offer("a", result())
    assert not c.should_close(105.0)
    c.device_gone("b")
    assert c.should_close(105.0)  # b's last will: no reason to wait
    c = collector()
    assert c.should_close(110.0)  # deadline
    c = collector(("a", "b", "c", "d"), RoundPolicy(timeout_s=10, quorum=0.5))
    c.offer("a", result())
    assert not c.should_close(101)
    c.offer("b", result(device="b"))
    assert c.should_close(101)


def test_the_update_is_the_per_direction_weighted_mean_in_any_arrival_order():
    values = {"a": np.linspace(-1, 1, 8), "b": np.linspace(2, 0.5, 8), "c": np.full(8, 0.3)}
    updates = []
    for order in (["a", "b", "c"], ["c", "a", "b"]):
        c = collector(("a", "b", "c"))
        for d in order:
            assert c.offer(d, result(device=d, values=list(values[d]), examples={"a": 8, "b": 4, "c": 2}[d])) is None
        updates.append(c.update(1e-3))
    assert updates[0] == updates[1]
    keys = method_of("spzo").directions(PROBE, SEED, RND, 2)
    expected = {k: (8 * np.float32(values["a"][n]) + 4 * np.float32(values["b"][n]) + 2 * np.float32(values["c"][n])) / 14 for n, k in enumerate(keys)}
    block2 = {d: coef for d, coef in updates[0] if d.block == 2}
    for k, v in expected.items():
        assert block2[k] == pytest.approx(-1e-3 * v / 4, rel=1e-6)  # normalised by P1*P2 = 4 per step


def test_clipping_and_robust_aggregation_resist_an_outlier():
    honest = [{Direction(1, 1, 0, 2, 0, 0): v} for v in (1.0, 1.2, 0.8, 1.1)]
    evil = {Direction(1, 1, 0, 2, 0, 0): 1e6}
    contributions = [(s, 1.0) for s in honest + [evil]]
    d = Direction(1, 1, 0, 2, 0, 0)
    assert average_scalars(contributions)[d] > 1e5
    assert robust_average(contributions, "median")[d] == 1.1
    assert robust_average(contributions, "trimmed", trim=0.2)[d] == pytest.approx(1.1)
    c = collector(("a", "b"), RoundPolicy(timeout_s=10, aggregation=Aggregation(clip=2.0)))
    c.offer("a", result(values=[50.0] * 8))
    assert all(v == 2.0 for v in c.answers["a"].scalars.values())


def test_device_sampling_is_seeded_and_takes_everyone_by_default():
    online = [f"d{k}" for k in range(10)]
    assert sample_devices(online, 0, 1, 1, 0) == sorted(online)
    picked = sample_devices(online, 4, 1, 5, 0)
    assert len(picked) == 4 and picked == sample_devices(list(reversed(online)), 4, 1, 5, 0)
    assert picked != sample_devices(online, 4, 1, 6, 0) or picked != sample_devices(online, 4, 1, 7, 0)


def test_closing_a_round_cuts_a_hostile_device_names_it_and_keeps_the_honest_mean():
    honest = {"a": np.linspace(-1, 1, 8), "b": np.linspace(1, -0.5, 8), "c": np.linspace(0.2, 0.9, 8)}
    c = collector(("a", "b", "c", "evil", "broken"))
    for d, v in honest.items():
        assert c.offer(d, result(device=d, values=list(v))) is None
    assert c.offer("evil", result(device="evil", values=[1e30] * 8)) is None  # finite: it counts, then is screened
    assert "non-finite" in c.offer("broken", result(device="broken", values=[math.nan] * 8))
    review = c.review(1e-3)
    assert review.accepted and sorted(review.offenders()) == ["broken", "evil"]
    assert "out of bound" in review.cut["evil"] and "non-finite" in review.cut["broken"]
    plain = collector(("a", "b", "c"))
    for d, v in honest.items():
        plain.offer(d, result(device=d, values=list(v)))
    assert review.update == plain.update(1e-3) == c.update(1e-3)  # the screened default: evil got nothing in


def test_a_round_that_would_break_the_model_is_refused_and_its_cause_blamed():
    c = collector(("a", "evil"))  # two devices: no majority to screen by, the update check decides
    c.offer("a", result(values=[0.5] * 8))
    c.offer("evil", result(device="evil", values=[1e30] * 8))
    review = c.review(1e-3)
    assert not review.accepted and review.update == []
    assert list(review.blamed) == ["evil"] and "would move a weight" in review.refused[0]


def test_the_ledger_drops_a_repeated_offender_once_with_a_reason_and_forgives_a_slip():
    ledger = OffenderLedger(strikes=3, window=10)
    devices = ["a", "b", "evil"]
    assert ledger.record(1, devices, {"b": "1 out of bound"}) == []
    drops = []
    for rnd in range(2, 6):
        drops += ledger.record(rnd, devices, {"evil": f"8 out of bound (round {rnd})"} if rnd % 2 == 0 or rnd == 5 else {})
    assert [d.device for d in drops] == ["evil"]
    assert "3 of its last 5 rounds (2, 4, 5)" in drops[0].reason and "round 5" in drops[0].reason
    assert ledger.record(6, devices, {"evil": "again"}) == []  # dropped once
    assert ledger.allowed(devices) == ["a", "b"]
    for rnd in range(7, 30):
        assert ledger.record(rnd, ["a", "b"], {"b": "slip"} if rnd in (12, 25) else {}) == []  # two slips far apart
    with pytest.raises(ValueError):
        OffenderLedger(strikes=11, window=10)
