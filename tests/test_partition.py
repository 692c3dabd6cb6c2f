"""Partitions: every index exactly once, deterministic, and Dirichlet skew that tracks alpha."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from edgezo.errors import EdgezoError
from edgezo.partition import dirichlet, iid


def _assert_cover(parts, n):
    flat = [i for p in parts for i in p]
    assert sorted(flat) == list(range(n))
    assert all(isinstance(i, int) for i in flat)
    assert all(p for p in parts)


@pytest.fixture(scope="module")
def sst2_dev_labels() -> list[int]:
    """Real labels (444 positive / 428 negative) when the data is present, else the same mix."""
    root = Path(os.environ.get("EDGEZO_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
    path = root / "sst2" / "dev.tsv"
    if path.is_file():
        return [int(line.rsplit("\t", 1)[1]) for line in path.read_text().splitlines()[1:]]
    return [1] * 444 + [0] * 428


@pytest.mark.parametrize("n,k", [(10, 3), (872, 10), (5, 5), (7, 1)])
def test_iid_covers_every_index_once_in_near_equal_shards(n, k):
    parts = iid(n, k, seed=0)
    assert len(parts) == k
    _assert_cover(parts, n)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


def test_iid_is_deterministic_and_seeded():
    assert iid(100, 4, seed=1) == iid(100, 4, seed=1)
    assert iid(100, 4, seed=1) != iid(100, 4, seed=2)


@pytest.mark.parametrize("alpha", [0.001, 0.1, 1.0, 100.0])
@pytest.mark.parametrize("k", [2, 10, 50])
def test_dirichlet_covers_every_index_once_and_no_client_is_empty(sst2_dev_labels, alpha, k):
    parts = dirichlet(sst2_dev_labels, k, alpha, seed=3)
    assert len(parts) == k
    _assert_cover(parts, len(sst2_dev_labels))


def test_dirichlet_extreme_case_one_example_each():
    labels = [0, 0, 0, 1, 1, 2]
    parts = dirichlet(labels, 6, alpha=0.01, seed=0)
    _assert_cover(parts, 6)
    assert all(len(p) == 1 for p in parts)


def test_dirichlet_is_deterministic_and_seeded(sst2_dev_labels):
    a = dirichlet(sst2_dev_labels, 10, 0.5, seed=7)
    assert a == dirichlet(sst2_dev_labels, 10, 0.5, seed=7)
    assert a != dirichlet(sst2_dev_labels, 10, 0.5, seed=8)


def _mean_label_skew(labels, parts) -> float:
    """Mean total-variation distance between each client's label mix and the global one."""
    labels = np.asarray(labels)
    classes = np.unique(labels)
    glob = np.array([(labels == c).mean() for c in classes])
    tvs = [0.5 * np.abs(np.array([(labels[p] == c).mean() for c in classes]) - glob).sum() for p in parts]
    return float(np.mean(tvs))


def test_dirichlet_small_alpha_skews_large_alpha_near_uniform(sst2_dev_labels):
    skewed = dirichlet(sst2_dev_labels, 10, alpha=0.05, seed=0)
    uniform = dirichlet(sst2_dev_labels, 10, alpha=1000.0, seed=0)
    assert _mean_label_skew(sst2_dev_labels, skewed) > 0.3
    assert _mean_label_skew(sst2_dev_labels, uniform) < 0.05
    sizes = [len(p) for p in uniform]
    assert max(sizes) - min(sizes) < 0.2 * len(sst2_dev_labels) / 10


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: iid(10, 0, 0), "at least 1"),
        (lambda: iid(3, 4, 0), "only 3 examples"),
        (lambda: dirichlet([0, 1], 0, 1.0, 0), "at least 1"),
        (lambda: dirichlet([0, 1], 3, 1.0, 0), "only 2 examples"),
        (lambda: dirichlet([0, 1], 2, 0.0, 0), "positive"),
        (lambda: dirichlet([0, 1], 2, -1.0, 0), "positive"),
        (lambda: dirichlet([0, 1], 2, float("nan"), 0), "positive"),
    ],
)
def test_bad_arguments(call, message):
    with pytest.raises(EdgezoError, match=message):
        call()
