"""A private RabbitMQ cluster with the MQTT plugin, on this machine, for tests and benchmarks.

Each node gets its own name (``edgezo-<tag>-<i>@localhost``), AMQP, MQTT and distribution ports,
data and log folders, and the cluster its own Erlang cookie and its own epmd port, so it touches
nothing of a system RabbitMQ. Debian 12's ``rabbitmq-server`` (3.10) speaks MQTT 3.1.1 only.

RabbitMQ's documentation says its MQTT plugin (3.8-3.11) tracks client ids in a Raft cluster of
all nodes and wants a majority of nodes up to accept new connections, and calls two-node
clusters unsupported. With 3.10.8 a node stopped by ``rabbitmqctl stop`` leaves the other
accepting (and so the failover tests pass on two nodes); a production cluster has three nodes
(docs/deployment-cluster.md).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
import weakref
from pathlib import Path

from edgezo.coordinator.server.broker import port_accepts
from edgezo.coordinator.wire.transport import BrokerSettings, format_address
from edgezo.errors import EdgezoError
from support.ports import free_port

log = logging.getLogger("edgezo.tests.rabbitmq")

BIN = Path("/usr/lib/rabbitmq/bin")  # Debian's /usr/sbin wrappers switch to the rabbitmq user
_INSTALL_HINT = "install it: apt-get install -y rabbitmq-server (Debian 12: 3.10)"


def find_rabbitmq() -> Path:
    """The folder of rabbitmq-server and rabbitmqctl, or one line saying how to install them."""
    for folder in (BIN, Path("/usr/local/lib/rabbitmq/bin")):
        if (folder / "rabbitmq-server").exists() and (folder / "rabbitmqctl").exists():
            return folder
    found = shutil.which("rabbitmq-server")
    if found:
        return Path(found).parent
    raise EdgezoError(f"rabbitmq-server not found; {_INSTALL_HINT}")


class RabbitNode:
    """One node of the cluster: its name, ports, folders and process."""

    def __init__(self, cluster: "RabbitCluster", index: int):
        self.cluster, self.index = cluster, index
        self.name = f"edgezo-{cluster.tag}-{index}@localhost"
        self.host = "127.0.0.1"
        self.amqp_port, self.mqtt_port, self.dist_port = free_port(), free_port(), free_port()
        self.dir = cluster.dir / f"node{index}"
        self.dir.mkdir()
        self._proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return format_address(self.host, self.mqtt_port)

    def settings(self, **overrides) -> BrokerSettings:
        return BrokerSettings(host=self.host, port=self.mqtt_port, **overrides)

    def env(self) -> dict:
        conf = self.dir / "rabbitmq.conf"
        conf.write_text("\n".join([
            f"listeners.tcp.1 = 127.0.0.1:{self.amqp_port}",
            f"mqtt.listeners.tcp.1 = 127.0.0.1:{self.mqtt_port}",
            "mqtt.allow_anonymous = true",
            "mqtt.vhost = /",
            "mqtt.exchange = amq.topic",
            "loopback_users = none",
            "log.console = false",
            "log.file.level = warning",
            "vm_memory_high_watermark.relative = 0.2",
            "disk_free_limit.absolute = 50MB",
        ]) + "\n")
        (self.dir / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")
        return {**self.cluster.env(),
                "RABBITMQ_NODENAME": self.name, "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
                "RABBITMQ_NODE_PORT": str(self.amqp_port), "RABBITMQ_DIST_PORT": str(self.dist_port),
                "RABBITMQ_CONFIG_FILE": str(conf), "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
                "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"), "RABBITMQ_LOG_BASE": str(self.dir / "log"),
                "RABBITMQ_PID_FILE": str(self.dir / "pid"), "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.dir / "advanced.config"),
                "RABBITMQ_SERVER_ERL_ARGS": "+S 1:1 +A 4 +sbwt none +sbwtdcpu none +sbwtdio none"}

    def start(self) -> None:
        """Start the node's Erlang VM and wait until its broker is up (not its MQTT port: a node
        that joins a cluster opens that only after start_app)."""
        out = open(self.dir / "stdout.log", "ab")  # noqa: SIM115 - handed to the child
        try:
            self._proc = subprocess.Popen([str(self.cluster.bin / "rabbitmq-server")], env=self.env(), stdin=subprocess.DEVNULL,
                                          stdout=out, stderr=out, start_new_session=True)
        finally:
            out.close()
        weakref.finalize(self, _kill_group, self._proc)
        self.ctl("wait", str(self.dir / "pid"), "--timeout", str(int(self.cluster.start_timeout)),
                 timeout=self.cluster.start_timeout + 10)

    def ctl(self, *args: str, timeout: float = 60.0) -> str:
        done = subprocess.run([str(self.cluster.bin / "rabbitmqctl"), "-n", self.name, *args], env=self.env(),
                              capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise EdgezoError(f"rabbitmqctl {' '.join(args)} on {self.name} failed: "
                              f"{(done.stderr or done.stdout).strip()[-500:]} | {self.log_tail()}")
        return done.stdout

    def wait_mqtt(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not port_accepts(self.host, self.mqtt_port):
            if time.monotonic() > deadline or not self.running:
                raise EdgezoError(f"RabbitMQ node {self.name} did not open MQTT on {self.address}: {self.log_tail()}")
            time.sleep(0.1)

    def log_tail(self, lines: int = 5) -> str:
        text = ""
        for path in [self.dir / "stdout.log", *sorted((self.dir / "log").glob("*.log"))]:
            if path.exists():
                text += path.read_text(errors="replace")
        tail = [line for line in text.strip().splitlines() if line.strip()][-lines:]
        return " | ".join(tail) or "no output"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> None:
        """Stop the node as an operator would (its clients see their connections close)."""
        if not self.running:
            return
        try:
            self.ctl("stop", timeout=60)
        except (EdgezoError, subprocess.TimeoutExpired):
            pass
        try:
            self._proc.wait(30)
        except subprocess.TimeoutExpired:
            _kill_group(self._proc)

    def kill(self) -> None:
        """SIGKILL the node's whole process group, as in a crash."""
        if self._proc is not None:
            _kill_group(self._proc)


class RabbitCluster:
    """``nodes`` RabbitMQ nodes clustered on this machine, each with the MQTT plugin on its own port.

    Starts on construction (tens of seconds: each node is an Erlang VM); use as a context manager.
    :attr:`nodes` lists them; :meth:`broker_list` is what ``--broker`` takes to reach all of them.
    """

    def __init__(self, nodes: int = 2, start_timeout: float = 120.0):
        self.bin = find_rabbitmq()
        self.tag = uuid.uuid4().hex[:6]
        self.start_timeout = start_timeout
        self._tmp = tempfile.TemporaryDirectory(prefix="edgezo-rabbit-")
        self.dir = Path(self._tmp.name)
        (self.dir / "home").mkdir()
        cookie = self.dir / "home" / ".erlang.cookie"
        cookie.write_text(uuid.uuid4().hex.upper())
        cookie.chmod(0o400)
        self.epmd_port = free_port()
        self.nodes = [RabbitNode(self, i) for i in range(nodes)]
        try:
            self.nodes[0].start()
            for node in self.nodes[1:]:
                node.start()
                node.ctl("stop_app")
                node.ctl("join_cluster", self.nodes[0].name)
                node.ctl("start_app")
            for node in self.nodes:
                node.wait_mqtt()
        except BaseException:
            self.close()
            raise
        log.info("RabbitMQ cluster of %d nodes: MQTT on %s", nodes, self.broker_list())

    def env(self) -> dict:
        return {**os.environ, "HOME": str(self.dir / "home"), "ERL_EPMD_PORT": str(self.epmd_port),
                "ERL_CRASH_DUMP": str(self.dir / "erl_crash.dump"),
                "RABBITMQ_ALLOW_INPUT": "", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}

    def broker_list(self, first: int = 0) -> str:
        """``--broker`` for a client that starts on node ``first`` and fails over to the others."""
        order = self.nodes[first:] + self.nodes[:first]
        return ",".join(n.address for n in order)

    @property
    def address(self) -> str:
        return self.broker_list(0)

    def settings(self, **overrides) -> BrokerSettings:
        """A client's settings: every node, starting on node 0 (it fails over to the others)."""
        from edgezo.coordinator.wire.transport import broker_settings_for

        return broker_settings_for(self.broker_list(0), **overrides)

    @property
    def running(self) -> bool:
        return all(node.running for node in self.nodes)

    def log_tail(self) -> str:
        return " || ".join(f"{n.name}: {n.log_tail(2)}" for n in self.nodes)

    def ensure_running(self) -> None:
        """Start again any node a test stopped (it rejoins the cluster from its own data folder)."""
        for node in self.nodes:
            if not node.running:
                node.start()
                node.wait_mqtt()

    def running_nodes(self) -> list[str]:
        alive = next(n for n in self.nodes if n.running)
        text = alive.ctl("eval", "rabbit_nodes:all_running().")
        return sorted(n.name for n in self.nodes if n.name in text)

    def close(self) -> None:
        for node in reversed(self.nodes):
            node.kill()
        epmd = shutil.which("epmd") or next((str(p) for p in Path("/usr/lib/erlang").glob("erts-*/bin/epmd")), None)
        if epmd:
            subprocess.run([epmd, "-port", str(self.epmd_port), "-kill"], capture_output=True, timeout=10,
                           env=self.env())
        self._tmp.cleanup()

    def __enter__(self) -> "RabbitCluster":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL a node's process group (the Erlang VM, its port programs and helpers)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
