"""Issue 14's federation items over a real mosquitto, fast: the coordinator and devices run in
threads of this process, on the real MQTT links, with the quadratic toy executor (so a round takes
milliseconds) and real SST-2 examples for the devices' batches.

- liveness: a device that exits for any reason says it is offline; a silent device is dropped
  after ``max_missed`` rounds;
- the announcement's trainable layout: a device with other trainable tensors refuses clearly;
- duplicate ids: a second process under an online device id is refused, the first keeps working;
- a device that wakes after the job ended says so and exits 0;
- the hash-chained seed log: one changed digit is refused on resume, naming the entry.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from edgezo.config import JobConfig
from edgezo.coordinator.wire import messages as m
from edgezo.coordinator.device.device import Device, DeviceSettings
from edgezo.coordinator.server.rounds import RoundPolicy
from edgezo.coordinator.server.coordinator import Coordinator, CoordinatorSettings
from edgezo.coordinator.wire.topics import Topics
from edgezo.coordinator.wire.transport import BrokerSettings, MqttLink
from edgezo.errors import EdgezoError
from toy_executor import QuadraticExecutor

DIGEST = "e" * 64
MODEL = m.ModelRef("toy", "", DIGEST)


class ToyBatch(float):
    """The toy's batch (a number shifting the targets) with the batch's size, as a device counts it."""

    size = 0


class Toy(QuadraticExecutor):
    """The quadratic model with what the federation reads of a real executor."""

    backend = "toy"
    split = 1
    num_layers = 2

    def __init__(self, nan_from_round: int | None = None, names=("block1.w", "block2.w")):
        super().__init__()
        self.nan_from_round, self.calls = nan_from_round, 0
        self.names = list(names)
        self.name_block = {n: (1 if "1" in n else 2) for n in self.names}
        self.tensor_numel = {n: 6 if "1" in n else 10 for n in self.names}

    def encode(self, prompts, labels):
        batch = ToyBatch(super().encode(prompts, labels))
        batch.size = len(labels)
        return batch

    def forward_block2(self, activation, batch, perturbation=()):
        if self.nan_from_round is not None and any(d.round >= self.nan_from_round for d, _ in perturbation):
            return math.nan
        return super().forward_block2(activation, batch, perturbation)


def job(rounds: int) -> JobConfig:
    return JobConfig(task="sst2", method="spzo", rounds=rounds, local_steps=1, p1=1, p2=2, batch_size=4, lr=0.05, seed=7).validate()


class Federation:
    """A coordinator and devices in threads, each on its own MQTT connection to one broker."""

    def __init__(self, broker, tmp_path: Path, run: str, data: Path):
        self.broker, self.tmp, self.run, self.data = broker, tmp_path, run, data
        self.lines: list[str] = []
        self.records: list = []
        self.threads: dict[str, threading.Thread] = {}
        self.outcome: dict[str, object] = {}
        self.links: list[MqttLink] = []
        self.devices: dict[str, Device] = {}

    def link(self, client_id: str, will=None) -> MqttLink:
        link = MqttLink(BrokerSettings(self.broker.host, self.broker.port), client_id=client_id, will=will)
        link.connect()
        self.links.append(link)
        return link

    def say(self, who: str):
        return lambda line: self.lines.append(f"{who}: {line}")

    def _thread(self, name: str, target) -> None:
        def body():
            try:
                self.outcome[name] = target()
            except BaseException as e:  # the test inspects it
                self.outcome[name] = e

        t = threading.Thread(target=body, name=name, daemon=True)
        self.threads[name] = t
        t.start()

    def coordinator(self, cfg: JobConfig, ex=None, state: Path | None = None, **settings) -> Coordinator:
        s = CoordinatorSettings(run=self.run, state=state or self.tmp / "state", checkpoint_every=0, http_host="127.0.0.1",
                                **{"policy": RoundPolicy(timeout_s=0.6), **settings})
        coord = Coordinator(cfg, s, self.link(f"coord-{self.run}-{len(self.links)}"), ex or Toy(), MODEL,
                            evaluate=lambda: 0.5, on_record=self.records.append, say=self.say("coordinator"))
        self._thread("coordinator", coord.run)
        return coord

    def device(self, name: str, device_id: str | None = None, ex_factory=Toy, **settings) -> Device:
        device_id = device_id or name
        offline = m.Status(v=m.PROTOCOL_VERSION, run=self.run, device=device_id, state="offline")
        link = self.link(f"dev-{name}", will=(Topics(self.run).status(device_id), m.encode(offline), True))
        s = DeviceSettings(device_id, run=self.run, data=str(self.data), train_samples=40, announce_timeout=20, **settings)
        device = Device(s, link, lambda cfg, task: (ex_factory(), SimpleNamespace(name="toy", digest=DIGEST)), say=self.say(name))
        self.devices[name] = device
        self._thread(name, device.run)
        return device

    def wait(self, *names: str, timeout: float = 60) -> None:
        for name in names:
            self.threads[name].join(timeout)
            assert not self.threads[name].is_alive(), f"{name} still running; outcomes {self.outcome}; log:\n" + "\n".join(self.lines[-40:])

    def said(self, text: str) -> bool:
        return any(text in line for line in self.lines)

    def wait_said(self, text: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.said(text):
                return
            time.sleep(0.02)
        pytest.fail(f"nobody said {text!r}; log:\n" + "\n".join(self.lines[-40:]))

    def retained_status(self, device: str) -> m.Status | None:
        probe = self.link(f"probe-{self.run}-{len(self.links)}")
        probe.subscribe(Topics(self.run).status(device))
        msg = probe.get(3)
        probe.close()
        return m.decode(msg.payload, m.Status) if msg and msg.payload else None

    def close(self) -> None:
        for link in self.links:
            link.close(flush_timeout=0.5)


@pytest.fixture
def federation(request, mosquitto, tmp_path, sst2_dir):
    fed = Federation(mosquitto, tmp_path, request.node.name.replace("test_", "")[:40], sst2_dir)
    yield fed
    fed.close()


def test_a_failing_device_says_offline_and_a_silent_one_is_dropped(federation, caplog):
    caplog.set_level(logging.WARNING, logger="edgezo.coordinator")
    fed = federation
    ghost = fed.link("ghost")  # online, never answers, never says goodbye: as a frozen device looks
    status = m.Status(v=m.PROTOCOL_VERSION, run=fed.run, device="ghost", state="online", examples=10, instance="g")
    ghost.publish(Topics(fed.run).status("ghost"), m.encode(status), retain=True)
    coord = fed.coordinator(job(8), max_missed=2)
    fed.device("good")
    fed.device("nan", ex_factory=lambda: Toy(nan_from_round=2))  # its loss turns NaN in round 2: it must leave
    fed.wait("coordinator", "good", "nan")
    assert isinstance(fed.outcome["nan"], EdgezoError) and "NaN" in str(fed.outcome["nan"])
    assert fed.outcome["coordinator"] is None and fed.outcome["good"] == 0
    assert fed.said("device nan went offline"), "the failing device did not say it left"
    assert fed.retained_status("nan").state == "offline"
    assert "dropped device ghost: it missed 2 rounds in a row" in caplog.text
    rows = {r.round: r for r in fed.records}
    assert sorted(rows) == list(range(9))
    assert rows[8].assigned == 1 and rows[8].devices == 1, "neither the dead nor the silent device is still assigned"
    ghost.publish(Topics(fed.run).status("ghost"), b"", retain=True)
    assert fed.devices["good"].ex.fingerprint() == coord.fingerprint


def test_a_device_with_other_trainable_tensors_is_refused(federation):
    fed = federation
    fed.coordinator(job(1))
    fed.device("other", ex_factory=lambda: Toy(names=("block1.w", "block2.bias")))
    fed.wait("other")
    err = fed.outcome["other"]
    assert isinstance(err, EdgezoError), err
    assert "trainable tensors differ from the job's at position 1" in str(err) and "block2.bias" in str(err)
    fed.device("right")
    fed.wait("coordinator", "right")
    assert fed.outcome["right"] == 0


def test_a_second_device_with_an_online_id_is_refused_and_the_first_keeps_working(federation):
    fed = federation
    coord = fed.coordinator(job(6), min_devices=2)
    fed.device("first", device_id="twin")
    fed.wait_said("device twin online")
    fed.device("second", device_id="twin")
    fed.wait("second")
    err = fed.outcome["second"]
    assert isinstance(err, EdgezoError) and "device id 'twin' is already online" in str(err), err
    assert "--device-id" in str(err)
    assert fed.retained_status("twin").state == "online", "the refused process must not mark the first one offline"
    fed.device("other")
    fed.wait("coordinator", "first", "other")
    assert fed.outcome["first"] == 0 and fed.devices["first"].ex.fingerprint() == coord.fingerprint
    assert not fed.said("device twin went offline")


def test_a_device_that_wakes_after_the_job_ended_says_it_is_over(federation):
    fed = federation
    fed.coordinator(job(2))
    fed.device("worker")
    fed.wait("coordinator", "worker")
    fed.device("sleeper")  # started (or woken) after the end
    fed.wait("sleeper")
    assert fed.outcome["sleeper"] == 0
    assert fed.said(f"sleeper: job {fed.run!r} is over")


def test_a_changed_digit_in_the_seed_log_is_refused_on_resume_naming_the_entry(federation):
    fed = federation
    coord = fed.coordinator(job(3))
    fed.device("worker")
    fed.wait("coordinator", "worker")
    log = fed.tmp / "state" / "seedlog.jsonl"
    lines = log.read_text().splitlines()
    assert len(lines) == 3 and all('"hash"' in ln and '"fingerprint"' in ln for ln in lines)
    entry = json.loads(lines[1])
    coef = entry["update"][0][7]
    digits = repr(coef)
    k = next(i for i, ch in enumerate(digits) if ch.isdigit() and ch != "0")
    changed = digits[:k] + str((int(digits[k]) % 9) + 1) + digits[k + 1:]
    assert float(changed) != coef
    log.write_text("\n".join([lines[0], lines[1].replace(digits, changed, 1), lines[2]]) + "\n")
    settings = CoordinatorSettings(run=fed.run, state=fed.tmp / "state")
    with pytest.raises(EdgezoError, match="line 2") as info:
        Coordinator(job(3), settings, fed.link("resumer"), Toy(), MODEL, lambda: 0.5, lambda r: None, say=lambda s: None)
    assert "round 2" in str(info.value) and "edited" in str(info.value)
    assert coord.round == 3


def test_a_rehashed_edit_is_caught_by_the_logged_fingerprints_on_resume_and_on_device_replay(federation):
    """An edit that also rewrites the hash chain (so the chain holds) still gives another model:
    the fingerprint logged with each entry names it, on the coordinator and on a replaying device."""
    from edgezo.seedlog import LogEntry, SeedLog

    fed = federation
    fed.coordinator(job(3))
    fed.device("worker")
    fed.wait("coordinator", "worker")
    log = SeedLog(fed.tmp / "state" / "seedlog.jsonl")
    entries = list(log.entries())
    (d, c), *rest = entries[1].update
    forged = [LogEntry(e.round, e.update, e.fingerprint, e.meta) for e in entries]
    forged[1] = LogEntry(2, [(d, c * 1.5), *rest], entries[1].fingerprint, entries[1].meta)
    log.path.unlink()
    fresh = SeedLog(log.path)
    for e in forged:
        fresh.append(e)
    settings = CoordinatorSettings(run=fed.run, state=fed.tmp / "state")
    with pytest.raises(EdgezoError, match="seed-log entry of round 2 gives fingerprint"):
        Coordinator(job(3), settings, fed.link("resumer"), Toy(), MODEL, lambda: 0.5, lambda r: None, say=lambda s: None)

    device = Device(DeviceSettings("replayer", run=fed.run), link=None, build_executor=None, say=lambda s: None)
    device.ex, device.topics = Toy(), Topics(fed.run)
    updates = [m.Update(v=m.PROTOCOL_VERSION, run=fed.run, round=e.round, run_seed=7, rows=m.pack_update(e.update),
                        fingerprint=e.fingerprint) for e in forged]
    device._apply(updates[0])
    with pytest.raises(EdgezoError, match="diverged at seed-log entry 2"):
        device._apply(updates[1])


def test_the_default_device_id_is_made_once_per_device_and_kept(tmp_path, monkeypatch):
    from edgezo.app.commands.join import default_device_id
    from edgezo.coordinator.wire.topics import check_name

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "one"))
    first = default_device_id()
    assert check_name("device", first) == first
    assert (tmp_path / "one" / "edgezo" / "device-id").read_text().strip() == first
    assert default_device_id() == first, "the id must survive restarts (catch-up depends on it)"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "clone"))  # another device from the same image
    assert default_device_id() != first


class Hostile(Toy):
    """A participant whose losses are scaled by 1e30: its projected gradients are ~1e30 (finite, so
    only the screening, not the message checks, can stop them)."""

    def forward_block2(self, activation, batch, perturbation=()):
        return 1e30 * super().forward_block2(activation, batch, perturbation)


def test_a_hostile_participant_is_cut_every_round_and_dropped_under_default_settings(federation):
    """Issue 14 item 1 over MQTT: with the default aggregation, three honest devices and one sending
    1e30 scalars; the hostile one is cut and named each round it takes part in, then dropped by the
    ledger, and the model the honest devices end on is finite and the coordinator's."""
    fed = federation
    coord = fed.coordinator(job(6), min_devices=3)
    fed.device("evil", ex_factory=Hostile)
    fed.wait_said("device evil online")
    for name in ("h1", "h2", "h3"):
        fed.device(name)
    fed.wait("coordinator", "h1", "h2", "h3", timeout=90)
    rows = {r.round: r for r in fed.records}
    assert sorted(rows) == list(range(7))
    cut_rounds = [r for r in range(1, 7) if rows[r].cut and "evil" in rows[r].cut]
    assert cut_rounds[:3] == [1, 2, 3], {r: rows[r].cut for r in rows}
    assert all(set(rows[r].cut) == {"evil"} for r in cut_rounds), "an honest device was cut"
    assert "out of bound" in rows[1].cut["evil"]
    assert fed.said("dropping evil from the job: out of bound in 3 of its last 3 rounds")
    assert all(rows[r].assigned <= 3 for r in (4, 5, 6)), "the dropped device is still assigned"
    assert all(rows[r].refused is None for r in rows)
    assert math.isfinite(float(abs(fed.devices["h1"].ex.vector()).max()))
    assert all(fed.devices[n].ex.fingerprint() == coord.fingerprint for n in ("h1", "h2", "h3"))


ACL_EXAMPLE = Path(__file__).parent.parent / "coordinator" / "mosquitto.acl.example"


def test_a_device_whose_id_is_not_its_broker_username_ends_with_a_clear_error(mosquitto_factory, tmp_path, sst2_dir):
    """Issue 14 item 5: under the example ACL a device may write only topics named after its
    username; one started with another --device-id is refused by the broker (an MQTT 5 reason
    code) and must end saying so, not wait forever."""
    users = {"coordinator": "c-pw", "dev-a": "a-pw"}
    broker = mosquitto_factory(password_file=users, acl_file=ACL_EXAMPLE.read_text())
    fed = Federation(broker, tmp_path, "aclrun", sst2_dir)
    try:
        def login(user):
            def link(client_id, will=None):
                made = MqttLink(broker.settings(username=user, password=users[user]), client_id=client_id, will=will)
                made.connect()
                fed.links.append(made)
                return made
            return link

        fed.link = login("coordinator")
        fed.coordinator(job(2))
        fed.link = login("dev-a")
        fed.device("impostor", device_id="dev-b")  # logs in as dev-a, claims to be dev-b
        fed.wait("impostor", timeout=30)
        err = fed.outcome["impostor"]
        assert isinstance(err, EdgezoError), err
        assert "refused device 'dev-b'" in str(err) and "--device-id equal to --username" in str(err)
    finally:
        fed.close()
