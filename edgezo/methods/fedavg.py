"""FedAvg with backpropagation (McMahan et al. 2017): the first-order reference, showing what the
zero-order methods trade away.

Each device runs K steps of SGD on its replica and uploads its full weight delta; the global model
moves by the example-weighted mean of the deltas. Nothing is probed, so there are no directions,
no scalars and no seed log, and full float32 deltas move both ways. Only the torch executor
backpropagates (``loss_and_grad``), and over MQTT only seeds and scalars travel, so it runs in
``edgezo simulate`` on one torch replica. A step is counted as a forward of both blocks and the
backward autograd runs for the trainable set (``backward_flops``: about one forward for norm or LoRA,
two for full fine-tuning).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from edgezo.aggregate import Aggregation
from edgezo.errors import EdgezoError
from edgezo.estimators import LocalRound, ProbeConfig
from edgezo.executor import Executor
from edgezo.methods.base import Method

if TYPE_CHECKING:  # pragma: no cover
    from edgezo.costmodel import StepCosts, Work


@dataclass
class FedAvgRound(LocalRound):
    deltas: Any = None  # the full model delta the device uploads


class FedAvg(Method):
    name = "fedavg"
    label = "FedAvg with backpropagation, the first-order reference"
    backprop = True
    moves_model = True
    aggregations = ("mean",)

    def estimates(self, k: int, p1: int, p2: int) -> int:
        return k  # one gradient a step

    def update_directions(self, k: int, p1: int, p2: int) -> int:
        return 0

    def probe(self, p1: int, p2: int, eps: float, variant: str, difference: str) -> ProbeConfig | None:
        return None

    def step(self, ex, batch, probe, run_seed, rnd, step, stream=0):
        raise EdgezoError("fedavg backpropagates: it has no zero-order step")

    def directions(self, probe, run_seed, rnd, steps, stream=0):
        return []

    def local_round(self, ex: Executor, batches: Sequence[Any], probe: None, lr: float, run_seed: int, rnd: int,
                    stream: int = 0) -> FedAvgRound:
        """K steps of SGD with backpropagation on this device's replica."""
        start = ex.snapshot()
        out = FedAvgRound()
        for batch in batches:
            loss, grads = ex.loss_and_grad(batch)
            ex.add_to_trainable(grads, -lr)
            f1, f2 = ex.forward_flops(batch)
            out.losses.append(loss)
            out.forwards1 += 1
            out.forwards2 += 1
            out.flops += f1 + f2 + ex.backward_flops(batch)  # the forward, and the backward autograd runs
        end = ex.snapshot()
        out.deltas = {n: end[n] - start[n] for n in end}
        return out

    def apply_round(self, replicas: Sequence[tuple[Executor, Any]], results: Sequence[tuple[FedAvgRound, float]], lr: float,
                    variant: str, aggregation: Aggregation) -> None:
        """The weighted mean of the devices' deltas, added to the round's starting weights (one
        replica: only torch backpropagates)."""
        ex, weights = replicas[0]
        deltas = [(r.deltas, w) for r, w in results]
        ex.restore(weights)
        total = sum(w for _, w in deltas)
        for delta, w in deltas:
            ex.add_to_trainable(delta, w / total)
        return None

    def step_seconds(self, costs: StepCosts, w: Work) -> float:
        """A forward and a backward of both blocks (~3 forwards), then one SGD update."""
        t1, t2, c1, c2, u1, u2 = costs
        return 3 * (t1 + t2) + u1 + u2

    def update_seconds(self, costs: StepCosts, w: Work) -> float:
        return costs.u1 + costs.u2  # the averaged delta, added once
