"""The cost model: how long a round of work takes on a device, and how much memory it needs.

Everything here is a pure function of three things: the model's shape (``ModelShape``, taken
from the loaded model), what a device's backend can do (``edgezo.profiles.BackendProfile``,
measured by ``edgezo profile`` or a reference estimate), and the work asked of it (``Work``).

A step's time is the method's (``Method.step_seconds``) from the block costs of its batch
(``StepCosts``): ``t_b`` the forward time of block b on the batch, ``c_b`` the time to generate a
perturbed copy of block b's trainable tensors and ``u_b`` the time to add one direction to them.
For a joint SPZO step, for instance::

    step = P1 * (2 * t1 + 2 * P2 * t2)                      block forwards
         + (2*P1 * c1 + 2*P1*P2 * c2)                       perturbed copies, one per perturbed forward
         + (P1 * u1 + P1*P2 * u2)                           the local update (P1 directions on block 1,
                                                            P1*P2 on block 2)

A round is K steps plus applying the round's global update (``Method.update_seconds``).
A backend whose profile says ``reuses_block1 = false`` (the browser device, which runs a full
forward for every probe) is charged ``full_forward_costs``: t1 + t2 for each block-2 forward.

Forward time: when the profile measured this very model and split, ``t_b = a_b + s_b * FLOPs_b``
fitted to its measured rows (so batch sizes it did not measure are interpolated along the FLOPs);
otherwise ``t_b = units_b * overhead + FLOPs_b / throughput`` from the backend's effective
throughput and per-layer overhead (reference profiles, or another model).

Peak memory of a step: runtime + weights + activations, where activations are the kept block-1
outputs a+ and a- plus one layer's working set (an analytic count of its tensors, scaled by the
backend's measured ``activation_factor``) and one unit's perturbed copy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, NamedTuple, Sequence

from edgezo.methods import DEFAULT_METHOD, Method, method_of

if TYPE_CHECKING:  # pragma: no cover
    from edgezo.profiles import BackendProfile

MIB = float(1 << 20)


@dataclass(frozen=True)
class ModelShape:
    """What the cost model needs to know of a model split into two blocks (no weights)."""

    name: str
    layers: int
    split: int
    layer_params: tuple[int, ...]  # matmul weights per layer
    head_params: int  # weights the head multiplies per sequence (tied output embedding included)
    hidden: int
    intermediate: int
    heads: int
    kv_hidden: int  # hidden size of keys/values (grouped-query attention shares them)
    vocab: int
    total_params: int  # everything held in memory
    trainable: tuple[int, int]  # trainable elements in block 1, block 2
    trainable_tensors: tuple[int, int]  # trainable tensors in block 1, block 2
    largest_unit_trainable: int = 0  # elements of the biggest unit's trainable set (one perturbed copy)
    digest: str = ""  # of the weights, when known: identifies the model better than its name

    def units(self, block: int) -> int:
        """Units (embedding, layers, head) a block forward runs: each costs a fixed dispatch overhead."""
        return self.split + 1 if block == 1 else self.layers - self.split + 1

    def block_flops(self, block: int, batch: int, tokens: int) -> float:
        """FLOPs of one block forward on ``batch`` sequences of ``tokens`` tokens: 2 per weight per
        token plus attention scores, the head on one position per sequence (as the torch executor
        counts them)."""
        layers = range(self.split) if block == 1 else range(self.split, self.layers)
        attn = 4.0 * batch * tokens * tokens * self.hidden
        flops = sum(2.0 * self.layer_params[i] * batch * tokens + attn for i in layers)
        if block == 2:
            flops += 2.0 * self.head_params * batch
        return flops

    def activation_bytes(self, batch: int, tokens: int) -> float:
        """float32 bytes alive at the peak of an SPZO step, by count: the kept a+ and a- (2 x hidden
        per token) and one layer's working set (residual, norm, q, k, v, attention output, MLP
        intermediates, two score matrices), plus the head's logits on the target rows."""
        per_token = 2 * self.hidden + 6 * self.hidden + 2 * self.kv_hidden + 3 * self.intermediate
        scores = 2 * self.heads * tokens * tokens
        return 4.0 * (batch * tokens * per_token + batch * scores + batch * self.vocab)


@dataclass(frozen=True)
class Work:
    """What a device is asked to do in one round."""

    k: int = 2  # local steps
    p1: int = 1
    p2: int = 4
    batch: int = 16
    method: Method = method_of(DEFAULT_METHOD)  # the object: the job's name is resolved where the job is read
    variant: str = "joint"
    difference: str = "central"

    @property
    def estimates(self) -> int:
        """Full-model directional estimates the round produces (SPZO: each (i, j) is one)."""
        return self.method.estimates(self.k, self.p1, self.p2)


class StepCosts(NamedTuple):
    """Seconds of the parts of a step on one batch, per block b: ``t`` a forward, ``c`` a perturbed
    copy of the block's trainable tensors, ``u`` adding one direction to them."""

    t1: float
    t2: float
    c1: float
    c2: float
    u1: float
    u2: float


def full_forward_costs(costs: StepCosts) -> StepCosts:
    """The block costs of a device that keeps no block-1 activations (``reuses_block1 = false``: the
    browser device): each block-2 probe then runs block 1 again, so a block-2 forward costs t1 + t2,
    and block 1 alone costs nothing, being part of every full forward. Every method's
    ``step_seconds`` then charges a full forward per perturbed forward (SPZO joint: 2·P1·P2 full
    forwards a step) with no method knowing about it; perturbed copies and updates are unchanged."""
    return costs._replace(t1=0.0, t2=costs.t1 + costs.t2)


def linear_fit(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Least-squares (intercept, slope); with one point, the line through it and the origin.
    A negative intercept (noise at tiny sizes) is clamped to zero and the slope refitted."""
    n = len(x)
    if n == 0:
        raise ValueError("no points to fit")
    if n == 1 or max(x) == min(x):
        return 0.0, sum(y) / sum(x)
    mx, my = sum(x) / n, sum(y) / n
    slope = sum((a - mx) * (b - my) for a, b in zip(x, y)) / sum((a - mx) ** 2 for a in x)
    intercept = my - slope * mx
    if intercept < 0:
        return 0.0, sum(a * b for a, b in zip(x, y)) / sum(a * a for a in x)
    return intercept, slope


@dataclass(frozen=True)
class Predictor:
    """Time and memory of work on one backend of one device, for one model and sequence length."""

    backend: "BackendProfile"
    shape: ModelShape
    tokens: int  # tokens per sequence (the job's padded length)

    # -- time -------------------------------------------------------------------------------
    @cached_property
    def _measured_fits(self) -> dict[int, tuple[float, float]]:
        """Per block, (intercept, slope) of time against FLOPs over the measured rows, when the
        profile measured this model and split (fitted once: the planner asks thousands of times)."""
        m = self.backend.measured
        if m is None or not m.forwards or not m.matches(self.shape):
            return {}
        fits = {}
        for block in (1, 2):
            x = [self.shape.block_flops(block, r.batch, r.tokens) for r in m.forwards]
            y = [r.block1_s if block == 1 else r.block2_s for r in m.forwards]
            fits[block] = linear_fit(x, y)
        return fits

    def forward_s(self, block: int, batch: int) -> float:
        """Seconds of one forward of ``block`` on ``batch`` sequences."""
        flops = self.shape.block_flops(block, batch, self.tokens)
        fit = self._measured_fits.get(block)
        if fit is not None:
            return fit[0] + fit[1] * flops
        b = self.backend
        return self.shape.units(block) * b.overhead_ms / 1e3 + flops / (b.gflops * 1e9)

    def perturb_s(self, block: int) -> float:
        """Seconds to make one perturbed copy of a block's trainable tensors."""
        b = self.backend
        return self.shape.trainable_tensors[block - 1] * b.call_us / 1e6 + self.shape.trainable[block - 1] / (b.perturb_melems_s * 1e6)

    def update_s(self, block: int) -> float:
        """Seconds to add one direction to a block's trainable tensors."""
        b = self.backend
        return self.shape.trainable_tensors[block - 1] * b.call_us / 1e6 + self.shape.trainable[block - 1] / (b.update_melems_s * 1e6)

    def step_costs(self, batch: int) -> StepCosts:
        costs = StepCosts(self.forward_s(1, batch), self.forward_s(2, batch), self.perturb_s(1), self.perturb_s(2),
                          self.update_s(1), self.update_s(2))
        return costs if self.backend.reuses_block1 else full_forward_costs(costs)

    def step_s(self, w: Work) -> float:
        return w.method.step_seconds(self.step_costs(w.batch), w)

    def round_s(self, w: Work) -> float:
        """K local steps, then the round's global update (about this device's own directions)."""
        method, costs = w.method, self.step_costs(w.batch)
        return w.k * method.step_seconds(costs, w) + method.update_seconds(costs, w)

    # -- memory -----------------------------------------------------------------------------
    def weights_mb(self) -> float:
        m = self.backend.measured
        if m is not None and m.matches(self.shape) and m.load_mb > 0:
            return m.load_mb
        return self.shape.total_params * self.backend.bytes_per_param / MIB

    def peak_mb(self, batch: int) -> float:
        """Peak resident memory of a training step on ``batch`` sequences (inference-level: no
        gradients, no optimizer state)."""
        b = self.backend
        act = b.activation_factor * self.shape.activation_bytes(batch, self.tokens)
        copy = 4.0 * self.shape.largest_unit_trainable
        return b.runtime_mb + self.weights_mb() + (act + copy) / MIB


def suggest_split(shape: ModelShape, p2: int) -> int:
    """A split where neither block dominates a step: 2*t1 ~ 2*P2*t2, i.e. block 2 holds about
    1/(1+P2) of the layers. Past that point more block-2 perturbations cost more than they save."""
    return max(1, min(shape.layers - 1, round(shape.layers * p2 / (1 + p2))))


def relative_error(predicted: float, measured: float) -> float:
    return abs(predicted - measured) / measured if measured > 0 else math.inf
