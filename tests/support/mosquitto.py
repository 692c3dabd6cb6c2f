"""A private mosquitto for tests and benchmarks, and test-side helpers of an ``MqttLink``.

Test-only code (it used to live in ``edgezo.coordinator.server.broker``): the package starts only the
embedded amqtt broker; a deployment runs its own mosquitto (``coordinator/mosquitto.conf.example``).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
import weakref
from pathlib import Path

from edgezo.coordinator.server.broker import BrokerBase, port_accepts
from edgezo.coordinator.wire.transport import Message, MqttLink
from edgezo.errors import EdgezoError
from support.ports import free_port

log = logging.getLogger("edgezo.tests.mosquitto")

_INSTALL_HINT = "install it: apt-get install -y mosquitto"


def drain(link: MqttLink) -> list[Message]:
    """Every message the link received so far, without waiting."""
    out = []
    while (message := link.get(timeout=0)) is not None:
        out.append(message)
    return out


def wait_connected(link: MqttLink, timeout: float) -> bool:
    """Block until the link is connected (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while not link.connected:
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def find_mosquitto(name: str = "mosquitto") -> str:
    """Path of a mosquitto binary; Debian puts the broker in /usr/sbin, often not on a user's PATH."""
    found = shutil.which(name)
    if found:
        return found
    for folder in ("/usr/sbin", "/usr/local/sbin", "/opt/homebrew/sbin", "/usr/local/opt/mosquitto/sbin"):
        candidate = Path(folder) / name
        if os.access(candidate, os.X_OK):
            return str(candidate)
    raise EdgezoError(f"{name} not found; {_INSTALL_HINT}")


class MosquittoBroker(BrokerBase):
    """A private mosquitto on 127.0.0.1, configured in a temporary directory.

    ``password_file``: {user: password}, written with ``mosquitto_passwd``; when given,
    anonymous clients are refused unless ``allow_anonymous=True``. ``acl_file``: the
    text of a mosquitto ACL file. ``tls_files``: (CA, certificate, key) paths to make
    the listener speak TLS only. The config always raises ``max_queued_messages``
    (mosquitto drops QoS 1 messages past 1000 queued per client by default), lifts
    the in-flight and connection limits, and turns persistence off.

    Starts on construction and returns once the port accepts connections.
    :meth:`kill` (SIGKILL) and :meth:`restart` (same port) simulate broker loss.
    """

    protocol = "auto"

    def __init__(
        self,
        password_file: dict[str, str] | None = None,
        acl_file: str | None = None,
        allow_anonymous: bool | None = None,
        port: int = 0,
        tls_files: tuple[str, str, str] | None = None,
        start_timeout: float = 5.0,
        websocket: bool = False,
    ):
        self.binary = find_mosquitto()
        self.host = "127.0.0.1"
        self._tmp = tempfile.TemporaryDirectory(prefix="edgezo-mosquitto-")
        self.dir = Path(self._tmp.name)
        self.log_path = self.dir / "mosquitto.log"
        self.start_timeout = start_timeout
        self._proc: subprocess.Popen | None = None
        self._options = self._write_auth_files(password_file, acl_file, allow_anonymous)
        self._listener_options = []
        self.ws_port: int | None = free_port(self.host) if websocket else None  # MQTT over WebSockets (browser devices)
        if tls_files is not None:
            ca, cert, key = tls_files
            self._listener_options = [f"cafile {ca}", f"certfile {cert}", f"keyfile {key}"]
        self._start_on(port)

    # ----- files

    def _write_auth_files(self, users, acl_text, allow_anonymous) -> list[str]:
        """Write the password/ACL files; return the config lines that use them."""
        if allow_anonymous is None:
            allow_anonymous = not users  # a broker with users wants them to log in
        lines = [f"allow_anonymous {'true' if allow_anonymous else 'false'}"]
        if users:
            path = self.dir / "passwd"
            _write_password_file(path, users)
            lines.append(f"password_file {path}")
        if acl_text is not None:
            path = self.dir / "acl"
            path.write_text(acl_text)
            lines.append(f"acl_file {path}")
        return lines

    def _write_config(self) -> Path:
        lines = [
            "# written by tests/support/mosquitto.py (MosquittoBroker)",
            "per_listener_settings false",
            "persistence false",
            "max_queued_messages 100000",
            "max_inflight_messages 0",
            "set_tcp_nodelay true",
            *self._options,
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            f"listener {self.port} {self.host}",
            "max_connections -1",
            *self._listener_options,
            *self._websocket_lines(),
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            # As root, mosquitto otherwise drops to user "mosquitto", who cannot read our 0700 temp dir.
            lines.insert(1, "user root")
        path = self.dir / "mosquitto.conf"
        path.write_text("\n".join(lines) + "\n")
        return path

    def _websocket_lines(self) -> list[str]:
        """A WebSocket listener on the same host. ``socket_domain ipv4``: without it mosquitto 2.0's
        (libwebsockets) listener binds every interface, whatever address the listener line names."""
        if self.ws_port is None:
            return []
        return [f"listener {self.ws_port} {self.host}", "protocol websockets", "socket_domain ipv4", "max_connections -1",
                *self._listener_options]

    @property
    def ws_url(self) -> str:
        return f"{'wss' if self._listener_options else 'ws'}://{self.host}:{self.ws_port}"

    # ----- process

    def _start_on(self, port: int) -> None:
        """Start on ``port``; with port 0 pick a free one, retrying if another process grabbed it first."""
        for attempt in range(3):
            self.port = port or free_port(self.host)
            try:
                self._spawn()
                return
            except EdgezoError:
                if port or attempt == 2:
                    raise

    def _spawn(self) -> None:
        conf = self._write_config()
        stderr = open(self.dir / "stderr.log", "ab")  # noqa: SIM115 - handed to the child
        try:
            self._proc = subprocess.Popen(
                [self.binary, "-c", str(conf)], stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr
            )
        finally:
            stderr.close()
        # Should the owner forget stop(), do not leave a broker running after Python exits.
        weakref.finalize(self, _kill_quietly, self._proc)
        deadline = time.monotonic() + self.start_timeout
        while not (port_accepts(self.host, self.port) and (self.ws_port is None or port_accepts(self.host, self.ws_port))):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self._reap()
                raise EdgezoError(f"mosquitto did not start on {self.address}: {self.log_tail()}")
            time.sleep(0.02)
        log.debug("mosquitto (pid %d) listening on %s", self._proc.pid, self.address)

    def log_tail(self, lines: int = 5) -> str:
        text = ""
        for name in ("stderr.log", "mosquitto.log"):
            path = self.dir / name
            if path.exists():
                text += path.read_text(errors="replace")
        tail = [line for line in text.strip().splitlines() if line][-lines:]
        return " | ".join(tail) or "no output"

    def _reap(self, sig: int = signal.SIGTERM, timeout: float = 5.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def stop(self) -> None:
        """Stop mosquitto gracefully (SIGTERM). Idempotent; :meth:`restart` brings it back."""
        self._reap(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL mosquitto, as in a crash: clients see their connection reset."""
        self._reap(signal.SIGKILL)

    def restart(self) -> None:
        """(Re)start mosquitto on the same port, with the same users and ACL."""
        self._reap(signal.SIGTERM)
        self._start_on(self.port)

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self._tmp.cleanup()


def _kill_quietly(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def _write_password_file(path: Path, users: dict[str, str]) -> None:
    """Create a mosquitto password file with ``mosquitto_passwd -b`` (it hashes the passwords)."""
    tool = find_mosquitto("mosquitto_passwd")
    for i, (user, password) in enumerate(users.items()):
        args = [tool, "-b", *(["-c"] if i == 0 else []), str(path), user, password]
        done = subprocess.run(args, capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            raise EdgezoError(f"mosquitto_passwd failed for user {user!r}: {done.stderr.strip() or done.stdout.strip()}")
