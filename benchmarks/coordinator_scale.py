"""Coordinator scale: one coordinator and N devices on one mosquitto, N = 10, 100, 1,000.

Why: a FedSPZO round's update is K*P1*(P2+1) directions however many devices took part, so what
the coordinator does per round (decode and validate N results of K*P1*P2 scalars, average them per
direction, apply the update, fsync the seed log, publish) should stay small as N grows, and what a
device does to follow the global model (decode the Update and apply it) should not depend on N at
all. Aim: 1,000 devices with under 2 s of coordinator overhead per round.

What runs:

* the broker: ``tests/support/mosquitto.py``'s ``MosquittoBroker`` (a private mosquitto with raised
  queue and connection limits);
* the coordinator: the real ``Coordinator`` (``coordinator/server/coordinator.py``) over a real ``MqttLink``,
  with a real torch executor on the tiny LLaMA of ``tests/tiny.py`` (trainable ``norm``);
  evaluation returns 0.0 (round 0 evaluates once), checkpoints are off;
* the devices: protocol-only clients (``benchmarks/fake_devices.py``) in a few worker processes:
  each publishes a retained Status, subscribes like ``edgezo join`` and answers each Assign with
  random float32 scalars of the right count, stamped with the fingerprint of the global model the
  round starts from (the coordinator checks it). No model, so the measured round trip is the
  protocol's, not training's. They share the machine's cores with the coordinator and the broker,
  so on a small machine the "Assign -> all results" column includes their CPU.

Measured per round, by subclassing ``Coordinator`` (timers around ``_dispatch`` for results,
``_close``, and inside it the aggregation, ``apply_update``, the seed-log append with its fsync,
and ``MqttLink.publish``), and by stamping each message when paho's network thread receives it:

* wall: from the round's start (devices online) to the end of ``_close``;
* Assign -> all results: from publishing the Assign to the network thread receiving the last
  result (devices' reaction + broker fan-out and fan-in);
* last result -> Update: from that arrival to the Update being published (queue backlog +
  decode/validate of what is left + aggregate + apply + fsync + publish);
* busy: wall time the coordinator's thread spent working in the round: building the assignment
  and the collector, dispatching every result (decode + validate), and ``_close`` (aggregate, apply,
  fsync, publish, announce, fingerprints). This is the "coordinator overhead";
* CPU: process CPU time over the round, all threads (paho's network thread included).

Device side, after the sweep: the time to bring a replica to the new global model, i.e. decode
each captured Update message, ``apply_update`` and recompute the fingerprint (as ``edgezo join``
does to check it), on the tiny model (replaying every round from the base and checking each
fingerprint against the coordinator's) and on SmolLM2-135M (``load_model(None)``) with trainable
``norm`` and ``full``. The Update has K*P1*(P2+1) rows for every N, so these times should not
depend on N.

    python benchmarks/coordinator_scale.py [--devices 10,100,1000] [--rounds 3] [--procs 4]
        [--device-models tiny,smollm2-norm,smollm2-full]
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import os
import queue
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
AIM_DEVICES, AIM_SECONDS = 1000, 2.0
DEVICE_MODELS = ("tiny", "smollm2-norm", "smollm2-full")


@dataclass
class RoundTiming:
    round: int
    attempts: int = 0
    opened: float = 0.0  # perf_counter when the round's work starts (devices online)
    open_cpu0: float = 0.0
    proc_cpu0: float = 0.0
    open_cpu: float = 0.0
    open_wall: float = 0.0
    assign_published: float = 0.0
    assign_bytes: int = 0
    first_arrival: float = float("inf")
    last_arrival: float = 0.0
    results: int = 0
    rejected: int = 0
    dispatch_wall: float = 0.0
    dispatch_cpu: float = 0.0
    close_wall: float = 0.0
    close_cpu: float = 0.0
    aggregate: float = 0.0
    apply: float = 0.0
    fsync: float = 0.0
    fingerprint: float = 0.0  # wall in ex.fingerprint() (the collector's, the Update's, the Announce's, the record's)
    fingerprints: int = 0
    publish: float = 0.0  # wall spent in MqttLink.publish, all of the round
    close_publish: float = 0.0  # ... of which inside _close
    update_published: float = 0.0
    update_bytes: int = 0
    closed: float = 0.0
    proc_cpu: float = 0.0

    @property
    def wall(self) -> float:
        return self.closed - self.opened

    @property
    def to_all_results(self) -> float:
        return self.last_arrival - self.assign_published

    @property
    def last_to_update(self) -> float:
        return self.update_published - self.last_arrival

    @property
    def busy(self) -> float:
        return self.open_wall + self.dispatch_wall + self.close_wall

    @property
    def busy_cpu(self) -> float:
        """The coordinator thread's own CPU time in the round's work: what ``busy`` would be on a
        machine with a core to spare (on a CPU-starved one, ``busy`` also holds time waiting for a
        core while the broker and the devices run)."""
        return self.open_cpu + self.dispatch_cpu + self.close_cpu


@dataclass
class SweepResult:
    n: int
    online_s: float = 0.0
    timings: list[RoundTiming] = field(default_factory=list)
    updates: list[bytes] = field(default_factory=list)  # Update payloads, in round order
    worker_stats: list[dict] = field(default_factory=list)
    error: str = ""
    rejected: int = 0
    device_apply: dict[str, dict] = field(default_factory=dict)  # model -> timings


# -- instrumented coordinator ----------------------------------------------------------------------


def instrumented_classes():
    """TimedLink and TimedCoordinator (imported late: the spawned device workers must not load torch)."""
    from edgezo.coordinator.server.coordinator import Coordinator
    from edgezo.coordinator.wire.transport import Message, MqttLink

    @dataclass(frozen=True)
    class TimedMessage(Message):
        arrived: float = 0.0  # perf_counter when paho's network thread received it

    class TimedLink(MqttLink):
        timing: RoundTiming | None = None

        def _on_message(self, client, userdata, message) -> None:
            self._inbox.put(TimedMessage(message.topic, bytes(message.payload), bool(message.retain), time.perf_counter()))

        def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
            t0 = time.perf_counter()
            super().publish(topic, payload, qos, retain)
            t1 = time.perf_counter()
            r = self.timing
            if r is None:
                return
            r.publish += t1 - t0
            if topic.endswith("/round") and payload:
                r.assign_published, r.assign_bytes = t1, len(payload)
                r.open_wall = t1 - r.opened
                r.open_cpu = time.thread_time() - r.open_cpu0
            elif topic.endswith("/update"):
                r.update_published, r.update_bytes = t1, len(payload)
                self.updates.append(payload)

    class TimedCoordinator(Coordinator):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.timings: list[RoundTiming] = []
            self._t: RoundTiming | None = None
            self.link.updates = []
            apply_update, append, fingerprint = self.ex.apply_update, self.state.seedlog.append, self.ex.fingerprint

            def timed_apply(update):
                t0 = time.perf_counter()
                apply_update(update)
                if self._t is not None:
                    self._t.apply += time.perf_counter() - t0

            def timed_append(entry):
                t0 = time.perf_counter()
                append(entry)
                if self._t is not None:
                    self._t.fsync += time.perf_counter() - t0

            def timed_fingerprint():
                t0 = time.perf_counter()
                out = fingerprint()
                if self._t is not None:
                    self._t.fingerprint += time.perf_counter() - t0
                    self._t.fingerprints += 1
                return out

            self.ex.apply_update = timed_apply  # instance attributes shadow the methods
            self.ex.fingerprint = timed_fingerprint
            self.state.seedlog.append = timed_append

        def _one_round(self, rnd: int) -> None:
            self._t = self.link.timing = RoundTiming(rnd)
            super()._one_round(rnd)
            t = self._t
            t.closed = time.perf_counter()
            t.proc_cpu = time.process_time() - t.proc_cpu0
            self.timings.append(t)
            self._t = self.link.timing = None

        def _wait_for_devices(self) -> None:
            super()._wait_for_devices()
            t = self._t
            if t is not None:  # the round's work starts now (re-set if an attempt is re-opened)
                t.attempts += 1
                t.opened, t.open_cpu0, t.proc_cpu0 = time.perf_counter(), time.thread_time(), time.process_time()

        def _dispatch(self, msg, collector) -> None:
            t = self._t
            if t is None or collector is None or self.topics.kind_of(msg.topic) != "result":
                super()._dispatch(msg, collector)
                return
            before = len(collector.answers)
            w0, c0 = time.perf_counter(), time.thread_time()
            super()._dispatch(msg, collector)
            t.dispatch_wall += time.perf_counter() - w0
            t.dispatch_cpu += time.thread_time() - c0
            if len(collector.answers) > before:
                t.results += 1
                t.first_arrival = min(t.first_arrival, msg.arrived)
                t.last_arrival = max(t.last_arrival, msg.arrived)
            else:
                t.rejected += 1

        def _close(self, rnd, lr, collector, assign_bytes) -> None:
            t = self._t
            update = collector.update

            def timed_update(lr_):
                t0 = time.perf_counter()
                out = update(lr_)
                t.aggregate += time.perf_counter() - t0
                return out

            collector.update = timed_update
            published = t.publish
            w0, c0 = time.perf_counter(), time.thread_time()
            super()._close(rnd, lr, collector, assign_bytes)
            t.close_wall = time.perf_counter() - w0
            t.close_cpu = time.thread_time() - c0
            t.close_publish = t.publish - published

    return TimedLink, TimedCoordinator


# -- one N ---------------------------------------------------------------------------------------------


def worker_address(broker, i: int) -> tuple[str, int]:
    """The broker node device process ``i`` connects to: the one mosquitto, or the cluster's nodes in turn
    (devices spread over every node; the coordinator is on node 0 and mirrors its retained messages)."""
    nodes = getattr(broker, "nodes", None)
    if nodes:
        node = nodes[i % len(nodes)]
        return node.host, node.mqtt_port
    return broker.host, broker.port


def run_one(n: int, args, broker, tiny: Path, work: Path) -> SweepResult:
    import fake_devices

    from edgezo.backends.torch.factory import build_torch_executor
    from edgezo.config import JobConfig
    from edgezo.coordinator.wire.messages import ModelRef
    from edgezo.coordinator.server.rounds import RoundPolicy
    from edgezo.coordinator.server.coordinator import CoordinatorSettings
    from edgezo.errors import EdgezoError
    from edgezo.tasks import get_task

    TimedLink, TimedCoordinator = instrumented_classes()
    res = SweepResult(n)
    run = f"scale-{n}-{int(time.time())}"
    cfg = JobConfig(model=str(tiny), rounds=args.rounds, local_steps=args.k, p1=args.p1, p2=args.p2,
                    batch_size=args.batch_size, trainable="norm", seed=args.seed).validate()
    ex, info = build_torch_executor(cfg, get_task("sst2"))
    devices = [f"device-{i:04d}" for i in range(1, n + 1)]
    nprocs = max(1, min(args.procs, n))
    ctx = mp.get_context("spawn")
    report, stop = ctx.Queue(), ctx.Event()
    procs = []
    link = None
    t0 = time.perf_counter()
    try:
        for i in range(nprocs):
            p = ctx.Process(target=fake_devices.run_worker, name=f"fake-devices-{i}", daemon=True,
                            args=(i, *worker_address(broker, i), run, devices[i::nprocs], args.k, args.p1, args.p2,
                                  args.batch_size, args.seed, args.jitter, args.keepalive, report, stop))
            p.start()
            procs.append(p)
        ready, deadline = 0, time.monotonic() + args.connect_timeout
        while ready < nprocs:
            try:
                kind, *rest = report.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                res.error = f"only {ready}/{nprocs} device processes had all their devices connected within {args.connect_timeout:.0f} s"
                return res
            if kind == "ready":
                ready += 1
            else:
                res.worker_stats.append(rest[0])
                res.error = f"a device process failed while connecting: {rest[0].get('errors')}"
                return res
        res.online_s = time.perf_counter() - t0
        print(f"  N={n}: {n} devices connected and subscribed in {res.online_s:.1f} s ({nprocs} processes); running {args.rounds} rounds",
              flush=True)

        link = TimedLink(broker.settings(), client_id=f"coordinator-{run}")
        link.connect()
        settings = CoordinatorSettings(run=run, state=work / f"state-{n}", min_devices=n, checkpoint_every=0, max_attempts=1,
                                       http_host="127.0.0.1", policy=RoundPolicy(timeout_s=args.round_timeout))
        model = ModelRef(info.name, info.revision or "", info.digest)
        coord = TimedCoordinator(cfg, settings, link, ex, model, evaluate=lambda: 0.0, on_record=lambda r: None,
                                 say=lambda s: None)
        try:
            coord.run()
        except EdgezoError as e:  # a round without any valid result: see the rejections logged above
            res.error = str(e)
        res.timings = coord.timings
        res.updates = list(link.updates)
        res.rejected = coord.rejected
        incomplete = [t.round for t in coord.timings if t.results < n or t.attempts > 1]
        if incomplete:
            res.error = f"rounds {incomplete} closed without every device's result (or were re-opened)"
    finally:
        if link is not None:
            link.close()
        stop.set()
        deadline = time.monotonic() + 30
        while len(res.worker_stats) < len(procs) and time.monotonic() < deadline:
            try:
                kind, *rest = report.get(timeout=1.0)
            except queue.Empty:
                if not any(p.is_alive() for p in procs):
                    break
                continue
            if kind == "stats":
                res.worker_stats.append(rest[0])
        for p in procs:
            p.join(5)
            if p.is_alive():
                p.terminate()
                p.join(5)
    return res


# -- device side -------------------------------------------------------------------------------------


def device_apply_times(results: list[SweepResult], models: list[str], tiny: Path, args) -> None:
    """Decode + apply_update + fingerprint of each N's Update messages on device replicas."""
    import transformers

    from edgezo.backends.torch import perturb as tz
    from edgezo.backends.torch.executor import COMPILE_THRESHOLD
    from edgezo.backends.torch.factory import build_torch_executor
    from edgezo.config import JobConfig
    from edgezo.coordinator.wire import messages as m
    from edgezo.tasks import get_task

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    task = get_task("sst2")
    done = [r for r in results if r.updates]

    def timed_apply(ex, payload: bytes) -> tuple[float, float, float, bool]:
        t0 = time.perf_counter()
        msg = m.decode(payload, m.Update)
        update = m.unpack_update(msg)
        t1 = time.perf_counter()
        ex.apply_update(update)
        t2 = time.perf_counter()
        fp = ex.fingerprint()
        t3 = time.perf_counter()
        return t1 - t0, t2 - t1, t3 - t2, fp == msg.fingerprint

    def use_kernel_for(ex) -> None:
        # The flag is global: set it as a device holding only this executor would have it.
        tz.use_compiled_kernel(ex.trainable_numel(1) + ex.trainable_numel(2) >= COMPILE_THRESHOLD)

    if "tiny" in models:
        for r in done:  # a fresh replica per N, replaying every round: fingerprints must match
            cfg = JobConfig(model=str(tiny), trainable="norm", seed=args.seed, local_steps=args.k, p1=args.p1, p2=args.p2).validate()
            ex, _ = build_torch_executor(cfg, task)
            use_kernel_for(ex)
            rows = [timed_apply(ex, p) for p in r.updates]
            r.device_apply["tiny"] = {"decode": [x[0] for x in rows], "apply": [x[1] for x in rows],
                                      "fingerprint": [x[2] for x in rows], "match": all(x[3] for x in rows),
                                      "params": ex.trainable_numel(1) + ex.trainable_numel(2)}
    smol = [x for x in models if x.startswith("smollm2-")]
    if not smol or not done:
        return
    from edgezo.backends.torch.loading import load_model

    bundle = load_model(None)
    for name in smol:
        trainable = name.split("-", 1)[1]
        cfg = JobConfig(model=None, trainable=trainable, seed=args.seed).validate()
        ex, _ = build_torch_executor(cfg, task, model_bundle=bundle)
        use_kernel_for(ex)
        t0 = time.perf_counter()
        timed_apply(ex, done[0].updates[0])  # warm-up (compiles the fused kernel for large sets)
        warm = time.perf_counter() - t0
        print(f"  device side: {name} ({ex.trainable_numel(1) + ex.trainable_numel(2):,} params) warm-up apply {warm:.1f} s", flush=True)
        for r in done:
            payloads = r.updates if args.apply_rounds == "all" else r.updates[-1:]
            rows = [timed_apply(ex, p) for p in payloads]
            r.device_apply[name] = {"decode": [x[0] for x in rows], "apply": [x[1] for x in rows],
                                    "fingerprint": [x[2] for x in rows], "match": None,
                                    "params": ex.trainable_numel(1) + ex.trainable_numel(2)}
        del ex
    del bundle


# -- report ------------------------------------------------------------------------------------------


def med(values) -> float:
    values = list(values)
    return statistics.median(values) if values else float("nan")


def ms(seconds: float) -> str:
    return f"{1000 * seconds:,.1f}"


def report(results: list[SweepResult], args) -> None:
    print(f"\nFedSPZO K={args.k} P1={args.p1} P2={args.p2}: {args.k * args.p1 * args.p2} scalars per Result, "
          f"{args.k * args.p1 * (args.p2 + 1)} rows per Update; {args.rounds} rounds per N; medians over rounds "
          f"(max in brackets); times in ms unless marked")
    print("\nCoordinator, per round")
    head = (f"{'N':>6} {'online s':>9} {'wall':>16} {'Assign->all':>16} {'last->Update':>14} {'busy':>16} {'busy CPU':>16} "
            f"{'CPU all thr.':>13} {'dispatch':>9} {'per result':>10} {'open':>7} {'aggregate':>9} {'apply':>7} "
            f"{'fsync':>7} {'publish':>8} {'fingerprints':>13}")
    print(head)
    for r in results:
        if not r.timings:
            print(f"{r.n:>6} {'failed: ' + r.error}")
            continue
        ts = r.timings

        def cell(f, width):
            vals = [f(t) for t in ts]
            return f"{ms(med(vals))} [{ms(max(vals))}]".rjust(width)

        per_result = med(t.dispatch_wall / max(1, t.results) for t in ts)
        print(f"{r.n:>6} {r.online_s:>9.1f} {cell(lambda t: t.wall, 16)} {cell(lambda t: t.to_all_results, 16)} "
              f"{ms(med(t.last_to_update for t in ts)):>14} {cell(lambda t: t.busy, 16)} {cell(lambda t: t.busy_cpu, 16)} {ms(med(t.proc_cpu for t in ts)):>13} "
              f"{ms(med(t.dispatch_wall for t in ts)):>9} {1e6 * per_result:>8.0f}us {ms(med(t.open_wall for t in ts)):>7} "
              f"{ms(med(t.aggregate for t in ts)):>9} {ms(med(t.apply for t in ts)):>7} {ms(med(t.fsync for t in ts)):>7} "
              f"{ms(med(t.close_publish for t in ts)):>8} "
              f"{f'{ms(med(t.fingerprint for t in ts))} ({med(t.fingerprints for t in ts):.0f}x)':>13}")
    print("  wall: round start (devices online) to end of _close; Assign->all: Assign published to the last result received;\n"
          "  last->Update: last result received to the Update published; busy: coordinator thread working (open + dispatch\n"
          "  + close) = the overhead; busy CPU: that thread's CPU time in the same work; CPU all thr.: process CPU over the round incl. paho's network thread; dispatch: decode +\n"
          "  validate all results; open: assignment + collector + Assign publish; aggregate/apply/fsync/publish: inside _close;\n"
          "  fingerprints: SHA-256 of the trainable weights, computed that many times per round")

    models = [m_ for m_ in DEVICE_MODELS if any(m_ in r.device_apply for r in results)]
    print("\nMessages and device side (decode the Update + apply_update + fingerprint check, ms)")
    head = f"{'N':>6} {'Assign B':>9} {'Update B':>9} {'rows':>5} {'recv/dev/round':>15} {'Updates recv':>13}"
    for name in models:
        params = next(r.device_apply[name]["params"] for r in results if name in r.device_apply)
        head += f" {f'{name} ({params:,})':>34}"
    print(head)
    from edgezo.coordinator.wire.messages import UPDATE_ROW, decode

    for r in results:
        if not r.timings:
            continue
        upd = med(t.update_bytes for t in r.timings)
        rows = len(decode(r.updates[-1]).rows) // UPDATE_ROW.itemsize if r.updates else 0
        per_round = max(1, r.n * len(r.timings))
        got = sum(s.get("bytes_assign", 0) + s.get("bytes_update", 0) for s in r.worker_stats) / per_round
        got += sum(s.get("bytes_announce", 0) for s in r.worker_stats) / max(1, sum(s.get("announces", 0) for s in r.worker_stats)) if r.worker_stats else 0
        updates = sum(s.get("updates", 0) for s in r.worker_stats)
        line = (f"{r.n:>6} {med(t.assign_bytes for t in r.timings):>9,.0f} {upd:>9,.0f} {rows:>5} {got:>15,.0f} "
                f"{f'{updates:,}/{per_round:,}':>13}")
        for name in models:
            d = r.device_apply.get(name)
            if d is None:
                line += f" {'-':>34}"
                continue
            total = [a + b + c for a, b, c in zip(d["decode"], d["apply"], d["fingerprint"])]
            cellv = f"{ms(med(total))} (apply {ms(med(d['apply']))}, fp {ms(med(d['fingerprint']))})"
            if d["match"] is not None:
                cellv += " ok" if d["match"] else " MISMATCH"
            line += f" {cellv:>34}"
        print(line)
    print("  recv/dev/round: payload bytes a device received per round (Assign + Update + one Announce), counted by the\n"
          "  devices: the Assign lists every device of the round, so it grows with N. Updates recv: Update messages the\n"
          "  devices received / devices x rounds. 'ok': the tiny replica, replaying the Updates from the base model,\n"
          "  matched the coordinator's fingerprint after every round.")

    # Coordinator on the real model: a round applies the update once and computes the fingerprint a
    # few times (counted: collector, Update message, Announce, round record); the measured run used
    # the tiny model.
    tiny_rows = [r for r in results if "tiny" in r.device_apply and r.timings]
    for name in models:
        if name == "tiny" or not tiny_rows:
            continue
        for r in tiny_rows:
            d, t = r.device_apply.get(name), r.device_apply["tiny"]
            if d is None:
                continue
            calls = med(x.fingerprints for x in r.timings)
            extra = (med(d["apply"]) - med(t["apply"])) + calls * (med(d["fingerprint"]) - med(t["fingerprint"]))
            busy = med(x.busy for x in r.timings)
            print(f"  projection, coordinator training {name}: N={r.n} busy {busy:.2f} s + {extra:.2f} s "
                  f"(its apply + {calls:.0f} fingerprints instead of the tiny model's) = {busy + extra:.2f} s per round")

    problems = [(r.n, s["index"], e) for r in results for s in r.worker_stats for e in s.get("errors", [])]
    for r in results:
        if r.error:
            print(f"  N={r.n}: {r.error}")
        if r.rejected:
            print(f"  N={r.n}: the coordinator rejected {r.rejected} messages")
        lat = max((s.get("reply_latency_max", 0.0) for s in r.worker_stats), default=0.0)
        if lat > 1.0:
            print(f"  N={r.n}: a simulated device published its Result {lat:.1f} s after it was due (device processes overloaded)")
    for n, idx, e in problems[:10]:
        print(f"  N={n} device process {idx}: {e.strip().splitlines()[-1]}")

    print("\nSummary (medians per round)")
    head = f"{'N':>6} {'wall/round s':>13} {'coordinator overhead s':>23} {'Update B':>9}"
    for name in models:
        head += f" {f'device apply {name} s':>26}"
    print(head)
    for r in results:
        if not r.timings:
            continue
        line = (f"{r.n:>6} {med(t.wall for t in r.timings):>13.3f} {med(t.busy for t in r.timings):>23.3f} "
                f"{med(t.update_bytes for t in r.timings):>9,.0f}")
        for name in models:
            d = r.device_apply.get(name)
            total = med(a + b + c for a, b, c in zip(d["decode"], d["apply"], d["fingerprint"])) if d else float("nan")
            line += f" {total:>26.3f}"
        print(line)
    print("  coordinator overhead = busy above (open + dispatch/validate + aggregate + apply + fsync + publish + announce);\n"
          "  device apply = decode the Update + apply_update + fingerprint, the same for every N")

    big = [r for r in results if r.timings and r.n >= AIM_DEVICES]
    print(f"\nAim: {AIM_DEVICES:,} devices with under {AIM_SECONDS:.0f} s coordinator overhead per round.")
    if not big:
        largest = max((r for r in results if r.timings), key=lambda r: r.n, default=None)
        if largest:
            print(f"  not measured at {AIM_DEVICES:,} devices here (largest N = {largest.n}: busy "
                  f"{med(t.busy for t in largest.timings):.3f} s, last result -> Update {med(t.last_to_update for t in largest.timings):.3f} s)")
        return
    for r in big:
        busy = max(t.busy for t in r.timings)
        lat = max(t.last_to_update for t in r.timings)
        verdict = "met" if max(busy, lat) < AIM_SECONDS else "NOT met"
        print(f"  N={r.n:,}: worst round busy {busy:.3f} s, worst last result -> Update {lat:.3f} s: {verdict}")


def main() -> None:
    doc_head, doc_rest = __doc__.split("\n\n", 1)
    ap = argparse.ArgumentParser(description=doc_head, epilog=doc_rest, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", default="10,100,1000", help="comma-separated numbers of devices N")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--broker", choices=("mosquitto", "rabbitmq"), default="mosquitto",
                    help="one private mosquitto, or a private two-node RabbitMQ cluster (MQTT 3.1.1; tests/support/rabbitmq.py)")
    ap.add_argument("--procs", type=int, default=4, help="device worker processes (each hosts N/procs MQTT clients)")
    ap.add_argument("--k", type=int, default=10, help="local steps K")
    ap.add_argument("--p1", type=int, default=1)
    ap.add_argument("--p2", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jitter", type=float, default=0.0,
                    help="each device answers after a uniform random delay up to this many seconds (0: all at once, the worst burst)")
    ap.add_argument("--keepalive", type=int, default=60, help="device MQTT keepalive, seconds")
    ap.add_argument("--connect-timeout", type=float, default=180.0, help="seconds for all devices to connect")
    ap.add_argument("--round-timeout", type=float, default=120.0, help="the coordinator's round deadline, seconds")
    ap.add_argument("--device-models", default=",".join(DEVICE_MODELS),
                    help=f"replicas for the device-side apply time, among {', '.join(DEVICE_MODELS)} ('' for none)")
    ap.add_argument("--apply-rounds", choices=("last", "all"), default="last",
                    help="SmolLM2 replicas apply each N's last Update only, or all of them")
    args = ap.parse_args()
    sizes = [int(x) for x in args.devices.split(",") if x.strip()]
    models = [x.strip() for x in args.device_models.split(",") if x.strip()]
    unknown = sorted(set(models) - set(DEVICE_MODELS))
    if unknown:
        ap.error(f"unknown --device-models {unknown}; choose among {', '.join(DEVICE_MODELS)}")

    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(ROOT / "tests"))
    import fake_devices

    nofile = fake_devices.raise_nofile(4 * max(sizes) + 1024)  # mosquitto inherits it
    if nofile < max(sizes) + 256:
        print(f"warning: only {nofile} open files allowed; mosquitto needs one per device", file=sys.stderr)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import transformers
    from tiny import save_tiny

    from support.mosquitto import MosquittoBroker
    from support.rabbitmq import RabbitCluster

    if args.broker == "rabbitmq":
        os.environ["EDGEZO_FAKE_MQTT"] = "3.1.1"  # the spawned device processes inherit it

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    results: list[SweepResult] = []
    with tempfile.TemporaryDirectory(prefix="edgezo-scale-") as tmp, \
            (RabbitCluster(nodes=2) if args.broker == "rabbitmq" else MosquittoBroker()) as broker:
        work = Path(tmp)
        tiny = save_tiny(work / "tiny", "llama")
        print(f"{args.broker} on {broker.address}; open-files limit {nofile}", flush=True)
        for n in sizes:
            r = run_one(n, args, broker, tiny, work)
            results.append(r)
            if r.error:
                print(f"  N={n}: {r.error}", flush=True)
            if not broker.running:
                print(f"the broker died: {broker.log_tail()}", flush=True)
                break
        if models:
            print("device side: applying the captured Updates on replicas ...", flush=True)
            device_apply_times(results, models, tiny, args)
    report(results, args)


if __name__ == "__main__":
    main()
