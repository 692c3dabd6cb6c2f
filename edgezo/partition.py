"""Splitting a training set across federated clients: IID shards or Dirichlet(alpha) label skew.

Pure functions over example indices, deterministic for a seed, so every device (and a rerun)
derives the same partition without shipping index lists around.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edgezo.errors import EdgezoError


def _check(num_examples: int, num_clients: int) -> None:
    if num_clients < 1:
        raise EdgezoError(f"num_clients must be at least 1, got {num_clients}")
    if num_clients > num_examples:
        raise EdgezoError(
            f"{num_clients} clients but only {num_examples} examples: use at most {num_examples} clients"
        )


def iid(num_examples: int, num_clients: int, seed: int) -> list[list[int]]:
    """Shuffle, then cut into near-equal shards (sizes differ by at most one); each shard sorted."""
    _check(num_examples, num_clients)
    perm = np.random.default_rng(seed).permutation(num_examples)
    return [sorted(int(i) for i in part) for part in np.array_split(perm, num_clients)]


def dirichlet(labels: Sequence[int], num_clients: int, alpha: float, seed: int) -> list[list[int]]:
    """Label-skewed split (Hsu et al. 2019): each class is divided among clients in proportions
    drawn from Dir(alpha). Small alpha -> clients see few classes; large alpha -> near IID.

    Every client gets at least one example: an empty client takes one from the largest client,
    which disturbs the drawn proportions as little as possible (re-drawing may never succeed
    for tiny alpha and many clients).
    """
    _check(len(labels), num_clients)
    if not np.isfinite(alpha) or alpha <= 0:
        raise EdgezoError(f"dirichlet alpha must be a positive number, got {alpha}")
    rng = np.random.default_rng(seed)
    labels_arr = np.asarray(labels)
    parts: list[list[int]] = [[] for _ in range(num_clients)]
    for c in np.unique(labels_arr):  # sorted, so the draw order is fixed
        idx = rng.permutation(np.flatnonzero(labels_arr == c))
        p = rng.dirichlet(np.full(num_clients, float(alpha)))
        cuts = (np.cumsum(p)[:-1] * len(idx)).astype(int)
        for k, chunk in enumerate(np.split(idx, cuts)):
            parts[k].extend(int(i) for i in chunk)
    for k in range(num_clients):
        if not parts[k]:
            donor = max(range(num_clients), key=lambda j: len(parts[j]))  # first largest on ties
            parts[k].append(parts[donor].pop())
    return [sorted(p) for p in parts]
