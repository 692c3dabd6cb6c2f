"""Per-device broker tokens for browser devices (coordinator/server/web_server.py DeviceTokens, the
embedded broker's WebSocket accounts in coordinator/server/broker.py): the printed join link gives each
page its own device id and token, links without them are refused with a page saying why, and the
real embedded amqtt broker admits a WebSocket client only as a device with its token, while its TCP
listener (the coordinator and Python devices on this machine) stays as it was."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import threading
import time
from urllib.parse import parse_qs, urlsplit

import paho.mqtt.client as mqtt
import pytest

from edgezo.app.jobs.coordinate import CoordinateJob, web_broker_accounts
from edgezo.app.settings import CoordinateSettings
from edgezo.coordinator.server.broker import EmbeddedBroker, WebSocketListener
from edgezo.coordinator.server.web_server import BrokerWebSocket, DeviceTokens, WebJob, WebServer
from edgezo.coordinator.server.web_serving import browser_broker, mosquitto_device_tokens, mosquitto_password_line, write_device_accounts
from edgezo.errors import ConfigError, EdgezoError
from support.mosquitto import find_mosquitto
from test_web_server import get, web_files  # noqa: F401 - the fixture


@pytest.fixture
def served(web_files):  # noqa: F811
    tokens = DeviceTokens()
    job = WebJob("demo", BrokerWebSocket(scheme="ws", port=9001), web_files / "model.onnx", "ab" * 32, web_files / "tokenizer.json",
                 web_files / "trainable.safetensors", web_files / "assets", tokens=tokens)
    server = WebServer(job, "127.0.0.1", 0).start()
    yield server, tokens
    server.stop()


def issued(location: str) -> dict:
    assert location.startswith("/join?")
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def test_the_join_link_issues_each_page_its_own_id_and_token(served):
    server, tokens = served
    assert server.job.join_path() == f"/join?key={tokens.join_key}"
    first, second = (get(f"{server.url()}{server.job.join_path()}&shard=1/2") for _ in range(2))
    assert first[0] == second[0] == 302
    a, b = issued(first[1]["Location"]), issued(second[1]["Location"])
    assert a["device-id"].startswith("web-") and a["device-id"] != b["device-id"] and a["token"] != b["token"]
    assert a["shard"] == "1/2" and "key" not in a  # the job's key does not stay in the page's URL
    status, headers, body = get(f"{server.url()}{first[1]['Location']}")
    assert status == 200 and body == b"<html>edgezo page</html>"  # a reload of the issued URL keeps working
    assert tokens.admits(a["device-id"], a["token"], f"edgezo-{a['device-id']}-3f2a")
    assert not tokens.admits(a["device-id"], b["token"], f"edgezo-{a['device-id']}-3f2a")  # another device's token
    assert not tokens.admits(a["device-id"], a["token"], f"edgezo-{b['device-id']}-3f2a")  # as another device's client


def test_a_chosen_id_is_issued_once(served):
    server, tokens = served
    status, headers, _ = get(f"{server.url()}{server.job.join_path()}&device-id=kitchen-phone")
    assert status == 302 and issued(headers["Location"])["device-id"] == "kitchen-phone"
    status, _, body = get(f"{server.url()}{server.job.join_path()}&device-id=kitchen-phone")
    assert status == 409 and b"already taken" in body
    status, _, body = get(f"{server.url()}{server.job.join_path()}&device-id=a/%23")
    assert status == 400 and b"is not allowed" in body


@pytest.mark.parametrize("query, says", [
    ("?device-id=web0", b"has no device token"),
    ("?device-id=web0&token=guess", b"carries no valid token for device &#x27;web0&#x27;"),
    ("?key=wrong", b"key is not this job"),
])
def test_links_without_a_valid_token_are_refused_with_a_page_saying_why(served, query, says):
    server, _ = served
    status, headers, body = get(f"{server.url()}/join{query}")
    assert status in (403,) and headers["Content-Type"].startswith("text/html") and says in body
    assert b"open the link the coordinator printed" in body


def connect(port: int, client_id: str, login: tuple[str, str] | None, transport: str = "websockets"):
    """The CONNACK reason of one MQTT 3.1.1 connection attempt (a real paho client)."""
    done, outcome = threading.Event(), []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, transport=transport, protocol=mqtt.MQTTv311)
    if login is not None:
        client.username_pw_set(*login)
    client.on_connect = lambda c, u, f, rc, p=None: (outcome.append(rc), done.set())
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        assert done.wait(10), "no CONNACK"
    finally:
        client.loop_stop()
        client.disconnect()
    return outcome[0]


def test_the_embedded_broker_admits_a_websocket_client_only_as_a_device_with_its_token():
    tokens = DeviceTokens()
    _, token = tokens.issue("web7")
    with EmbeddedBroker(port=0, websocket=WebSocketListener("127.0.0.1", 0, accounts=tokens)) as broker:
        assert not connect(broker.ws_port, "edgezo-web7-probe", ("web7", token)).is_failure
        for client_id, login in (("edgezo-web7-a1", ("web7", "wrong")), ("edgezo-web7-a1", None), ("edgezo-web8-a1", ("web7", token))):
            rc = connect(broker.ws_port, client_id, login)
            assert rc.is_failure and "authorized" in str(rc).lower(), (client_id, login, rc)
        assert not connect(broker.port, "tcp-coordinator", None, transport="tcp").is_failure  # TCP: as before


def test_the_password_line_is_what_mosquitto_passwd_writes(tmp_path):
    path = tmp_path / "passwd"
    path.write_text("")
    subprocess.run([find_mosquitto("mosquitto_passwd"), "-b", str(path), "web3", "tok-a1"], check=True)
    line = path.read_text().strip()
    salt = base64.b64decode(line.split("$")[3])
    assert mosquitto_password_line("web3", "tok-a1", salt) == line
    with pytest.raises(EdgezoError, match="cannot go in a mosquitto password file"):
        mosquitto_password_line("a:b", "x")


def test_preissued_accounts_are_handed_out_in_turn_then_refused(web_files):  # noqa: F811
    tokens = DeviceTokens.preissued(2)
    pool = tokens.accounts
    job = WebJob("demo", BrokerWebSocket(url="ws://127.0.0.1:9"), web_files / "model.onnx", "ab" * 32, web_files / "tokenizer.json",
                 web_files / "trainable.safetensors", web_files / "assets", tokens=tokens)
    server = WebServer(job, "127.0.0.1", 0).start()
    try:
        got = [get(f"{server.url()}{job.join_path()}") for _ in range(3)]
    finally:
        server.stop()
    assert [g[0] for g in got] == [302, 302, 409] and b"in use" in got[2][2]
    handed = [issued(g[1]["Location"]) for g in got[:2]]
    assert {h["device-id"]: h["token"] for h in handed} == pool


def test_mosquitto_admits_the_accounts_the_coordinator_writes_after_a_reload(mosquitto_factory):
    """write_device_accounts adds the pages' accounts to the broker's password file (keeping the
    coordinator's); mosquitto reads it again on SIGHUP and admits them, and nothing else."""
    broker = mosquitto_factory(password_file={"coordinator": "c-secret"}, websocket=True)
    tokens = DeviceTokens.preissued(2)
    (device, token), = list(tokens.accounts.items())[:1]
    write_device_accounts(broker.dir / "passwd", tokens.accounts)
    assert "coordinator:$7$" in (broker.dir / "passwd").read_text()
    os.kill(broker.pid, signal.SIGHUP)
    deadline = time.monotonic() + 10
    while connect(broker.ws_port, f"edgezo-{device}-p", (device, token)).is_failure and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not connect(broker.ws_port, f"edgezo-{device}-p", (device, token)).is_failure
    assert connect(broker.ws_port, f"edgezo-{device}-p", (device, "wrong")).is_failure
    assert not connect(broker.port, "coordinator", ("coordinator", "c-secret"), transport="tcp").is_failure


def test_mosquitto_device_tokens_writes_the_pool_it_hands_out(tmp_path):
    said = []
    tokens = mosquitto_device_tokens(tmp_path / "passwd", 3, said.append)
    lines = (tmp_path / "passwd").read_text().splitlines()
    assert sorted(line.split(":")[0] for line in lines) == sorted(tokens.accounts) and len(lines) == 3
    assert "kill -HUP" in said[0]


def test_web_passwords_writes_accounts_a_preissued_join_link_hands_out(mosquitto_factory, web_files):  # noqa: F811
    """``coordinate --web-passwords FILE --web-devices 2`` (the job's options, as the CLI names
    them): the accounts go into mosquitto's password file beside the coordinator's, the printed
    message says how to make mosquitto reload it, and after that reload a page that opened the join
    link logs in over WebSockets with the device id and token the link issued it."""
    broker = mosquitto_factory(password_file={"coordinator": "c-secret"}, websocket=True)
    job = CoordinateJob.from_options(broker=broker.address, web_port=0, web_broker=broker.ws_url,
                                     web_passwords=str(broker.dir / "passwd"), web_devices=2)
    said = []
    ws, tokens = browser_broker(job.settings, None, said.append, web_broker_accounts(job.settings))
    assert ws.url == broker.ws_url and len(tokens.accounts) == 2 and "kill -HUP" in said[0]
    users = [line.split(":")[0] for line in (broker.dir / "passwd").read_text().splitlines()]
    assert sorted(users) == sorted(["coordinator", *tokens.accounts])
    server = WebServer(WebJob("demo", ws, web_files / "model.onnx", "ab" * 32, web_files / "tokenizer.json",
                              web_files / "trainable.safetensors", web_files / "assets", tokens=tokens), "127.0.0.1", 0).start()
    try:
        status, headers, _ = get(f"{server.url()}{server.job.join_path()}")
    finally:
        server.stop()
    assert status == 302
    page = issued(headers["Location"])
    os.kill(broker.pid, signal.SIGHUP)
    deadline = time.monotonic() + 10
    while connect(broker.ws_port, f"edgezo-{page['device-id']}-p", (page["device-id"], page["token"])).is_failure:
        assert time.monotonic() < deadline, "mosquitto did not admit the issued account after SIGHUP"
        time.sleep(0.2)
    assert connect(broker.ws_port, f"edgezo-{page['device-id']}-p", (page["device-id"], "wrong")).is_failure


@pytest.mark.parametrize("options, message", [
    ({"web_port": 0, "web_passwords": "passwd"}, "with the embedded broker"),
    ({"web_passwords": "passwd"}, "--web-passwords only matters when serving browser devices"),
    ({"web_devices": 3}, "add --web-passwords"),
    ({"web_port": 0, "broker": "a", "web_broker": "ws://a:9001", "web_passwords": "p", "web_devices": 0}, "--web-devices must be at least 1"),
])
def test_web_password_options_are_checked_before_any_work(options, message):
    with pytest.raises(ConfigError, match=message):
        CoordinateSettings(**options).validate()
