"""Golden vectors for the browser device's JavaScript (web/test/): computed here with the Python
reference (edgezo.keys, edgezo.perturb, the torch executor's update arithmetic, the coordinator's
msgspec messages, numpy's Generator for batches) and checked in as web_vectors.json, so the Node
tests compare the JavaScript port with the reference bit for bit without running Python.

Run from the repository root:  OMP_NUM_THREADS=1 python tests/golden/make_web_vectors.py
(append ``lora`` to write only the LoRA vectors, web_lora_vectors.json).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from edgezo.backends.torch.perturb import add_scaled
from edgezo import perturb
from edgezo.coordinator.wire import messages as m
from edgezo.engine import device_batch_indices
from edgezo.estimators import ProbeConfig, update_rule
from edgezo.keys import Direction, fnv1a64
from edgezo.methods import method_of

OUT = Path(__file__).with_name("web_vectors.json")
BIG = (1 << 63) + 12345
MAX64 = (1 << 64) - 1
NAMES = ["model.norm.weight", "model.layers.20.input_layernorm.weight", "model.layers.0.self_attn.q_proj.lora_A", "ünïcode.weight"]
DIRECTIONS = [(42, 3, 1, 2, 0, 5, 0), (0, 1, 0, 2, 0, 0, 0), (BIG, 7, 9, 1, 3, 0, 0), (MAX64, 1, 0, 0, 1, 0, 4),
              (-1, 2, 1, 2, 1, 15, 0), (0, -1, 0, 0, 0, 0, 0), (123456789, 250, 99, 0, 7, 0, 65535)]


def key_vectors() -> list[dict]:
    out = []
    for fields in DIRECTIONS:
        for name in NAMES:
            d = Direction(*fields)
            key = d.tensor_key(name)
            spans = [(0, 1), (0, 31), (0, 33), (5, 70), (0, 577), (1000003, 8), (4093, 100)]
            out.append({
                "fields": [str(f) for f in fields], "name": name, "fnv": str(fnv1a64(name)), "key": str(key),
                "words": [int(w) for w in perturb.words(key, 0, 4)],
                "rademacher": [{"start": s, "count": c, "signs": "".join("-" if v < 0 else "+" for v in perturb.rademacher(key, s, c))}
                               for s, c in spans],
                "gaussian_f32_hex": [f"{np.float32(v).view(np.uint32):08x}" for v in perturb.gaussian(key, 0, 8)],
            })
    return out


def replica(seed: int) -> list[tuple[str, int, np.ndarray]]:
    rng = np.random.default_rng(seed)
    shapes = [("model.layers.0.input_layernorm.weight", 1, 33), ("model.layers.1.mlp.bias", 1, 5),
              ("model.layers.2.input_layernorm.weight", 2, 577), ("model.norm.weight", 2, 64)]
    return [(n, b, (1 + 0.1 * rng.normal(size=k)).astype(np.float32)) for n, b, k in shapes]


def fingerprint(tensors) -> str:
    import hashlib

    h = hashlib.sha256()
    for name, _, data in tensors:
        h.update(name.encode())
        h.update(data.astype("<f4").tobytes())
    return h.hexdigest()


def apply_torch(tensors, update, distribution):
    """The torch executor's arithmetic (add_scaled per row in sorted order) on copies."""
    out = []
    for name, block, data in tensors:
        t = torch.from_numpy(data.copy())
        for d, coef in sorted(update):
            if d.covers(block):
                add_scaled(t, d.tensor_key(name), coef, distribution)
        out.append((name, block, t.numpy()))
    return out


def update_vectors() -> list[dict]:
    cases = []
    for seed, run_seed, method, variant in [(0, 0, "spzo", "joint"), (1, BIG, "spzo", "clean"), (2, MAX64, "mezo", "joint"),
                                             (3, 7, "fedzo", "joint")]:
        rng = np.random.default_rng(100 + seed)
        probe = method_of(method).probe(2, 3, 1e-3, variant, method_of(method).default_difference)
        stream = 2 if method == "fedzo" else 0
        dirs = method_of(method).directions(probe, run_seed, 5, 2, stream)
        scalars = {d: float(rng.normal() * 10) for d in dirs}
        update = update_rule(scalars, 0.003, variant)
        tensors = replica(seed)
        after = apply_torch(tensors, update, perturb.RADEMACHER)
        msg = m.Update(v=1, run="edgezo", round=5, run_seed=run_seed, rows=m.pack_update(update), fingerprint=fingerprint(after))
        cases.append({
            "method": method, "variant": variant, "stream": stream, "lr": 0.003, "round": 5, "run_seed": str(run_seed),
            "directions": [[d.step, d.block, d.i, d.j, d.stream] for d in dirs],
            "scalars": [scalars[d] for d in dirs],
            "update": [[d.step, d.block, d.i, d.j, d.stream, c] for d, c in update],
            "rows_hex": m.pack_update(update).hex(), "update_msg_hex": m.encode(msg).hex(),
            "tensors": [{"name": n, "block": b, "f32_hex": d.astype("<f4").tobytes().hex()} for n, b, d in tensors],
            "after_f32_hex": [d.astype("<f4").tobytes().hex() for _, _, d in after],
            "fingerprint_before": fingerprint(tensors), "fingerprint_after": fingerprint(after),
            "perturbed_f32_hex": perturbed(tensors, run_seed),
        })
    return cases


def perturbed(tensors, run_seed) -> list[str]:
    """w + s·z1 + s·z2 (a joint-SPZO probe: block 1 and block 2 directions) on copies, torch arithmetic."""
    d1, d2 = Direction(run_seed, 5, 1, 1, 0), Direction(run_seed, 5, 1, 2, 0, 2)
    out = []
    for name, block, data in tensors:
        t = torch.from_numpy(data.copy())
        for d in (d1, d2):
            if d.covers(block):
                add_scaled(t, d.tensor_key(name), -1e-3, perturb.RADEMACHER)
        out.append(t.numpy().astype("<f4").tobytes().hex())
    return out


def batch_vectors() -> list[dict]:
    out = []
    for n, batch, steps, seed, rnd, device in [(100, 16, 3, 0, 1, 0), (5, 16, 2, 42, 3, 1), (1000, 8, 4, BIG, 250, 2147483647),
                                               (20000, 500, 2, 7, 9, 3), (20000, 16, 2, 7, 9, 3), (12001, 300, 1, 1, 1, 1),
                                               (67349, 16, 10, 0, 12, 1843005491), (3, 3, 2, 5, 1, 0), (1, 1, 1, 0, 1, 0)]:
        out.append({"n": n, "batch": batch, "steps": steps, "seed": str(seed), "round": rnd, "device": device,
                    "indices": device_batch_indices(list(range(n)), batch, steps, seed, rnd, device)})
    return out


def message_vectors() -> list[dict]:
    ref = m.ModelRef(name="HuggingFaceTB/SmolLM2-135M-Instruct", revision="main", digest="ab" * 32)
    job = {"task": "sst2", "method": "spzo", "rounds": 20, "local_steps": 10, "p1": 1, "p2": 8, "split": None, "lr": 0.00025,
           "eps": 0.001, "batch_size": 16, "max_length": 128, "trainable": "norm", "seed": BIG, "alpha": 0.5}
    msgs = [
        m.Announce(v=1, run="edgezo", state="running", model=ref, job=job, split=20, round=3, rounds=20, fingerprint="cd" * 32,
                   log_chunk=50, checkpoint_url="http://127.0.0.1:4000", checkpoint_round=0,
                   trainable=[("model.layers.0.input_layernorm.weight", 1, 576), ("model.norm.weight", 2, 576)]),
        m.Announce(v=1, run="edgezo", state="finished", model=ref, job={}, split=2, round=2, rounds=2, fingerprint="", log_chunk=50),
        m.Assign(v=1, run="edgezo", round=7, attempt=0, lr=0.00025, timeout_s=300.0,
                 tasks=[m.DeviceTask(device="dev-a", k=10, p1=1, p2=8, batch=16), m.DeviceTask(device="web-1", k=1, p1=2, p2=3, batch=300)]),
        m.Result(v=1, run="edgezo", round=7, attempt=1, device="web-1", scalars=m.pack_scalars([0.1234, -2.5, 1e-30, 65504.0]),
                 examples=16, loss=0.6931471805599453, forwards1=4, forwards2=4, flops=1.5e12, compute_s=7.75, fingerprint="ef" * 32),
        m.Update(v=1, run="edgezo", round=2, run_seed=MAX64, rows=bytes.fromhex("0000010000000000000000fca9f1d24d6220bf"),
                 fingerprint="12" * 32),
        m.Status(v=1, run="edgezo", device="dev-a", state="offline"),
        m.Status(v=1, run="edgezo", device="web-1", state="online", replica_round=3, examples=1234, backend="onnxruntime-web/wasm",
                 profile={"name": "web-1", "backend": "onnxruntime-web", "memory_available_gb": 2.0, "forward_s_per_token": 0.0021},
                 memory_gb=2.0, instance="0123456789ab"),
        m.LogRequest(v=1, run="edgezo", device="web-1", first=1, last=70000),
        m.LogChunk(v=1, run="edgezo", device="web-1", entries=[
            m.Update(v=1, run="edgezo", round=1, run_seed=0, rows=b"", fingerprint=""),
            m.Update(v=1, run="edgezo", round=2, run_seed=0, rows=bytes(19), fingerprint="34" * 32)], last=2),
        m.Refused(v=1, run="edgezo", device="web-1", key="", reason="device 'web-1' is not enrolled"),
    ]
    return [{"type": type(x).__name__, "hex": m.encode(x).hex(), "plain": plain(x)} for x in msgs]


def plain(x):
    """A message as JSON: bytes as hex, ints beyond 2^53 as decimal strings."""
    return _conv(_asdict(x))


def _conv(v):
    if isinstance(v, (bytes, bytearray)):
        return {"hex": v.hex()}
    if isinstance(v, dict):
        return {k: _conv(w) for k, w in v.items()}
    if isinstance(v, (list, tuple)):
        return [_conv(w) for w in v]
    if isinstance(v, int) and not isinstance(v, bool) and abs(v) > 2**53:
        return {"int": str(v)}
    return v


def _asdict(x):
    import msgspec

    out = {}
    for f in msgspec.structs.fields(x):
        v = getattr(x, f.name)
        if v is msgspec.UNSET:  # an optional field left out of the payload (Announce.onnx_sha256)
            continue
        out[f.name] = _asdict(v) if isinstance(v, msgspec.Struct) else [_asdict(e) if isinstance(e, msgspec.Struct) else e for e in v] if isinstance(v, list) else v
    return out


def bad_payloads() -> list[dict]:
    """Payloads the reference decoder refuses, with the reason's gist (the JS must refuse them too)."""
    import msgspec

    enc = msgspec.msgpack.encode
    ok = {"type": "assign", "v": 1, "run": "edgezo", "round": 7, "attempt": 0, "lr": 0.1, "timeout_s": 300.0, "tasks": []}
    cases = {
        "not msgpack": b"\xc1garbage",
        "a list, not a map": enc([1, 2, 3]),
        "unknown type": enc({**ok, "type": "bogus"}),
        "no type": enc({k: v for k, v in ok.items() if k != "type"}),
        "missing field": enc({k: v for k, v in ok.items() if k != "lr"}),
        "str for int": enc({**ok, "round": "7"}),
        "float for int": enc({**ok, "round": 7.0}),
        "bool for int": enc({**ok, "round": True}),
        "str for bytes": enc({"type": "result", "v": 1, "run": "e", "round": 1, "attempt": 0, "device": "d", "scalars": "abcd",
                              "examples": 1, "loss": 0.5, "forwards1": 0, "forwards2": 0, "flops": 0.0, "compute_s": 0.0, "fingerprint": ""}),
        "version 2": enc({**ok, "v": 2}),
        "bad task": enc({**ok, "tasks": [{"device": "d", "k": 1}]}),
        "truncated": m.encode(m.Assign(v=1, run="edgezo", round=7, attempt=0, lr=0.1, timeout_s=3.0, tasks=[]))[:-3],
        "oversized": b"\x80" + bytes(1 << 20),
    }
    out = []
    for why, payload in cases.items():
        try:
            m.decode(payload)
            raise AssertionError(f"the reference accepted {why}")
        except m.BadMessage as e:
            out.append({"why": why, "hex": payload.hex() if len(payload) < 4096 else None, "size": len(payload), "reference_error": str(e)})
    extra = enc({**ok, "extra_key": [1, {"x": None}], "lr": 1})  # unknown keys ignored; an int where a float goes
    out_ok = {"hex": extra.hex(), "plain": plain(m.decode(extra))}
    return out, out_ok


def local_round_vectors() -> list[dict]:
    """Each method's local round (probes, local updates between steps, scalars in canonical order)
    on tests/toy_executor.py's quadratic, whose loss the Node test re-implements as its forward."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from toy_executor import QuadraticExecutor

    out = []
    for method, variant, difference, stream in [("spzo", "joint", "central", 0), ("spzo", "clean", "central", 0),
                                                 ("mezo", "joint", "central", 0), ("fedzo", "joint", "forward", 2),
                                                 ("decomfl", "joint", "forward", 0)]:
        ex = QuadraticExecutor(n1=40, n2=70, coupling=0.3, seed=3)
        start = {n: v.copy() for n, v in ex.theta.items()}
        impl = method_of(method)
        probe = impl.probe(2, 3, 1e-3, variant, difference)
        batches = [0.1, -0.2, 0.3]
        result = impl.local_round(ex, batches, probe, 0.01, BIG, 4, stream)
        order = impl.directions(probe, BIG, 4, len(batches), stream)
        out.append({
            "method": method, "variant": variant, "difference": difference, "stream": stream, "p1": 2, "p2": 3, "eps": 1e-3,
            "lr": 0.01, "run_seed": str(BIG), "round": 4, "batches": batches,
            "theta": {n: v.astype("<f4").tobytes().hex() for n, v in start.items()},
            "t1": ex.t1.tolist(), "t2": ex.t2.tolist(), "c": ex.c, "m": ex.m,
            "directions": [[d.step, d.block, d.i, d.j, d.stream] for d in order],
            "scalars": [result.scalars[d] for d in order], "losses": result.losses,
            "after_local_f32_hex": {n: v.astype("<f4").tobytes().hex() for n, v in ex.theta.items()},
        })
    return out


LORA_OUT = Path(__file__).with_name("web_lora_vectors.json")


def lora_layout(run_seed: int, factors: str) -> tuple[list[tuple[str, int, np.ndarray]], dict[str, list[int]]]:
    """The round-0 LoRA trainables (PROTOCOL.md 9.3) of a real 3-layer LLaMA (hidden 40: rows of A
    not a multiple of 32; grouped-query v_proj of 20 outputs), as ``add_lora`` makes them, with
    their blocks (layers 0-1 block 1, layer 2 block 2), flattened, and their shapes. ``factors``
    "B": lora_B only (LoRA-FA)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from edgezo.backends.hf.lora import add_lora

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=50, hidden_size=40, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=64)
    model = LlamaForCausalLM(config)
    add_lora(model, 4, 8.0, ["q_proj", "v_proj"], run_seed)
    kept = (".lora_B",) if factors == "B" else (".lora_A", ".lora_B")
    chosen = [(n, p.detach().numpy()) for n, p in model.named_parameters() if n.endswith(kept)]
    return ([(n, 1 if int(n.split(".")[2]) < 2 else 2, a.reshape(-1).copy()) for n, a in chosen], {n: list(a.shape) for n, a in chosen})


def lora_case(run_seed: int, factors: str, method: str, distribution: str) -> dict:
    """Round 0 of the adapters, then three rounds of updates as seed-log entries (Update messages
    with the fingerprint after each), applied with the torch executor's arithmetic, and perturbed
    copies of the round-0 and the last replica."""
    tensors, shapes = lora_layout(run_seed, factors)
    start = [(n, b, d.copy()) for n, b, d in tensors]
    impl = method_of(method)
    probe = impl.probe(2, 3, 1e-3, "joint", impl.default_difference)
    rng = np.random.default_rng(run_seed % 1000)
    entries = []
    for rnd in (1, 2, 3):
        dirs = impl.directions(probe, run_seed, rnd, 2, 0)
        update = update_rule({d: float(rng.normal() * 10) for d in dirs}, 0.05, "joint")
        tensors = apply_torch(tensors, update, distribution)
        entries.append(m.encode(m.Update(v=1, run="edgezo", round=rnd, run_seed=run_seed, rows=m.pack_update(update),
                                         fingerprint=fingerprint(tensors))).hex())
    return {
        "run_seed": str(run_seed), "factors": factors, "trainable": f"lora:r=4,alpha=8,targets=q_proj+v_proj{',factors=B' if factors == 'B' else ''}",
        "rank": 4, "method": method, "distribution": distribution,
        "tensors": [{"name": n, "block": b, "shape": shapes[n], "f32_hex": d.astype("<f4").tobytes().hex()} for n, b, d in start],
        "fingerprint_round0": fingerprint(start), "entries_hex": entries,
        "after_f32_hex": [d.astype("<f4").tobytes().hex() for _, _, d in tensors], "fingerprint_after": fingerprint(tensors),
        "perturbed_round0_f32_hex": perturbed_lora(start, run_seed, distribution),
        "perturbed_after_f32_hex": perturbed_lora(tensors, run_seed, distribution),
    }


def perturbed_lora(tensors, run_seed: int, distribution: str) -> list[str]:
    """w + s·z1 + s·z2 (block-1 and block-2 directions of round 4, s = +1e-3) on copies, torch arithmetic."""
    d1, d2 = Direction(run_seed, 4, 0, 1, 0), Direction(run_seed, 4, 0, 2, 1, 0)
    out = []
    for name, block, data in tensors:
        t = torch.from_numpy(data.copy())
        for d in (d1, d2):
            if d.covers(block):
                add_scaled(t, d.tensor_key(name), 1e-3, distribution)
        out.append(t.numpy().astype("<f4").tobytes().hex())
    return out


def smollm2_lora_init(run_seed: int) -> dict:
    """Every lora_A of SmolLM2-135M's default LoRA (30 layers x q_proj, v_proj; [8, 576]: 276,480
    Gaussians) as ``lora_init`` makes them, as one SHA-256 over their float32 bytes in order."""
    import hashlib

    from edgezo.backends.hf.lora import lora_init

    names = [f"model.layers.{layer}.self_attn.{proj}.lora_A" for layer in range(30) for proj in ("q_proj", "v_proj")]
    h = hashlib.sha256()
    for name in names:
        h.update(lora_init(name, (8, 576), run_seed).numpy().astype("<f4").tobytes())
    return {"run_seed": str(run_seed), "rank": 8, "in_features": 576, "names": names, "sha256": h.hexdigest()}


def lora_vectors() -> dict:
    return {"cases": [lora_case(0, "AB", "spzo", perturb.RADEMACHER), lora_case(BIG, "AB", "mezo", perturb.GAUSSIAN),
                      lora_case(MAX64, "B", "spzo", perturb.RADEMACHER), lora_case(20261208, "AB", "spzo", perturb.RADEMACHER)],
            "smollm2_init": [smollm2_lora_init(0), smollm2_lora_init(BIG)]}


TOKENS_OUT = Path(__file__).with_name("web_tokens.json")
PROMPT_SENTENCES = [
    "a fine film", "it 's a charming and often affecting journey .", "unflinchingly bleak and desperate",
    "the acting , costumes , music , cinematography and sound are all astounding given the production 's austere locales .",
    "Ünïcödé, émojis 🎬🍿 and CJK 電影 — all in one review!", "numbers 1234567 and 3.14159, dates 2026-12-07",
    "   leading and trailing spaces   ", "tabs\tand\nnewlines inside", "{braces} are {not} formatted {{}}",
    "a " * 40 + "very long review that must be truncated from the left",
]


def token_vectors() -> dict:
    """Prompts (the SST-2 template over made-up sentences) tokenised by the default model's own
    tokenizer as edgezo batches them (backends/hf/tokenize.py), with max_length 24 so long ones are
    truncated from the left; the Node test runs the page's tokenisation over the same tokenizer.json."""
    from edgezo.backends.hf.source import resolve_model
    from edgezo.backends.hf.tokenize import encode_prompts, load_tokenizer, verbalizer_token_ids
    from edgezo.tasks import TASKS

    source = resolve_model(None)
    tokenizer = load_tokenizer(Path(source.folder))
    task = TASKS["sst2"]
    prompts = [task.causal_template.format(sentence=s) for s in PROMPT_SENTENCES]
    enc = encode_prompts(tokenizer, prompts, 24, "causal")
    single = [tokenizer(p)["input_ids"] for p in prompts]
    return {"model": source.folder.name, "tokenizer_sha256": _sha256(Path(source.folder) / "tokenizer.json"), "max_length": 24,
            "pad_token_id": tokenizer.pad_token_id, "sentences": PROMPT_SENTENCES, "prompts": prompts, "ids": single,
            "batch_input_ids": enc.input_ids.tolist(), "batch_attention_mask": enc.attention_mask.tolist(),
            "verbalizer_ids": verbalizer_token_ids(tokenizer, task.causal_verbalizers)}


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def signing_vectors() -> dict:
    """A fixed Ed25519 key (Ed25519 signatures are deterministic) and envelopes Python made with it,
    so the page's WebCrypto signing can be checked byte for byte, and its opening against Python's."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from edgezo import signing

    private = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
    key = signing._of(private)
    der = private.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    status = m.encode(m.Status(v=1, run="edgezo", device="web-1", state="online", instance="0123456789ab"))
    topic = "edgezo/edgezo/status/web-1"
    return {"pkcs8_hex": der.hex(), "public_text": key.text, "topic": topic, "payload_hex": status.hex(),
            "envelope_hex": signing.seal(key, topic, status).hex()}


def write_lora() -> None:
    LORA_OUT.write_text(json.dumps(lora_vectors(), separators=(",", ":")) + "\n")
    print(f"wrote {LORA_OUT} ({LORA_OUT.stat().st_size:,} bytes)")


def main() -> None:
    write_lora()
    TOKENS_OUT.write_text(json.dumps(token_vectors(), ensure_ascii=False, indent=1) + "\n")
    print(f"wrote {TOKENS_OUT}")
    bad, accepted = bad_payloads()
    vectors = {"keys": key_vectors(), "updates": update_vectors(), "batches": batch_vectors(), "messages": message_vectors(),
               "bad_payloads": bad, "accepted_extra": accepted, "local_rounds": local_round_vectors(),
               "signing": signing_vectors()}
    OUT.write_text(json.dumps(vectors, indent=None, separators=(",", ":"), default=_json) + "\n")
    print(f"wrote {OUT} ({OUT.stat().st_size:,} bytes)")


def _json(v):
    if isinstance(v, (bytes, bytearray)):
        return {"hex": v.hex()}
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    raise TypeError(type(v))


if __name__ == "__main__":
    import sys

    write_lora() if sys.argv[1:] == ["lora"] else main()  # `lora`: only web_lora_vectors.json
