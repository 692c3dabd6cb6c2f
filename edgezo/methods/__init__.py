"""The federated fine-tuning methods, one module each behind one interface (``base.Method``), as
Flower keeps one strategy per file. Code outside this package asks ``method_of(name)`` and never
tests a method's name: adding a method is adding its module and one line to ``_METHODS``."""

from __future__ import annotations

from edgezo.errors import EdgezoError
from edgezo.methods.base import Method
from edgezo.methods.bforward import BForward
from edgezo.methods.decomfl import DeComFL
from edgezo.methods.fedavg import FedAvg
from edgezo.methods.fedzo import FedZO
from edgezo.methods.fzoo import FZOO
from edgezo.methods.mezo import MeZO
from edgezo.methods.spzo import SPZO

_METHODS: dict[str, Method] = {m.name: m for m in (SPZO(), MeZO(), DeComFL(), FedZO(), FedAvg(), FZOO(), BForward())}

METHODS = tuple(_METHODS)
DEFAULT_METHOD = SPZO.name


def method_of(name: str) -> Method:
    try:
        return _METHODS[name]
    except KeyError:
        raise EdgezoError(f"unknown method {name!r}; use one of {', '.join(METHODS)}") from None
