/**
 * The page's replica of the global model: the trainable tensors only (the frozen weights live in
 * the ONNX session), in the announced order (PROTOCOL.md §9.2), started from the base model's
 * values and moved only by seed-log entries, each checked against its fingerprint (§9.9, §9.10).
 */

import { unpackUpdate } from "./messages.js";
import { applyUpdate, fingerprint } from "./perturb.js";

/** Raised when the replica cannot be trusted: the device stops and says why. */
export class ReplicaError extends Error {}

/**
 * The replica from the announced layout (`[[name, block, numel], ...]`), the base tensors (a Map
 * of name → Float32Array) and the ONNX graph's trainable input names, refusing any difference.
 */
export function buildReplica(announced, base, inputNames) {
  if (!announced || announced.length === 0) {
    throw new ReplicaError("the coordinator did not announce its trainable tensors (an older edgezo): the page cannot check what it trains");
  }
  const names = announced.map(([name]) => name);
  if (inputNames && JSON.stringify(inputNames) !== JSON.stringify(names)) {
    const k = names.findIndex((n, i) => n !== inputNames[i]);
    throw new ReplicaError(`the ONNX model's trainable inputs differ from the job's at position ${k}: ${JSON.stringify(inputNames[k])} vs ${JSON.stringify(names[k])}; the coordinator served another export`);
  }
  return announced.map(([name, block, numel]) => {
    const data = base.get(name);
    if (!data) throw new ReplicaError(`the base trainable tensors lack ${name}`);
    if (data.length !== Number(numel)) throw new ReplicaError(`${name} has ${data.length} elements, the job announces ${numel}`);
    return { name, block: Number(block), data: new Float32Array(data) };
  });
}

/** Apply one seed-log entry (an Update message) and check its fingerprint. */
export function applyEntry(replica, update, distribution) {
  applyUpdate(replica, unpackUpdate(update), distribution);
  const now = fingerprint(replica);
  if (update.fingerprint && now !== update.fingerprint) {
    throw new ReplicaError(`replica diverged at seed-log entry ${update.round}: fingerprint ${now.slice(0, 12)} != the coordinator's ${update.fingerprint.slice(0, 12)} (a tampered or corrupted seed log, or another base model); reload the page to resynchronise`);
  }
  return now;
}
