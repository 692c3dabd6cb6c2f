"""Type checking of settings dataclasses, for values from a TOML file, the command line or Python.

Click types what it parses, but a TOML file or a notebook does not: ``clients = 4.5`` or
``rounds = true`` must be refused naming the key, not crash deep inside the job or run "after
True rounds". Every settings dataclass (``JobConfig`` and the command settings in
``edgezo.app.settings``) is checked by ``checked`` against its own field annotations, so the types
are declared once, where the defaults are.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from functools import cache

from edgezo.errors import ConfigError

_NAMES = {int: "a whole number", float: "a number", str: "a string", bool: "true or false"}


@cache
def field_types(cls) -> dict[str, tuple[type, ...]]:
    """Each field's accepted types (``int | None`` -> (int, NoneType))."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        args = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union else (hint,)
        out[f.name] = tuple(args)
    return out


def keys_of(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def check_value(key: str, value, accepted: tuple[type, ...], where: str):
    """``value`` converted to the field's type (an int where a float is due), or a ConfigError
    naming ``key``. Booleans are not numbers here, and a float is never silently truncated."""
    if value is None and type(None) in accepted:
        return None
    if isinstance(value, bool):
        if bool in accepted:
            return value
    elif isinstance(value, int) and int in accepted:
        return value
    elif isinstance(value, (int, float)) and float in accepted:
        return float(value)
    elif isinstance(value, str) and str in accepted:
        return value
    wanted = " or ".join(_NAMES.get(t, t.__name__) for t in accepted if t is not type(None))
    raise ConfigError(f"{where}: {key} must be {wanted} (got {value!r})")


def checked(cls, values: dict, where: str) -> dict:
    """``values`` with every key known to ``cls`` and every value of its field's type."""
    types_ = field_types(cls)
    unknown = sorted(set(values) - set(types_))
    if unknown:
        raise ConfigError(f"{where}: unknown {'key' if len(unknown) == 1 else 'keys'} {', '.join(unknown)}; "
                          f"known keys: {', '.join(types_)}")
    return {k: check_value(k, v, types_[k], where) for k, v in values.items()}


def build(cls, values: dict, where: str):
    """An instance of ``cls`` from type-checked ``values`` (missing keys: the field defaults)."""
    return cls(**checked(cls, values, where))
