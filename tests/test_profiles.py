"""Device profiles: the TOML format round-trips, the shipped references are valid, bad files are
refused with a message that names the problem, and a measured profile wins over a reference."""

import math
import re
from pathlib import Path

import pytest

from edgezo.errors import EdgezoError
from edgezo.profiles import (
    BackendProfile,
    ForwardTiming,
    MemoryPoint,
    ModelMeasurement,
    Profile,
    load_profile,
    profile_from_dict,
    reference_dir,
    reference_names,
    resolve_profile,
    save_profile,
    user_profile_dir,
)

REFERENCES = sorted(reference_dir().glob("*.toml"))
EXPECTED = {"pi5", "android-midrange", "iphone", "macbook-m", "jetson-orin-nano", "laptop-x86"}
PHONES = {"android-midrange", "iphone"}  # browser devices (device_profiles/iphone.toml)


def measured_profile(name: str = "bench-pi") -> Profile:
    rows = [ForwardTiming(1, 64, 0.097854, 0.061505), ForwardTiming(8, 64, 0.502117, 0.277316)]
    memory = [MemoryPoint(1, 64, 967.6), MemoryPoint(8, 64, 991.6)]
    measured = ModelMeasurement(model="SmolLM2-135M-Instruct", layers=30, split=20, trainable="norm", load_mb=723.6,
                                step_s=1.743, digest="a672150f", forwards=rows, memory=memory)
    torch = BackendProfile("torch", gflops=156.34, overhead_ms=2.3768, perturb_melems_s=102.9, update_melems_s=1014.7,
                           call_us=112.09, runtime_mb=243.7, activation_factor=1.064, measured=measured)
    return Profile(name=name, kind="measured", memory_total_gb=23.54, memory_available_gb=22.74, backends=[torch],
                   description="measured in a test", cpu="AMD EPYC", cores=2, os="Linux", created="2026-01-01T00:00:00+00:00")


def minimal(**changes) -> dict:
    """The smallest valid profile as plain data, with ``changes`` applied (None deletes a key)."""
    data = {
        "name": "dev", "kind": "measured", "memory_total_gb": 8.0, "memory_available_gb": 6.0,
        "backends": [{"name": "torch", "gflops": 40.0}],
    }
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return data


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------------------- round trips


def test_measured_profile_round_trips(tmp_path):
    prof = measured_profile()
    path = save_profile(prof, tmp_path / "sub" / "bench-pi.toml")
    back = load_profile(path)
    assert back.to_dict() == prof.to_dict()
    assert back == Profile(**{**prof.__dict__, "path": str(path)})  # dataclasses all the way down
    m = back.backends[0].measured
    assert isinstance(m.forwards[1], ForwardTiming) and m.forwards[1].block2_s == 0.277316
    assert isinstance(m.memory[0], MemoryPoint) and m.memory[0].peak_mb == 967.6
    assert back.path == str(path)
    assert "path" not in back.to_dict()
    assert not list(tmp_path.glob("**/*.tmp"))  # the atomic write left nothing behind


def test_profile_without_measurement_leaves_it_out(tmp_path):
    prof = profile_from_dict(minimal())
    assert "measured" not in prof.to_dict()["backends"][0]
    assert load_profile(save_profile(prof, tmp_path / "dev.toml")).to_dict() == prof.to_dict()


def test_references_are_shipped():
    assert EXPECTED <= set(reference_names())
    assert reference_names() == sorted(p.stem for p in REFERENCES)


@pytest.mark.parametrize("path", REFERENCES, ids=lambda p: p.stem)
def test_reference_round_trips(path, tmp_path):
    prof = load_profile(path)
    back = load_profile(save_profile(prof, tmp_path / path.name))
    assert back.to_dict() == prof.to_dict()


@pytest.mark.parametrize("path", REFERENCES, ids=lambda p: p.stem)
def test_reference_is_named_sourced_and_marked(path):
    prof = load_profile(path)
    assert prof.name == path.stem
    assert prof.kind == "reference"
    assert prof.sources and all(s.strip() for s in prof.sources)
    assert "reference" in prof.description.lower() and "not a measurement" in prof.description.lower()
    assert 0 < prof.memory_available_gb < prof.memory_total_gb
    assert prof.cpu and prof.cores > 0 and prof.os
    names = [b.name for b in prof.backends]
    if path.stem in PHONES:  # phones join through the browser (issue 26): no Python backend runs there
        assert names == ["browser-wasm"] and prof.backends[0].bytes_per_param == 2.5  # the GGUF-block export: measured page peak 606 MB
    else:
        assert set(names) <= {"torch", "mlx", "int8"} and "torch" in names
    for b in prof.backends:
        assert b.measured is None
        if b.name == "browser-wasm":
            assert b.dtype == "float32"
        elif b.name == "int8":  # Q8_0: 34 bytes per 32 weights, a little slower than fp32 (dequantization)
            assert b.bytes_per_param == 34 / 32 and b.dtype == "q8_0"
            assert b.gflops < prof.backend("torch").gflops and b.overhead_ms > prof.backend("torch").overhead_ms
        else:
            assert b.bytes_per_param == 4.0 and b.dtype == "float32"
        for value in (b.gflops, b.overhead_ms, b.perturb_melems_s, b.update_melems_s, b.call_us, b.runtime_mb):
            assert math.isfinite(value) and value > 0


def test_references_rank_as_expected():
    """Slowest to fastest: the phones' browsers (the Android one below the iPhone), Pi 5, Jetson CPU,
    laptop, MacBook; mlx beats torch."""
    speed = {n: max(b.gflops for b in resolve_profile(n).backends) for n in EXPECTED}
    order = ["android-midrange", "iphone", "pi5", "jetson-orin-nano", "laptop-x86", "macbook-m"]
    assert [speed[n] for n in order] == sorted(speed[n] for n in order)
    prof = resolve_profile("macbook-m")
    assert prof.backend("mlx").gflops > prof.backend("torch").gflops


# ------------------------------------------------------------------------------- validation


def test_not_toml(tmp_path):
    path = write(tmp_path / "bad.toml", "name = 'dev\nkind = measured\n")
    with pytest.raises(EdgezoError, match=r"is not valid TOML"):
        load_profile(path)


def test_not_utf8(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_bytes(b"name = '\xff\xfe'\n")
    with pytest.raises(EdgezoError, match=r"is not valid TOML"):
        load_profile(path)


def test_missing_file_suggests_measuring(tmp_path):
    with pytest.raises(EdgezoError, match=r"does not exist; measure one with `edgezo profile`.*pi5"):
        load_profile(tmp_path / "nowhere.toml")


def test_missing_required_key():
    with pytest.raises(EdgezoError, match=r"lacks the required key 'memory_total_gb'"):
        profile_from_dict(minimal(memory_total_gb=None))


def test_missing_backend_name():
    with pytest.raises(EdgezoError, match=r"backends\[0\] lacks the required key 'name'"):
        profile_from_dict(minimal(backends=[{"gflops": 3.0}]))


def test_unknown_key_is_a_typo():
    with pytest.raises(EdgezoError, match=r"unknown keys \['memory_availble_gb'\]; known keys: .*memory_available_gb"):
        profile_from_dict(minimal(memory_availble_gb=3.0))


def test_unknown_backend_key_is_a_typo():
    with pytest.raises(EdgezoError, match=r"backends\[0\] has unknown keys \['gflop'\]"):
        profile_from_dict(minimal(backends=[{"name": "torch", "gflop": 3.0}]))


def test_unknown_key_in_a_file_names_the_file(tmp_path):
    path = write(tmp_path / "dev.toml", 'name = "dev"\nkind = "measured"\nmemory_total_gb = 8\nmemory_available_gb = 4\n'
                 'colour = "blue"\n[[backends]]\nname = "torch"\n')
    with pytest.raises(EdgezoError, match=rf"profile file {re.escape(str(path))} has unknown keys \['colour'\]"):
        load_profile(path)


@pytest.mark.parametrize("changes, message", [
    ({"memory_total_gb": "8 GB"}, r"memory_total_gb must be a number \(got '8 GB'\)"),
    ({"memory_total_gb": True}, r"memory_total_gb must be a number \(got True\)"),
    ({"cores": 4.5}, r"cores must be an integer \(got 4.5\)"),
    ({"cores": "4"}, r"cores must be an integer"),
    ({"name": 5}, r"name must be a string \(got 5\)"),
    ({"sources": "https://example.org"}, r"sources must be a list of strings"),
    ({"sources": ["ok", 3]}, r"sources must be a list of strings"),
    ({"backends": [{"name": "torch", "gflops": "fast"}]}, r"backends\[0\].gflops must be a number \(got 'fast'\)"),
    ({"backends": {"name": "torch"}}, r"backends must be a list of tables \(\[\[backends\]\] in TOML\), not dict"),
    ({"backends": ["torch"]}, r"backends\[0\] must be a table, not str"),
])
def test_wrong_type(changes, message):
    with pytest.raises(EdgezoError, match=message):
        profile_from_dict(minimal(**changes))


@pytest.mark.parametrize("gflops", [0.0, -5.0, 0])
def test_gflops_must_be_positive(gflops):
    with pytest.raises(EdgezoError, match=rf"backends\[0\].gflops must be positive \(got {float(gflops)}\)"):
        profile_from_dict(minimal(backends=[{"name": "torch", "gflops": gflops}]))


def test_negative_overhead():
    with pytest.raises(EdgezoError, match=r"overhead_ms must be zero or more \(got -1.0\)"):
        profile_from_dict(minimal(backends=[{"name": "torch", "overhead_ms": -1}]))


def test_zero_overhead_is_allowed():
    assert profile_from_dict(minimal(backends=[{"name": "torch", "overhead_ms": 0}])).backends[0].overhead_ms == 0.0


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_not_finite(value, tmp_path):
    path = write(tmp_path / "dev.toml", f'name = "dev"\nkind = "measured"\nmemory_total_gb = 8\nmemory_available_gb = 4\n'
                 f'[[backends]]\nname = "torch"\ngflops = {value}\n')
    with pytest.raises(EdgezoError, match=r"backends\[0\].gflops must be finite"):
        load_profile(path)


def test_nan_in_plain_data():
    with pytest.raises(EdgezoError, match=r"memory_available_gb must be finite \(got nan\)"):
        profile_from_dict(minimal(memory_available_gb=float("nan")))


def test_available_more_than_total():
    with pytest.raises(EdgezoError, match=r"memory_available_gb 9.0 exceeds memory_total_gb 8.0"):
        profile_from_dict(minimal(memory_available_gb=9.0))


def test_no_backends():
    with pytest.raises(EdgezoError, match=r"lists no backends; a profile needs at least one \[\[backends\]\] table"):
        profile_from_dict(minimal(backends=[]))


def test_backends_missing():
    with pytest.raises(EdgezoError, match=r"lacks the required key 'backends'"):
        profile_from_dict(minimal(backends=None))


def test_duplicate_backend():
    with pytest.raises(EdgezoError, match=r"lists backend 'torch' twice"):
        profile_from_dict(minimal(backends=[{"name": "torch"}, {"name": "mlx"}, {"name": "torch", "gflops": 2.0}]))


def test_unknown_kind():
    with pytest.raises(EdgezoError, match=r"kind must be 'measured' or 'reference' \(got 'estimate'\)"):
        profile_from_dict(minimal(kind="estimate"))


def test_reference_without_sources():
    with pytest.raises(EdgezoError, match=r"reference estimate without sources; list where its figures come from"):
        profile_from_dict(minimal(kind="reference"))
    with pytest.raises(EdgezoError, match=r"without sources"):
        profile_from_dict(minimal(kind="reference", sources=[]))
    assert profile_from_dict(minimal(kind="reference", sources=["a datasheet"])).sources == ["a datasheet"]


@pytest.mark.parametrize("fmt", [2, 0, "1"])
def test_unsupported_format(fmt):
    with pytest.raises(EdgezoError, match=rf"has format {fmt!r}; this edgezo reads format 1: re-run `edgezo profile`"):
        profile_from_dict(minimal(format=fmt))


def test_measured_split_outside_the_model():
    data = measured_profile().to_dict()
    data["backends"][0]["measured"]["split"] = 30
    with pytest.raises(EdgezoError, match=r"backend torch measured split 30 outside 1..29"):
        profile_from_dict(data)


def test_bad_measured_row_is_located():
    data = measured_profile().to_dict()
    data["backends"][0]["measured"]["forwards"][1]["batch"] = 0
    with pytest.raises(EdgezoError, match=r"backends\[0\].measured.forwards\[1\].batch must be positive \(got 0\)"):
        profile_from_dict(data)


def test_top_level_not_a_table():
    with pytest.raises(EdgezoError, match=r"must be a table"):
        profile_from_dict(["not", "a", "table"])


# ------------------------------------------------------------------------------- resolving names


def test_resolve_reference_by_name(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEZO_PROFILES", str(tmp_path))  # an empty user folder
    prof = resolve_profile("pi5")
    assert prof.kind == "reference" and prof.name == "pi5"
    assert Path(prof.path) == reference_dir() / "pi5.toml"


def test_resolve_by_path(tmp_path):
    path = save_profile(measured_profile("anywhere"), tmp_path / "elsewhere" / "anywhere.toml")
    assert resolve_profile(str(path)).name == "anywhere"
    with pytest.raises(EdgezoError, match=r"does not exist; measure one with `edgezo profile`"):
        resolve_profile(str(tmp_path / "missing.toml"))


def test_measured_profile_wins_over_reference(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEZO_PROFILES", str(tmp_path))
    assert user_profile_dir() == tmp_path
    save_profile(measured_profile("pi5"), tmp_path / "pi5.toml")
    prof = resolve_profile("pi5")
    assert prof.kind == "measured" and prof.backends[0].gflops == 156.34
    assert Path(prof.path) == tmp_path / "pi5.toml"
    assert resolve_profile("macbook-m").kind == "reference"  # the others still come from the references


def test_explicit_search_folder_wins(tmp_path):
    save_profile(measured_profile("iphone"), tmp_path / "iphone.toml")
    assert resolve_profile("iphone", search=tmp_path).kind == "measured"


def test_user_folder_follows_xdg(tmp_path, monkeypatch):
    monkeypatch.delenv("EDGEZO_PROFILES", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert user_profile_dir() == tmp_path / "edgezo" / "profiles"
    folder = user_profile_dir()
    save_profile(measured_profile("laptop-x86"), folder / "laptop-x86.toml")
    assert resolve_profile("laptop-x86").kind == "measured"


def test_unknown_name_lists_the_references(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEZO_PROFILES", str(tmp_path))
    with pytest.raises(EdgezoError, match=r"no device profile named 'pi6'.*edgezo profile --name pi6.*android-midrange.*pi5") as e:
        resolve_profile("pi6")
    for name in EXPECTED:
        assert name in str(e.value)


def test_backend_lookup_names_the_choices():
    prof = resolve_profile("macbook-m")
    assert prof.backend("mlx").name == "mlx"
    with pytest.raises(EdgezoError, match=r"profile 'macbook-m' has no backend 'int8'; it has torch, mlx"):
        prof.backend("int8")
