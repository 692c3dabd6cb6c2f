/**
 * LoRA in the page (PROTOCOL.md §9.3) against the Python reference, bit for bit
 * (tests/golden/web_lora_vectors.json, written by tests/golden/make_web_vectors.py from a real
 * LLaMA with `add_lora`): the round-0 adapters re-derived from the run seed, the check that refuses
 * adapters of another run, perturbed copies, seed-log replay with every entry's fingerprint, and
 * every lora_A of SmolLM2-135M's default LoRA (276,480 Gaussians) as one digest.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";

import { direction } from "../src/keys.js";
import { checkLoraBase, isLora, loraInit, loraRank } from "../src/lora.js";
import { decode } from "../src/messages.js";
import { fingerprint, perturbedTensors, roundedSum } from "../src/perturb.js";
import { applyEntry, buildReplica, ReplicaError } from "../src/replica.js";
import { Sha256 } from "../src/sha256.js";
import { f32FromHex, fromHex, toHex } from "./golden.js";

const lora = JSON.parse(readFileSync(new URL("../../tests/golden/web_lora_vectors.json", import.meta.url), "utf8"));
const hexOf = (data) => toHex(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
const jobOf = (c) => ({ trainable: c.trainable, seed: BigInt(c.run_seed) });

/** The page's replica as device.js builds it: announced layout + served base tensors. */
function replicaOf(c) {
  const base = new Map(c.tensors.map((t) => [t.name, f32FromHex(t.f32_hex)]));
  const announced = c.tensors.map((t) => [t.name, t.block, t.shape[0] * t.shape[1]]);
  return buildReplica(announced, base, c.tensors.map((t) => t.name));
}

test("the LoRA setting: recognised, and its rank (8 by default)", () => {
  assert.ok(isLora("lora") && isLora("lora:r=4,factors=B") && isLora(" LoRA:r=2"));
  assert.ok(!isLora("norm") && !isLora("names:lora_B") && !isLora(undefined));
  assert.equal(loraRank("lora"), 8);
  assert.equal(loraRank("lora:targets=q_proj+v_proj,r=16,alpha=4"), 16);
  assert.throws(() => loraRank("lora:r=0"), /not a positive integer/);
});

test("round-0 lora_A re-derived from the run seed equals Python's bit for bit; lora_B is zero", () => {
  assert.equal(lora.cases.length, 4);
  for (const c of lora.cases) {
    for (const t of c.tensors) {
      const served = f32FromHex(t.f32_hex);
      if (t.name.endsWith(".lora_A")) assert.equal(hexOf(loraInit(BigInt(c.run_seed), t.name, t.shape[0], t.shape[1])), t.f32_hex, t.name);
      else assert.ok(served.every((x) => x === 0), t.name);
    }
    const replica = replicaOf(c);
    assert.equal(fingerprint(replica), c.fingerprint_round0, c.run_seed);
    checkLoraBase(jobOf(c), replica); // passes on the canonical adapters
  }
  assert.ok(lora.cases.some((c) => c.factors === "B" && c.tensors.every((t) => t.name.endsWith(".lora_B"))));
});

test("every lora_A of SmolLM2-135M's default LoRA, as Python makes them (seed 0 and seed ≥ 2^63)", () => {
  for (const v of lora.smollm2_init) {
    const hash = new Sha256();
    for (const name of v.names) {
      const a = loraInit(BigInt(v.run_seed), name, v.rank, v.in_features);
      hash.update(new Uint8Array(a.buffer));
    }
    assert.equal(hash.hex(), v.sha256, v.run_seed);
  }
});

test("adapters of another run, tampered, or a non-zero lora_B are refused with the tensor named", () => {
  const c = lora.cases[0];
  assert.throws(() => checkLoraBase({ ...jobOf(c), seed: 1n }, replicaOf(c)), /q_proj\.lora_A is not the canonical initialisation of run seed 1/);
  const tampered = replicaOf(c);
  tampered[0].data[17] = Math.fround(tampered[0].data[17] * 1.001 + 1e-3);
  assert.throws(() => checkLoraBase(jobOf(c), tampered), /element 17/);
  const moved = replicaOf(c);
  moved[1].data[3] = 1e-6;
  assert.throws(() => checkLoraBase(jobOf(c), moved), /lora_B is not zero \(element 3/);
  const oneUlp = replicaOf(c); // a last-bit difference of the float64 Gaussian is tolerated (ECMAScript's Math is not correctly rounded)
  new Int32Array(oneUlp[0].data.buffer)[5] += 1;
  checkLoraBase(jobOf(c), oneUlp);
  assert.throws(() => checkLoraBase({ ...jobOf(c), trainable: "lora:r=3" }, replicaOf(c)), /not a multiple of the job's LoRA rank 3/);
  checkLoraBase({ trainable: "norm", seed: 1n }, [{ name: "model.norm.weight", block: 2, data: new Float32Array(4) }]);
});

test("seed-log replay onto the adapters: each entry's fingerprint checked, the result Python's bytes", () => {
  for (const c of lora.cases) {
    const replica = replicaOf(c);
    for (const entry of c.entries_hex) applyEntry(replica, decode(fromHex(entry), "update"), c.distribution);
    replica.forEach((t, k) => assert.equal(hexOf(t.data), c.after_f32_hex[k], `${c.run_seed} ${t.name}`));
    assert.equal(fingerprint(replica), c.fingerprint_after);
  }
});

test("a tampered seed-log entry stops the replay at that entry", () => {
  const c = lora.cases[0];
  const replica = replicaOf(c);
  applyEntry(replica, decode(fromHex(c.entries_hex[0]), "update"), c.distribution);
  const second = decode(fromHex(c.entries_hex[1]), "update");
  second.rows = Uint8Array.from(second.rows);
  second.rows[second.rows.length - 1] ^= 0x01; // one bit of one coefficient
  assert.throws(() => applyEntry(replica, second, c.distribution), (e) => e instanceof ReplicaError && /seed-log entry 2/.test(e.message));
});

test("perturbed adapters (block-1 and block-2 directions) equal the torch executor's, round 0 and after replay", () => {
  for (const c of lora.cases) {
    const seed = BigInt(c.run_seed);
    const probe = [[direction(seed, 4, 0, 1, 0), 1e-3], [direction(seed, 4, 0, 2, 1, 0), 1e-3]];
    const replica = replicaOf(c);
    perturbedTensors(replica, probe, c.distribution).forEach((data, k) => assert.equal(hexOf(data), c.perturbed_round0_f32_hex[k], `${c.run_seed} ${k}`));
    assert.equal(fingerprint(replica), c.fingerprint_round0); // the replica itself is untouched
    for (const entry of c.entries_hex) applyEntry(replica, decode(fromHex(entry), "update"), c.distribution);
    perturbedTensors(replica, probe, c.distribution).forEach((data, k) => assert.equal(hexOf(data), c.perturbed_after_f32_hex[k], `${c.run_seed} ${k}`));
  }
});

test("one rounding of w + s·z, as a fused multiply-add: the float64 tie case too", () => {
  // w = 1, s = 2^-24 (1 + 2^-12), z = 1 - 4095·2^-24: the exact sum is 1 + 2^-24 + 2^-60, just above
  // the float32 tie 1 + 2^-24; float64 drops the 2^-60 and ties to even (1.0); torch's add_ gives
  // 1 + 2^-23 (checked with torch on this machine).
  const s = 2 ** -24 * (1 + 2 ** -12);
  const z = 1 - 4095 * 2 ** -24;
  assert.equal(Math.fround(s), s);
  assert.equal(Math.fround(z), z);
  assert.equal(Math.fround(1 + s * z), 1);
  assert.equal(roundedSum(1, s * z), 1.0000001192092896);
  assert.equal(roundedSum(1, -s * z), 0.9999999403953552); // below 1 the spacing halves: 1 - 2^-24 is a float32
  assert.equal(roundedSum(-1, -s * z), -1.0000001192092896);
  assert.equal(roundedSum(1, 2 ** -24), 1); // an exact tie stays a tie: to even
  assert.equal(roundedSum(1 + 2 ** -23, 2 ** -24), 1 + 2 ** -22);
  for (let k = 0; k < 2000; k++) { // away from ties it is fround(w + p)
    const w = Math.fround(1 + Math.sin(k)), p = Math.fround(Math.cos(k) * 1e-3) * Math.fround(Math.sin(3 * k));
    assert.equal(roundedSum(w, p), Math.fround(w + p));
  }
});
