"""The interface every method implements, with the defaults of the shared-seed zero-order methods.

A method decides what a local step probes (``step``) and so which directions an assignment owes
(``directions``); how a device runs its round (``local_round``) and on which stream of directions
(``stream``); how the devices' results become the global update (``aggregate``, ``apply_round``);
what a device's round moves over the network (``bytes_per_device``); and what its work costs
(``estimates``, ``update_directions``, ``step_seconds``, ``update_seconds``). Code outside
``edgezo.methods`` asks the method (``edgezo.methods.method_of(name)``) and never tests a method's
name, so a new method is one module and one line in the registry.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, Sequence

from edgezo.aggregate import AGGREGATIONS, Aggregation, Contribution, Screening
from edgezo.errors import EdgezoError
from edgezo.estimators import DIFFERENCES, LocalRound, ProbeConfig, StepResult, update_rule
from edgezo.executor import Executor
from edgezo.keys import Direction

if TYPE_CHECKING:  # pragma: no cover
    from edgezo.costmodel import StepCosts, Work

MESSAGE_HEADER_BYTES = 32  # run id, round, device, counts: the fixed part of a message
FLOAT_BYTES = 4

Update = list[tuple[Direction, float]]


class Method(ABC):
    """One federated fine-tuning method. The defaults are those of a zero-order method whose
    devices share the round's seeds and send one float32 scalar per direction."""

    name: str = ""  # what --method and the job's settings call it
    label: str = ""  # what it is, for --help
    default_difference: str = "central"  # the finite difference when the job names none
    differences: tuple[str, ...] = DIFFERENCES  # those it accepts
    shared_seeds: bool = True  # all devices probe the round's directions (False: each its own stream)
    backprop: bool = False  # first-order: no probes and no seed log; full weights move, torch only
    moves_model: bool = False  # a device sends and receives full float32 model deltas (bytes)
    aggregations: tuple[str, ...] = AGGREGATIONS  # the rules its update can be combined by

    # -- what the work amounts to ------------------------------------------------------------
    def effective_p2(self, p2: int) -> int:
        """Block-2 perturbations per block-1 perturbation when a job or a task asks for ``p2``:
        only a method that splits the model uses P2; the others probe the whole model P1 times."""
        return 1

    def estimates(self, k: int, p1: int, p2: int) -> int:
        """Full-model directional estimates a round of ``k`` steps produces."""
        return k * p1 * self.effective_p2(p2)

    def update_directions(self, k: int, p1: int, p2: int) -> int:
        """Directions in the update of a round of ``k`` steps: what replaying it regenerates."""
        return k * p1

    def check_difference(self, difference: str) -> None:
        if difference not in self.differences:
            raise EdgezoError(f"{self.name} uses {' or '.join(self.differences)} differences (got --difference {difference})")

    def check_aggregation(self, aggregation: Aggregation) -> None:
        if aggregation.rule not in self.aggregations:
            raise EdgezoError(f"--aggregation {aggregation.rule} does not apply to {self.name}; it takes {', '.join(self.aggregations)}")
        if self.backprop and aggregation.clip is not None:
            raise EdgezoError(f"--clip clips scalars; {self.name} sends none")

    # -- a device's round ---------------------------------------------------------------------
    def probe(self, p1: int, p2: int, eps: float, variant: str, difference: str) -> ProbeConfig | None:
        """How a device asked for P1, P2 probes the loss (the one place a ProbeConfig is built
        from a job or a task), checked against this method's differences."""
        self.check_difference(difference)
        return ProbeConfig(self.name, p1, self.effective_p2(p2), eps, variant, difference)

    def stream(self, position: int) -> int:
        """The direction stream of the device at ``position`` (1-based) of a round's devices: 0,
        the round's shared seeds, or, for a method with per-device seeds, its own."""
        return 0 if self.shared_seeds else position

    @abstractmethod
    def step(self, ex: Executor, batch: Any, probe: ProbeConfig, run_seed: int, rnd: int, step: int, stream: int = 0) -> StepResult:
        """One local step: probe the loss along the step's directions, return their scalars."""

    @abstractmethod
    def directions(self, probe: ProbeConfig, run_seed: int, rnd: int, steps: int, stream: int = 0) -> list[Direction]:
        """The directions ``steps`` local steps probe, sorted: the scalars a device owes for an
        assignment, so a coordinator can check a result and a device can send bare values in this
        order."""

    def local_round(self, ex: Executor, batches: Sequence[Any], probe: ProbeConfig | None, lr: float, run_seed: int, rnd: int,
                    stream: int = 0) -> LocalRound:
        """K local steps (one per batch): probe, then apply this device's own update locally.

        The caller restores the round's starting weights afterwards (the global model moves by the
        aggregate of all devices' scalars, not by this device's local steps).
        """
        out = LocalRound()
        for step, batch in enumerate(batches):
            result = self.step(ex, batch, probe, run_seed, rnd, step, stream)
            ex.apply_update(update_rule(result.scalars, lr, probe.variant))
            out.scalars.update(result.scalars)
            out.losses.append(result.loss)
            out.forwards1 += result.forwards1
            out.forwards2 += result.forwards2
            out.flops += result.flops
        return out

    # -- the global update --------------------------------------------------------------------
    def aggregate(self, contributions: Sequence[Contribution], lr: float, variant: str, aggregation: Aggregation,
                  screening: Screening | None = None) -> Update:
        """The round's update from every device's scalars: one scalar per direction by the
        aggregation rule (K*P1*P2 directions whatever the number of devices), then ``update_rule``.
        ``screening``: the round's, when its review screened it already."""
        return update_rule(aggregation.combine(contributions, screening), lr, variant)

    def apply_round(self, replicas: Sequence[tuple[Executor, Any]], results: Sequence[tuple[LocalRound, float]], lr: float,
                    variant: str, aggregation: Aggregation) -> Update | None:
        """Move every replica, from its snapshot of the round's start, to the new global model;
        returns the update the seed log records (None: this method keeps no seed log)."""
        update = self.aggregate([(r.scalars, w) for r, w in results], lr, variant, aggregation)
        for replica, weights in replicas:
            replica.restore(weights)
            replica.apply_update(update)
        return update

    def bytes_per_device(self, scalars_up: float, scalars_down: int, trainable: int) -> tuple[float, float]:
        """Payload bytes one device sends and receives in a round (up, down): its scalars up, the
        round's averaged scalars down (it regenerates the directions from the seeds), or full
        float32 model deltas both ways for a method that moves the model."""
        if self.moves_model:
            full = MESSAGE_HEADER_BYTES + FLOAT_BYTES * trainable
            return full, full
        return (MESSAGE_HEADER_BYTES + FLOAT_BYTES * scalars_up, MESSAGE_HEADER_BYTES + FLOAT_BYTES * scalars_down)

    # -- the cost model -----------------------------------------------------------------------
    @abstractmethod
    def step_seconds(self, costs: StepCosts, w: Work) -> float:
        """Seconds of one local step of work ``w``, from its block costs (``edgezo.costmodel``)."""

    def update_seconds(self, costs: StepCosts, w: Work) -> float:
        """Seconds to apply the round's global update, about this device's own directions."""
        return w.k * w.p1 * costs.u1
