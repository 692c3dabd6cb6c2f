/**
 * Signed messages (PROTOCOL.md §14) with WebCrypto's Ed25519, as edgezo/signing.py and
 * coordinator/wire/signed_link.py: every non-empty payload travels as
 * "EZS1" | signer's public key (32) | signature (64) | payload, the signature over
 * "EZS1" | topic (UTF-8) | 0x00 | payload. A page signs with its own key (made once per device id
 * and kept in the browser's storage, so an enrolled page stays enrolled), shows its public line for
 * the operator's enrolment file, and may check the coordinator's key. WebCrypto exists only in a
 * secure context (HTTPS, or localhost): a page without it cannot join a signed job, and says so.
 */

const MAGIC = new TextEncoder().encode("EZS1");
export const OVERHEAD = 100;
const COORDINATOR_KINDS = ["announce", "round", "update", "log"];

/** A payload that carries an envelope (a MessagePack map never starts with "E"). */
export function isEnvelope(payload) {
  return payload.length >= 4 && MAGIC.every((b, k) => payload[k] === b);
}

const b64 = (bytes) => btoa(String.fromCharCode(...bytes));

/** `ed25519:<base64>`: a public key as in lines, logs and Refused.key. */
export function publicText(raw) {
  return `ed25519:${b64(raw)}`;
}

/** The 32 raw bytes of `ed25519:<base64> [name]`; anything else is an error naming the form. */
export function parsePublic(text) {
  const first = String(text).trim().split(/\s+/)[0] ?? "";
  let raw = null;
  try {
    raw = first.startsWith("ed25519:") ? Uint8Array.from(atob(first.slice(8)), (c) => c.charCodeAt(0)) : null;
  } catch {
    raw = null;
  }
  if (!raw || raw.length !== 32) throw new Error(`${JSON.stringify(first.slice(0, 60))} is not a key line 'ed25519:<base64> [name]' as the coordinator prints it`);
  return raw;
}

function signedBytes(topic, payload) {
  const t = new TextEncoder().encode(topic);
  const out = new Uint8Array(MAGIC.length + t.length + 1 + payload.length);
  out.set(MAGIC, 0);
  out.set(t, MAGIC.length);
  out.set(payload, MAGIC.length + t.length + 1);
  return out;
}

/** A signing key: `{privateKey, publicRaw, text}` from WebCrypto keys. */
async function keyOf(privateKey, publicKey) {
  const publicRaw = new Uint8Array(await crypto.subtle.exportKey("raw", publicKey));
  return { privateKey, publicRaw, text: publicText(publicRaw) };
}

/** This page's key for `deviceId`: the one kept in `storage` (localStorage), else a new one kept there. */
export async function deviceKey(deviceId, storage = globalThis.localStorage) {
  if (!globalThis.crypto?.subtle) throw new Error("this page has no WebCrypto (not a secure context): open the join link over HTTPS to join a signed job");
  const slot = `edgezo-key-${deviceId}`;
  const kept = storage?.getItem(slot);
  if (kept) {
    const jwk = JSON.parse(kept);
    const privateKey = await crypto.subtle.importKey("jwk", jwk, { name: "Ed25519" }, false, ["sign"]);
    const publicKey = await crypto.subtle.importKey("jwk", { kty: jwk.kty, crv: jwk.crv, x: jwk.x }, { name: "Ed25519" }, true, ["verify"]);
    return keyOf(privateKey, publicKey);
  }
  const pair = await crypto.subtle.generateKey({ name: "Ed25519" }, true, ["sign", "verify"]);
  storage?.setItem(slot, JSON.stringify(await crypto.subtle.exportKey("jwk", pair.privateKey)));
  return keyOf(pair.privateKey, pair.publicKey);
}

/** A key from a PKCS#8 DER private key (tests: the same key as a Python fixture's). */
export async function importPkcs8(der) {
  const privateKey = await crypto.subtle.importKey("pkcs8", der, { name: "Ed25519" }, true, ["sign"]);
  const jwk = await crypto.subtle.exportKey("jwk", privateKey);
  const publicKey = await crypto.subtle.importKey("jwk", { kty: jwk.kty, crv: jwk.crv, x: jwk.x }, { name: "Ed25519" }, true, ["verify"]);
  return keyOf(privateKey, publicKey);
}

/** The envelope of `payload` on `topic`, signed with `key`; an empty payload stays empty. */
export async function seal(topic, payload, key) {
  if (!payload.length) return payload;
  const signature = new Uint8Array(await crypto.subtle.sign("Ed25519", key.privateKey, signedBytes(topic, payload)));
  const out = new Uint8Array(OVERHEAD + payload.length);
  out.set(MAGIC, 0);
  out.set(key.publicRaw, 4);
  out.set(signature, 36);
  out.set(payload, OVERHEAD);
  return out;
}

/** `{payload, signer}` of a received message: the envelope checked and taken off (signer null:
 * unsigned). Throws naming the problem when an envelope is cut short or does not verify. */
export async function open(topic, payload) {
  if (!isEnvelope(payload)) return { payload, signer: null };
  if (payload.length < OVERHEAD) throw new Error(`an envelope of ${payload.length} bytes is cut short`);
  const signer = payload.slice(4, 36);
  const body = payload.slice(OVERHEAD);
  const key = await crypto.subtle.importKey("raw", signer, { name: "Ed25519" }, false, ["verify"]);
  const ok = await crypto.subtle.verify("Ed25519", key, payload.slice(36, OVERHEAD), signedBytes(topic, body));
  if (!ok) throw new Error(`the signature by ${publicText(signer)} does not verify`);
  return { payload: body, signer };
}

const same = (a, b) => a && b && a.length === b.length && a.every((x, k) => x === b[k]);

/**
 * A link that signs what it publishes with `key` and opens what it receives, dropping (and telling
 * `warn`) what does not verify, and, with `coordinatorKey`, the job topics not signed by it; its own
 * status topic must carry its own key (a stranger's fake "online" there would make it refuse itself).
 */
export function signedLink(link, key, { coordinatorKey = null, warn = () => {} } = {}) {
  const kindOf = (topic) => topic.split("/")[2] ?? "";
  const trust = (topic, signer) => {
    const kind = kindOf(topic);
    if (coordinatorKey && COORDINATOR_KINDS.includes(kind) && !same(signer, coordinatorKey)) {
      return `${signer ? `signed by ${publicText(signer)}` : "unsigned"}, not by the coordinator's key`;
    }
    if (kind === "status" && topic.endsWith(`/${link.deviceId ?? ""}`) && signer && !same(signer, key.publicRaw)) return "signed by another key than this page's";
    return null;
  };
  return {
    key,
    get connected() { return link.connected; },
    get connections() { return link.connections; },
    client: link.client,
    subscribe: (topic) => link.subscribe(topic),
    publish: async (topic, payload, opts) => link.publish(topic, await seal(topic, payload, key), opts),
    async next(ms) {
      const deadline = Date.now() + ms;
      for (;;) {
        const msg = await link.next(Math.max(0, deadline - Date.now()));
        if (!msg || !msg.payload.length) return msg;
        try {
          const { payload, signer } = await open(msg.topic, msg.payload);
          const why = trust(msg.topic, signer);
          if (!why) return { ...msg, payload, signer };
          warn(`dropped a message on ${msg.topic}: ${why}`);
        } catch (e) {
          warn(`dropped a message on ${msg.topic}: ${e.message}`);
        }
        if (Date.now() >= deadline) return null;
      }
    },
    reconnect: () => link.reconnect(),
    close: () => link.close(),
  };
}
