"""MQTT brokers the coordinator can start itself.

* :class:`EmbeddedBroker` — a pure-Python amqtt broker on a background thread. It is
  what ``edgezo coordinate`` starts when no ``--broker`` is given, so a first run
  needs nothing installed. amqtt 0.12 speaks MQTT 3.1.1 only (a bare v5 CONNECT
  gets "unacceptable protocol version"; one with a will or a login makes it wait
  for bytes that never come); :class:`~.transport.MqttLink`'s ``protocol="auto"``
  probes and falls back to 3.1.1 on its own, or pass
  ``protocol=EmbeddedBroker.protocol`` to skip the probe. It has no
  authentication: bind it to 127.0.0.1 (the default) unless every host that can
  reach it is trusted.
* :class:`MosquittoBroker` — runs the ``mosquitto`` binary on a private config, for
  tests and benchmarks (and as the reference for a production broker setup, see
  ``mosquitto.conf.example``). It can be killed and restarted on the same port to
  exercise broker loss.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import weakref
from pathlib import Path

from edgezo.errors import EdgezoError

from .transport import BrokerSettings, format_address

log = logging.getLogger("edgezo.mqtt")

_INSTALL_HINT = "install it: apt-get install -y mosquitto"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (another process may still grab it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_accepts(host: str, port: int, timeout: float = 0.2) -> bool:
    """Whether something accepts TCP connections on host:port right now."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class _BrokerBase:
    """What both brokers share: an address, settings for clients, context-manager use."""

    host: str
    port: int
    protocol = "auto"  # the MqttLink protocol argument that suits this broker

    @property
    def address(self) -> str:
        return format_address(self.host, self.port)

    def settings(self, **overrides) -> BrokerSettings:
        """:class:`BrokerSettings` pointing at this broker (``overrides``: username=..., keepalive=...)."""
        return BrokerSettings(host=self.host, port=self.port, **overrides)

    def stop(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------- amqtt


class _DropAmqttNoise(logging.Filter):
    """Hide amqtt warnings that are expected and say nothing actionable.

    * Two warnings for every MQTT 5 CONNECT it refuses: MqttLink's ``protocol="auto"``
      probes with v5 first. "Failed to initialize client session: <why>" still shows
      for any other reason.
    * "Broker startup failed" with a traceback: EmbeddedBroker reports it in one line.
    * "Received PUBACK for unknown pending message" / "PUBACK waiter ... already done":
      amqtt 0.12 registers its wait for a subscriber's PUBACK only after sending the
      PUBLISH, so a fast client's PUBACK can come first. The message was delivered;
      under a burst this would print one warning per message.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if msg.startswith(("Invalid connection from", "Received PUBACK for unknown pending message")):
            return False
        if msg == "Broker startup failed":  # EmbeddedBroker raises a one-line EdgezoError instead
            return False
        if msg.startswith("PUBACK waiter with Id") and msg.endswith("already done"):
            return False
        return not (msg.startswith("Failed to initialize client session: Invalid protocol") and msg.endswith(": 5"))


_amqtt_logging_quieted = False


def _quiet_amqtt_logging() -> None:
    """amqtt logs every connection and packet at INFO/DEBUG; keep only warnings and errors."""
    global _amqtt_logging_quieted
    if _amqtt_logging_quieted:
        return
    for name in ("amqtt", "transitions"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in ("amqtt.broker", "amqtt.mqtt.protocol.handler"):
        logging.getLogger(name).addFilter(_DropAmqttNoise())
    _amqtt_logging_quieted = True


def _amqtt_config(host: str, port: int) -> dict:
    """Anonymous access, one TCP listener, no $SYS topics and no packet logging."""
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}", "max_connections": -1}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }


def _keepalive_broker_class():
    """amqtt's Broker, made to drop clients that fall silent, so their last will goes out.

    amqtt 0.12 reads each client with a keepalive timeout but its broker-side
    ``handle_read_timeout`` does nothing: a device that loses its network (no TCP
    FIN) would stay "connected" for ever and its will would never be published.
    Here a client silent for 1.5 x its keepalive (the MQTT spec's limit) gets an EOF
    fed to its reader, which amqtt handles like a dropped connection. The hook is an
    override of a private method; if a later amqtt renames it, the override is simply
    never called and behaviour falls back to amqtt's own.
    """
    from amqtt.broker import Broker

    class KeepaliveBroker(Broker):
        async def _initialize_client_session(self, *args, **kwargs):
            handler, session = await super()._initialize_client_session(*args, **kwargs)
            if getattr(session, "keep_alive", 0) > 0:
                session.keep_alive = math.ceil(session.keep_alive * 1.5)  # amqtt's read timeout
                handler.handle_read_timeout = lambda: _drop_silent_client(handler, session)
            return handler, session

    return KeepaliveBroker


def _drop_silent_client(handler, session) -> None:
    log.info("embedded broker: client %s silent past 1.5 x keepalive; dropping it", session.client_id)
    if handler.reader is not None:
        handler.reader.feed_eof()  # the reader loop ends as on a closed socket; the will is sent


class EmbeddedBroker(_BrokerBase):
    """An amqtt broker running on its own asyncio loop in a daemon thread.

    Starts on construction (well under a second); ``port=0`` picks a free port,
    read it back from :attr:`port`. Supports what the coordinator needs: QoS 1,
    retained messages and last wills (also for clients that fall silent without
    closing their connection, see :func:`_keepalive_broker_class`). Use as a
    context manager or call :meth:`stop`.
    """

    protocol = "3.1.1"

    def __init__(self, port: int = 0, host: str = "127.0.0.1", start_timeout: float = 10.0):
        try:
            from amqtt.broker import Broker  # noqa: F401  (checked here for a clear error)
        except ImportError:
            raise EdgezoError(
                "the embedded MQTT broker needs amqtt: pip install 'edgezo[mqtt]', or pass --broker"
            ) from None
        _quiet_amqtt_logging()
        self.host = host
        self.port = port
        self._broker = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="edgezo-amqtt", daemon=True)
        self._thread.start()
        if not self._ready.wait(start_timeout):
            raise EdgezoError(f"the embedded MQTT broker did not start within {start_timeout:g} s")
        if self._error is not None:
            raise EdgezoError(
                f"cannot start the embedded MQTT broker on {format_address(host, port)} ({_root_cause(self._error)}); "
                "choose another port or pass --broker"
            ) from None
        log.info("embedded MQTT broker (amqtt, MQTT 3.1.1) listening on %s", self.address)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            loop.run_until_complete(self._start())
        except BaseException as exc:  # noqa: BLE001 - reported to the constructing thread
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            _cancel_leftover_tasks(loop)
            loop.close()

    async def _start(self) -> None:
        self._broker = _keepalive_broker_class()(_amqtt_config(self.host, self.port))
        await self._broker.start()
        if self.port == 0:  # amqtt binds port 0 as given; ask the listening socket which port it got
            server = self._broker._servers["default"].instance  # no public accessor in amqtt 0.12
            self.port = server.sockets[0].getsockname()[1]

    def stop(self, timeout: float = 3.0) -> None:
        """Shut the broker down (clients see the connection drop) and end its thread. Idempotent.

        amqtt's shutdown can hang for seconds when deliveries are still waiting for a
        PUBACK (amqtt 0.12 sometimes registers the wait after the PUBACK already came
        back; the wait then lasts its full 5 s timeout). After ``timeout`` seconds the
        remaining tasks are cancelled instead.
        """
        loop, self._loop = self._loop, None
        if loop is None or loop.is_closed():
            return
        if self._broker is not None:
            future = asyncio.run_coroutine_threadsafe(self._broker.shutdown(), loop)
            try:
                future.result(timeout)
            except Exception as exc:  # noqa: BLE001 - shutting down anyway
                log.debug("embedded broker shutdown did not finish (%r); cancelling its tasks", exc)
                future.cancel()
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(timeout)


def _root_cause(exc: BaseException) -> BaseException:
    """The innermost exception of a ``raise ... from`` chain (amqtt wraps the OSError twice)."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


def _cancel_leftover_tasks(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel per-client tasks amqtt leaves behind, so closing the loop does not warn."""
    tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))


# ------------------------------------------------------------------------ mosquitto


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


class MosquittoBroker(_BrokerBase):
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
            "# written by edgezo.coordinator.broker.MosquittoBroker",
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
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            # As root, mosquitto otherwise drops to user "mosquitto", who cannot read our 0700 temp dir.
            lines.insert(1, "user root")
        path = self.dir / "mosquitto.conf"
        path.write_text("\n".join(lines) + "\n")
        return path

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
        while not port_accepts(self.host, self.port):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self._reap()
                raise EdgezoError(f"mosquitto did not start on {self.address}: {self._log_tail()}")
            time.sleep(0.02)
        log.debug("mosquitto (pid %d) listening on %s", self._proc.pid, self.address)

    def _log_tail(self, lines: int = 5) -> str:
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
