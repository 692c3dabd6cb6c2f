"""Signed messages (issue 14, "device identity beyond the broker's ACL").

- the envelope: one changed byte, another topic or another key is refused;
- key files and enrolment files: modes, overwrites, one-line errors naming the line;
- the coordinator's pump: unsigned, forged, moved, unenrolled and wrongly signed messages are
  rejected with a reason and counted, and a device's key that is not enrolled is told so;
- over a real mosquitto, in threads with the quadratic toy: a stranger's forged updates,
  announcements, refusals and statuses are ignored by devices that check the coordinator's key,
  and the job ends on the fingerprint of the same job unsigned;
- over a real mosquitto, `edgezo coordinate --enrolled` and two signed `edgezo join` processes on a
  tiny LLaMA end on `edgezo simulate`'s fingerprint while a stranger posts unsigned and forged
  results and fake device statuses; a device without a key and one whose key is not enrolled end
  with a clear error.
"""

from __future__ import annotations

import json
import logging
import stat
import time
from types import SimpleNamespace

import msgspec
import paho.mqtt.client as mqtt
import pytest

from edgezo import signing
from edgezo.config import JobConfig
from edgezo.coordinator.wire import messages as m
from edgezo.coordinator.device.device import Device, DeviceSettings
from edgezo.coordinator.server.pump import MessagePump
from edgezo.coordinator.server.rounds import RoundPolicy
from edgezo.coordinator.server.coordinator import Coordinator, CoordinatorSettings
from edgezo.coordinator.wire.signed_link import SignedLink, device_trust, open_message
from edgezo.coordinator.wire.topics import Topics
from edgezo.coordinator.wire.transport import Message
from edgezo.errors import ConfigError, EdgezoError
from support.procs import Procs
from test_federation import final_fingerprint, job_options, metrics, simulate_fingerprint, wait_until
from test_federation_hardening import DIGEST, MODEL, Federation, Toy

RUN = "r"
TOPICS = Topics(RUN)


def status(device: str, state: str = "online", instance: str = "i1") -> bytes:
    return m.encode(m.Status(v=m.PROTOCOL_VERSION, run=RUN, device=device, state=state, examples=10, instance=instance))


# -- the envelope ----------------------------------------------------------------------------------
def test_a_sealed_message_opens_only_unchanged_on_its_own_topic():
    key = signing.generate()
    topic, payload = TOPICS.result("dev-a"), b"\x85payload bytes"
    sealed = signing.seal(key, topic, payload)
    assert len(sealed) == len(payload) + signing.OVERHEAD == len(payload) + 100
    assert signing.unseal(topic, sealed) == (key.public, payload)
    for i in range(len(signing.MAGIC), len(sealed)):  # every byte after the magic: key, signature, payload
        tampered = bytearray(sealed)
        tampered[i] ^= 0x01
        with pytest.raises(signing.BadSignature, match="bad signature"):
            signing.unseal(topic, bytes(tampered))
    with pytest.raises(signing.BadSignature, match="moved from another topic"):
        signing.unseal(TOPICS.result("dev-b"), sealed)  # another device's topic
    with pytest.raises(signing.BadSignature):
        signing.unseal(Topics("other-run").result("dev-a"), sealed)  # another run
    with pytest.raises(signing.BadSignature, match="cut short"):
        signing.unseal(topic, sealed[:99])
    # a valid signature by the wrong key opens, and the enrolment names the mismatch
    other = signing.generate()
    signer, _ = signing.unseal(topic, signing.seal(other, topic, payload))
    enrolment = signing.Enrolment({"dev-a": key.public})
    assert enrolment.check("dev-a", key.public) is None
    assert "not device 'dev-a''s enrolled key" in enrolment.check("dev-a", signer)
    assert "not enrolled" in enrolment.check("dev-b", signer)
    assert "unsigned" in enrolment.check("dev-a", None)
    assert not signing.is_sealed(m.encode(m.Status(v=1, run=RUN, device="d", state="online")))


def test_key_files_are_private_refuse_overwrites_and_name_what_is_wrong(tmp_path):
    path = tmp_path / "keys" / "device.key"
    key = signing.generate()
    signing.save_key(key, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert signing.load_key(path).public == key.public
    with pytest.raises(signing.SigningError, match="already exists; pass --force"):
        signing.save_key(signing.generate(), path)
    signing.save_key(signing.generate(), path, force=True)
    assert signing.load_key(path).public != key.public
    with pytest.raises(signing.SigningError, match="no signing key at .*edgezo keys init"):
        signing.load_key(tmp_path / "missing.key")
    (tmp_path / "junk.key").write_text("not a key")
    with pytest.raises(signing.SigningError, match="not an unencrypted PEM private key"):
        signing.load_key(tmp_path / "junk.key")
    line = key.line("dev-a")
    assert signing.parse_public(line) == (key.public, "dev-a")
    assert signing.read_public(line) == key.public
    (tmp_path / "coordinator.pub").write_text("# the coordinator\n" + line + "\n")
    assert signing.read_public(str(tmp_path / "coordinator.pub")) == key.public
    with pytest.raises(signing.SigningError, match="neither a public key line"):
        signing.read_public(str(tmp_path / "nowhere.pub"))
    with pytest.raises(signing.SigningError, match="not a base64 Ed25519 public key"):
        signing.parse_public("ed25519:AAAA dev-a")


def test_without_the_cryptography_package_signing_fails_in_one_line_naming_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "cryptography.hazmat.primitives.asymmetric", None)  # as if not installed
    with pytest.raises(EdgezoError, match=r"need the cryptography package: pip install 'edgezo\[signing\]'"):
        signing.generate()


def test_enrolment_files_are_checked_line_by_line(tmp_path):
    a, b = signing.generate(), signing.generate()
    enrolment = signing.parse_enrolment(f"# devices\n{a.line('dev-a')}\n\n{b.line('dev-b')}  # the lab Pi\n")
    assert enrolment.keys == {"dev-a": a.public, "dev-b": b.public}
    with pytest.raises(signing.SigningError, match="line 2: device 'dev-a' is enrolled twice"):
        signing.parse_enrolment(f"{a.line('dev-a')}\n{b.line('dev-a')}\n")
    with pytest.raises(signing.SigningError, match="line 1: the key has no device id"):
        signing.parse_enrolment(a.text)
    with pytest.raises(signing.SigningError, match="line 1: device name 'a/b'"):
        signing.parse_enrolment(a.line("a/b"))
    with pytest.raises(signing.SigningError, match="line 1: expected 'ed25519:<base64> \\[name\\]'"):
        signing.parse_enrolment("ssh-ed25519 AAAA dev-a")
    (tmp_path / "empty").write_text("# nobody yet\n")
    with pytest.raises(signing.SigningError, match="enrols no device"):
        signing.load_enrolment(tmp_path / "empty")
    with pytest.raises(signing.SigningError, match="cannot read the enrolment file"):
        signing.load_enrolment(tmp_path / "missing")


# -- the pump (one component: a stub link) ----------------------------------------------------------
class StubLink:
    connections = 0

    def __init__(self, enrolment):
        self.enrolment = enrolment
        self.published: list[tuple[str, bytes]] = []

    def publish(self, topic, payload, qos=1, retain=False):
        self.published.append((topic, payload))


def test_the_pump_rejects_what_the_enrolled_key_did_not_sign_and_tells_refused_keys():
    a, stranger = signing.generate(), signing.generate()
    link = StubLink(signing.Enrolment({"dev-a": a.public}))
    pump = MessagePump(link, TOPICS, lambda: None)
    handled = []

    def feed(topic, payload):
        pump.dispatch(open_message(Message(topic, payload, False)), lambda *args: handled.append(args))

    good = signing.seal(a, TOPICS.status("dev-a"), status("dev-a"))
    feed(TOPICS.status("dev-a"), good)
    assert [(kind, device) for kind, device, _, _ in handled] == [("status", "dev-a")]
    assert handled[0][3] == len(good), "a signed message counts its envelope's bytes"
    assert pump.rejected == 0 and link.published == []

    feed(TOPICS.status("dev-a"), status("dev-a"))  # unsigned, as a stranger posts it
    feed(TOPICS.status("ghost"), signing.seal(stranger, TOPICS.status("ghost"), status("ghost")))  # a fake device
    feed(TOPICS.status("dev-a"), signing.seal(stranger, TOPICS.status("dev-a"), status("dev-a")))  # the wrong key
    feed(TOPICS.status("dev-b"), signing.seal(a, TOPICS.status("dev-a"), status("dev-b")))  # moved to another topic
    tampered = bytearray(good)
    tampered[-1] ^= 0x01
    feed(TOPICS.status("dev-a"), bytes(tampered))
    result = m.Result(v=1, run=RUN, round=1, attempt=0, device="dev-a", scalars=m.pack_scalars([0.5]), examples=4,
                      loss=0.7, forwards1=1, forwards2=2, flops=1.0, compute_s=0.1, fingerprint="f")
    feed(TOPICS.result("dev-a"), m.encode(result))
    feed(TOPICS.status("dev-a"), status("dev-a", instance="again"))  # unsigned again: no second Refused within 5 s
    assert len(handled) == 1
    assert pump.rejected == 7
    refusals = {topic: m.decode(payload) for topic, payload in link.published}
    assert set(refusals) == {TOPICS.log("dev-a"), TOPICS.log("ghost")}
    assert all(isinstance(r, m.Refused) for r in refusals.values())
    to_a = [m.decode(p) for t, p in link.published if t == TOPICS.log("dev-a")]
    assert [r.key for r in to_a] == ["", stranger.text], "a refusal names the key refused (the real dev-a's is not)"
    assert "not enrolled" in refusals[TOPICS.log("ghost")].reason and refusals[TOPICS.log("ghost")].key == stranger.text


def test_coordinate_key_needs_enrolled_and_bad_key_lines_fail_in_one_line(tmp_path):
    from edgezo.app.jobs.coordinate import CoordinateJob

    with pytest.raises(ConfigError, match="--key signs the coordinator's messages in a signed job: add --enrolled"):
        CoordinateJob.from_options(key=str(tmp_path / "c.key"), out=str(tmp_path / "out"))
    with pytest.raises(signing.SigningError, match="--coordinator-key: 'ed25519:oops' is not a base64"):
        signing.read_public("ed25519:oops")


def test_keys_init_and_show_print_the_line_to_enrol(tmp_path, monkeypatch, capsys):
    from edgezo.app.cli import main

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    main(["keys", "init", "--device-id", "pi-7"])
    line = capsys.readouterr().out.strip()
    path = tmp_path / "edgezo" / "device.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert line == signing.load_key(path).line("pi-7")
    main(["keys", "show"])
    assert capsys.readouterr().out.strip() == line, "show names the id init enrolled"
    with pytest.raises(SystemExit) as exit_info:
        main(["keys", "init"])
    assert exit_info.value.code == 2 and "already exists; pass --force" in capsys.readouterr().err
    main(["keys", "init", "--force", "--device-id", "pi-7"])
    assert capsys.readouterr().out.strip() != line
    assert signing.device_key(None).public == signing.load_key(path).public, "join's default key is init's"


# -- over mosquitto, in threads with the toy --------------------------------------------------------
def toy_job() -> JobConfig:
    return JobConfig(task="sst2", method="spzo", rounds=6, local_steps=1, p1=1, p2=2, batch_size=4, lr=0.05, seed=7).validate()


def start_coordinator(fed: Federation, key=None, enrolment=None) -> Coordinator:
    link = fed.link(f"coord-{fed.run}")
    if enrolment is not None:
        link = SignedLink(link, key, enrolment=enrolment)
    s = CoordinatorSettings(run=fed.run, state=fed.tmp / f"state-{fed.run}", checkpoint_every=0, http_host="127.0.0.1",
                            policy=RoundPolicy(timeout_s=20), min_devices=2)
    coord = Coordinator(toy_job(), s, link, Toy(), MODEL, evaluate=lambda: 0.5, on_record=fed.records.append,
                        say=fed.say("coordinator"))
    fed._thread("coordinator", coord.run)
    return coord


def start_device(fed: Federation, name: str, key=None, coordinator=None) -> Device:
    """A device as `edgezo join` makes it: signed will and link when it has a key."""
    instance = f"{name}-instance"
    topic = Topics(fed.run).status(name)
    will = m.encode(m.Status(v=m.PROTOCOL_VERSION, run=fed.run, device=name, state="offline", instance=instance))
    if key is not None:
        will = signing.seal(key, topic, will)
    link = SignedLink(fed.link(f"dev-{fed.run}-{name}", will=(topic, will, True)), key,
                      trust=device_trust(coordinator, key.public if key is not None else None))
    s = DeviceSettings(name, run=fed.run, data=str(fed.data), train_samples=40, announce_timeout=20, instance=instance)
    device = Device(s, link, lambda cfg, task: (Toy(), SimpleNamespace(name="toy", digest=DIGEST)), say=fed.say(name))
    fed.devices[name] = device
    fed._thread(name, device.run)
    return device


def test_devices_checking_the_coordinators_key_ignore_forgeries_and_end_on_the_unsigned_model(mosquitto, tmp_path, sst2_dir, caplog):
    caplog.set_level(logging.WARNING)
    plain = Federation(mosquitto, tmp_path, "toy-unsigned", sst2_dir)
    try:
        unsigned = start_coordinator(plain)
        for name in ("dev-a", "dev-b"):
            start_device(plain, name)
        plain.wait("coordinator", "dev-a", "dev-b")
    finally:
        plain.close()

    ck, a, b, stranger = (signing.generate() for _ in range(4))
    enrolment = signing.Enrolment({"dev-a": a.public, "dev-b": b.public})
    fed = Federation(mosquitto, tmp_path, "toy-signed", sst2_dir)
    t = Topics(fed.run)
    forger = fed.link(f"forger-{fed.run}")
    forged = SignedLink(fed.link(f"forger2-{fed.run}"), stranger)
    try:
        # a fake "online" under dev-a's id, left for dev-a's duplicate check to find
        forger.publish(t.status("dev-a"), m.encode(m.Status(v=1, run=fed.run, device="dev-a", state="online", instance="x")), retain=True)
        coord = start_coordinator(fed, ck, enrolment)
        start_device(fed, "dev-a", a, coordinator=ck.public)
        fed.wait_said("device dev-a online")
        # the coordinator waits for a second device: a stranger's forgeries to dev-a, and fake devices
        bogus = m.Update(v=1, run=fed.run, round=1, run_seed=7, rows=m.pack_update([]), fingerprint="0" * 64)
        over = m.Announce(v=1, run=fed.run, state="finished", model=MODEL, job={}, split=1, round=9, rounds=9,
                          fingerprint="0" * 64, log_chunk=50)
        refusal = m.Refused(v=1, run=fed.run, device="dev-a", key=a.text, reason="forged")
        for link in (forger, forged):  # unsigned, and signed by a key that is not the coordinator's
            link.publish(t.update, m.encode(bogus))
            link.publish(t.announce, m.encode(over))
            link.publish(t.log("dev-a"), m.encode(refusal))
            link.publish(t.status("ghost"), m.encode(m.Status(v=1, run=fed.run, device="ghost", state="online", examples=5)))
        deadline = time.monotonic() + 20
        while sum("ignoring a message on" in r.getMessage() for r in caplog.records) < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert fed.threads["dev-a"].is_alive(), f"dev-a took a forgery: {fed.outcome}"
        start_device(fed, "dev-b", b, coordinator=ck.public)
        fed.wait("coordinator", "dev-a", "dev-b")
    finally:
        forger.publish(t.status("ghost"), b"", retain=True)
        fed.close()
    assert fed.outcome == {"coordinator": None, "dev-a": 0, "dev-b": 0}
    assert coord.fingerprint == unsigned.fingerprint, "signing must not change the model"
    assert all(fed.devices[n].ex.fingerprint() == coord.fingerprint for n in ("dev-a", "dev-b"))
    rows = {r.round: r for r in fed.records}
    assert sorted(rows) == list(range(7)) and all(rows[r].assigned == rows[r].devices == 2 for r in range(1, 7))
    assert coord.rejected >= 3, "the unsigned and stranger-signed fake statuses (and dev-a's fake online)"
    ignored = [r.getMessage() for r in caplog.records if "ignoring a message on" in r.getMessage()]
    for topic in (t.update, t.announce, t.log("dev-a"), t.status("dev-a")):
        assert any(topic + ":" in line for line in ignored), f"no forgery on {topic} ignored: {ignored}"
    assert any("not by the coordinator's key" in line for line in ignored)


# -- over mosquitto, the commands ---------------------------------------------------------------------
class Stranger:
    """A plain MQTT client on the job's topics: keeps the devices' real (signed) results."""

    def __init__(self, broker, run: str):
        self.run, self.results = run, []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"stranger-{run}", protocol=mqtt.MQTTv5)
        self.client.on_message = lambda c, u, msg: self.results.append((msg.topic, bytes(msg.payload)))
        self.client.connect(broker.host, broker.port)
        self.client.subscribe(f"edgezo/{run}/result/+", options=mqtt.SubscribeOptions(qos=1, noLocal=True))
        self.client.loop_start()

    def send(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.client.publish(f"edgezo/{self.run}/{topic}", payload, qos=1, retain=retain).wait_for_publish(5)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def procs(tmp_path, mosquitto):
    p = Procs(tmp_path, mosquitto)
    p.env["XDG_CONFIG_HOME"] = str(tmp_path / "config")  # no default key or device id of the user's
    yield p
    p.kill_all()


def test_a_signed_job_reaches_the_simulated_model_and_strangers_are_refused(procs, tmp_path, tiny_llama, sst2_dir, mosquitto):
    job = job_options(tiny_llama, sst2_dir)
    run, out, rounds = "signed", tmp_path / "coord", 3
    keys = {name: signing.generate() for name in ("dev0", "dev1", "stray", "stranger")}
    for name, key in keys.items():
        signing.save_key(key, tmp_path / f"{name}.key")
    (tmp_path / "enrolled.txt").write_text("".join(keys[n].line(n) + "\n" for n in ("dev0", "dev1")))
    stranger = Stranger(mosquitto, run)
    procs.start("coordinator", "coordinate", *job, "--run", run, "--rounds", str(rounds), "--min-devices", "2",
                "--round-timeout", "120", "--enrolled", str(tmp_path / "enrolled.txt"), "--out", str(out), "--quiet")
    pub = out / "state" / "coordinator.pub"
    wait_until("the coordinator's public line", pub.exists, procs)
    device = ["join", "--run", run, "--model", str(tiny_llama), "--data", str(sst2_dir), "--train-samples", "200"]
    procs.start("nokey", *device, "--device-id", "nokey")
    procs.start("stray", *device, "--device-id", "stray", "--key", str(tmp_path / "stray.key"))
    for name in ("nokey", "stray"):  # both end with an error while the coordinator waits for devices
        assert procs.procs.pop(name).wait(120) == 2, procs.log(name)
    procs.start("dev0", *device, "--device-id", "dev0", "--shard", "0/2", "--key", str(tmp_path / "dev0.key"),
                "--coordinator-key", str(pub))
    procs.start("dev1", *device, "--device-id", "dev1", "--shard", "1/2", "--key", str(tmp_path / "dev1.key"))
    try:
        wait_until("a device's first result", lambda: stranger.results, procs)
        topic, sealed = stranger.results[0]
        signer, inner = signing.unseal(topic, sealed)
        assert signer == keys["dev0"].public or signer == keys["dev1"].public
        real = msgspec.msgpack.decode(inner, type=m.Message)
        other = "dev1" if real.device == "dev0" else "dev0"
        tampered = bytearray(sealed)
        tampered[-1] ^= 0x01
        fake = lambda name, state="online": m.encode(m.Status(v=1, run=run, device=name, state=state, examples=50))  # noqa: E731
        bad = [
            (f"result/{real.device}", inner),  # the real result, unsigned
            (f"result/{other}", sealed),  # moved to the other device's topic
            (f"result/{real.device}", bytes(tampered)),  # one byte changed
            (f"result/{real.device}", signing.seal(keys["stranger"], f"edgezo/{run}/result/{real.device}", inner)),
            ("status/ghost", fake("ghost")),  # fake devices that would stall rounds
            ("status/ghost2", signing.seal(keys["stranger"], f"edgezo/{run}/status/ghost2", fake("ghost2"))),
            (f"status/{real.device}", fake(real.device, "offline")),  # a forged goodbye
            (f"logreq/{other}", m.encode(m.LogRequest(v=1, run=run, device=other, first=1, last=1))),
        ]
        for where, payload in bad:
            stranger.send(where, payload, retain=where.startswith("status/ghost"))
        procs.wait("coordinator", "dev0", "dev1")
    finally:
        for ghost in ("ghost", "ghost2"):
            stranger.send(f"status/{ghost}", b"", retain=True)
        stranger.close()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds_completed"] == rounds
    rows = metrics(out)
    assert all(r["devices"] == r["assigned"] == 2 for r in rows[1:]), "a fake or refused device was assigned"
    for name in ("dev0", "dev1"):
        assert final_fingerprint(procs.log(name)) == summary["fingerprint"], name
    assert "signing this device's messages with " + keys["dev0"].text in procs.log("dev0")
    log = procs.log("coordinator")
    for reason in ("unsigned (this job requires signed messages)", "bad signature", "device 'ghost2' is not enrolled",
                   f"not device '{real.device}''s enrolled key", "device 'stray' is not enrolled"):
        assert reason in log, f"no rejection saying {reason!r}"
    assert summary["rejected_messages"] >= len(bad)
    assert "requires signed messages, and this device has no signing key" in procs.log("nokey")
    assert "edgezo keys init" in procs.log("nokey") and "joined job" not in procs.log("nokey"), "refused before the model loads"
    stray = procs.log("stray")
    assert f"refused device 'stray' and its key {keys['stray'].text}: device 'stray' is not enrolled" in stray, stray[-2000:]
    assert simulate_fingerprint(tmp_path, tiny_llama, sst2_dir, 2, rounds, 200) == summary["fingerprint"]
