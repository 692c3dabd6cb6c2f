"""The web server browser devices join through (coordinator/server/web_server.py), its listeners, and
the coordinate options that start it: routes, headers, shards as `join --shard` holds them,
HTTPS, and that every listener binds only the address given."""

from __future__ import annotations

import datetime
import json
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import paho.mqtt.client as mqtt
import psutil
import pytest

from edgezo.config import JobConfig
from edgezo.coordinator.server.broker import EmbeddedBroker, WebSocketListener
from edgezo.coordinator.server.web_server import ISOLATION_HEADERS, BrokerWebSocket, WebJob, WebServer, check_free, page_host
from edgezo.coordinator.server.web_serving import shard_jsonl
from edgezo.errors import ConfigError, EdgezoError
from edgezo.jobdata import device_shards, load_job_data
from edgezo.app.settings import CoordinateSettings


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def get(url: str, context: ssl.SSLContext | None = None, headers: dict | None = None, method: str = "GET"):
    """(status, headers, body) of a GET (or ``method``), errors included, redirects not followed."""
    opener = urllib.request.build_opener(NoRedirect, urllib.request.HTTPSHandler(context=context))
    try:
        with opener.open(urllib.request.Request(url, headers=headers or {}, method=method), timeout=10) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


@pytest.fixture
def web_files(tmp_path):
    assets = tmp_path / "assets"
    assets.mkdir()
    (assets / "index.html").write_text("<html>edgezo page</html>")
    (assets / "ort-wasm-simd-threaded.wasm").write_bytes(b"\0asm\1\0\0\0")
    (tmp_path / "secret.txt").write_text("not an asset")
    (tmp_path / "model.onnx").write_bytes(b"onnx-bytes" * 1000)
    (tmp_path / "tokenizer.json").write_text('{"model": {}}')
    (tmp_path / "trainable.safetensors").write_bytes(b"tensors")
    return tmp_path


def make_job(folder: Path, shard=None) -> WebJob:
    return WebJob("demo", BrokerWebSocket(scheme="ws", port=9001), folder / "model.onnx", "ab" * 32, folder / "tokenizer.json",
                  folder / "trainable.safetensors", folder / "assets", shard, pad_token_id=2)


def listening(port: int) -> list[str]:
    """Addresses this process listens on at ``port``."""
    return [c.laddr.ip for c in psutil.Process().net_connections("tcp") if c.status == psutil.CONN_LISTEN and c.laddr.port == port]


def test_routes_serve_the_page_the_job_and_the_isolation_headers(web_files):
    server = WebServer(make_job(web_files), "127.0.0.1", 0).start()
    try:
        base = server.url()
        status, headers, body = get(f"{base}/join?device-id=web0&shard=1/2")
        assert (status, body) == (200, b"<html>edgezo page</html>")
        assert all(headers[k] == v for k, v in ISOLATION_HEADERS.items())
        assert headers["Content-Type"].startswith("text/html")

        status, headers, _ = get(f"{base}/join?shard=0/4")  # no id: each phone that scans the QR code gets its own
        location = headers["Location"]
        assert status == 302 and location.startswith("/join?device-id=web-") and location.endswith("&shard=0%2F4")

        status, headers, body = get(f"{base}/assets/ort-wasm-simd-threaded.wasm")
        assert (status, headers["Content-Type"], body) == (200, "application/wasm", b"\0asm\1\0\0\0")
        assert headers["Cross-Origin-Embedder-Policy"] == "require-corp"
        for bad in ("../secret.txt", "..%2Fsecret.txt", ".hidden", "missing.js"):
            status, _, body = get(f"{base}/assets/{bad}")
            assert status == 404 and b"not an asset" not in body
        # HEAD: whether an asset is served, without its bytes (the page asks before importing the WebGPU build)
        status, headers, body = get(f"{base}/assets/ort-wasm-simd-threaded.wasm", method="HEAD")
        assert (status, headers["Content-Length"], body) == (200, "8", b"")
        assert all(get(f"{base}/{path}", method="HEAD")[:3:2] == (404, b"")
                   for path in ("assets/ort.webgpu.bundle.min.mjs", "assets/../secret.txt", "job/model.onnx"))

        status, headers, body = get(f"{base}/job/config.json", headers={"Host": "phone-visible.example:8080"})
        config = json.loads(body)
        assert config == {"run": "demo", "broker_ws": "ws://phone-visible.example:9001", "prefix": "edgezo/demo/",
                          "model_url": "/job/model.onnx", "model_sha256": "ab" * 32, "tokenizer_url": "/job/tokenizer.json",
                          "trainable_url": "/job/trainable.safetensors", "data_url": None, "pad_token_id": 2}
        assert headers["Cache-Control"] == "no-store"
        assert get(f"{base}/job/model.onnx")[2] == b"onnx-bytes" * 1000
        assert get(f"{base}/job/tokenizer.json")[2] == b'{"model": {}}'
        assert get(f"{base}/job/trainable.safetensors")[2] == b"tensors"
        status, _, body = get(f"{base}/job/data?shard=0/2")
        assert status == 404 and b"--web-data" in body
        assert get(f"{base}/nothing")[0] == 404
    finally:
        server.stop()


def small_sst2(sst2_dir: Path, folder: Path, rows: int = 300) -> str:
    """The first ``rows`` training examples of SST-2 (the real files, cut: loading all 67k takes seconds)."""
    folder.mkdir()
    for name in ("train.tsv", "dev.tsv"):
        lines = (sst2_dir / name).read_text(encoding="utf-8").splitlines(keepends=True)[: rows + 1]
        (folder / name).write_text("".join(lines), encoding="utf-8")
    return str(folder)


def test_shards_are_what_join_shard_holds_in_its_order(web_files, sst2_dir):
    cfg = JobConfig(task="sst2", seed=3).validate()
    folder = small_sst2(sst2_dir, web_files / "sst2")
    server = WebServer(make_job(web_files, shard=lambda i, n: shard_jsonl(cfg, folder, i, n)), "127.0.0.1", 0).start()
    try:
        status, headers, body = get(f"{server.url()}/job/data?shard=1/3")
        assert status == 200 and headers["Content-Type"] == "application/x-ndjson"
        rows = [json.loads(line) for line in body.decode().splitlines()]
        data = load_job_data(JobConfig(task="sst2", seed=3, data=folder).validate(), need_dev=False)
        shard = device_shards(cfg, data.train, 3)[1]
        assert rows == [{"sentence": data.train[k].fields["sentence"], "label": data.train[k].label} for k in shard]
        for bad, why in (("3/3", b"need 0 <= I < N"), ("x", b"must look like I/N")):
            status, _, body = get(f"{server.url()}/job/data?shard={bad}")
            assert status == 400 and why in body
    finally:
        server.stop()


@pytest.mark.parametrize("header, host", [("example.org:8080", "example.org"), ("example.org", "example.org"),
                                          ("[fe80::1]:8080", "fe80::1"), ("[::1]", "::1"), ("10.0.0.2:80", "10.0.0.2")])
def test_the_broker_url_uses_the_host_the_page_was_loaded_from(header, host):
    assert page_host(header) == host


def test_a_missing_page_or_a_taken_port_is_one_clear_error(web_files):
    (web_files / "assets" / "index.html").unlink()
    with pytest.raises(EdgezoError, match="npm run build"):
        WebServer(make_job(web_files))
    (web_files / "assets" / "index.html").write_text("x")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(EdgezoError, match="choose another --web-port"):
            WebServer(make_job(web_files), "127.0.0.1", taken.getsockname()[1])
        with pytest.raises(EdgezoError, match="choose another --web-port"):  # checked before the export
            check_free("127.0.0.1", taken.getsockname()[1])
    check_free("127.0.0.1", 0)


def self_signed(folder: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False).sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return cert_path, key_path


def test_https_with_a_certificate(web_files):
    cert, key = self_signed(web_files)
    server = WebServer(make_job(web_files), "127.0.0.1", 0, str(cert), str(key)).start()
    try:
        assert server.url().startswith("https://")
        context = ssl.create_default_context(cafile=str(cert))
        with socket.create_connection(("127.0.0.1", server.port)):  # a client that connects and says nothing
            status, headers, body = get(f"https://localhost:{server.port}/join?device-id=a", context)
        assert (status, body) == (200, b"<html>edgezo page</html>")
    finally:
        server.stop()
    with pytest.raises(EdgezoError, match="--certfile"):
        WebServer(make_job(web_files), "127.0.0.1", 0, str(web_files / "tokenizer.json"), None)


def test_web_server_and_embedded_websocket_listener_bind_only_the_address_given(web_files):
    server = WebServer(make_job(web_files), "127.0.0.1", 0).start()
    try:
        with EmbeddedBroker(port=0, websocket=WebSocketListener("127.0.0.1", 0)) as broker:
            for port in (server.port, broker.port, broker.ws_port):
                assert listening(port) == ["127.0.0.1"], port
            got, ready = [], threading.Event()
            page = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="ws-page", transport="websockets", protocol=mqtt.MQTTv311)
            page.on_message = lambda c, u, msg: (got.append((msg.topic, msg.payload)), ready.set())
            page.on_connect = lambda c, u, f, rc, p=None: c.subscribe("edgezo/demo/#", qos=1)
            page.connect("127.0.0.1", broker.ws_port)
            page.loop_start()
            try:
                python_side = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="tcp-coordinator", protocol=mqtt.MQTTv311)
                python_side.connect("127.0.0.1", broker.port)
                python_side.loop_start()
                deadline = time.monotonic() + 10
                while not ready.is_set() and time.monotonic() < deadline:  # retained: the page gets it whenever it subscribed
                    python_side.publish("edgezo/demo/announce", b"retained", qos=1, retain=True).wait_for_publish(5)
                    ready.wait(0.5)
                python_side.loop_stop()
                python_side.disconnect()
            finally:
                page.loop_stop()
                page.disconnect()
            assert ("edgezo/demo/announce", b"retained") in got
    finally:
        server.stop()


def test_embedded_broker_serves_wss_with_the_web_servers_certificate(tmp_path):
    """An HTTPS page may only open wss://: the embedded broker's WebSocket listener takes --certfile/--keyfile too."""
    cert, key = self_signed(tmp_path)
    with EmbeddedBroker(port=0, websocket=WebSocketListener("127.0.0.1", 0, str(cert), str(key))) as broker:
        connected = threading.Event()
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="wss-page", transport="websockets", protocol=mqtt.MQTTv311)
        client.tls_set(ca_certs=str(cert))
        client.on_connect = lambda c, u, f, rc, p=None: connected.set() if not rc.is_failure else None
        client.connect("localhost", broker.ws_port)
        client.loop_start()
        try:
            assert connected.wait(10), "no MQTT session over wss://"
        finally:
            client.loop_stop()
            client.disconnect()
        plain = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="ws-page", transport="websockets", protocol=mqtt.MQTTv311)
        with pytest.raises((mqtt.WebsocketConnectionError, OSError)):  # the listener speaks only TLS
            plain.connect("127.0.0.1", broker.ws_port)


def test_mosquitto_websocket_listener_binds_only_its_host(mosquitto_factory):
    broker = mosquitto_factory(websocket=True)
    listens = [c.laddr.ip for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN and c.laddr.port == broker.ws_port]
    assert listens == ["127.0.0.1"]
    assert broker.ws_url == f"ws://127.0.0.1:{broker.ws_port}"


@pytest.mark.parametrize("options, message", [
    ({"web_data": "x"}, "--web-data only matters when serving browser devices"),
    ({"web_port": 8080, "broker": "mqtt.local"}, "with --broker, pass --web-broker"),
    ({"web_port": 8080, "web_broker": "ws://a:9001"}, "drop --web-broker or add --broker"),
    ({"web_port": 8080, "broker": "a", "web_broker": "http://a:9001"}, "must be a WebSocket URL"),
    ({"web_port": 8080, "keyfile": "k.pem"}, "add --certfile"),
    ({"web_port": 70000}, "0 to 65535"),
])
def test_web_options_are_checked_before_any_work(options, message):
    with pytest.raises(ConfigError, match=message):
        CoordinateSettings(**options).validate()
