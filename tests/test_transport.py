"""MQTT transport (edgezo.coordinator.wire.transport) against real brokers: mosquitto and the embedded amqtt."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest

from support.mosquitto import drain, find_mosquitto, wait_connected
from support.ports import free_port

from edgezo.coordinator.server.broker import EmbeddedBroker
from edgezo.coordinator.wire.transport import BrokerSettings, Message, MqttLink, parse_broker
from edgezo.errors import EdgezoError

ACL_EXAMPLE = Path(__file__).parent.parent / "coordinator" / "mosquitto.acl.example"


@pytest.fixture(scope="module")
def embedded():
    with EmbeddedBroker() as broker:
        yield broker


@pytest.fixture(params=["mosquitto", "embedded"])
def broker(request):
    """Each test using this runs once per broker kind."""
    return request.getfixturevalue(request.param)


@pytest.fixture
def links():
    """``make(settings, client_id=None, **kw)`` -> a connected MqttLink, closed after the test."""
    made: list[MqttLink] = []

    def make(settings: BrokerSettings, client_id: str | None = None, subscribe=(), **kwargs) -> MqttLink:
        link = MqttLink(settings, client_id or f"t-{uuid.uuid4().hex[:8]}", **kwargs)
        for topic_filter in subscribe:
            link.subscribe(topic_filter)
        made.append(link)
        link.connect(timeout=5)
        return link

    yield make
    for link in made:
        link.close(flush_timeout=0)


def unique_topic() -> str:
    return f"test/{uuid.uuid4().hex[:10]}"


def wait_for(link: MqttLink, topic: str, timeout: float = 5.0) -> Message:
    """The next message on ``topic`` (others are skipped), or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        msg = link.get(left)
        if msg is not None and msg.topic == topic:
            return msg
    pytest.fail(f"no message on {topic} within {timeout} s")


# ------------------------------------------------------------------ parse_broker


@pytest.mark.parametrize(
    "text, expected",
    [
        ("localhost", ("localhost", 1883)),
        ("10.0.0.5:8883", ("10.0.0.5", 8883)),
        (" broker.example.org:1884 ", ("broker.example.org", 1884)),
        ("[::1]:1999", ("::1", 1999)),
        ("[fe80::1]", ("fe80::1", 1883)),
        ("::1", ("::1", 1883)),
    ],
)
def test_parse_broker_accepts(text, expected):
    assert parse_broker(text) == expected


def test_parse_broker_default_port():
    assert parse_broker("pi4", default_port=8883) == ("pi4", 8883)


@pytest.mark.parametrize(
    "text, why",
    [
        ("", "empty"),
        ("host:", "port ''"),
        ("host:99999", "1 to 65535"),
        ("host:abc", "port 'abc'"),
        ("mqtt://host:1883", "scheme"),
        ("[::1", "missing ']'"),
        ("[nothost]:1883", "not an IPv6"),
        ("[::1]x", "unexpected"),
        ("bad host:1", "not a host name"),
    ],
)
def test_parse_broker_rejects(text, why):
    with pytest.raises(EdgezoError, match="bad broker address") as err:
        parse_broker(text)
    assert why in str(err.value)


# ------------------------------------------------------------- messaging basics


def test_roundtrip_and_protocol(broker, links):
    topic = unique_topic()
    sub = links(broker.settings(), subscribe=[topic + "/#"])
    pub = links(broker.settings())
    pub.publish(topic + "/a", b"\x00hello\xff")
    msg = wait_for(sub, topic + "/a")
    assert msg == Message(topic + "/a", b"\x00hello\xff", retain=False)
    # amqtt only speaks 3.1.1; "auto" must have fallen back to it there, and used v5 on mosquitto.
    assert sub.protocol == ("3.1.1" if isinstance(broker, EmbeddedBroker) else "5")
    assert pub.flush(5)
    assert drain(sub) == []


def test_retained_reaches_late_subscriber(broker, links):
    topic = unique_topic()
    pub = links(broker.settings())
    pub.publish(topic, b"v1", retain=True)
    pub.publish(topic, b"v2", retain=True)  # the broker keeps only the last one
    assert pub.flush(5)
    late = links(broker.settings(), subscribe=[topic])
    msg = wait_for(late, topic)
    assert (msg.payload, msg.retain) == (b"v2", True)
    # An empty retained payload clears it (live subscribers still get the empty message).
    pub.publish(topic, b"", retain=True)
    assert wait_for(late, topic) == Message(topic, b"", retain=False)
    later = links(broker.settings(), subscribe=[topic])
    assert later.get(0.3) is None


def test_publish_before_connect_is_held(broker, links):
    topic = unique_topic()
    sub = links(broker.settings(), subscribe=[topic])
    early = MqttLink(broker.settings(), f"t-{uuid.uuid4().hex[:8]}")
    early.publish(topic, b"early")
    early.connect(timeout=5)
    try:
        assert wait_for(sub, topic).payload == b"early"
    finally:
        early.close()


# ------------------------------------------------------------------- last will

_DOOMED = textwrap.dedent(
    """
    import sys, time
    from edgezo.coordinator.wire.transport import BrokerSettings, MqttLink
    host, port, topic, protocol = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    link = MqttLink(BrokerSettings(host, port, keepalive=2), "doomed-" + topic[-10:],
                    will=(topic, b"gone", False), protocol=protocol)
    link.connect(timeout=5)
    print("ready", flush=True)
    time.sleep(60)
    """
)


def _start_doomed(broker, topic: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", _DOOMED, broker.host, str(broker.port), topic, broker.protocol],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "ready"
    return proc


# The doomed client's keepalive is 2 s, so a broker should drop it after about 3 s; mosquitto
# 2.0.11 was seen taking 4.4 to 7.7 s on a loaded machine (it checks keepalives on whole
# seconds). The waits are generous on purpose: the test proves the will comes at all (a
# 60 s default keepalive, or none, would not deliver it within them), not how fast.
@pytest.mark.parametrize("how, within", [("SIGKILL", 15.0), ("SIGSTOP", 30.0)])
def test_last_will_when_client_dies(broker, links, how, within):
    """SIGKILL closes the socket (the broker notices at once); SIGSTOP leaves it open, like
    a device that lost its network, so the broker must notice by keepalive."""
    topic = unique_topic()
    watcher = links(broker.settings(), subscribe=[topic])
    proc = _start_doomed(broker, topic)
    try:
        os.kill(proc.pid, getattr(signal, how))
        msg = wait_for(watcher, topic, timeout=within)
        assert (msg.payload, msg.retain) == (b"gone", False)
    finally:
        proc.kill()
        proc.wait()


def test_clean_close_sends_no_will(broker, links):
    topic = unique_topic()
    watcher = links(broker.settings(), subscribe=[topic + "/#"])
    leaving = links(broker.settings(), will=(topic + "/will", b"gone", False))
    leaving.publish(topic + "/bye", b"bye")
    leaving.close()
    assert wait_for(watcher, topic + "/bye").payload == b"bye"  # flushed by close()
    assert watcher.get(0.5) is None


# ------------------------------------------------------------------- reconnect


def test_reconnects_and_resubscribes_after_broker_restart(mosquitto_factory, links):
    broker = mosquitto_factory()
    sub = links(broker.settings(keepalive=5), subscribe=["r/#"])
    assert sub.connected
    broker.kill()
    deadline = time.monotonic() + 5
    while sub.connected and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not sub.connected
    sub.publish("r/queued", b"sent while the broker was down")  # QoS 1: paho keeps it
    broker.restart()
    assert wait_connected(sub, 10), "link did not reconnect"
    # Its own queued message comes back: re-subscribed before paho re-sent the publish.
    assert wait_for(sub, "r/queued").payload == b"sent while the broker was down"
    pub = links(broker.settings())
    pub.publish("r/after", b"after restart")
    assert wait_for(sub, "r/after").payload == b"after restart"


# -------------------------------------------------------------- connect errors


def test_wrong_password(mosquitto_factory):
    broker = mosquitto_factory(password_file={"alice": "right"})
    link = MqttLink(broker.settings(username="alice", password="wrong"), "alice")
    expected = rf"^broker 127.0.0.1:{broker.port} refused the connection: bad username or password; check --username/--password"
    with pytest.raises(EdgezoError, match=expected):
        link.connect(timeout=5)
    # mosquitto says "not authorized" for a wrong password (v5 and 3.1.1); with a login given, that is what it means.
    old = MqttLink(broker.settings(username="alice", password="wrong"), "alice", protocol="3.1.1")
    with pytest.raises(EdgezoError, match=expected):
        old.connect(timeout=5)
    anonymous = MqttLink(broker.settings(), "anon")
    with pytest.raises(EdgezoError, match="not authorized; it wants a login: pass --username/--password"):
        anonymous.connect(timeout=5)
    ok = MqttLink(broker.settings(username="alice", password="right"), "alice")
    ok.connect(timeout=5)
    ok.close()


def test_unreachable_broker():
    port = free_port()
    link = MqttLink(BrokerSettings("127.0.0.1", port), "nobody")
    with pytest.raises(EdgezoError, match=rf"cannot reach MQTT broker at 127.0.0.1:{port} .*pass --broker"):
        link.connect(timeout=2)


def test_silent_port_times_out():
    """Something accepts TCP but never answers MQTT (wrong service, or TLS expected)."""
    server = socket.create_server(("127.0.0.1", 0))
    conns = []
    accepting = threading.Thread(target=lambda: conns.append(server.accept()), daemon=True)
    accepting.start()
    try:
        link = MqttLink(BrokerSettings("127.0.0.1", server.getsockname()[1]), "x")
        start = time.monotonic()
        with pytest.raises(EdgezoError, match="did not accept the connection within 0.5 s"):
            link.connect(timeout=0.5)
        assert time.monotonic() - start < 10  # returns, rather than hanging (generous: CI machines are loaded)
    finally:
        server.close()
        for conn, _ in conns:
            conn.close()


def test_v5_only_fails_clearly_on_amqtt(embedded):
    link = MqttLink(embedded.settings(), "v5-only", protocol="5")  # a bare CONNECT: amqtt answers it
    with pytest.raises(EdgezoError, match="does not support MQTT 5"):
        link.connect(timeout=5)


def test_broker_start_errors(embedded):
    with pytest.raises(EdgezoError, match=rf"cannot start the embedded MQTT broker on 127.0.0.1:{embedded.port} .*in use"):
        EmbeddedBroker(port=embedded.port)
    with pytest.raises(EdgezoError, match="mosquitto-nonexistent not found; install it: apt-get install -y mosquitto"):
        find_mosquitto("mosquitto-nonexistent")


# ------------------------------------------------------------------------- TLS


def _make_certs(folder: Path) -> dict[str, str]:
    """A throwaway CA, a server certificate for 127.0.0.1 signed by it, and an unrelated CA."""
    if not shutil.which("openssl"):
        pytest.skip("openssl not installed")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True, timeout=30)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=edgezo test CA", "-days", "2")
    openssl("req", "-x509", *ec, "-keyout", "other.key", "-out", "other.crt", "-subj", "/CN=other CA", "-days", "2")
    openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1")  # fmt: skip
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.crt", "-days", "2", "-copy_extensions", "copy")  # fmt: skip
    return {name: str(folder / name) for name in ("ca.crt", "server.crt", "server.key", "other.crt")}


def test_tls(mosquitto_factory, links, tmp_path):
    certs = _make_certs(tmp_path)
    broker = mosquitto_factory(tls_files=(certs["ca.crt"], certs["server.crt"], certs["server.key"]))
    topic = unique_topic()
    sub = links(broker.settings(tls_ca=certs["ca.crt"]), subscribe=[topic])
    assert sub.protocol == "5"
    pub = links(broker.settings(tls_insecure=True))  # no CA: certificate not checked
    pub.publish(topic, b"over tls")
    assert wait_for(sub, topic).payload == b"over tls"

    with pytest.raises(EdgezoError, match="TLS handshake with MQTT broker at .* failed .*certificate verify failed"):
        MqttLink(broker.settings(tls_ca=certs["other.crt"]), "x").connect(timeout=5)
    with pytest.raises(EdgezoError, match="closed the connection before accepting it; does it expect TLS"):
        MqttLink(broker.settings(), "plain").connect(timeout=5)
    with pytest.raises(EdgezoError, match="cannot load the TLS files .*check --tls-ca"):
        MqttLink(broker.settings(tls_ca=str(tmp_path / "missing.crt")), "x").connect(timeout=5)


# ------------------------------------------------------------------------- ACL


def test_acl_example_confines_devices_to_their_topics(mosquitto_factory, links):
    users = {"coordinator": "c-pw", "dev-a": "a-pw", "dev-b": "b-pw"}
    broker = mosquitto_factory(password_file=users, acl_file=ACL_EXAMPLE.read_text())
    coord = links(broker.settings(username="coordinator", password="c-pw"), "coordinator", subscribe=["edgezo/run1/#"])
    dev_a = links(
        broker.settings(username="dev-a", password="a-pw"),
        "dev-a",
        subscribe=["edgezo/run1/round", "edgezo/run1/log/dev-a"],
        will=("edgezo/run1/status/dev-a", b"gone", True),
    )
    dev_a.publish("edgezo/run1/result/dev-b", b"forged")  # not its topic: the broker drops it
    dev_a.publish("edgezo/run1/round", b"forged round")  # devices may not write coordinator topics
    dev_a.publish("edgezo/run1/result/dev-a", b"mine")
    # Same client, same order: once "mine" arrived, the forged ones would have arrived before it.
    got = [wait_for(coord, "edgezo/run1/result/dev-a")]
    got += drain(coord)
    assert [(m.topic, m.payload) for m in got] == [("edgezo/run1/result/dev-a", b"mine")]
    # Reading: the device gets the round and its own log, not another device's log.
    coord.publish("edgezo/run1/log/dev-b", b"not for a")
    coord.publish("edgezo/run1/round", b"round 1", retain=True)
    coord.publish("edgezo/run1/log/dev-a", b"for a")
    assert wait_for(dev_a, "edgezo/run1/round").payload == b"round 1"
    assert wait_for(dev_a, "edgezo/run1/log/dev-a").payload == b"for a"
    assert drain(dev_a) == []
