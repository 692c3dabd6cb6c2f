"""Protocol-only devices for ``coordinator_scale.py``: many MQTT clients in one process, no model.

Each device does what ``edgezo join`` does on the wire and nothing else: it connects with a
retained last will (Status "offline"), publishes a retained Status "online" on
``edgezo/<run>/status/<device>``, subscribes to the round, update and announce topics (QoS 1, as
``MqttLink`` does), and answers each Assign that lists it with one Result holding the right number
of random float32 scalars (the method's ``directions`` for its task) and the fingerprint of the global
model the round starts from (learnt from the Announce and Update messages, as a replica that
follows the job has it). Updates and announcements are otherwise only counted.

Why not one ``MqttLink`` (one paho network thread) per device: a thousand threads on two cores
spend their time in the GIL. Here one thread drives all of a process's paho clients through
paho's external-loop API (``socket()``, ``loop_read``, ``loop_write``, ``loop_misc``) and a
``selectors`` loop, so a few processes hold a thousand connections with one file descriptor each.

Simulation shortcuts (they only make the simulated devices cheaper, never the coordinator):
a process decodes each distinct Assign, Update and Announce payload once for all its devices (real devices each decode
their own copy), and nothing is computed: the Result goes out as soon as the Assign arrives, or
after a uniform random delay up to ``jitter`` seconds.
"""

from __future__ import annotations

import heapq
import os
import random
import resource
import selectors
import time
import traceback

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edgezo.coordinator.wire import messages as m
from edgezo.coordinator.wire.topics import Topics
from edgezo.estimators import ProbeConfig
from edgezo.methods import method_of

FAKE_FINGERPRINT = "0" * 64  # sent only if the round's starting fingerprint is unknown (the coordinator rejects it)


def raise_nofile(wanted: int = 65536) -> int:
    """Raise the soft open-files limit towards ``wanted`` (never above the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class DeviceProcess:
    def __init__(self, index, host, port, run, devices, k, p1, p2, batch, seed, jitter, keepalive, report):
        self.index, self.host, self.port = index, host, port
        self.topics = Topics(run)
        self.run = run
        self.devices = devices
        self.k, self.p1, self.p2, self.batch, self.seed = k, p1, p2, batch, seed
        self.jitter, self.keepalive, self.report = jitter, keepalive, report
        self.count = len(method_of("spzo").directions(ProbeConfig("spzo", p1, p2), seed, 1, k))  # scalars a device owes
        self.sel = selectors.DefaultSelector()
        self.clients: dict[str, mqtt.Client] = {}
        self.wants: set[mqtt.Client] = set()
        self.ready: set[str] = set()
        self.answered: dict[str, tuple[int, int]] = {}
        self.pending: list[tuple[float, int, str, int, int]] = []  # (due, seq, device, round, attempt)
        self.rng = np.random.default_rng(1000 + index)
        self.random = random.Random(index)
        self._assign_payload: bytes | None = None
        self._assign: m.Assign | None = None
        self._assigned: set[str] = set()
        self._announced: set[str] = set()
        self._seq = 0
        self._seen: dict[str, bytes] = {}  # kind -> last payload decoded (devices of a process share it)
        self.fingerprints: dict[int, str] = {}  # round -> the global model's fingerprint after it
        self.stopping = False
        self.stats = {"index": index, "devices": len(devices), "results": 0, "assigns": 0, "updates": 0, "announces": 0,
                      "bytes_assign": 0, "bytes_update": 0, "bytes_announce": 0, "errors": [], "disconnects": 0,
                      "decode_s": 0.0, "reply_latency_max": 0.0}

    # -- clients ------------------------------------------------------------------------------
    def _new_client(self, device: str) -> mqtt.Client:
        # EDGEZO_FAKE_MQTT=3.1.1: for brokers without MQTT 5 (RabbitMQ 3.10's MQTT plugin)
        v311 = os.environ.get("EDGEZO_FAKE_MQTT") == "3.1.1"
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=device, protocol=mqtt.MQTTv311 if v311 else mqtt.MQTTv5,
                        userdata=device, **({"clean_session": True} if v311 else {}))
        offline = m.Status(v=m.PROTOCOL_VERSION, run=self.run, device=device, state="offline")
        c.will_set(self.topics.status(device), m.encode(offline), qos=1, retain=True)
        c.on_connect = self._on_connect
        c.on_subscribe = self._on_subscribe
        c.on_message = self._on_message
        c.on_disconnect = self._on_disconnect
        c.on_socket_register_write = lambda client, userdata, sock: self.wants.add(client)
        c.on_socket_unregister_write = lambda client, userdata, sock: self.wants.discard(client)
        c.on_socket_close = self._on_socket_close
        return c

    def _on_socket_close(self, client, userdata, sock) -> None:
        try:
            self.sel.unregister(sock)
        except (KeyError, ValueError):
            pass

    def _on_connect(self, client, device, flags, reason, props) -> None:
        if reason.is_failure:
            self.stats["errors"].append(f"{device}: CONNACK {reason}")
            return
        t = self.topics
        client.subscribe([(t.round, 1), (t.update, 1), (t.announce, 1)])
        self._publish_status(client, device)

    def _publish_status(self, client, device: str) -> None:
        status = m.Status(v=m.PROTOCOL_VERSION, run=self.run, device=device, state="online",
                          examples=self.k * self.batch * 10, backend="fake")
        client.publish(self.topics.status(device), m.encode(status), qos=1, retain=True)

    def _on_subscribe(self, client, device, mid, reasons, props) -> None:
        if any(r.is_failure for r in reasons):
            self.stats["errors"].append(f"{device}: SUBACK {reasons}")
        self.ready.add(device)

    def _on_disconnect(self, client, device, flags, reason, props) -> None:
        if not self.stopping:
            self.stats["disconnects"] += 1
            self.stats["errors"].append(f"{device}: disconnected ({reason})")

    def _on_message(self, client, device, msg) -> None:
        kind = self.topics.kind_of(msg.topic)
        payload = msg.payload
        if not payload:
            return
        if kind == "update":
            self.stats["updates"] += 1
            self.stats["bytes_update"] += len(payload)
            self._note_fingerprint(kind, payload, m.Update)
        elif kind == "announce":
            if device not in self._announced:  # as `edgezo join`: online once the job is announced (a
                self._announced.add(device)   # coordinator started later never sees an earlier status on a
                self._publish_status(client, device)  # broker without retained wildcard deliveries)
            self.stats["announces"] += 1
            self.stats["bytes_announce"] += len(payload)
            self._note_fingerprint(kind, payload, m.Announce)
        elif kind == "round":
            self.stats["assigns"] += 1
            self.stats["bytes_assign"] += len(payload)
            assign = self._decode_assign(payload)
            if assign is None or device not in self._assigned or self.answered.get(device) == (assign.round, assign.attempt):
                return
            self.answered[device] = (assign.round, assign.attempt)
            delay = self.random.uniform(0, self.jitter) if self.jitter > 0 else 0.0
            self._seq += 1
            heapq.heappush(self.pending, (time.monotonic() + delay, self._seq, device, assign.round, assign.attempt))

    def _note_fingerprint(self, kind: str, payload: bytes, cls) -> None:
        """Learn the global model's fingerprint after each round (from the Announce or the Update):
        a Result must carry the fingerprint of the model it was computed on, the round's start."""
        if self._seen.get(kind) == payload:
            return
        self._seen[kind] = payload
        try:
            msg = m.decode(payload, cls)
        except m.BadMessage as e:
            self.stats["errors"].append(f"bad {cls.__name__}: {e}")
            return
        if msg.fingerprint:
            self.fingerprints[msg.round] = msg.fingerprint

    def _decode_assign(self, payload: bytes) -> m.Assign | None:
        if payload != self._assign_payload:
            t0 = time.perf_counter()
            try:
                self._assign = m.decode(payload, m.Assign)
            except m.BadMessage as e:
                self.stats["errors"].append(f"bad Assign: {e}")
                self._assign = None
            self._assign_payload = payload
            self._assigned = {t.device for t in self._assign.tasks} if self._assign else set()
            self.stats["decode_s"] += time.perf_counter() - t0
        return self._assign

    def _answer(self, due: float, device: str, rnd: int, attempt: int) -> None:
        scalars = self.rng.standard_normal(self.count).astype("<f4").tobytes()
        result = m.Result(
            v=m.PROTOCOL_VERSION, run=self.run, round=rnd, attempt=attempt, device=device, scalars=scalars,
            examples=self.k * self.batch, loss=0.6931, forwards1=2 * self.k * self.p1,
            forwards2=2 * self.k * self.p1 * self.p2, flops=1.0e9, compute_s=0.0,
            fingerprint=self.fingerprints.get(rnd - 1, FAKE_FINGERPRINT),
        )
        self.clients[device].publish(self.topics.result(device), m.encode(result), qos=1)
        self.stats["results"] += 1
        self.stats["reply_latency_max"] = max(self.stats["reply_latency_max"], time.monotonic() - due)

    # -- loop ---------------------------------------------------------------------------------
    def run_forever(self, stop) -> None:
        t0 = time.perf_counter()
        for device in self.devices:
            c = self._new_client(device)
            try:
                c.connect(self.host, self.port, keepalive=self.keepalive,
                          **({} if os.environ.get("EDGEZO_FAKE_MQTT") == "3.1.1" else {"clean_start": True}))
            except OSError as e:
                self.stats["errors"].append(f"{device}: connect failed: {e}")
                continue
            self.clients[device] = c
            self.sel.register(c.socket(), selectors.EVENT_READ, c)
            self._service(0)  # keep CONNACKs and SUBACKs flowing while connecting the rest
        reported = False
        last_misc = time.monotonic()
        while not stop.is_set():
            timeout = 0.05
            if self.pending:
                timeout = max(0.0, min(timeout, self.pending[0][0] - time.monotonic()))
            self._service(timeout)
            now = time.monotonic()
            while self.pending and self.pending[0][0] <= now:
                due, _, device, rnd, attempt = heapq.heappop(self.pending)
                self._answer(due, device, rnd, attempt)
            self._flush()
            if now - last_misc >= 1.0:
                last_misc = now
                for c in self.clients.values():
                    c.loop_misc()
                self._flush()
            if not reported and len(self.ready) == len(self.devices):
                reported = True
                self.report.put(("ready", self.index, time.perf_counter() - t0, len(self.ready)))
        self._shutdown()

    def _service(self, timeout: float) -> None:
        for key, _ in self.sel.select(timeout):
            key.data.loop_read()
        self._flush()

    def _flush(self) -> None:
        for c in list(self.wants):
            c.loop_write()

    def _shutdown(self) -> None:
        self.stopping = True
        for c in self.clients.values():
            c.disconnect()  # clean: the broker does not publish the will
        for _ in range(100):
            if not self.wants:
                break
            self._flush()
            time.sleep(0.01)
        self.sel.close()


def run_worker(index, host, port, run, devices, k, p1, p2, batch, seed, jitter, keepalive, report, stop) -> None:
    """Process entry point: host ``devices`` until ``stop`` is set, then put ("stats", dict) on ``report``."""
    proc = None
    try:
        raise_nofile(4 * len(devices) + 256)
        proc = DeviceProcess(index, host, port, run, devices, k, p1, p2, batch, seed, jitter, keepalive, report)
        proc.run_forever(stop)
    except Exception:  # noqa: BLE001 - reported to the parent
        if proc is None:
            report.put(("stats", {"index": index, "errors": [traceback.format_exc()]}))
            return
        proc.stats["errors"].append(traceback.format_exc())
    stats = proc.stats
    stats["errors"] = stats["errors"][:20]
    report.put(("stats", stats))
