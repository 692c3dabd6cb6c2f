"""LoRA adapters on transformers' torch modules, initialised identically on every device.

``lora_A`` is drawn from the canonical generator (``edgezo.perturb``) with a key derived from the
run seed and the tensor's name, and ``lora_B`` is zero, so every device (on every backend: mlx
copies the same ``lora_init`` values) builds bit-identical adapters without any communication. An
adapter keeps the wrapped layer's ``weight``/``bias`` under their original names, so names (and
perturbation keys, and the executor's layer split) of the base weights do not change.

Which layers count as linear and how each is wrapped is a table (:data:`LoRAWrappers`): plain
``nn.Linear`` and GPT-2's ``Conv1D`` by default; the int8 backend adds its quantized linear layer.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from edgezo import perturb
from edgezo.errors import EdgezoError
from edgezo.keys import Direction

LORA_INIT_ROUND = -1  # the Direction round reserved for LoRA initialisation (training rounds are >= 0)


class LoRAModule(nn.Module):
    """What every LoRA adapter adds to its layer: factors ``lora_A`` [r, in] and ``lora_B``
    [out, r] and the term ``(x A^T B^T) * alpha/r``. With ``B = 0`` the term is exactly zero, so
    outputs equal the wrapped layer's bit for bit."""

    def _add_factors(self, rank: int, alpha: float, in_features: int, out_features: int, **tensor_kw) -> None:
        """Registered after the layer's own weight and bias, so ``named_parameters`` lists them last."""
        self.rank, self.alpha, self.scaling = rank, alpha, alpha / rank
        self.lora_A = nn.Parameter(torch.zeros(rank, in_features, **tensor_kw))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank, **tensor_kw))

    def lora_term(self, x: torch.Tensor, lora_B: torch.Tensor | None = None) -> torch.Tensor:
        """``(x A^T B^T) * scaling``; ``lora_B``: some rows of it (a layer computing only those outputs)."""
        return F.linear(F.linear(x, self.lora_A), self.lora_B if lora_B is None else lora_B) * self.scaling


def _conv1d_class():
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - transformers always has it today
        return None
    return Conv1D


class LoRALinear(LoRAModule):
    """``y = base(x) + (x A^T B^T) * alpha/r``, holding the base layer's ``weight``/``bias`` itself.

    ``transposed`` marks a GPT-2 style ``Conv1D`` (weight stored as ``[in, out]``).
    """

    def __init__(self, base: nn.Module, rank: int, alpha: float, transposed: bool = False):
        super().__init__()
        self.transposed = transposed
        self.weight = base.weight
        self.bias = base.bias
        out_features, in_features = base.weight.shape[::-1] if transposed else base.weight.shape
        self.in_features, self.out_features = in_features, out_features
        self._add_factors(rank, alpha, in_features, out_features, dtype=base.weight.dtype, device=base.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.t() if self.transposed else self.weight
        return F.linear(x, weight, self.bias) + self.lora_term(x)

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


LoRAWrappers = Mapping[type, Callable[[nn.Module, int, float], LoRAModule]]
"""Layer class -> how to wrap such a layer (``wrap(layer, rank, alpha)``) in a LoRA adapter."""


def linear_lora_wrappers() -> dict[type, Callable[[nn.Module, int, float], LoRAModule]]:
    """``nn.Linear`` and (where transformers has it) GPT-2's ``Conv1D``, both as :class:`LoRALinear`."""
    wrappers: dict[type, Callable[[nn.Module, int, float], LoRAModule]] = {nn.Linear: LoRALinear}
    conv1d = _conv1d_class()
    if conv1d is not None:
        wrappers[conv1d] = lambda layer, rank, alpha: LoRALinear(layer, rank, alpha, transposed=True)
    return wrappers


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


def has_lora(model: nn.Module) -> bool:
    return any(isinstance(m, LoRAModule) for m in model.modules())


def add_lora(
    model: nn.Module, rank: int, alpha: float, targets: Sequence[str], seed: int, wrappers: LoRAWrappers | None = None
) -> list[str]:
    """Wrap every linear layer (``wrappers``' classes; default :func:`linear_lora_wrappers`) whose
    name matches ``targets`` in a LoRA adapter.

    ``lora_B = 0`` and ``lora_A`` from ``lora_init``, so all devices agree without communication.
    Returns the new parameter names (``<module>.lora_A``, ``<module>.lora_B``) in model order.
    """
    wrappers = linear_lora_wrappers() if wrappers is None else wrappers
    linear_names, found = [], []
    for name, module in model.named_modules():
        if isinstance(module, LoRAModule):
            raise EdgezoError(f"the model already has LoRA adapters ({name}); add them once")
        wrap = next((w for cls, w in wrappers.items() if isinstance(module, cls)), None)
        if wrap is not None:
            linear_names.append(name)
            if _target_matches(name, targets):
                found.append((name, module, wrap))
    if not found:
        leaves = sorted({n.rpartition(".")[2] for n in linear_names})
        raise EdgezoError(f"LoRA targets {'+'.join(targets)} match no linear layer; this model has: {', '.join(leaves)}")
    new_names = []
    for name, module, wrap in found:
        lora = wrap(module, rank, alpha)
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
