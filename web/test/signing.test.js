/**
 * Signed messages (PROTOCOL.md §14) with WebCrypto Ed25519 against edgezo/signing.py: the same key
 * gives the byte-identical envelope Python made (Ed25519 is deterministic), Python's envelope
 * opens and a flipped byte does not; the signed link drops what its trust rule refuses; a device
 * whose key a signed job refuses ends with the line to enrol.
 */
import { test } from "node:test";
import assert from "node:assert/strict";

import { BrowserDevice, DeviceError } from "../src/device.js";
import { decode, encode } from "../src/messages.js";
import { deviceKey, importPkcs8, isEnvelope, open, parsePublic, publicText, seal, signedLink } from "../src/signing.js";
import { fromHex, toHex, vectors } from "./golden.js";

const v = vectors.signing;

test("the same key seals byte for byte as Python, and opens Python's envelope", async () => {
  const key = await importPkcs8(fromHex(v.pkcs8_hex));
  assert.equal(key.text, v.public_text);
  const sealed = await seal(v.topic, fromHex(v.payload_hex), key);
  assert.equal(toHex(sealed), v.envelope_hex);
  const opened = await open(v.topic, fromHex(v.envelope_hex));
  assert.equal(toHex(opened.payload), v.payload_hex);
  assert.equal(publicText(opened.signer), v.public_text);
  assert.deepEqual(parsePublic(`${v.public_text} coordinator`), key.publicRaw);
});

test("a moved, altered or cut envelope does not open", async () => {
  const envelope = fromHex(v.envelope_hex);
  await assert.rejects(open("edgezo/edgezo/status/web-2", envelope), /does not verify/);
  const altered = envelope.slice();
  altered[altered.length - 1] ^= 1;
  await assert.rejects(open(v.topic, altered), /does not verify/);
  await assert.rejects(open(v.topic, envelope.slice(0, 50)), /cut short/);
  assert.ok(isEnvelope(envelope) && !isEnvelope(fromHex(v.payload_hex)));
  assert.throws(() => parsePublic("ed25519:abc"), /not a key line/);
});

test("a page's key is made once per device id and kept", async () => {
  const store = new Map();
  const storage = { getItem: (k) => store.get(k) ?? null, setItem: (k, x) => store.set(k, x) };
  const first = await deviceKey("web-1", storage);
  const again = await deviceKey("web-1", storage);
  assert.equal(again.text, first.text);
  assert.notEqual((await deviceKey("web-2", storage)).text, first.text);
  const sealed = await seal("t/x", Uint8Array.of(0x80), again);
  assert.equal(publicText((await open("t/x", sealed)).signer), first.text);
});

/** An in-memory link: messages pushed by the test, publishes recorded. */
function memoryLink(inbox) {
  const sent = [];
  return { sent, connections: 1, connected: true, subscribe: async () => {}, publish: async (topic, payload) => { sent.push({ topic, payload }); },
    next: async () => inbox.shift() ?? null, reconnect() {}, close: async () => {} };
}

test("the signed link drops job messages not signed by the coordinator's key, and signs what it publishes", async () => {
  const coordinator = await importPkcs8(fromHex(v.pkcs8_hex));
  const stranger = await deviceKey("stranger", null);
  const page = await deviceKey("page", null);
  const topic = "edgezo/edgezo/round";
  const body = Uint8Array.of(0x80);
  const inner = memoryLink([{ topic, payload: await seal(topic, body, stranger) }, { topic, payload: await seal(topic, body, coordinator) }]);
  const warnings = [];
  const link = signedLink(inner, page, { coordinatorKey: coordinator.publicRaw, warn: (w) => warnings.push(w) });
  const got = await link.next(100);
  assert.deepEqual(got.payload, body);
  assert.match(warnings[0], /signed by ed25519:.*, not by the coordinator's key/);
  await link.publish("edgezo/edgezo/status/page", body);
  assert.equal(publicText((await open("edgezo/edgezo/status/page", inner.sent[0].payload)).signer), page.text);
});

test("a page whose key the signed job refuses ends with the line to enrol", async () => {
  const page = await deviceKey("web-9", null);
  const refused = encode({ type: "refused", v: 1, run: "edgezo", device: "web-9", key: page.text, reason: "device 'web-9' is not enrolled" });
  const device = new BrowserDevice({ deviceId: "web-9", run: "edgezo", instance: "x", link: { key: page }, model: {}, data: {} });
  // A refusal naming another key (a stranger's messages on this page's topics) is not ours.
  assert.doesNotThrow(() => device.checkRefused({ type: "refused", run: "edgezo", device: "web-9", key: "ed25519:someoneelse", reason: "x" }));
  const message = decode(refused);
  assert.throws(() => device.checkRefused(message), (e) => e instanceof DeviceError && e.message.includes(`add this page's line to the coordinator's --enrolled file: ${page.text} web-9`));
});
