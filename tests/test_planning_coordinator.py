"""Per-device planning on the coordinator (`coordinate --plan`) and the profile a device sends
(`join --profile`), without a broker: statuses are fed to a Coordinator over a fake link."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pytest

from edgezo.config import JobConfig
from edgezo.coordinator.wire import messages as m
from edgezo.coordinator.server.rounds import RoundPolicy
from edgezo.coordinator.server.coordinator import Coordinator, CoordinatorSettings, Planning
from edgezo.costmodel import ModelShape, Work
from edgezo.errors import EdgezoError
from edgezo.planner import Limits
from edgezo.profiles import BackendProfile, Profile
from toy_executor import QuadraticExecutor

RUN = "plan"
SHAPE = ModelShape(
    name="toy", layers=4, split=3, layer_params=(12_000,) * 4, head_params=12_800, hidden=32, intermediate=64, heads=4,
    kv_hidden=16, vocab=400, total_params=64_000, trainable=(96, 64), trainable_tensors=(6, 3), largest_unit_trainable=64,
)


def profile(name: str, overhead_ms: float = 0.01, gflops: float = 50.0, memory_gb: float = 4.0) -> Profile:
    return Profile(name=name, kind="reference", memory_total_gb=max(memory_gb, 4.0), memory_available_gb=memory_gb,
                   backends=[BackendProfile("torch", gflops=gflops, overhead_ms=overhead_ms)], sources=["a test"])


def toml_text(p: Profile) -> str:
    """A profile file written by hand (flat values only), so the test needs no TOML writer."""
    def value(v):
        if isinstance(v, bool):
            return str(v).lower()
        return f'"{v}"' if isinstance(v, str) else ("[" + ", ".join(value(x) for x in v) + "]" if isinstance(v, list) else repr(v))

    d = p.to_dict()
    lines = [f"{k} = {value(v)}" for k, v in d.items() if k != "backends"]
    for b in d["backends"]:
        lines.append("\n[[backends]]")
        lines += [f"{k} = {value(v)}" for k, v in b.items()]
    return "\n".join(lines) + "\n"


@dataclass
class Msg:
    topic: str
    payload: bytes


class FakeLink:
    """Records publications; receives nothing (statuses are dispatched by the test)."""

    connections = 0

    def __init__(self):
        self.published: list[tuple[str, bytes]] = []

    def subscribe(self, topic):
        pass

    def publish(self, topic, payload, qos=1, retain=False):
        self.published.append((topic, payload))

    def get(self, timeout):
        return None


def coordinator(tmp_path, default_profile=None, min_devices=1) -> tuple[Coordinator, FakeLink, list[str]]:
    cfg = JobConfig(rounds=1, local_steps=2, p1=1, p2=4, batch_size=8).validate()
    planning = Planning(SHAPE, tokens=40, limits=Limits(Work(k=2, batch=8), p1=2, p2=16), round_seconds=30.0,
                        default_profile=default_profile)
    settings = CoordinatorSettings(run=RUN, state=tmp_path / "state", min_devices=min_devices, max_attempts=1,
                                   policy=RoundPolicy(timeout_s=0.01), planning=planning)
    link, lines = FakeLink(), []
    coord = Coordinator(cfg, settings, link, QuadraticExecutor(), m.ModelRef("toy", "", "0" * 64), evaluate=lambda: 0.0,
                        on_record=lambda r: None, say=lines.append)
    return coord, link, lines


def online(coord: Coordinator, device: str, profile_dict: dict | None = None, memory_gb: float = 0.0) -> None:
    status = m.Status(v=m.PROTOCOL_VERSION, run=RUN, device=device, state="online", examples=10, backend="torch",
                      profile=profile_dict or {}, memory_gb=memory_gb)
    coord._dispatch(Msg(f"edgezo/{RUN}/status/{device}", m.encode(status)), None)


def assigned(link: FakeLink) -> dict[str, m.DeviceTask]:
    payload = [p for t, p in link.published if t.endswith("/round") and p][-1]
    return {t.device: t for t in m.decode(payload, m.Assign).tasks}


def test_a_malformed_profile_is_rejected_with_a_reason_and_a_device_nothing_fits_is_left_out(tmp_path, caplog):
    coord, link, lines = coordinator(tmp_path, min_devices=3)
    bad_type = {**profile("bad").to_dict(), "memory_total_gb": "lots"}
    odd_shape = {**profile("odd").to_dict(), "backends": {"name": "torch"}}  # a table where a list belongs
    with caplog.at_level(logging.WARNING, logger="edgezo.coordinator"):
        online(coord, "fast", profile("fast").to_dict())
        online(coord, "slow", profile("slow", overhead_ms=400.0).to_dict())
        online(coord, "bad", bad_type)
        online(coord, "odd", odd_shape)
        online(coord, "small", profile("small", memory_gb=0.01).to_dict())  # 10 MB: not even the runtime fits
    warnings = caplog.text
    assert "rejected the profile of device bad" in warnings and "memory_total_gb must be a number" in warnings
    assert "rejected the profile of device odd" in warnings and "backends" in warnings
    assert "device small is left out of rounds" in warnings and "does not fit in memory" in warnings
    assert coord.rejected == 0, "a bad profile is not a bad message: the device is still online"

    fixed = m.DeviceTask("bad", 2, 1, 4, 8)  # the job's K, P1, P2, batch
    assert coord.task_of("bad") == fixed
    assert coord.task_of("small") is None
    assert sorted(coord.eligible()) == ["bad", "fast", "odd", "slow"]
    fast, slow = coord.task_of("fast"), coord.task_of("slow")
    assert fast.p2 == 16 and fast.k == 2 and fast.batch == 8
    assert slow.p2 < fast.p2
    assert any(line.startswith("plan for fast: backend torch") and "P2 16" in line for line in lines)

    with pytest.raises(EdgezoError, match="no answer"):  # nobody answers the fake link's round
        coord._one_round(1)
    tasks = assigned(link)
    assert sorted(tasks) == ["bad", "fast", "odd", "slow"], "the device nothing fits is not assigned"
    assert tasks["fast"] == fast and tasks["slow"] == slow and tasks["bad"] == m.DeviceTask("bad", 2, 1, 4, 8)


def test_a_device_is_planned_once_and_again_when_its_profile_changes(tmp_path):
    coord, link, lines = coordinator(tmp_path)
    online(coord, "a", profile("a", overhead_ms=400.0).to_dict())
    online(coord, "a", profile("a", overhead_ms=400.0).to_dict())  # re-sent after a catch-up: no new plan
    assert sum(line.startswith("plan for a") for line in lines) == 1
    slow = coord.task_of("a")
    online(coord, "a", profile("a").to_dict())
    assert sum(line.startswith("plan for a") for line in lines) == 2
    assert coord.task_of("a").p2 > slow.p2
    online(coord, "a", profile("a").to_dict(), memory_gb=0.01)  # a new memory budget re-plans too
    assert coord.task_of("a") is None and coord.eligible() == []


def test_devices_without_a_profile_get_the_default_profile_or_the_jobs_fixed_work(tmp_path):
    coord, _, lines = coordinator(tmp_path, default_profile=profile("fallback", overhead_ms=400.0))
    online(coord, "none")
    online(coord, "memory-only", memory_gb=0.01)  # its own memory budget applies to the default profile
    assert coord.task_of("none").p2 < 16 and "from the --default-profile profile 'fallback'" in lines[-2]
    assert coord.task_of("memory-only") is None

    coord2, _, lines2 = coordinator(tmp_path / "2")
    online(coord2, "none")
    assert coord2.task_of("none") == m.DeviceTask("none", 2, 1, 4, 8)
    assert "no profile" in lines2[-1]


def test_without_planning_everyone_gets_the_jobs_fixed_work(tmp_path):
    coord, _, _ = coordinator(tmp_path)
    coord.s.planning = None
    online(coord, "small", profile("small", memory_gb=0.01).to_dict())
    assert coord.task_of("small") == m.DeviceTask("small", 2, 1, 4, 8) and coord.eligible() == ["small"]


def test_join_resolves_its_profile_before_connecting(tmp_path, monkeypatch):
    from edgezo.app.commands import join
    from edgezo.app.jobs import join as join_job

    monkeypatch.setenv("EDGEZO_PROFILES", str(tmp_path / "profiles"))
    monkeypatch.setattr(join_job, "host_profile_name", lambda: "this-host")  # where device_profile looks it up
    quiet = lambda msg: None  # noqa: E731
    assert join.device_profile(None, None, quiet) == ({}, 0.0)  # no profile of this host: none
    assert join.device_profile(None, 3.0, quiet) == ({}, 3.0)

    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "this-host.toml").write_text(toml_text(profile("this-host", memory_gb=2.5)))
    data, memory = join.device_profile(None, None, quiet)
    assert data["name"] == "this-host" and memory == 2.5
    assert join.device_profile(None, 1.5, quiet)[1] == 1.5
    assert len(m.encode(m.Status(v=1, run=RUN, device="d", state="online", profile=data, memory_gb=memory))) < 4096

    own = tmp_path / "own.toml"
    own.write_text(toml_text(profile("own", memory_gb=3.0)))
    assert join.device_profile(str(own), None, quiet) == (profile("own", memory_gb=3.0).to_dict(), 3.0)

    with pytest.raises(EdgezoError, match="does not exist"):
        join.device_profile(str(tmp_path / "missing.toml"), None, quiet)
    with pytest.raises(EdgezoError, match="no device profile named"):
        join.device_profile("no-such-device-class", None, quiet)
    broken = tmp_path / "broken.toml"
    broken.write_text(toml_text(profile("broken")).replace("gflops = 50.0", "gflops = -1.0"))
    with pytest.raises(EdgezoError, match="gflops must be positive"):
        join.device_profile(str(broken), None, quiet)
    with pytest.raises(EdgezoError, match="--memory-gb must be a positive"):
        join.device_profile(str(own), -1.0, quiet)

    said = []
    (tmp_path / "profiles" / "this-host.toml").write_text("name = 'this-host'\n")  # broken default: skipped, with a warning
    assert join.device_profile(None, None, said.append) == ({}, 0.0)
    assert "ignoring this host's profile" in said[0]


def test_join_with_a_bad_profile_fails_clearly_before_connecting(tmp_path):
    import os
    import subprocess
    import sys

    bad = tmp_path / "bad.toml"
    bad.write_text("name = 'x'\nkind = 'measured'\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "EDGEZO_PROFILES": str(tmp_path)}
    # Port 9 (discard) has no broker: had join tried to connect, it would retry and say so.
    cmd = [sys.executable, "-m", "edgezo", "join", "--broker", "127.0.0.1:9", "--run", "x", "--announce-timeout", "3", "--profile", str(bad)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "lacks the required key" in proc.stderr and "Traceback" not in proc.stderr
    assert "retrying" not in proc.stdout + proc.stderr


def test_with_the_calibrations_descent_table_a_browser_profile_gets_fewer_block_2_probes(tmp_path):
    """coordinate --plan --p2 auto: the planner weighs each device's (P1, P2) by the measured
    descent table and its own profile's seconds; the page that sends ``reuses_block1 = false`` in
    its status's profile runs a full forward per probe, so it gets P2 = 1 (E‖ĝ‖²·P2 grows with P2:
    with forwards the whole step, the known answer),
    while the same profile with block-1 reuse gets more (block 2 holds the gradient here)."""
    from edgezo import calibration as cal

    groups = [cal.GroupEnergy(0, 3, 96, 1e-4, 5e-5), cal.GroupEnergy(3, 4, 64, 1.0, 0.5)]
    coord, _, lines = coordinator(tmp_path)
    coord.s.planning.descent = cal.descent_table(groups, 3, "joint")
    forwards_only = dict(call_us=0.0, perturb_melems_s=1e9, update_melems_s=1e9)  # copies and updates free: the known answer
    page, native = profile("page").to_dict(), profile("native").to_dict()
    page["backends"][0] |= forwards_only | {"reuses_block1": False}
    native["backends"][0] |= forwards_only
    online(coord, "page", page)
    online(coord, "native", native)
    assert coord.task_of("page").p2 == 1 and coord.task_of("native").p2 > 1
    assert any(line.startswith("plan for page: backend torch") and "P2 1 " in line for line in lines)
