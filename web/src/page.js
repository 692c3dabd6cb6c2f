/**
 * The join page (issue 26): a phone joins a federated job by opening
 * `/join?device-id=NAME[&shard=I/N][&token=T]`. It reads `/job/config.json`, holds its data (a
 * shard the coordinator offers, or a file picked or pasted here), loads the tokenizer and the ONNX
 * export (WebGPU where the browser has a real adapter and the build ships it, else WASM: see
 * runtime.js), checks
 * the export's SHA-256, frees the model bytes once the session exists, measures itself, and runs
 * the device loop over MQTT-over-WebSockets. Everything a person (or a test) needs to see is in
 * `window.edgezoState` and on screen: job, round, loss, time per probe, what was sent, battery,
 * network, and a clear message for every failure.
 */

import mqtt from "mqtt";
import { Tokenizer } from "@huggingface/tokenizers";

import { batcher, examplesFor, parseRecords } from "./data.js";
import { BrowserDevice, checkName, offlineStatus, topicsOf } from "./device.js";
import { connectLink } from "./link.js";
import { lossFromForward, ortForward } from "./model.js";
import { browserProfile, memoryLimitGb } from "./profile.js";
import { taskOf } from "./prompts.js";
import { chooseRuntime, executionProviders, probeWebgpu, WASM_BUNDLE, WEBGPU_BUNDLE, webgpuSessionError } from "./runtime.js";
import { readSafetensors } from "./safetensors.js";
import { sha256Hex } from "./sha256.js";
import { deviceKey, isEnvelope, parsePublic, seal, signedLink } from "./signing.js";
import { jobTokenizer } from "./tokenizer.js";
import { render, showDataForm } from "./view.js";

const state = {
  phase: "loading", job: null, round: null, rounds: null, loss: null, lastScalars: null, sent: null, bytesSent: 0, error: null,
  warning: null, progress: null, probeSeconds: null, backend: null, connection: null, battery: null, network: null, message: null,
};
window.edgezoState = state;

function report(patch) {
  if (patch.sent) state.bytesSent += patch.sent.bytes;
  Object.assign(state, patch);
  render(state);
}

async function fetchOk(url, what) {
  let response;
  try {
    response = await fetch(url);
  } catch (e) {
    throw new Error(`could not reach the coordinator for ${what} (${url}): ${e.message}`);
  }
  if (!response.ok) throw new Error(`the coordinator answered ${response.status} for ${what} (${url})`);
  return response;
}

/** The examples: the offered shard (`shard=I/N` in the join link), else what the person gives. */
async function loadRecords(config, shard) {
  if (shard) {
    if (!config.data_url) throw new Error(`the join link asks for shard ${shard}, but the coordinator offers no data (start it with --web-data)`);
    const [i] = shard.split("/").map(Number);
    const text = await (await fetchOk(`${config.data_url}?shard=${encodeURIComponent(shard)}`, `data shard ${shard}`)).text();
    return { records: parseRecords(text, "shard.jsonl"), index: i };
  }
  report({ phase: "waiting for data", message: "pick or paste this device's examples (JSONL or CSV with the task's columns and label)" });
  const { text, name } = await showDataForm(config.task);
  return { records: parseRecords(text, name), index: null };
}

/** The model bytes, read with progress, checked against the digest the coordinator published.
 * With a Content-Length (the coordinator always sends one) each chunk is copied into one buffer
 * as it arrives and dropped, so the download never holds the model twice. */
async function downloadModel(config) {
  const response = await fetchOk(config.model_url, "the model");
  const total = Number(response.headers.get("Content-Length")) || 0;
  const reader = response.body.getReader();
  let bytes = new Uint8Array(total);
  const parts = []; // only without a Content-Length, or if the body runs past it
  let got = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    if (got + value.length <= bytes.length) bytes.set(value, got);
    else parts.push(value);
    got += value.length;
    report({ progress: `model ${(got / 2 ** 20).toFixed(0)}${total ? ` of ${(total / 2 ** 20).toFixed(0)}` : ""} MiB` });
  }
  if (parts.length || got !== bytes.length) bytes = joinChunks(bytes.subarray(0, Math.min(got, bytes.length)), parts.splice(0));
  const sha = await sha256Hex(bytes);
  if (config.model_sha256 && sha !== config.model_sha256) {
    throw new Error(`wrong model digest: the downloaded model has SHA-256 ${sha.slice(0, 12)}..., the coordinator published ${config.model_sha256.slice(0, 12)}... (a corrupted or tampered download); reload the page`);
  }
  return { bytes, sha };
}

function joinChunks(head, chunks) {
  const out = new Uint8Array(head.length + chunks.reduce((n, c) => n + c.length, 0));
  out.set(head, 0);
  let at = head.length;
  for (const c of chunks) { out.set(c, at); at += c.length; }
  return out;
}

/** onnxruntime-web: the WebGPU build where the browser has a real (not software) adapter and this
 * build ships it, else WASM (`src/runtime.js`); `?ep=wasm|webgpu` forces one, `?threads=N` sets
 * WASM threads. The WebGPU files are requested only when WebGPU is chosen. */
async function loadRuntime(params) {
  const choice = await chooseRuntime(params.get("ep"), await probeWebgpu(navigator.gpu), () =>
    fetch(`/assets/${WEBGPU_BUNDLE}`, { method: "HEAD" }).then((r) => r.ok, () => false));
  if (choice.warning) report({ warning: choice.warning });
  const ort = await import(/* @vite-ignore */ `/assets/${choice.ep === "webgpu" ? WEBGPU_BUNDLE : WASM_BUNDLE}`);
  ort.env.wasm.wasmPaths = "/assets/";
  // Run inference in a worker: a forward of SmolLM2 takes seconds, and on the main thread it would
  // stop mqtt.js from answering the broker's keepalive (seen: the broker dropped a page mid-probe).
  ort.env.wasm.proxy = choice.ep === "wasm";
  const threads = Number(params.get("threads")) || (self.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1);
  ort.env.wasm.numThreads = threads;
  return { ort, ep: choice.ep, choice, threads };
}

async function loadSession(ort, choice, config) {
  report({ phase: "downloading the model" });
  let { bytes, sha } = await downloadModel(config);
  report({ phase: "loading the model", progress: null });
  const size = bytes.length;
  // In a worker (WASM), onnxruntime-web transfers the buffer to it (this thread's copy is then
  // detached); without one it copies the bytes into its heap. Either way no reference is kept here
  // once the session exists, so the download can be collected.
  let session;
  try {
    session = await ort.InferenceSession.create(bytes, { executionProviders: executionProviders(choice) });
  } catch (e) {
    if (choice.ep === "webgpu") throw webgpuSessionError(choice, e);
    throw e;
  }
  bytes = null;
  return { session, sha, size };
}

/** The trainable tensors the job starts from (web/CONTRACT.md: /job/trainable.safetensors). */
async function loadBaseTrainable(config) {
  if (!config.trainable_url) throw new Error("the coordinator serves no trainable tensors (trainable_url in /job/config.json); update edgezo on the coordinator");
  const file = readSafetensors(new Uint8Array(await (await fetchOk(config.trainable_url, "the trainable tensors")).arrayBuffer()));
  return file;
}

/** One timed forward on a synthetic batch (after a warm-up): the profile's throughput. */
async function measure(forward, base, inputNames) {
  const [rows, width] = [4, 32];
  const batch = { inputIds: new BigInt64Array(rows * width).fill(100n), attentionMask: new BigInt64Array(rows * width).fill(1n), dims: [rows, width] };
  const tensors = inputNames.map((name) => ({ name, data: base.tensors.get(name) }));
  await forward(batch, tensors);
  const t0 = performance.now();
  await forward(batch, tensors);
  return { seconds: (performance.now() - t0) / 1000, tokens: rows * width };
}

function watchDevice(link) {
  navigator.getBattery?.().then((b) => {
    const show = () => report({ battery: `${Math.round(b.level * 100)}%${b.charging ? ", charging" : ""}` });
    show();
    b.addEventListener("levelchange", show);
    b.addEventListener("chargingchange", show);
  }).catch(() => {});
  const net = () => report({ network: `${navigator.onLine ? "online" : "offline"}${navigator.connection ? `, ${navigator.connection.effectiveType ?? "?"}${navigator.connection.downlink ? ` ${navigator.connection.downlink} Mbit/s` : ""}` : ""}` });
  net();
  navigator.connection?.addEventListener?.("change", net);
  addEventListener("online", () => { net(); link.reconnect(); });
  addEventListener("offline", net);
  document.addEventListener("visibilitychange", () => { if (!document.hidden) link.reconnect(); }); // the tab came back
}

async function main() {
  const params = new URLSearchParams(location.search);
  const deviceId = checkName("device", params.get("device-id"));
  const shard = params.get("shard");
  const config = await (await fetchOk("/job/config.json", "the job's settings")).json();
  const run = config.run ?? config.prefix?.split("/")[1];
  const data = await loadRecords(config, shard);
  report({ phase: "loading the tokenizer" });
  const tok = jobTokenizer(Tokenizer, await (await fetchOk(config.tokenizer_url, "the tokenizer")).json(), config.pad_token_id ?? null);
  const { ort, ep, choice, threads } = await loadRuntime(params);
  report({ backend: `onnxruntime-web ${ep}${ep === "wasm" ? `, ${threads} thread${threads > 1 ? "s" : ""}` : ""} (${choice.reason})` });
  const { session, sha, size } = await loadSession(ort, choice, config);
  const base = await loadBaseTrainable(config);
  const inputNames = session.inputNames.slice(2);
  const forward = ortForward(ort, session, base.shapes);
  report({ phase: "measuring this device" });
  const timing = await measure(forward, base, inputNames);
  const memory = memoryLimitGb({ deviceMemory: navigator.deviceMemory, jsHeapSizeLimit: performance.memory?.jsHeapSizeLimit });
  const profile = browserProfile({ deviceId, backend: `onnxruntime-web-${ep}`, forwardSeconds: timing.seconds, tokens: timing.tokens,
    modelBytes: size, memory, userAgent: navigator.userAgent, cores: navigator.hardwareConcurrency || 0 });
  await runDevice({ params, config, run, deviceId, data, tok, sha, base, inputNames, forward, profile, memory, ep });
}

/** Whether the job is signed: a short connection reads its retained announcement (as the Python
 * device's discovery connection does), before the real one is made with the right last will. */
async function jobIsSigned(config, run, deviceId, credentials) {
  const probe = connectLink(mqtt, { url: config.broker_ws, clientId: `edgezo-${deviceId}-probe`, ...credentials });
  try {
    await probe.subscribe(topicsOf(run).announce);
    const deadline = Date.now() + 10000;
    while (Date.now() < deadline) {
      const msg = await probe.next(500);
      if (msg?.payload.length) return isEnvelope(msg.payload);
    }
    return false; // no announcement yet: the device loop waits for it and says so
  } finally {
    await probe.close();
  }
}

/** The MQTT link: signing with this page's key in a signed job (its line shown for enrolment). */
async function makeLink({ params, config, run, deviceId, instance, onEvent }) {
  const token = params.get("token");
  const credentials = { username: config.username ?? (token ? deviceId : undefined), password: config.password ?? token ?? undefined };
  const signed = await jobIsSigned(config, run, deviceId, credentials);
  const key = signed ? await deviceKey(deviceId) : null;
  const statusTopic = topicsOf(run).status(deviceId);
  const will = offlineStatus(run, deviceId, instance);
  const link = connectLink(mqtt, { url: config.broker_ws, clientId: `edgezo-${deviceId}-${instance}`, ...credentials, onEvent,
    will: { topic: statusTopic, payload: key ? await seal(statusTopic, will, key) : will } });
  link.deviceId = deviceId;
  if (!key) return link;
  const coordinatorKey = params.get("coordinator-key") ?? config.coordinator_key ?? null;
  report({ message: `job ${run} is signed: this page signs with the key line "${key.text} ${deviceId}" (the operator enrols it with coordinate --enrolled)` });
  return signedLink(link, key, { coordinatorKey: coordinatorKey && parsePublic(coordinatorKey), warn: (w) => report({ warning: w }) });
}

async function runDevice({ params, config, run, deviceId, data, tok, sha, base, inputNames, forward, profile, memory, ep }) {
  const instance = Array.from(crypto.getRandomValues(new Uint8Array(6)), (b) => b.toString(16).padStart(2, "0")).join("");
  let closing = false;
  const onEvent = (e) => closing || report(e.error ? { connection: `error: ${e.error}` }
    : { connection: e.connected ? "connected" : `lost: the broker at ${config.broker_ws} is unreachable; reconnecting every second` });
  const link = await makeLink({ params, config, run, deviceId, instance, onEvent });
  watchDevice(link);
  const device = new BrowserDevice({
    deviceId, run, instance, link, profile, memoryGb: memory.available, backend: `onnxruntime-web/${ep}`, report,
    model: { sha256: sha, inputNames, baseTrainable: base.tensors, baseFingerprint: base.metadata.fingerprint ?? null, lossOf: lossFromForward(forward) },
    data: { size: data.records.length, index: data.index,
      batcher: (job) => batcher(examplesFor(data.records, taskOf(job.task)), taskOf(job.task), tok.encode, job.max_length, tok.padId) },
  });
  addEventListener("pagehide", () => device.stop());
  report({ phase: "connecting" });
  try {
    const outcome = await device.start();
    report({ phase: outcome === "finished" ? "finished" : "stopped", progress: null });
  } finally {
    closing = true;
    await link.close();
    report({ connection: "closed" });
  }
}

main().catch((e) => report({ phase: "error", error: e.message }));
