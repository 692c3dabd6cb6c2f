"""Which parameters a run trains: full, BitFit, norm-only, LoRA, or named by regex.

Zero-order methods perturb every trainable scalar on every probe, so the trainable set is the
main lever on both convergence speed and cost: the user chooses it (``--trainable``).

LoRA adapters are initialised from the canonical generator (``edgezo.perturb``) with a key derived
from the run seed, so every device builds bit-identical adapters without any communication. The
adapter keeps the wrapped layer's ``weight``/``bias`` under their original names, so names (and
perturbation keys, and the executor's layer split) of the base weights do not change.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from edgezo import perturb
from edgezo.errors import EdgezoError
from edgezo.keys import Direction

KINDS = ("full", "bitfit", "norm", "lora", "names")
DEFAULT_LORA_RANK = 8
DEFAULT_LORA_ALPHA = 16.0
DEFAULT_LORA_TARGETS = ("q_proj", "v_proj", "query", "value")  # LLaMA/OPT and BERT/RoBERTa attention
LORA_INIT_ROUND = -1  # the Direction round reserved for LoRA initialisation (training rounds are >= 0)
SPEC_FORMS = (
    "full | bitfit | norm | lora | lora:r=8,alpha=16,targets=q_proj+v_proj | names:REGEX[,REGEX...]"
)


@dataclass(frozen=True)
class TrainableSpec:
    kind: str  # one of KINDS
    rank: int = DEFAULT_LORA_RANK
    alpha: float = DEFAULT_LORA_ALPHA
    targets: tuple[str, ...] = DEFAULT_LORA_TARGETS
    patterns: tuple[str, ...] = ()  # for "names"

    def __str__(self) -> str:
        if self.kind == "lora":
            return f"lora:r={self.rank},alpha={self.alpha:g},targets={'+'.join(self.targets)}"
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
    options = {"r": str(DEFAULT_LORA_RANK), "alpha": None, "targets": "+".join(DEFAULT_LORA_TARGETS)}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip().lower()
        if not eq or key not in options or not value.strip():
            raise _bad(spec, f"lora option {item!r}; options are r=INT, alpha=FLOAT, targets=NAME+NAME")
        options[key] = value.strip()
    try:
        rank = int(options["r"])
        alpha = float(options["alpha"]) if options["alpha"] is not None else 2.0 * rank
    except ValueError:
        raise _bad(spec, "r must be an integer and alpha a number") from None
    targets = tuple(t.strip() for t in options["targets"].split("+") if t.strip())
    if rank < 1 or not math.isfinite(alpha) or not targets:
        raise _bad(spec, "r must be >= 1, alpha finite, targets non-empty")
    return TrainableSpec("lora", rank=rank, alpha=alpha, targets=targets)


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
        chosen = [n for n in names if _is_lora_name(n)]
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


def prepare_trainable(model: nn.Module, spec: TrainableSpec, seed: int, frozen_names: Iterable[str] = ()) -> list[str]:
    """``add_lora`` when the spec asks for it, then ``select_trainable``: the one call executors need."""
    if spec.kind == "lora" and not any(isinstance(m, LoRALinear) for m in model.modules()):
        add_lora(model, spec.rank, spec.alpha, spec.targets, seed)
    return select_trainable(model, spec, frozen_names)


def _is_lora_name(name: str) -> bool:
    return name.endswith((".lora_A", ".lora_B"))


# -- LoRA ------------------------------------------------------------------------------------------


def _conv1d_class():
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - transformers always has it today
        return None
    return Conv1D


class LoRALinear(nn.Module):
    """``y = base(x) + (x A^T B^T) * alpha/r``, holding the base layer's ``weight``/``bias`` itself.

    With ``B = 0`` the extra term is exactly zero, so outputs equal the wrapped layer's bit for bit.
    ``transposed`` marks a GPT-2 style ``Conv1D`` (weight stored as ``[in, out]``).
    """

    def __init__(self, base: nn.Module, rank: int, alpha: float, transposed: bool = False):
        super().__init__()
        self.transposed = transposed
        self.weight = base.weight
        self.bias = base.bias
        out_features, in_features = base.weight.shape[::-1] if transposed else base.weight.shape
        self.in_features, self.out_features = in_features, out_features
        self.rank, self.alpha, self.scaling = rank, alpha, alpha / rank
        kw = dict(dtype=base.weight.dtype, device=base.weight.device)
        self.lora_A = nn.Parameter(torch.zeros(rank, in_features, **kw))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank, **kw))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.t() if self.transposed else self.weight
        return F.linear(x, weight, self.bias) + F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        """``B A * scaling`` in the base weight's layout."""
        delta = (self.lora_B @ self.lora_A) * self.scaling
        return delta.t() if self.transposed else delta

    def merged(self) -> nn.Module:
        """A plain layer with the merged weight (a new tensor) and the same bias object."""
        conv1d = _conv1d_class()
        with torch.no_grad():
            weight = self.weight + self.delta_weight()
        if self.transposed:
            plain = conv1d.__new__(conv1d)
            nn.Module.__init__(plain)
            plain.nf, plain.nx = self.out_features, self.in_features
        else:
            plain = nn.Linear.__new__(nn.Linear)
            nn.Module.__init__(plain)
            plain.in_features, plain.out_features = self.in_features, self.out_features
        plain.weight = nn.Parameter(weight, requires_grad=self.weight.requires_grad)
        plain.bias = self.bias
        return plain

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, r={self.rank}, alpha={self.alpha:g}"


def _target_matches(name: str, targets: Sequence[str]) -> bool:
    """``q_proj`` matches ``...self_attn.q_proj``; ``self_attn.q_proj`` matches its dotted suffix too."""
    return any(name == t or name.endswith("." + t) for t in targets)


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def lora_init(name: str, shape: tuple[int, int], seed: int) -> torch.Tensor:
    """Canonical ``lora_A`` init: Gaussian from the run seed and the tensor name, scaled by 1/sqrt(in)."""
    key = Direction(run_seed=seed, round=LORA_INIT_ROUND, step=0, block=0, i=0).tensor_key(name)
    values = perturb.gaussian(key, 0, shape[0] * shape[1]) * (1.0 / math.sqrt(shape[1]))
    return torch.from_numpy(values.reshape(shape))


def add_lora(model: nn.Module, rank: int, alpha: float, targets: Sequence[str], seed: int) -> list[str]:
    """Wrap every ``nn.Linear`` (or ``Conv1D``) whose name matches ``targets`` in a ``LoRALinear``.

    ``lora_B = 0`` and ``lora_A`` from ``lora_init``, so all devices agree without communication.
    Returns the new parameter names (``<module>.lora_A``, ``<module>.lora_B``) in model order.
    """
    conv1d = _conv1d_class()
    linear_names, found = [], []
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            raise EdgezoError(f"the model already has LoRA adapters ({name}); add them once")
        is_conv = conv1d is not None and isinstance(module, conv1d)
        if isinstance(module, nn.Linear) or is_conv:
            linear_names.append(name)
            if _target_matches(name, targets):
                found.append((name, module, is_conv))
    if not found:
        leaves = sorted({n.rpartition(".")[2] for n in linear_names})
        raise EdgezoError(f"LoRA targets {'+'.join(targets)} match no linear layer; this model has: {', '.join(leaves)}")
    new_names = []
    for name, module, is_conv in found:
        lora = LoRALinear(module, rank, alpha, transposed=is_conv)
        with torch.no_grad():
            lora.lora_A.copy_(lora_init(f"{name}.lora_A", tuple(lora.lora_A.shape), seed))
        _set_module(model, name, lora)
        new_names += [f"{name}.lora_A", f"{name}.lora_B"]
    return new_names


@contextlib.contextmanager
def merge_lora(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, ``model`` has plain layers with LoRA merged in; afterwards it is exactly as before.

    Only the adapted layers' merged weights are new tensors (no full model copy); the base weights
    are never written, so leaving the block restores the live model bit for bit.
    """
    adapters = [(n, m) for n, m in model.named_modules() if isinstance(m, LoRALinear)]
    try:
        for name, module in adapters:
            _set_module(model, name, module.merged())
        yield model
    finally:
        for name, module in adapters:
            _set_module(model, name, module)
