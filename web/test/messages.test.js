/**
 * Message encoding against Python's (coordinator/wire/messages.py via msgspec): every kind decodes from
 * the reference's bytes to the reference's values, re-encodes to the same bytes, and every payload
 * the reference refuses is refused here too.
 */
import { test } from "node:test";
import assert from "node:assert/strict";

import { BadMessage, decode, encode, packScalars, packUpdate, unpackScalars, unpackUpdate } from "../src/messages.js";
import { Float } from "../src/msgpack.js";
import { fromHex, toHex, vectors } from "./golden.js";

/** The fixture's JSON form of a value: bytes as {hex}, big integers as {int}. */
function jsonForm(v) {
  if (v instanceof Uint8Array) return { hex: toHex(v) };
  if (typeof v === "bigint") return { int: v.toString() };
  if (Array.isArray(v)) return v.map(jsonForm);
  if (v && typeof v === "object") return Object.fromEntries(Object.entries(v).map(([k, w]) => [k, jsonForm(w)]));
  return v;
}

test("PROTOCOL.md §4's Assign: its 113 bytes on the wire", () => {
  const assign = { type: "assign", v: 1, run: "edgezo", round: 7, attempt: 0, lr: 0.00025, timeout_s: 300.0,
    tasks: [{ device: "dev-a", k: 10, p1: 1, p2: 8, batch: 16 }] };
  const wire = "88a474797065a661737369676ea17601a372756ea6656467657a6fa5726f756e6407a7617474656d707400a26c72cb3f30624d"
    + "d2f1a9fca974696d656f75745f73cb4072c00000000000a57461736b739185a6646576696365a56465762d61a16b0aa2703101"
    + "a2703208a5626174636810";
  assert.equal(toHex(encode(assign)), wire);
  assert.deepEqual(decode(fromHex(wire)), assign);
});

test("PROTOCOL.md §4's last will decodes with every default, and encodes as the reference", () => {
  const will = decode(encode({ type: "status", v: 1, run: "edgezo", device: "dev-a", state: "offline" }));
  assert.deepEqual(will, { type: "status", v: 1, run: "edgezo", device: "dev-a", state: "offline", replica_round: 0, examples: 0,
    backend: "", profile: {}, memory_gb: 0.0, instance: "" });
});

test("every message kind the reference encodes: same values, byte-equal re-encoding", () => {
  const kinds = new Set();
  for (const fixture of vectors.messages) {
    const message = decode(fromHex(fixture.hex));
    kinds.add(message.type);
    const { type, ...fields } = message;
    if (fields.entries) fields.entries = fields.entries.map(({ type: _, ...entry }) => entry); // nested Updates carry their tag
    assert.deepEqual(jsonForm(fields), fixture.plain, fixture.type);
    if (message.type === "status" && message.profile.memory_available_gb !== undefined) {
      // An Any-typed map keeps no int/float distinction once decoded: the device sends its
      // profile's float fields boxed, as here, to write them as the reference does.
      message.profile.memory_available_gb = new Float(message.profile.memory_available_gb);
    }
    assert.equal(toHex(encode(message)), fixture.hex, `${fixture.type} re-encoded`);
  }
  assert.deepEqual([...kinds].sort(), ["announce", "assign", "logchunk", "logreq", "refused", "result", "status", "update"]);
});

test("a run seed of 2^64-1 survives decoding as BigInt, and an Update's rows give its directions", () => {
  const update = decode(fromHex(vectors.messages.find((f) => f.type === "Update").hex), "update");
  assert.equal(update.run_seed, (1n << 64n) - 1n);
  const [[d, coef]] = unpackUpdate(update);
  assert.deepEqual([d.runSeed, d.round, d.step, d.block, d.i, d.j, d.stream, coef], [(1n << 64n) - 1n, 2, 0, 1, 0, 0, 0, -1.25e-4]);
});

test("every payload the reference refuses is refused, with a reason", () => {
  assert.ok(vectors.bad_payloads.length >= 12);
  for (const bad of vectors.bad_payloads) {
    const payload = bad.hex === null ? new Uint8Array(bad.size).fill(0x80, 0, 1) : fromHex(bad.hex);
    assert.throws(() => decode(payload), BadMessage, bad.why);
  }
  assert.throws(() => decode(fromHex(vectors.bad_payloads.find((b) => b.why === "version 2").hex)), /protocol version 2/);
  assert.throws(() => decode(fromHex(vectors.bad_payloads.find((b) => b.why === "missing field").hex)), /missing required field `lr`/);
  assert.throws(() => decode(fromHex(vectors.bad_payloads.find((b) => b.why === "str for bytes").hex)), /Expected `bytes`, got `str` - at `\$.scalars`/);
});

test("unknown keys are ignored and an int is accepted where a float goes, as the reference does", () => {
  const { type, ...fields } = decode(fromHex(vectors.accepted_extra.hex));
  assert.equal(type, "assign");
  assert.deepEqual(jsonForm(fields), vectors.accepted_extra.plain);
});

test("a message of another kind than expected is refused by name", () => {
  const status = encode({ type: "status", v: 1, run: "edgezo", device: "d", state: "online" });
  assert.throws(() => decode(status, "assign"), /expected a Assign message, got Status/);
});

test("scalars pack as float32 little-endian (PROTOCOL.md §6: 0.1234 is 24 b9 fc 3d)", () => {
  assert.equal(toHex(packScalars([0.1234])), "24b9fc3d");
  assert.deepEqual(unpackScalars(packScalars([1.5, -2])), [1.5, -2]);
  assert.throws(() => unpackScalars(new Uint8Array(5)), /whole number of float32/);
});

test("update rows pack and unpack as the reference's 19-byte records; bad rows are refused", () => {
  for (const c of vectors.updates) {
    const msg = decode(fromHex(c.update_msg_hex), "update");
    const rows = unpackUpdate(msg);
    assert.equal(toHex(packUpdate(rows)), c.rows_hex);
    assert.deepEqual(rows.map(([d, coef]) => [d.step, d.block, d.i, d.j, d.stream, coef]), c.update);
    assert.equal(rows[0][0].runSeed, BigInt(c.run_seed));
  }
  const base = { v: 1, run: "e", round: 1, run_seed: 0, fingerprint: "" };
  assert.throws(() => unpackUpdate({ ...base, rows: new Uint8Array(20) }), /not whole records/);
  const nan = new Uint8Array(19);
  new DataView(nan.buffer).setFloat64(11, NaN, true);
  assert.throws(() => unpackUpdate({ ...base, rows: nan }), /non-finite coefficient/);
});
