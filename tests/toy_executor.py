"""A NumPy executor over a quadratic two-block function: the executor protocol on the reference
generator, for unit tests of the estimators and aggregation (exact gradients are known)."""

from __future__ import annotations

import hashlib
from types import SimpleNamespace

import numpy as np

from edgezo import perturb
from edgezo.keys import Direction


class QuadraticExecutor:
    """L(θ1, θ2) = ½‖θ1 − t1‖² + ½‖θ2 − t2‖² + c·Σ θ1[:m]·θ2[:m]; the batch shifts the targets."""

    kind = "causal"  # prompts are built as for a causal LM (the batch ignores them)
    tokenizer = SimpleNamespace(mask_token=None)

    def __init__(self, n1=6, n2=10, coupling=0.3, seed=0, distribution=perturb.RADEMACHER):
        rng = np.random.default_rng(seed)
        self.theta = {"block1.w": rng.normal(size=n1).astype(np.float32), "block2.w": rng.normal(size=n2).astype(np.float32)}
        self.t1 = rng.normal(size=n1)
        self.t2 = rng.normal(size=n2)
        self.c = coupling
        self.m = min(n1, n2)
        self.distribution = distribution
        self.block = {"block1.w": 1, "block2.w": 2}

    def _value(self, name, perturbation):
        v = self.theta[name].astype(np.float64)
        for d, scale in perturbation:
            if d.covers(self.block[name]):
                v = v + scale * perturb.generate(d.tensor_key(name), 0, v.size, self.distribution)
        return v

    def trainable_numel(self, block):
        return sum(v.size for n, v in self.theta.items() if self.block[n] == block)

    def encode(self, prompts, labels):
        return float(np.mean(labels))

    def forward_block1(self, batch, perturbation=()):
        return self._value("block1.w", perturbation)

    def forward_block2(self, activation, batch, perturbation=()):
        a, b = activation, self._value("block2.w", perturbation)
        return float(
            0.5 * np.sum((a - self.t1 - batch) ** 2)
            + 0.5 * np.sum((b - self.t2) ** 2)
            + self.c * np.dot(a[: self.m], b[: self.m])
        )

    def loss(self, batch=0.0):
        return self.forward_block2(self.forward_block1(batch), batch)

    def gradient(self, batch=0.0):
        a, b = (self.theta[n].astype(np.float64) for n in ("block1.w", "block2.w"))
        g1, g2 = a - self.t1 - batch, b - self.t2
        g1[: self.m] += self.c * b[: self.m]
        g2[: self.m] += self.c * a[: self.m]
        return np.concatenate([g1, g2])

    def predict(self, batch):
        return [0]

    def forward_flops(self, batch):
        return float(self.theta["block1.w"].size), float(self.theta["block2.w"].size)

    def apply_update(self, update):
        for name, v in self.theta.items():
            for d, coeff in sorted(update):
                if d.covers(self.block[name]):
                    v += np.float32(coeff) * perturb.generate(d.tensor_key(name), 0, v.size, self.distribution)

    def snapshot(self):
        return {n: v.copy() for n, v in self.theta.items()}

    def restore(self, snap):
        for n in self.theta:
            self.theta[n][...] = snap[n]

    def fingerprint(self):
        return hashlib.sha256(b"".join(self.theta[n].tobytes() for n in sorted(self.theta))).hexdigest()

    def vector(self):
        return np.concatenate([self.theta["block1.w"], self.theta["block2.w"]]).astype(np.float64)


def estimated_gradient(scalars, update_fn, ex):
    """The gradient estimate an update encodes: -(update vector)/lr with lr = 1."""
    before = ex.snapshot()
    ex.apply_update(update_fn(scalars))
    g = -(ex.vector() - np.concatenate([before["block1.w"], before["block2.w"]]))
    ex.restore(before)
    return g


