/**
 * The device loop over a real mosquitto (MQTT over WebSockets, mqtt.js as in the page), against a
 * test double of the coordinator speaking PROTOCOL.md with the messages this package encodes
 * byte-equal to Python's: discovery, id check, online status, catch-up by seed-log replay with
 * fingerprints, an assignment answered with the scalars of a local round, a live update, the end;
 * and the failures a person must be told about (a wrong model, a tampered seed log, a duplicate
 * id, a malformed message, the broker going away). The model is a pure-JavaScript stand-in.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import mqtt from "mqtt";

import { BrowserDevice, offlineStatus, topicsOf } from "../src/device.js";
import { connectLink } from "../src/link.js";
import { decode, encode, packUpdate, unpackScalars, unpackUpdate } from "../src/messages.js";
import { directions, localRound, probeConfig, updateRule } from "../src/methods.js";
import { lossFromForward } from "../src/model.js";
import { applyUpdate, fingerprint } from "../src/perturb.js";
import { encodeBatch, fillTemplate } from "../src/prompts.js";
import { deviceBatchIndices } from "../src/rng.js";
import { startMosquitto } from "./support/mosquitto.js";

const RUN = "webtest";
const SEED = (1n << 63n) + 5n;
const LAYOUT = [["model.layers.0.input_layernorm.weight", 1, 37], ["model.layers.1.input_layernorm.weight", 2, 37], ["model.norm.weight", 2, 70]];
const JOB = { task: "sst2", method: "spzo", rounds: 4, local_steps: 2, p1: 1, p2: 2, lr: 0.01, eps: 1e-3, batch_size: 4, max_length: 16,
  trainable: "norm", seed: SEED, variant: "joint", distribution: "rademacher" };
const MODEL_SHA = "ab".repeat(32);
let broker;

before(async () => { broker = await startMosquitto(); });
after(async () => { await broker.stop(); });

const base = () => new Map(LAYOUT.map(([name, , n], k) => [name, Float32Array.from({ length: n }, (_, e) => 1 + 0.01 * ((e * (k + 3)) % 7))]));
const replicaOf = (tensors) => LAYOUT.map(([name, block]) => ({ name, block, data: new Float32Array(tensors.get(name)) }));

/** A tiny "language model": label logits from the tokens and the trainable tensors, smooth in both. */
async function tinyForward(batch, tensors) {
  const [rows, width] = batch.dims;
  const logits = new Float32Array(rows * 2);
  for (let b = 0; b < rows; b++) {
    for (let v = 0; v < 2; v++) {
      let s = 0;
      for (const { data } of tensors) {
        for (let e = 0; e < data.length; e++) {
          const id = Number(batch.inputIds[b * width + (e % width)]) * Number(batch.attentionMask[b * width + (e % width)]);
          s += data[e] * Math.sin(0.01 * id * (e + 1) + v) * 0.05;
        }
      }
      logits[b * 2 + v] = s;
    }
  }
  return { labelLogits: logits };
}

const SENTENCES = Array.from({ length: 12 }, (_, k) => ({ fields: { sentence: `review number ${k} ${"good ".repeat(k % 4)}` }, label: k % 2 }));
const charEncode = (text) => [...text].map((c) => c.charCodeAt(0) % 500);
function makeBatch(indices) {
  const prompts = indices.map((k) => fillTemplate("Review: {sentence}\nSentiment:", SENTENCES[k].fields));
  return { ...encodeBatch(charEncode, prompts, JOB.max_length, 2), labels: indices.map((k) => SENTENCES[k].label) };
}

/** The seed log of `rounds` rounds: real update rows from made-up scalars, with fingerprints. */
function seedLog(rounds) {
  const replica = replicaOf(base());
  const probe = probeConfig(JOB, JOB.p1, JOB.p2);
  const entries = [];
  for (let r = 1; r <= rounds; r++) {
    const rows = updateRule(directions(probe, SEED, r, JOB.local_steps).map((d, k) => [d, Math.sin(r * 7 + k) * 3]), JOB.lr, "joint");
    applyUpdate(replica, rows);
    entries.push({ type: "update", v: 1, run: RUN, round: r, run_seed: SEED, rows: packUpdate(rows), fingerprint: fingerprint(replica) });
  }
  return entries;
}

/** The coordinator's side, as a test double on a TCP mqtt.js client. */
async function coordinator(log, on = broker) {
  const t = topicsOf(RUN);
  const client = await mqtt.connectAsync(`mqtt://127.0.0.1:${on.tcp}`, { clientId: `coord-${Math.random()}`, protocolVersion: 4, reconnectPeriod: 200 });
  const seen = [];
  await client.subscribeAsync([`${t.prefix}/status/+`, `${t.prefix}/result/+`, `${t.prefix}/logreq/+`], { qos: 1 });
  client.on("message", (topic, payload) => {
    if (!payload.length) return;
    const msg = decode(new Uint8Array(payload));
    seen.push({ topic, msg });
    if (msg.type === "logreq") {
      const entries = log.filter((e) => e.round >= msg.first && e.round <= msg.last);
      client.publish(t.log(msg.device), Buffer.from(encode({ type: "logchunk", v: 1, run: RUN, device: msg.device, entries, last: log.length })), { qos: 1 });
    }
  });
  const publish = (topic, message, retain = false) => client.publishAsync(topic, message instanceof Uint8Array ? Buffer.from(message) : Buffer.from(encode(message)), { qos: 1, retain });
  const announce = (round, extra = {}) => publish(t.announce, { type: "announce", v: 1, run: RUN, state: "running",
    model: { name: "tiny", revision: "", digest: "cd".repeat(32) }, job: JOB, split: 1, round, rounds: JOB.rounds,
    fingerprint: round ? log[round - 1].fingerprint : fingerprint(replicaOf(base())), log_chunk: 50, trainable: LAYOUT, onnx_sha256: MODEL_SHA, ...extra }, true);
  const waitFor = async (pred, ms = 8000) => {
    const deadline = Date.now() + ms;
    while (Date.now() < deadline) {
      const hit = seen.find(pred);
      if (hit) return hit;
      await new Promise((r) => setTimeout(r, 20));
    }
    throw new Error("the coordinator double did not see the expected message");
  };
  const clear = async () => { for (const topic of [t.announce, t.round]) await publish(topic, new Uint8Array(), true); };
  return { t, client, seen, publish, announce, waitFor, clear, close: async () => { await clear(); await client.endAsync(); } };
}

function startDevice(deviceId, overrides = {}, on = broker) {
  const states = [];
  const t = topicsOf(RUN);
  const instance = `i${Math.random().toString(16).slice(2, 14)}`;
  const link = connectLink(mqtt, { url: `ws://127.0.0.1:${on.ws}`, clientId: `edgezo-${deviceId}-${instance}`,
    will: { topic: t.status(deviceId), payload: offlineStatus(RUN, deviceId, instance) }, onEvent: (e) => states.push(e) });
  const device = new BrowserDevice({ deviceId, run: RUN, instance, link, idCheckMs: 300, announceTimeoutMs: 5000, logTimeoutMs: 3000,
    model: { sha256: MODEL_SHA, inputNames: LAYOUT.map(([n]) => n), baseTrainable: base(), lossOf: lossFromForward(tinyForward) },
    data: { size: SENTENCES.length, batcher: () => makeBatch, index: 1 }, report: (patch) => states.push(patch), ...overrides });
  return { device, states, link, done: device.start().finally(() => link.close()) };
}

test("a page's device joins, catches up by replay, answers an assignment, follows an update and leaves at the end", async () => {
  const log = seedLog(3);
  const c = await coordinator(log);
  await c.announce(2);
  const { states, done } = startDevice("web-a");
  await c.waitFor((s) => s.msg.type === "status" && s.msg.state === "online" && s.msg.replica_round === 2);
  const task = { device: "web-a", k: 2, p1: 1, p2: 2, batch: 4 };
  await c.publish(c.t.round, { type: "assign", v: 1, run: RUN, round: 3, attempt: 0, lr: JOB.lr, timeout_s: 60, tasks: [{ ...task, device: "python-1" }, task] }, true);
  const { msg: result } = await c.waitFor((s) => s.msg.type === "result");
  assert.equal(result.fingerprint, log[1].fingerprint, "the result names the global model after round 2");
  assert.equal(result.examples, 8);
  assert.equal(result.forwards1, 8); // K · P1 · P2 · 2 full forwards
  // The same local round computed here from the round-2 model gives the same float32 scalars.
  const replica = replicaOf(base());
  for (const e of log.slice(0, 2)) applyUpdate(replica, unpackUpdate(e));
  const batches = deviceBatchIndices([...SENTENCES.keys()], 4, 2, SEED, 3, 1).map(makeBatch);
  const expected = await localRound({ loss: lossFromForward(tinyForward)(replica, "rademacher"), replica, batches,
    probe: probeConfig(JOB, 1, 2), lr: JOB.lr, runSeed: SEED, round: 3 });
  assert.deepEqual(unpackScalars(result.scalars), Array.from(Float32Array.from(expected.scalars)));
  await c.publish(c.t.update, log[2]);
  await waitState(states, (s) => s.round === 3);
  await c.publish(c.t.announce, { type: "announce", v: 1, run: RUN, state: "finished", model: { name: "tiny", revision: "", digest: "cd".repeat(32) },
    job: JOB, split: 1, round: 3, rounds: 3, fingerprint: log[2].fingerprint, log_chunk: 50, trainable: LAYOUT, onnx_sha256: MODEL_SHA }, true);
  assert.equal(await done, "finished");
  await c.waitFor((s) => s.msg.type === "status" && s.msg.state === "offline" && s.msg.device === "web-a");
  await c.close();
});

async function waitState(states, pred, ms = 5000) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (states.some(pred)) return;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`no such state; saw ${JSON.stringify(states.slice(-5))}`);
}

test("a tampered seed log stops the device with the entry named, and it says it left", async () => {
  const log = seedLog(2);
  const tampered = { ...log[0], rows: packUpdate(unpackUpdate(log[0]).map(([d, coef]) => [d, coef * 1.5])) };
  const c = await coordinator([tampered, log[1]]);
  await c.announce(2);
  const { done } = startDevice("web-b");
  await assert.rejects(done, /replica diverged at seed-log entry 1.*tampered or corrupted seed log/);
  await c.waitFor((s) => s.msg.type === "status" && s.msg.state === "offline" && s.msg.device === "web-b");
  await c.close();
});

test("a model whose digest is not the announced export's is refused before going online", async () => {
  const c = await coordinator(seedLog(1));
  await c.announce(1, { onnx_sha256: "ef".repeat(32) });
  const { done } = startDevice("web-c");
  await assert.rejects(done, /wrong model: the job's ONNX export has SHA-256 efefefefefef/);
  assert.ok(!c.seen.some((s) => s.msg.type === "status" && s.msg.device === "web-c"));
  await c.close();
});

test("a device id another page holds online is refused", async () => {
  const c = await coordinator(seedLog(1));
  await c.announce(0);
  await c.publish(c.t.status("web-d"), { type: "status", v: 1, run: RUN, device: "web-d", state: "online", instance: "someoneelse" }, true);
  const { done } = startDevice("web-d");
  await assert.rejects(done, /device id web-d is already online/);
  await c.publish(c.t.status("web-d"), new Uint8Array(), true);
  await c.close();
});

test("a malformed message is reported and dropped; the device still answers the next assignment", async () => {
  const c = await coordinator(seedLog(1));
  await c.announce(0);
  const { device, states, done } = startDevice("web-e");
  await c.waitFor((s) => s.msg.type === "status" && s.msg.state === "online" && s.msg.device === "web-e");
  await c.publish(c.t.round, Uint8Array.from([0x81, 0xa4, 0x74, 0x79, 0x70, 0x65, 0xa3, 0x62, 0x61, 0x64]), true);
  await waitState(states, (s) => /ignored a malformed message on edgezo\/webtest\/round/.test(s.warning ?? ""));
  await c.publish(c.t.round, { type: "assign", v: 1, run: RUN, round: 1, attempt: 0, lr: JOB.lr, timeout_s: 60,
    tasks: [{ device: "web-e", k: 1, p1: 1, p2: 1, batch: 2 }] }, true);
  const { msg } = await c.waitFor((s) => s.msg.type === "result" && s.msg.device === "web-e");
  assert.equal(msg.scalars.length, 4);
  device.stop();
  assert.equal(await done, "stopped");
  await c.close();
});

test("when the broker goes away the page says so, and when it is back the device is online again", async () => {
  const own = await startMosquitto();
  const c = await coordinator(seedLog(1), own);
  await c.announce(0);
  const { device, states, done } = startDevice("web-f", {}, own);
  const online = () => c.seen.filter((s) => s.msg.type === "status" && s.msg.state === "online" && s.msg.device === "web-f").length;
  await c.waitFor(() => online() >= 1);
  await own.stop();
  await waitState(states, (s) => s.connected === false);
  const again = await startMosquitto({ tcp: own.tcp, ws: own.ws }); // a restarted broker: nothing retained, sessions gone
  await c.waitFor(() => online() >= 2, 15000); // the device republished its online status once reconnected
  device.stop();
  assert.equal(await done, "stopped");
  await c.client.endAsync();
  await again.stop();
});
