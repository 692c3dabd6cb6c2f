"""edgezo's own estimator (issue 27): forward differences with P whole-model probes, placed only
where the gradient is. On LoRA that means the ``lora_B`` factors alone (``--trainable
lora:factors=B``: ``lora_A`` stays at its seeded init, as in LoRA-FA).

Why (a candidate, not a measured win). For P much smaller than the number of probed weights d,
every isotropic estimator buys about the same descent per forward FLOP; what can move it is where
the probes go. A probe z = s ⊙ r has E‖ĝ‖² ≈ ‖s‖² ‖s ⊙ h‖² / P
(``benchmarks/gradient_quality_stats.py``), so elements without gradient cost noise: at the base
model LoRA's B is 0 and the gradient with respect to every A is exactly 0 (60% of LoRA's elements,
r = 8 on q and v, SmolLM2-135M). Charging the noise at the average curvature, the gradient-quality
bench puts B-only forward P = 16 at 2.8x DeComFL forward P = 5's descent per FLOP (base and after
16 SGD steps), and B of v_proj alone (91% / 87% of ‖G‖² with 10% of the elements,
``--trainable lora:targets=v_proj,factors=B``) at 10x / 9x. Charging it at each tensor's own
curvature (the Hessian as the gradient covariance), both fall to 1.0-1.1x, the same as DeComFL
forward P = 16: the gradient sits where the curvature is, and while B = 0 the loss is flat in A.
Real second differences side with the second model (curvature per element on v_proj's B 3.3x
all B's, the proxy said 3.7x: about 1.2 ± 0.3x DeComFL forward P = 5 in one step). The regime
sweep tests that prediction (docs/algorithm.md, "bforward").

How it is built. The executor protocol perturbs and updates whole blocks of trainable tensors by
direction (``Direction.covers``), so a per-tensor probe scale is not expressible without a protocol
change; a scale of 0 on A and 1 on B is, exactly, a trainable set without A. So the probe's support
is the trainable set's (``lora:factors=B``), and this method refuses a LoRA trainable set that
still trains A (its probes would spend 60% of their dimensions on noise: that is DeComFL
forward). The step is the single-block forward difference (P + 1 forwards, the round's shared
seeds, one float32 scalar per direction), so the seed log, replay, a late joiner and a checkpoint
are those of every shared-seed method: no state survives a step.
"""

from __future__ import annotations

from edgezo.errors import EdgezoError
from edgezo.estimators import StepResult
from edgezo.methods.single_block import SingleBlockMethod, single_block_step

UNPROBED_SUFFIX = ".lora_A"  # tensors whose gradient is 0 while B = 0: left out of the probes


def b_only(trainable: str) -> str:
    """The trainable spec this method probes, from a job's: a LoRA spec with ``factors=B`` (other
    kinds unchanged), so a harness can run it beside the others on the same ``--trainable``."""
    kind, _, rest = trainable.partition(":")
    if kind.strip().lower() != "lora" or "factors=" in rest:
        return trainable
    return f"{kind}:{rest},factors=B" if rest.strip() else f"{kind}:factors=B"


def check_probe_support(ex) -> None:
    """Refuse a trainable set that still holds LoRA A factors (``ex.names``: an executor without
    names, a test double, has none to refuse)."""
    probed_a = [n for n in getattr(ex, "names", ()) if n.endswith(UNPROBED_SUFFIX)]
    if probed_a:
        raise EdgezoError(f"bforward probes LoRA's B factors only, but the trainable set trains {len(probed_a)} lora_A "
                          f"tensors (e.g. {probed_a[0]}): use --trainable lora:factors=B (A stays at its seeded init), "
                          f"or --method decomfl --difference forward to probe both")


class BForward(SingleBlockMethod):
    """Forward differences, P = ``--p1`` whole-model probes on a trainable set without LoRA's A."""

    name = "bforward"
    label = "forward differences on LoRA's B factors (edgezo's estimator)"
    default_difference = "forward"
    differences = ("forward",)

    def step(self, ex, batch, probe, run_seed, rnd, step, stream=0) -> StepResult:
        check_probe_support(ex)
        return single_block_step(ex, batch, probe, run_seed, rnd, step, stream)
