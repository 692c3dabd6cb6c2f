"""Checkpoints for catch-up: atomic writes, the HTTP server, verified downloads, the cost model."""

import http.client
import json
import logging
import socket

import numpy as np
import pytest

from edgezo.coordinator.device.catchup_cost import checkpoint_worth_it
from edgezo.coordinator.device.checkpoint_client import download_checkpoint
from edgezo.coordinator.server.checkpoint_server import CheckpointServer
from edgezo.coordinator.wire.checkpoint_format import latest_checkpoint, write_checkpoint
from edgezo.errors import EdgezoError


def _tensors(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "layers.0.q.weight": rng.standard_normal((8, 16), dtype=np.float32),
        "layers.0.q.bias": rng.standard_normal(16, dtype=np.float32),
        "head.weight": rng.standard_normal((16, 4), dtype=np.float32).T,  # non-contiguous on purpose
    }


def _assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape
        np.testing.assert_array_equal(a[key], b[key])


@pytest.fixture
def server(tmp_path):
    srv = CheckpointServer(tmp_path / "ckpt", host="127.0.0.1").start()
    yield srv
    srv.stop()


def _get(srv: CheckpointServer, path: str) -> tuple[int, bytes]:
    """Raw request, so the path reaches the server exactly as written (no client normalisation)."""
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_write_then_latest_roundtrip(tmp_path):
    path = write_checkpoint(tmp_path, 3, _tensors(), "fp-3")
    assert path == tmp_path / "checkpoint-3.safetensors"
    info = latest_checkpoint(tmp_path, verify=True)
    assert info is not None
    assert (info.round, info.path, info.fingerprint) == (3, path, "fp-3")
    assert info.bytes == path.stat().st_size
    index = json.loads((tmp_path / "checkpoint.json").read_text())
    assert index == {"round": 3, "file": path.name, "sha256": info.sha256, "bytes": info.bytes, "fingerprint": "fp-3"}


def test_newer_checkpoint_replaces_older(tmp_path):
    write_checkpoint(tmp_path, 3, _tensors(0), "fp-3")
    write_checkpoint(tmp_path, 10, _tensors(1), "fp-10")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-10.safetensors", "checkpoint.json"]
    assert latest_checkpoint(tmp_path).round == 10


def test_no_checkpoint_is_none(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    assert latest_checkpoint(tmp_path / "missing") is None


def test_stray_temporaries_and_unindexed_files_are_ignored(tmp_path):
    write_checkpoint(tmp_path, 5, _tensors(), "fp-5")
    # what a crash mid-write leaves behind: a temporary, and a torn file no index names
    (tmp_path / ".checkpoint-9.safetensors.abc.tmp").write_bytes(b"\x00" * 40)
    (tmp_path / "checkpoint-9.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a")
    info = latest_checkpoint(tmp_path)
    assert info is not None and info.round == 5


def test_torn_indexed_file_is_not_a_checkpoint(tmp_path, caplog):
    path = write_checkpoint(tmp_path, 5, _tensors(), "fp-5")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.WARNING, logger="edgezo.checkpoint"):
        assert latest_checkpoint(tmp_path) is None
    assert "torn" in caplog.text


def test_missing_indexed_file_is_not_a_checkpoint(tmp_path, caplog):
    path = write_checkpoint(tmp_path, 5, _tensors(), "fp-5")
    path.unlink()
    with caplog.at_level(logging.WARNING, logger="edgezo.checkpoint"):
        assert latest_checkpoint(tmp_path) is None
    assert "missing" in caplog.text


def test_index_cannot_point_outside_the_folder(tmp_path, caplog):
    write_checkpoint(tmp_path, 5, _tensors(), "fp-5")
    index = json.loads((tmp_path / "checkpoint.json").read_text())
    index["file"] = "../checkpoint-5.safetensors"
    (tmp_path / "checkpoint.json").write_text(json.dumps(index))
    with caplog.at_level(logging.WARNING, logger="edgezo.checkpoint"):
        assert latest_checkpoint(tmp_path) is None


def test_download_returns_identical_arrays(tmp_path, server):
    tensors = _tensors()
    write_checkpoint(server.folder, 7, tensors, "fp-7")
    info = latest_checkpoint(server.folder)
    seen = []
    round, got, fingerprint = download_checkpoint(
        server.url, tmp_path / "device", expected_sha256=info.sha256, progress=lambda d, t: seen.append((d, t))
    )
    assert (round, fingerprint) == (7, "fp-7")
    _assert_same(tensors, got)
    assert seen and seen[-1] == (info.bytes, info.bytes)
    assert [p.name for p in (tmp_path / "device").iterdir()] == ["checkpoint-7.safetensors"]


def test_server_index_and_headers(server):
    assert server.url == f"http://127.0.0.1:{server.port}"
    write_checkpoint(server.folder, 2, _tensors(), "fp-2")
    info = latest_checkpoint(server.folder)
    status, body = _get(server, "/checkpoint.json")
    assert status == 200 and json.loads(body) == info.to_json()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    conn.request("GET", "/checkpoint")
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.getheader("X-Edgezo-Round") == "2"
    assert resp.getheader("X-Edgezo-Sha256") == info.sha256
    assert int(resp.getheader("Content-Length")) == info.bytes
    assert resp.read() == info.path.read_bytes()
    conn.close()


def test_tampered_bytes_fail_the_sha_check(tmp_path, server):
    path = write_checkpoint(server.folder, 4, _tensors(), "fp-4")
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # same size, same header: only the hash can tell
    path.write_bytes(bytes(data))
    dest = tmp_path / "device"
    with pytest.raises(EdgezoError, match="SHA-256"):
        download_checkpoint(server.url, dest)
    assert list(dest.iterdir()) == []  # the temporary was discarded
    assert latest_checkpoint(server.folder, verify=True) is None


def test_unexpected_sha_is_rejected(tmp_path, server):
    write_checkpoint(server.folder, 4, _tensors(), "fp-4")
    with pytest.raises(EdgezoError, match="failed its SHA-256 check"):
        download_checkpoint(server.url, tmp_path / "device", expected_sha256="0" * 64)
    assert list((tmp_path / "device").iterdir()) == []


def test_download_without_checkpoint_says_so(tmp_path, server):
    status, body = _get(server, "/checkpoint")
    assert status == 404 and "no checkpoint" in json.loads(body)["error"]
    with pytest.raises(EdgezoError, match="coordinator has no checkpoint yet"):
        download_checkpoint(server.url, tmp_path / "device")


def test_unreachable_url(tmp_path):
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with pytest.raises(EdgezoError, match="cannot reach the checkpoint server") as err:
        download_checkpoint(url, tmp_path / "device", timeout=2)
    assert url in str(err.value)


@pytest.mark.parametrize(
    "path", ["/../etc/passwd", "/", "/checkpoint-3.safetensors", "/checkpoint/../checkpoint.json", "/%2e%2e/etc/passwd"]
)
def test_nothing_else_is_served(server, path):
    write_checkpoint(server.folder, 3, _tensors(), "fp-3")
    status, body = _get(server, path)
    assert status == 404
    assert "error" in json.loads(body)


def test_checkpoint_worth_it():
    # 1M trainable parameters, 8 directions a round: replay 0.04 s/round, download 1.32 s
    assert not checkpoint_worth_it(1, 8, 1_000_000)
    assert not checkpoint_worth_it(10, 8, 1_000_000)
    assert checkpoint_worth_it(100, 8, 1_000_000)
    assert checkpoint_worth_it(34, 8, 1_000_000)
    assert not checkpoint_worth_it(0, 8, 1_000_000)
    # a slow link pushes the break-even point out
    assert not checkpoint_worth_it(100, 8, 1_000_000, download_rate=1e5)
