"""Bytes one device sends and receives per round: FedSPZO over this project's MQTT protocol against
FedZO moving a full float32 model delta, for SmolLM2-135M's trainable sets.

Why: the claim is that FedSPZO devices exchange "a few hundred bytes a round instead of a model".
This checks it on the real wire format rather than on a formula. Every FedSPZO figure is the
length of a message built with ``edgezo.coordinator.wire.messages`` and encoded exactly as the
coordinator and devices encode it:

* up: the device's ``Result`` (K*P1*P2 float32 scalars in the order of the method's
  ``directions``, plus its envelope: run, round, device, counters, the replica's 64-character
  fingerprint);
* down: the round's ``Assign`` and ``Update`` (K*(P1*P2 + P1) rows: block-2 and block-1
  coefficients, built with ``edgezo.estimators.update_rule`` from averaged scalars), plus the
  ``Announce`` the coordinator re-publishes (retained) after every round, which devices stay
  subscribed to. The ``Assign`` is one retained message listing *every* device of the round, so
  what each device downloads grows with the number of devices; it is shown for 1 to 1,000.

MQTT framing is added per publish (fixed header 1 byte + 1-4 bytes remaining length, topic length 2
+ topic, packet id 2 for QoS 1, and for MQTT 5 a 1-byte property length), and each QoS 1 message
costs a 4-byte PUBACK in the other direction. TCP/IP headers (about 52-66 bytes per segment) and
keep-alive pings are not counted.

FedZO (per-device seeds, so its update cannot be replayed from a few scalars) sends the full
float32 delta of the trainable set up and the global delta down: 4 bytes per parameter plus the
same envelope (``Result``/``Update`` with the delta in the bytes field) and the same MQTT framing.

Trainable-parameter counts come from the real model (SmolLM2-135M-Instruct via
``load_model(None)``; the cached conversion loads in about a second) and the real selection code
(``edgezo.backends.hf.trainable``).

    python benchmarks/bytes_per_round.py [--k 10 --p1 1 --p2 8] [--mqtt 5|3.1.1]
"""

from __future__ import annotations

import argparse

import numpy as np

from edgezo.config import JobConfig, probe_config
from edgezo.coordinator.wire import messages as m
from edgezo.coordinator.server.coordinator import shared_job
from edgezo.coordinator.wire.topics import Topics
from edgezo.estimators import update_rule
from edgezo.methods import method_of

FAKE_HEX = "f" * 64  # SHA-256 fingerprints and digests travel as 64 hex characters
PUBACK = 4  # QoS 1 acknowledgement (MQTT 3.1.1; MQTT 5 with reason "success" and no properties)
TRAINABLE_SETS = ("norm", "lora:r=8,targets=q_proj+v_proj", "full")


# -- MQTT framing ----------------------------------------------------------------------------------


def varint_len(n: int) -> int:
    """Bytes of MQTT's variable-length "remaining length" field."""
    size = 1
    while n >= 128:
        n >>= 7
        size += 1
    return size


def publish_bytes(topic: str, payload: int, version: str, qos: int = 1) -> int:
    """Bytes of one PUBLISH packet carrying ``payload`` bytes on ``topic``."""
    variable = 2 + len(topic.encode()) + (2 if qos else 0) + (1 if version == "5" else 0)
    remaining = variable + payload
    return 1 + varint_len(remaining) + remaining


def bin_header(n: int) -> int:
    """Bytes of a msgpack bin header for an n-byte blob."""
    return 2 if n < 1 << 8 else 3 if n < 1 << 16 else 5


def with_blob(empty_message_len: int, blob: int) -> int:
    """Length of a message whose bytes field (encoded empty: 2 bytes) holds ``blob`` bytes."""
    return empty_message_len - 2 + bin_header(blob) + blob


# -- messages ----------------------------------------------------------------------------------


def build_messages(cfg: JobConfig, run: str, device: str, rnd: int):
    """The round's real messages for one device (Result up; Assign, Update, Announce down)."""
    order = method_of(cfg.method).directions(probe_config(cfg), cfg.seed, rnd, cfg.local_steps)
    rng = np.random.default_rng(0)
    scalars = rng.standard_normal(len(order)).astype(np.float32)
    result = m.Result(
        v=m.PROTOCOL_VERSION, run=run, round=rnd, attempt=0, device=device, scalars=m.pack_scalars(scalars.tolist()),
        examples=cfg.local_steps * cfg.batch_size, loss=0.6931471805599453, forwards1=2 * cfg.local_steps * cfg.p1,
        forwards2=2 * cfg.local_steps * cfg.p1 * cfg.p2, flops=1.2345678e12, compute_s=12.345678, fingerprint=FAKE_HEX,
    )
    averaged = {d: float(g) for d, g in zip(order, rng.standard_normal(len(order)))}  # "averaged over devices"
    update = update_rule(averaged, cfg.lr, cfg.variant)
    upd = m.Update(v=m.PROTOCOL_VERSION, run=run, round=rnd, run_seed=cfg.seed, rows=m.pack_update(update), fingerprint=FAKE_HEX)
    return order, update, result, upd


def assign_message(cfg: JobConfig, run: str, rnd: int, devices: list[str]) -> m.Assign:
    tasks = [m.DeviceTask(d, cfg.local_steps, cfg.p1, cfg.p2, cfg.batch_size) for d in devices]
    return m.Assign(v=m.PROTOCOL_VERSION, run=run, round=rnd, attempt=0, lr=cfg.lr, timeout_s=300.0, tasks=tasks)


def announce_message(cfg: JobConfig, run: str, rnd: int, model_name: str, split: int) -> m.Announce:
    return m.Announce(
        v=m.PROTOCOL_VERSION, run=run, state="running", model=m.ModelRef(model_name, "", FAKE_HEX), job=shared_job(cfg),
        split=split, round=rnd, rounds=cfg.rounds, fingerprint=FAKE_HEX, log_chunk=50,
        checkpoint_url="http://192.168.1.10:43211", checkpoint_round=(rnd // 10) * 10,
    )


def device_names(n: int, width: int) -> list[str]:
    return [f"device-{k:0{width}d}" for k in range(1, n + 1)]


# -- trainable sets ----------------------------------------------------------------------------


def trainable_counts(model_id: str | None, seed: int) -> tuple[str, int, dict[str, int]]:
    """Parameters in each trainable set of the model (LoRA adapters built as a job builds them)."""
    import transformers

    from edgezo.backends.hf.arch import make_adapter
    from edgezo.backends.hf.lora import add_lora
    from edgezo.backends.hf.trainable import parse_trainable, select_trainable
    from edgezo.backends.torch.loading import load_model

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    counts: dict[str, int] = {}
    name = ""
    layers = 0
    for spec_text in TRAINABLE_SETS:
        spec = parse_trainable(spec_text)
        if spec.kind == "lora" or not counts:  # a fresh model for LoRA (adapters change it), and the first time
            model, _, info = load_model(model_id)
            name = info.name
        if spec.kind == "lora":
            add_lora(model, spec.rank, spec.alpha, spec.targets, seed)
        adapter = make_adapter(model)
        layers = adapter.num_layers
        params = dict(model.named_parameters())
        names = select_trainable(model, spec, frozen_names=adapter.input_embedding_names())
        counts[spec_text] = sum(params[n].numel() for n in names)
    return name, layers, counts


# -- report ----------------------------------------------------------------------------------


def fmt(n: float) -> str:
    if n >= 1024**2:
        return f"{n / 1024**2:,.2f} MiB"
    if n >= 10 * 1024:
        return f"{n / 1024:,.1f} KiB"
    return f"{n:,.0f} B"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--k", type=int, default=10, help="local steps K")
    ap.add_argument("--p1", type=int, default=1)
    ap.add_argument("--p2", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--round", type=int, default=123, help="round number in the messages (sizes barely depend on it)")
    ap.add_argument("--run", default="edgezo", help="job name (topic prefix and message field); `edgezo coordinate`'s default")
    ap.add_argument("--mqtt", choices=("5", "3.1.1"), default="5", help="MQTT version (MqttLink picks 5 on mosquitto)")
    ap.add_argument("--model", default=None, help="model for the trainable-set sizes (default: SmolLM2-135M-Instruct)")
    ap.add_argument("--devices", default="1,10,100,1000", help="round sizes for the Assign table")
    args = ap.parse_args()

    cfg = JobConfig(model=args.model, local_steps=args.k, p1=args.p1, p2=args.p2, batch_size=args.batch_size,
                    trainable="norm").validate()
    sizes = [int(x) for x in args.devices.split(",")]
    width = max(4, len(str(max(sizes))))
    device = device_names(1, width)[0]
    topics = Topics(args.run)
    order, update, result, upd = build_messages(cfg, args.run, device, args.round)
    model_name, layers, counts = trainable_counts(args.model, cfg.seed)
    from edgezo.backends.hf.factory import default_split

    announce = announce_message(cfg, args.run, args.round, model_name, default_split(layers))
    assign1 = assign_message(cfg, args.run, args.round, [device])
    v = args.mqtt

    up_result = len(m.encode(result))
    down_update = len(m.encode(upd))
    down_assign = len(m.encode(assign1))
    down_announce = len(m.encode(announce))
    n_block2 = sum(1 for d, _ in update if d.block == 2)
    n_block1 = sum(1 for d, _ in update if d.block == 1)

    print(f"FedSPZO (variant {cfg.variant}), K={cfg.local_steps}, P1={cfg.p1}, P2={cfg.p2}, batch {cfg.batch_size}; "
          f"run {args.run!r}, device {device!r}, MQTT {v}, QoS 1")
    print(f"  up:   {len(order)} scalars (K*P1*P2) x 4 B = {4 * len(order)} B of float32")
    print(f"  down: {len(update)} update rows (K*P1*P2 = {n_block2} block-2 + K*P1 = {n_block1} block-1) x "
          f"{m.UPDATE_ROW.itemsize} B = {len(update) * m.UPDATE_ROW.itemsize} B\n")

    rows = [
        # (direction, what, topic, payload, counted in "assign+update" total)
        ("up", f"Result ({len(order)} float32 scalars)", topics.result(device), up_result, True),
        ("down", "Assign (1 task: this device alone)", topics.round, down_assign, True),
        ("down", f"Update ({len(update)} rows)", topics.update, down_update, True),
        ("down", "Announce (re-published every round)", topics.announce, down_announce, False),
    ]
    tw = max(len(r[2]) for r in rows)
    print(f"{'dir':<5} {'message':<40} {'topic':<{tw}} {'payload':>9} {'+ MQTT':>8}")
    up_payload = up_wire = 0
    core_down_payload = core_down_wire = 0
    all_down_payload = all_down_wire = 0
    for direction, what, topic, payload, core in rows:
        wire = publish_bytes(topic, payload, v)
        print(f"{direction:<5} {what:<40} {topic:<{tw}} {payload:>9,} {wire:>8,}")
        if direction == "up":
            up_payload += payload
            up_wire += wire
        else:
            all_down_payload += payload
            all_down_wire += wire
            if core:
                core_down_payload += payload
                core_down_wire += wire
    received = sum(1 for r in rows if r[0] == "down")
    print(f"{'up':<5} {f'PUBACKs for the {received} messages received':<40} {'':<{tw}} {'':>9} {received * PUBACK:>8,}")
    print(f"{'down':<5} {'PUBACK for the Result':<40} {'':<{tw}} {'':>9} {PUBACK:>8,}")
    up_wire += received * PUBACK
    core_down_wire += PUBACK
    all_down_wire += PUBACK
    print(f"\nper device per round: up {up_payload:,} B payload / {up_wire:,} B with MQTT; "
          f"down (Assign+Update) {core_down_payload:,} / {core_down_wire:,} B; "
          f"down with the Announce {all_down_payload:,} / {all_down_wire:,} B")

    print(f"\nThe Assign is one retained message listing every device of the round; each device downloads all of it:")
    print(f"{'devices in the round':>22} {'Assign payload':>16} {'+ MQTT':>10} {'down per device (all)':>24}")
    for n in sizes:
        a = len(m.encode(assign_message(cfg, args.run, args.round, device_names(n, width))))
        wire = publish_bytes(topics.round, a, v)
        total = all_down_wire - publish_bytes(topics.round, down_assign, v) + wire
        print(f"{n:>22,} {a:>16,} {wire:>10,} {total:>24,}")

    # FedZO: full float32 deltas both ways, same envelopes and framing, same control messages.
    empty_result = len(m.encode(m.Result(**{**{f: getattr(result, f) for f in result.__struct_fields__}, "scalars": b""})))
    empty_update = len(m.encode(m.Update(**{**{f: getattr(upd, f) for f in upd.__struct_fields__}, "rows": b""})))
    control_down = publish_bytes(topics.round, down_assign, v) + publish_bytes(topics.announce, down_announce, v)
    print(f"\nAgainst FedZO (full float32 delta of the trainable set up, global delta down; both methods also get "
          f"the 1-task Assign and the Announce down, and PUBACKs)")
    print(f"model: {model_name}, {layers} layers\n")
    head = (f"{'trainable set':<34} {'params':>12} {'SPZO up':>9} {'SPZO down':>10} {'FedZO up':>11} {'FedZO down':>11} "
            f"{'up x':>9} {'down x':>9} {'total x':>9}")
    print(head)
    spzo_up = up_wire
    spzo_down = all_down_wire
    for spec, params in counts.items():
        blob = 4 * params
        zo_up_payload = with_blob(empty_result, blob)
        zo_down_payload = with_blob(empty_update, blob)
        zo_up = publish_bytes(topics.result(device), zo_up_payload, v) + received * PUBACK
        zo_down = publish_bytes(topics.update, zo_down_payload, v) + control_down + PUBACK
        note = " *" if max(zo_up_payload, zo_down_payload) > m.MAX_PAYLOAD_BYTES else ""
        print(f"{spec:<34} {params:>12,} {fmt(spzo_up):>9} {fmt(spzo_down):>10} {fmt(zo_up):>11} {fmt(zo_down):>11} "
              f"{zo_up / spzo_up:>9,.0f} {zo_down / spzo_down:>9,.0f} {(zo_up + zo_down) / (spzo_up + spzo_down):>9,.0f}{note}")
    print(f"\nx: FedZO bytes / FedSPZO bytes, MQTT framing included. FedSPZO's figures do not depend on the model or "
          f"the trainable set.")
    if any(4 * p > m.MAX_PAYLOAD_BYTES for p in counts.values()):
        print(f"*: the delta exceeds the protocol's {m.MAX_PAYLOAD_BYTES:,}-byte message limit (messages.MAX_PAYLOAD_BYTES): "
              f"FedZO at this size could not run over this protocol at all")
    payload_ratio = {spec: 4 * p / (4 * len(order)) for spec, p in counts.items()}
    print("payload only (float32 delta vs float32 scalars, no envelopes): "
          + ", ".join(f"{spec.split(':')[0]} {r:,.0f}x" for spec, r in payload_ratio.items()))


if __name__ == "__main__":
    main()
