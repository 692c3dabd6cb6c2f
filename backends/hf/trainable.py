"""Which parameters a run trains: full, BitFit, norm-only, LoRA, or named by regex.

Zero-order methods perturb every trainable scalar on every probe, so the trainable set is the
main lever on both convergence speed and cost: the user chooses it (``--trainable``). The rules
run on a transformers torch model (torch's, int8's quantized one, or the meta-device twin the mlx
backend names its tensors by), so every backend trains the same tensors, in the same order.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

from torch import nn

from edgezo.backends.hf.arch import make_adapter
from edgezo.backends.hf.configs import meta_model
from edgezo.backends.hf.lora import LoRAWrappers, add_lora, has_lora
from edgezo.errors import EdgezoError

DEFAULT_LORA_RANK = 8
DEFAULT_LORA_ALPHA = 16.0
DEFAULT_LORA_TARGETS = ("q_proj", "v_proj", "query", "value")  # LLaMA/OPT and BERT/RoBERTa attention
SPEC_FORMS = (
    "full | bitfit | norm | lora | lora:r=8,alpha=16,targets=q_proj+v_proj,factors=B | names:REGEX[,REGEX...]"
)


@dataclass(frozen=True)
class TrainableSpec:
    kind: str  # full, bitfit, norm, lora or names
    rank: int = DEFAULT_LORA_RANK
    alpha: float = DEFAULT_LORA_ALPHA
    targets: tuple[str, ...] = DEFAULT_LORA_TARGETS
    patterns: tuple[str, ...] = ()  # for "names"
    factors: str = "AB"  # lora: "B" trains lora_B only, lora_A frozen at its seeded init (LoRA-FA; issue 27)

    def __str__(self) -> str:
        if self.kind == "lora":
            factors = "" if self.factors == "AB" else f",factors={self.factors}"
            return f"lora:r={self.rank},alpha={self.alpha:g},targets={'+'.join(self.targets)}{factors}"
        if self.kind == "names":
            return "names:" + ",".join(self.patterns)
        return self.kind


def _bad(spec: str, why: str) -> EdgezoError:
    return EdgezoError(f"bad --trainable {spec!r} ({why}); use one of: {SPEC_FORMS}")


def parse_trainable(spec: str) -> TrainableSpec:
    """Parse a ``--trainable`` string (forms in ``SPEC_FORMS``)."""
    text = spec.strip()
    kind, _, rest = text.partition(":")
    kind = kind.strip().lower()
    if kind in ("full", "bitfit", "norm"):
        if rest:
            raise _bad(spec, f"{kind} takes no options")
        return TrainableSpec(kind)
    if kind == "names":
        patterns = tuple(p.strip() for p in rest.split(",") if p.strip())
        if not patterns:
            raise _bad(spec, "names: needs at least one regex")
        for p in patterns:
            try:
                re.compile(p)
            except re.error as error:
                raise _bad(spec, f"regex {p!r}: {error}") from None
        return TrainableSpec("names", patterns=patterns)
    if kind == "lora":
        return _parse_lora(spec, rest)
    raise _bad(spec, f"unknown kind {kind!r}")


def _parse_lora(spec: str, rest: str) -> TrainableSpec:
    options = {"r": str(DEFAULT_LORA_RANK), "alpha": None, "targets": "+".join(DEFAULT_LORA_TARGETS), "factors": "AB"}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip().lower()
        if not eq or key not in options or not value.strip():
            raise _bad(spec, f"lora option {item!r}; options are r=INT, alpha=FLOAT, targets=NAME+NAME, factors=AB|B")
        options[key] = value.strip()
    try:
        rank = int(options["r"])
        alpha = float(options["alpha"]) if options["alpha"] is not None else 2.0 * rank
    except ValueError:
        raise _bad(spec, "r must be an integer and alpha a number") from None
    targets = tuple(t.strip() for t in options["targets"].split("+") if t.strip())
    factors = options["factors"].upper()
    if rank < 1 or not math.isfinite(alpha) or not targets or factors not in ("AB", "B"):
        raise _bad(spec, "r must be >= 1, alpha finite, targets non-empty, factors AB or B")
    return TrainableSpec("lora", rank=rank, alpha=alpha, targets=targets, factors=factors)


# -- selection -------------------------------------------------------------------------------------


def _is_norm(module: nn.Module) -> bool:
    """LayerNorm, RMSNorm and the models' own norm classes (LlamaRMSNorm, ...)."""
    return isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)) or "norm" in type(module).__name__.lower()


def _norm_param_names(model: nn.Module) -> set[str]:
    names = set()
    for prefix, module in model.named_modules():
        if _is_norm(module):
            names.update(f"{prefix}.{n}" if prefix else n for n, _ in module.named_parameters(recurse=False))
    return names


def _is_lora_name(name: str) -> bool:
    return name.endswith((".lora_A", ".lora_B"))


def select_trainable(model: nn.Module, spec: TrainableSpec, frozen_names: Iterable[str] = ()) -> list[str]:
    """Names of the trained parameters, in ``named_parameters`` order, never any of ``frozen_names``.

    For ``lora`` the adapters must already be in the model (``add_lora``, or ``prepare_trainable``).
    """
    frozen = set(frozen_names)
    names = [n for n, _ in model.named_parameters() if n not in frozen]
    if spec.kind == "full":
        chosen = [n for n in names if not _is_lora_name(n)]
    elif spec.kind in ("bitfit", "norm"):
        norms = _norm_param_names(model)
        chosen = [n for n in names if n in norms or (spec.kind == "bitfit" and n.endswith(".bias"))]
    elif spec.kind == "lora":
        chosen = [n for n in names if n.endswith(".lora_B") or (spec.factors == "AB" and n.endswith(".lora_A"))]
    elif spec.kind == "names":
        regexes = [re.compile(p) for p in spec.patterns]
        chosen = [n for n in names if any(r.search(n) for r in regexes)]
    else:
        raise _bad(str(spec), f"unknown kind {spec.kind!r}")
    if not chosen:
        hint = {"bitfit": "norm or lora", "norm": "bitfit or lora", "lora": "lora (after add_lora) with other targets"}
        raise EdgezoError(
            f"--trainable {spec} selects no parameter of this model; try {hint.get(spec.kind, 'norm, bitfit or lora')}"
            f" (parameters look like {names[:1] + names[-1:]})"
        )
    return chosen


def prepare_trainable(
    model: nn.Module, spec: TrainableSpec, seed: int, frozen_names: Iterable[str] = (), wrappers: LoRAWrappers | None = None
) -> list[str]:
    """``add_lora`` (with ``wrappers``) when the spec asks for it and the model has no adapters yet,
    then ``select_trainable``: the one call a backend's factory needs."""
    if spec.kind == "lora" and not has_lora(model):
        add_lora(model, spec.rank, spec.alpha, spec.targets, seed, wrappers)
    return select_trainable(model, spec, frozen_names)


def job_trainable(model: nn.Module, spec: TrainableSpec, seed: int, wrappers: LoRAWrappers | None = None) -> list[str]:
    """A job's trainable set on a transformers model: :func:`prepare_trainable` with the token
    embedding (and a head tied to it) frozen, as every backend freezes it."""
    return prepare_trainable(model, spec, seed, make_adapter(model).input_embedding_names(), wrappers)


@dataclass(frozen=True)
class TrainableLayout:
    """A job's trainable set for a configuration, computed on a meta-device model (no weights):
    what a backend that does not hold a transformers model (mlx) trains, named and ordered as on
    torch."""

    spec: TrainableSpec
    names: list[str]  # trainable parameter names, Hugging Face named_parameters order
    lora_modules: list[str]  # modules wrapped in LoRA adapters (empty unless spec.kind == "lora")
    parameter_names: list[str]  # every parameter name, LoRA adapters included


def trainable_layout(config, spec_text: str, seed: int) -> TrainableLayout:
    """The trainable set :func:`job_trainable` picks for ``config`` and ``--trainable spec_text``."""
    spec = parse_trainable(spec_text)
    meta = meta_model(config)
    names = job_trainable(meta, spec, seed)
    parameter_names = [n for n, _ in meta.named_parameters()]
    lora_modules = [n.removesuffix(".lora_A") for n in parameter_names if n.endswith(".lora_A")]
    return TrainableLayout(spec, names, lora_modules, parameter_names)
