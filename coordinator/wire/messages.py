"""The wire protocol's messages: msgspec Structs encoded as MessagePack (``PROTOCOL.md`` documents
them field by field for implementers in other languages).

Every message names its run, and every round message its round (and attempt), so a receiver can
bind it to (run, round, device) and drop anything stale or misaddressed. Scalars travel as bare
little-endian float32 in the canonical order of the method's ``directions`` (``edgezo.methods``;
the assignment fixes which directions a device owes, so keys need not travel); updates travel as
packed rows of (step, block, i, j, stream, coefficient as float64), the exact coefficients every
replica applies.
"""

from __future__ import annotations

from typing import Any

import msgspec
import numpy as np

from edgezo.errors import EdgezoError
from edgezo.keys import Direction

PROTOCOL_VERSION = 1
MAX_PAYLOAD_BYTES = 1 << 20  # anything larger is rejected before decoding

UPDATE_ROW = np.dtype([("step", "<u2"), ("block", "u1"), ("i", "<u2"), ("j", "<u2"), ("stream", "<u4"), ("coef", "<f8")])


UNSET = msgspec.UNSET  # an optional field left out of the payload (Announce.onnx_sha256 when there are no browser devices)


class ModelRef(msgspec.Struct, frozen=True):
    name: str
    revision: str
    digest: str  # SHA-256 over the base model's tensors: a device with other weights must not join


class Announce(msgspec.Struct, tag="announce"):
    """Retained on ``edgezo/<run>/announce``: what the job is and how far it has got."""

    v: int
    run: str
    state: str  # "running" | "finished"
    model: ModelRef
    job: dict[str, Any]  # the shared JobConfig keys (task, method, p1, p2, eps, trainable, seed, ...)
    split: int
    round: int  # rounds completed: the global model is base + seed-log entries 1..round
    rounds: int
    fingerprint: str  # of the global model after ``round``
    log_chunk: int  # most entries per catch-up reply
    checkpoint_url: str = ""
    checkpoint_round: int = 0
    # The trained tensors in fingerprint order, as [name, block, numel] (PROTOCOL.md section 9.2):
    # a device checks its own selection against it before working. []: not announced (not checked).
    trainable: list[tuple[str, int, int]] = []
    # SHA-256 of the ONNX export browser devices download (coordinate --web-port; PROTOCOL.md 5):
    # a page checks the model it fetched against it. Left out of the payload (UNSET) when no browser
    # device is served, so such a job's announcement keeps its bytes.
    onnx_sha256: str | msgspec.UnsetType = msgspec.UNSET


class DeviceTask(msgspec.Struct, frozen=True):
    device: str
    k: int  # local steps
    p1: int
    p2: int
    batch: int


class Assign(msgspec.Struct, tag="assign"):
    """Retained on ``edgezo/<run>/round``: the round's devices and their work. All share the
    round's seeds (the run seed and the round number key every direction)."""

    v: int
    run: str
    round: int
    attempt: int  # a round re-opened after a quorum miss or a coordinator restart
    lr: float
    timeout_s: float
    tasks: list[DeviceTask]


class Result(msgspec.Struct, tag="result"):
    """On ``edgezo/<run>/result/<device>``: a device's scalars for one assignment."""

    v: int
    run: str
    round: int
    attempt: int
    device: str
    scalars: bytes  # float32 little-endian, in the order of the method's directions
    examples: int
    loss: float
    forwards1: int
    forwards2: int
    flops: float
    compute_s: float
    fingerprint: str  # the device's replica before the round (a mismatch flags a diverged replica)


class Update(msgspec.Struct, tag="update"):
    """On ``edgezo/<run>/update`` (and inside catch-up replies): one seed-log entry."""

    v: int
    run: str
    round: int
    run_seed: int
    rows: bytes  # UPDATE_ROW records, sorted
    fingerprint: str  # of the global model after applying this update


class Status(msgspec.Struct, tag="status"):
    """Retained on ``edgezo/<run>/status/<device>``; the device's last will is the same with
    state "offline", so the coordinator learns at once that a device is gone."""

    v: int
    run: str
    device: str
    state: str  # "online" | "offline"
    replica_round: int = 0
    examples: int = 0
    backend: str = ""
    profile: dict[str, Any] = {}  # the device's profile (edgezo.profiles.Profile.to_dict()); {}: none
    memory_gb: float = 0.0  # memory the device lets training use; 0: the profile's memory_available_gb
    instance: str = ""  # random per device process: two processes claiming one device id are told apart


class LogRequest(msgspec.Struct, tag="logreq"):
    """On ``edgezo/<run>/logreq/<device>``: send me seed-log entries first..last (inclusive)."""

    v: int
    run: str
    device: str
    first: int
    last: int


class LogChunk(msgspec.Struct, tag="logchunk"):
    """On ``edgezo/<run>/log/<device>``: at most ``log_chunk`` entries per message."""

    v: int
    run: str
    device: str
    entries: list[Update]
    last: int  # the last round the coordinator has


class Refused(msgspec.Struct, tag="refused"):
    """On ``edgezo/<run>/log/<device>``, in a signed job only (PROTOCOL.md section 14): the
    coordinator refused a message on that device's topics signed by ``key`` (``ed25519:<base64>``;
    "": unsigned). A device acts only on one naming the key it signs with, so a stranger's refused
    messages cannot end the real device."""

    v: int
    run: str
    device: str
    key: str
    reason: str


Message = Announce | Assign | Result | Update | Status | LogRequest | LogChunk | Refused
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Message)


def encode(message: Message) -> bytes:
    return _encoder.encode(message)


class BadMessage(EdgezoError):
    """A payload that is not a valid message of this protocol: logged and dropped, never fatal."""


def decode(payload: bytes, expected: type | None = None) -> Message:
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise BadMessage(f"oversized payload ({len(payload):,} bytes; the limit is {MAX_PAYLOAD_BYTES:,})")
    try:
        message = _decoder.decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise BadMessage(f"malformed payload: {e}") from None
    if expected is not None and not isinstance(message, expected):
        raise BadMessage(f"expected a {expected.__name__} message, got {type(message).__name__}")
    if message.v != PROTOCOL_VERSION:
        raise BadMessage(f"protocol version {message.v}; this edgezo speaks version {PROTOCOL_VERSION}")
    return message


def pack_scalars(values: list[float]) -> bytes:
    return np.asarray(values, dtype="<f4").tobytes()


def unpack_scalars(data: bytes) -> np.ndarray:
    if len(data) % 4:
        raise BadMessage(f"scalars field of {len(data)} bytes is not a whole number of float32 values")
    return np.frombuffer(data, dtype="<f4").astype(np.float64)


def pack_update(update: list[tuple[Direction, float]]) -> bytes:
    rows = np.zeros(len(update), dtype=UPDATE_ROW)
    for k, (d, c) in enumerate(update):
        rows[k] = (d.step, d.block, d.i, d.j, d.stream, c)
    return rows.tobytes()


def unpack_update(message: Update) -> list[tuple[Direction, float]]:
    if len(message.rows) % UPDATE_ROW.itemsize:
        raise BadMessage(f"update rows of {len(message.rows)} bytes are not whole records")
    rows = np.frombuffer(message.rows, dtype=UPDATE_ROW)
    update = [
        (Direction(message.run_seed, message.round, int(r["step"]), int(r["block"]), int(r["i"]), int(r["j"]), int(r["stream"])), float(r["coef"]))
        for r in rows
    ]
    if any(not np.isfinite(c) for _, c in update):
        raise BadMessage(f"update for round {message.round} holds a non-finite coefficient")
    return update
