"""Device profiles: what a device can do, as a TOML file (format documented in
``device_profiles/README.md``).

A profile is either *measured* (written by ``edgezo profile`` on the device itself) or a
*reference* estimate for a device class (shipped in ``device_profiles/``, with its sources).
Where both exist under one name, the measured one wins: ``resolve_profile`` looks in the user's
profile folder before the shipped references.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import MISSING, asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

from edgezo.errors import EdgezoError

FORMAT = 1
KINDS = ("measured", "reference")


def user_profile_dir() -> Path:
    """Where ``edgezo profile`` writes and ``join``/``simulate`` look first: $EDGEZO_PROFILES, else
    $XDG_CONFIG_HOME/edgezo/profiles (~/.config/edgezo/profiles)."""
    if os.environ.get("EDGEZO_PROFILES"):
        return Path(os.environ["EDGEZO_PROFILES"])
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "edgezo" / "profiles"


def host_profile_name() -> str:
    """The name ``edgezo profile`` gives this device's measured profile, and the one ``join``
    looks for by default: the short host name, made safe for a file name."""
    import re
    import socket

    return re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname().split(".")[0])[:64] or "this-device"


@dataclass
class ForwardTiming:
    """One measured row: median seconds of a block-1 and a block-2 forward on ``batch`` sequences
    of ``tokens`` tokens."""

    batch: int
    tokens: int
    block1_s: float
    block2_s: float

    @property
    def per_token(self) -> tuple[float, float]:
        n = self.batch * self.tokens
        return self.block1_s / n, self.block2_s / n


@dataclass
class MemoryPoint:
    batch: int
    tokens: int
    peak_mb: float  # peak resident memory of one SPZO step (P1=1, P2=1) on this batch


@dataclass
class ModelMeasurement:
    """What a measured profile measured, for one model and split."""

    model: str
    layers: int
    split: int
    trainable: str
    load_mb: float  # resident memory the loaded model added
    step_s: float = 0.0  # one measured SPZO step (P1=1, P2=1) at the largest batch, as a check
    digest: str = ""  # of the model's weights
    forwards: list[ForwardTiming] = field(default_factory=list)
    memory: list[MemoryPoint] = field(default_factory=list)

    def matches(self, shape) -> bool:
        """Whether these timings are of ``shape``'s model and split (then they are used directly)."""
        same = shape.digest == self.digest if (shape.digest and self.digest) else shape.name == self.model
        return same and shape.layers == self.layers and shape.split == self.split


@dataclass
class BackendProfile:
    """One backend on one device. The capability figures are what the cost model uses for any
    model; ``measured`` adds timings of the model that was profiled."""

    name: str  # torch, mlx, int8
    dtype: str = "float32"
    gflops: float = 10.0  # effective forward throughput on transformer layers (GFLOP/s)
    overhead_ms: float = 0.5  # fixed cost per unit (layer) forward
    perturb_melems_s: float = 100.0  # canonical perturbed copies, million elements per second
    update_melems_s: float = 100.0  # adding one direction in place, million elements per second
    call_us: float = 20.0  # fixed cost per tensor per perturbation or update call
    runtime_mb: float = 300.0  # resident memory of the runtime before a model is loaded
    bytes_per_param: float = 4.0  # weights in memory (fp32 4, fp16 2, Q8_0 1.0625)
    activation_factor: float = 1.0  # measured activation memory over the analytic count
    reuses_block1: bool = True  # false: every probe is a full forward (a browser device keeps no block-1 activations)
    measured: ModelMeasurement | None = None


@dataclass
class Profile:
    name: str
    kind: str  # measured or reference
    memory_total_gb: float
    memory_available_gb: float  # what training may use (measured: available when profiled)
    backends: list[BackendProfile]
    description: str = ""
    cpu: str = ""
    cores: int = 0
    os: str = ""
    created: str = ""
    sources: list[str] = field(default_factory=list)
    network_latency_ms: float = 50.0  # one message to the broker and back (simulated rounds)
    format: int = FORMAT
    path: str = ""  # where it was read from (not written)

    def backend(self, name: str) -> BackendProfile:
        for b in self.backends:
            if b.name == name:
                return b
        raise EdgezoError(f"profile {self.name!r} has no backend {name!r}; it has {', '.join(b.name for b in self.backends)}")

    def to_dict(self) -> dict:
        """Plain data (TOML or msgpack): ``None`` fields and ``path`` are left out."""
        return _drop_none({k: v for k, v in asdict(self).items() if k != "path"})


def _drop_none(x):
    if isinstance(x, dict):
        return {k: _drop_none(v) for k, v in x.items() if v is not None}
    if isinstance(x, list):
        return [_drop_none(v) for v in x]
    return x


# -------------------------------------------------------------------------- validation


def _build(cls, data: Any, where: str):
    """Build dataclass ``cls`` from a dict, naming the offending key on any problem."""
    if not isinstance(data, dict):
        raise EdgezoError(f"{where} must be a table, not {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise EdgezoError(f"{where} has unknown keys {unknown}; known keys: {', '.join(known)}")
    kwargs = {}
    for name, f in known.items():
        if name not in data:
            if f.default is MISSING and f.default_factory is MISSING:
                raise EdgezoError(f"{where} lacks the required key {name!r}")
            continue
        value = data[name]
        kwargs[name] = _convert(cls, name, value, f"{where}.{name}")
    return cls(**kwargs)


_NESTED = {
    (Profile, "backends"): BackendProfile,
    (BackendProfile, "measured"): ModelMeasurement,
    (ModelMeasurement, "forwards"): ForwardTiming,
    (ModelMeasurement, "memory"): MemoryPoint,
}
_POSITIVE = {"gflops", "perturb_melems_s", "update_melems_s", "bytes_per_param", "activation_factor",
             "memory_total_gb", "memory_available_gb", "batch", "tokens", "layers", "split"}


def _convert(cls, name: str, value: Any, where: str):
    nested = _NESTED.get((cls, name))
    if nested is not None:
        if {f.name: f.type for f in fields(cls)}[name].startswith("list["):
            if not isinstance(value, list):
                raise EdgezoError(f"{where} must be a list of tables ([[{name}]] in TOML), not {type(value).__name__}")
            return [_build(nested, v, f"{where}[{k}]") for k, v in enumerate(value)]
        return _build(nested, value, where)
    expected = {f.name: f.type for f in fields(cls)}[name]
    if expected == "bool":
        if not isinstance(value, bool):
            raise EdgezoError(f"{where} must be true or false (got {value!r})")
        return value
    if expected in ("float",):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise EdgezoError(f"{where} must be a number (got {value!r})")
        value = float(value)
    elif expected == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise EdgezoError(f"{where} must be an integer (got {value!r})")
    elif expected == "str" and not isinstance(value, str):
        raise EdgezoError(f"{where} must be a string (got {value!r})")
    elif expected.startswith("list[str]") and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        raise EdgezoError(f"{where} must be a list of strings")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value != value or value in (float("inf"), float("-inf")):
            raise EdgezoError(f"{where} must be finite (got {value})")
        if value < 0 or (name in _POSITIVE and value <= 0):
            raise EdgezoError(f"{where} must be {'positive' if name in _POSITIVE else 'zero or more'} (got {value})")
    return value


def profile_from_dict(data: dict, where: str = "profile") -> Profile:
    if not isinstance(data, dict):
        raise EdgezoError(f"{where} must be a table of keys")
    if data.get("format", FORMAT) != FORMAT:
        raise EdgezoError(f"{where} has format {data.get('format')!r}; this edgezo reads format {FORMAT}: re-run `edgezo profile`")
    try:
        profile = _build(Profile, data, where)
    except (TypeError, AttributeError, KeyError, ValueError) as e:  # a shape no check anticipated: still one clear error
        raise EdgezoError(f"{where} is malformed ({type(e).__name__}: {e}); re-run `edgezo profile` or fix the file") from e
    if profile.kind not in KINDS:
        raise EdgezoError(f"{where}.kind must be 'measured' or 'reference' (got {profile.kind!r})")
    if not profile.backends:
        raise EdgezoError(f"{where} lists no backends; a profile needs at least one [[backends]] table")
    if profile.memory_available_gb > profile.memory_total_gb:
        raise EdgezoError(f"{where}: memory_available_gb {profile.memory_available_gb} exceeds memory_total_gb {profile.memory_total_gb}")
    if profile.kind == "reference" and not profile.sources:
        raise EdgezoError(f"{where} is a reference estimate without sources; list where its figures come from in sources = [...]")
    names = [b.name for b in profile.backends]
    if len(set(names)) != len(names):
        raise EdgezoError(f"{where} lists backend {sorted(n for n in names if names.count(n) > 1)[0]!r} twice")
    for b in profile.backends:
        m = b.measured
        if m is not None and not 0 < m.split < m.layers:
            raise EdgezoError(f"{where}: backend {b.name} measured split {m.split} outside 1..{m.layers - 1}")
    return profile


def load_profile(path: str | Path) -> Profile:
    p = Path(path)
    if p.is_dir():
        raise EdgezoError(f"profile {p} is a folder; pass a profile file (.toml) or a profile name")
    if not p.is_file():
        raise EdgezoError(f"profile file {p} does not exist; measure one with `edgezo profile` or name a reference ({', '.join(reference_names())})")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise EdgezoError(f"profile file {p} is not valid TOML: {e}") from e
    profile = profile_from_dict(data, where=f"profile file {p}")
    profile.path = str(p)
    return profile


def save_profile(profile: Profile, path: str | Path) -> Path:
    """Write atomically (a crash leaves the old file or the new one, never half of one)."""
    import tomli_w

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".toml.tmp")
    tmp.write_text(tomli_w.dumps(profile.to_dict()), encoding="utf-8")
    tmp.replace(p)
    return p


def reference_dir() -> Path:
    return Path(str(resources.files("edgezo.device_profiles")))


def reference_names() -> list[str]:
    return sorted(p.stem for p in reference_dir().glob("*.toml"))


def resolve_profile(spec: str, search: Path | None = None) -> Profile:
    """A profile by path, or by name: a measured profile of that name in ``search`` (default the
    user's profile folder) wins over the shipped reference of the same name."""
    p = Path(spec)
    if p.suffix == ".toml" or os.sep in spec:
        return load_profile(p)
    for folder in (search or user_profile_dir(), reference_dir()):
        candidate = folder / f"{spec}.toml"
        if candidate.is_file():
            return load_profile(candidate)
    raise EdgezoError(
        f"no device profile named {spec!r}: measure this device with `edgezo profile --name {spec}`, "
        f"or use a reference: {', '.join(reference_names()) or '(none shipped)'}"
    )
