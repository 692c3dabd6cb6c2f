/**
 * The JavaScript perturbation against the NumPy reference, bit for bit: PROTOCOL.md §9.8-§9.10's
 * golden vectors, and tests/golden/web_vectors.json (several keys, names, run seeds ≥ 2^63 and -1,
 * lengths that are not multiples of 32, an update of every method applied with the torch
 * executor's arithmetic, perturbed copies, fingerprints).
 */
import { test } from "node:test";
import assert from "node:assert/strict";

import { direction, fnv1a64, keyTrace, tensorKey, toU64 } from "../src/keys.js";
import { applyUpdate, fingerprint, gaussian, perturbedTensors, rademacher, words } from "../src/perturb.js";
import { sha256HexSync, Sha256 } from "../src/sha256.js";
import { f32FromHex, fromHex, toHex, vectors } from "./golden.js";

const hex64 = (x) => x.toString(16).toUpperCase().padStart(16, "0");
const signs = (arr) => Array.from(arr, (v) => (v < 0 ? "-" : "+")).join("");
const f32Hex = (arr) => Array.from(new Uint32Array(Float32Array.from(arr).buffer), (x) => x.toString(16).padStart(8, "0"));

test("PROTOCOL.md §9.8 key A and key B, every intermediate value", () => {
  const a = direction(42, 3, 1, 2, 0, 5, 0);
  const nameA = "model.layers.20.input_layernorm.weight";
  assert.equal(hex64(fnv1a64(nameA)), "27A966B2CDBA77CA");
  assert.deepEqual(keyTrace(a, nameA).map(hex64), "BDD732262FEB6E95 FA4F945599F9054A 5D396F908F79BB0B BF07C9ADFD634DD1 31B072EBBDD47290 EEED6C33D410C924 B8530D718321B3E0 BC24138B6A612774".split(" "));
  const keyA = tensorKey(a, nameA);
  assert.equal(hex64(keyA), "BC24138B6A612774");
  assert.deepEqual(Array.from(words(keyA, 0, 4), (w) => w.toString(16).toUpperCase().padStart(8, "0")), ["4EE7207B", "65EB2524", "B2A12867", "0E0B0DC2"]);
  assert.equal(signs(rademacher(keyA, 0, 8)), "--+----+");
  assert.equal(signs(rademacher(keyA, 32, 8)), "++-++-++");
  assert.equal(signs(rademacher(keyA, 1000003, 8)), "-+-+-+--");
  assert.deepEqual(f32Hex(gaussian(keyA, 0, 8)), "bf9d80b7 3f4c68a6 3de0c634 3e32824e c023e371 bf92d3cc bf81b3d7 3d8fb0c2".split(" "));

  const b = direction(0, 1, 0, 2, 0, 0, 0);
  assert.equal(hex64(fnv1a64("model.norm.weight")), "D6D6E5AFD11604E4");
  assert.deepEqual(keyTrace(b, "model.norm.weight").map(hex64), "E220A8397B1DCDAF 08B4FDA8C892B50E 44E5B98100C67FB0 BEDB5BF1CD5EC111 384864D2435A7449 A6075C312F023691 500F9C5DE6CDCC52 3C14C1EDEAF5B482".split(" "));
  const keyB = tensorKey(b, "model.norm.weight");
  assert.equal(signs(rademacher(keyB, 0, 8)), "+-++++--");
  assert.equal(signs(rademacher(keyB, 32, 8)), "+---+--+");
  assert.deepEqual(f32Hex(gaussian(keyB, 0, 8)), "3f3ef6fb be2cf733 c007bba0 be58d5ef bebdef19 bf2a86a8 3ffa7785 bfdcaa03".split(" "));
});

test("PROTOCOL.md §9.9 worked update and §9.10 fingerprints", () => {
  const replica = [{ name: "model.norm.weight", block: 2, data: new Float32Array(8).fill(1) }];
  assert.equal(fingerprint(replica), "43984b137fa3226e9c5b249babc3474e6783160b0c955d1099533286e894a8d9");
  applyUpdate(replica, [[direction(0, 1, 0, 1, 0, 0, 0), -1.25e-4], [direction(0, 1, 0, 2, 0, 0, 0), 3.0e-4], [direction(0, 1, 0, 2, 0, 1, 0), -2.0e-4]]);
  assert.equal(toHex(new Uint8Array(replica[0].data.buffer)), "6310803f72f97f3f4703803f4703803f4703803f6310803f72f97f3f3cdf7f3f");
  assert.equal(fingerprint(replica), "e3cfba6fa7f9252699f33ab568ff35f1ce15699561448b03d8b22a2fd9f82057");
});

test("PROTOCOL.md §9.3 LoRA initialisation values (round -1, Gaussian)", () => {
  const key = tensorKey(direction(0, -1, 0, 0, 0, 0, 0), "model.layers.0.self_attn.q_proj.lora_A");
  assert.equal(hex64(key), "5F66598BA9D97F4D");
  const scale = Math.fround(1 / 24);
  const row0 = Array.from(gaussian(key, 0, 8), (z) => Math.fround(z * scale));
  assert.deepEqual(row0, [0.004224490839987993, -0.009718840941786766, 0.04145438224077225, 0.02520100399851799,
    -0.014183646067976952, 0.021057171747088432, 0.024313054978847504, 0.08827328681945801]);
});

test("keys, words, signs and Gaussians of tests/golden (seeds ≥ 2^63, -1, round -1, non-ASCII names)", () => {
  assert.ok(vectors.keys.length >= 28);
  for (const v of vectors.keys) {
    const d = direction(...v.fields.map(BigInt).map((x, k) => (k === 0 ? x : Number(x))));
    const where = `${v.fields.join(",")} ${v.name}`;
    assert.equal(fnv1a64(v.name), BigInt(v.fnv), where);
    const key = tensorKey(d, v.name);
    assert.equal(key, BigInt(v.key), where);
    assert.deepEqual(Array.from(words(key, 0, 4)), v.words, where);
    for (const span of v.rademacher) assert.equal(signs(rademacher(key, span.start, span.count)), span.signs, `${where} ${span.start}+${span.count}`);
    assert.deepEqual(f32Hex(gaussian(key, 0, 8)), v.gaussian_f32_hex, where);
  }
});

test("seeds enter as BigInt or decimal strings, never through a float", () => {
  assert.equal(toU64(-1), (1n << 64n) - 1n);
  assert.equal(toU64("18446744073709551615"), (1n << 64n) - 1n);
  assert.throws(() => direction(2 ** 63, 0, 0, 0, 0), /not an exact integer/);
  assert.throws(() => direction(0.5, 0, 0, 0, 0), /not an exact integer/);
  assert.throws(() => direction("1e3", 0, 0, 0, 0), /not an integer/);
});

const replicaOf = (c) => c.tensors.map((t) => ({ name: t.name, block: t.block, data: f32FromHex(t.f32_hex) }));

test("updates of every method applied bit for bit as the torch executor does, with fingerprints", () => {
  for (const c of vectors.updates) {
    const replica = replicaOf(c);
    assert.equal(fingerprint(replica), c.fingerprint_before, c.method);
    const rows = c.update.map(([step, block, i, j, stream, coef]) => [direction(BigInt(c.run_seed), c.round, step, block, i, j, stream), coef]);
    applyUpdate(replica, rows);
    replica.forEach((t, k) => assert.equal(toHex(new Uint8Array(t.data.buffer)), c.after_f32_hex[k], `${c.method} ${t.name}`));
    assert.equal(fingerprint(replica), c.fingerprint_after, c.method);
  }
});

test("perturbed copies (a joint-SPZO probe on both blocks) equal the torch executor's, replica untouched", () => {
  for (const c of vectors.updates) {
    const replica = replicaOf(c);
    const before = fingerprint(replica);
    const seed = BigInt(c.run_seed);
    const copies = perturbedTensors(replica, [[direction(seed, 5, 1, 1, 0), -1e-3], [direction(seed, 5, 1, 2, 0, 2), -1e-3]]);
    copies.forEach((data, k) => assert.equal(toHex(new Uint8Array(data.buffer)), c.perturbed_f32_hex[k], `${c.method} ${k}`));
    assert.equal(fingerprint(replica), before);
  }
});

test("SHA-256: the standard vectors, and incremental updates equal one-shot", () => {
  const enc = new TextEncoder();
  assert.equal(sha256HexSync(new Uint8Array()), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  assert.equal(sha256HexSync(enc.encode("abc")), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  const long = enc.encode("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq");
  assert.equal(sha256HexSync(long), "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  const data = Uint8Array.from({ length: 1000 }, (_, k) => (k * 7) & 0xff);
  const h = new Sha256();
  for (let at = 0; at < data.length; at += 37) h.update(data.subarray(at, at + 37));
  assert.equal(h.hex(), sha256HexSync(data));
});
