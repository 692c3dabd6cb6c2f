/**
 * The browser device's protocol loop (PROTOCOL.md §7, §10), mirroring coordinator/device/device.py:
 * discover the job, check it (version, signing, model digest, trainable layout), check the device
 * id is free, go online, catch up by replaying the seed log, answer assignments with scalars, apply
 * updates, and leave with an offline status whatever ends it.
 *
 * Everything outside the protocol is passed in: `link` (MQTT: subscribe, publish, next(ms),
 * connections; link.js wraps mqtt.js), `lossOf(replica)` → `loss(batch, perturbation)` (a forward
 * of the model), `makeBatch(indices)` (tokenised examples), and `report(state)` for the page. So the
 * loop runs the same under Node's test runner (an in-memory broker or a real mosquitto) as in a tab.
 */

import { fnv1a64 } from "./keys.js";
import { checkLoraBase } from "./lora.js";
import { BadMessage, PROTOCOL_VERSION, decode, encode, packScalars } from "./messages.js";
import { directions, localRound, probeConfig, streamOf } from "./methods.js";
import { fingerprint, restore, snapshot } from "./perturb.js";
import { applyEntry, buildReplica, ReplicaError } from "./replica.js";
import { deviceBatchIndices } from "./rng.js";

const SIGNED_MAGIC = [0x45, 0x5a, 0x53, 0x31]; // "EZS1", PROTOCOL.md §14

/** An error that ends the device with a message a person can act on. */
export class DeviceError extends Error {}

/** The topics of one run (coordinator/wire/topics.py). */
export function topicsOf(run) {
  const prefix = `edgezo/${run}`;
  return {
    run, prefix, announce: `${prefix}/announce`, round: `${prefix}/round`, update: `${prefix}/update`,
    result: (d) => `${prefix}/result/${d}`, status: (d) => `${prefix}/status/${d}`, logreq: (d) => `${prefix}/logreq/${d}`,
    log: (d) => `${prefix}/log/${d}`,
    kindOf: (topic) => (topic.startsWith(`${prefix}/`) ? topic.slice(prefix.length + 1).split("/")[0] : ""),
  };
}

const NAME = /^[A-Za-z0-9_.-]{1,64}$/;

/** Run and device names become topic levels (PROTOCOL.md §2). */
export function checkName(kind, name) {
  if (!NAME.test(name ?? "")) throw new DeviceError(`${kind} name ${JSON.stringify(name)} must be 1-64 letters, digits, '.', '_' or '-' (it is used in MQTT topics)`);
  return name;
}

function isSigned(payload) {
  return payload.length >= 4 && SIGNED_MAGIC.every((b, k) => payload[k] === b);
}

/** The offline status (also the last will, prepared before connecting). */
export function offlineStatus(run, deviceId, instance) {
  return encode({ type: "status", v: PROTOCOL_VERSION, run, device: deviceId, state: "offline", instance });
}

export class BrowserDevice {
  /**
   * @param o.deviceId, o.run, o.instance   who this is (instance: random per page load)
   * @param o.link        the MQTT link (subscribe/publish/next/connections/close)
   * @param o.model       `{sha256, inputNames, baseTrainable: Map, lossOf(replica, distribution)}`
   * @param o.data        `{size, index, batcher(job)}`: the examples this device holds; `batcher` gives
   *                      `makeBatch(indices)` for the announced job (task, max_length), or throws why not
   * @param o.profile, o.memoryGb, o.backend   what the status tells the coordinator
   * @param o.report      `(patch) => void`: state for the page (`phase`, `round`, `loss`, ...)
   */
  constructor(o) {
    Object.assign(this, { announceTimeoutMs: 60000, logTimeoutMs: 30000, idCheckMs: 1000, profile: {}, memoryGb: 0, backend: "onnxruntime-web" }, o);
    checkName("device", this.deviceId);
    this.deferred = [];
    this.replicaRound = 0;
    this.answered = new Map();
    this.statusPublished = false;
    this.stopped = false;
    this.report = o.report ?? (() => {});
  }

  /** Serve the job until it ends; whatever ends it, the coordinator is told we left. */
  async start() {
    try {
      return await this.serveJob();
    } finally {
      await this.leave();
    }
  }

  /** Leave at once (the page is closing, or the person pressed stop). */
  stop() {
    this.stopped = true;
  }

  async serveJob() {
    const ann = await this.waitAnnouncement();
    if (ann.state === "finished") {
      this.report({ phase: "finished", message: `job ${ann.run} is over (it finished after round ${ann.round}/${ann.rounds}); nothing to do` });
      return "finished";
    }
    this.setup(ann);
    await this.checkIdFree();
    for (const topic of [this.t.round, this.t.update, this.t.log(this.deviceId)]) await this.link.subscribe(topic);
    this.connectionsSeen = this.link.connections;
    await this.publishStatus("online");
    this.report({ phase: "ready", message: `online in job ${ann.run}: waiting for an assignment` });
    if (await this.handleAnnounce(ann)) return "finished";
    return await this.serve();
  }

  // -- setup ------------------------------------------------------------------------------------
  async waitAnnouncement() {
    this.t = topicsOf(checkName("run", this.run));
    this.report({ phase: "discovering" });
    await this.link.subscribe(this.t.announce);
    const deadline = Date.now() + this.announceTimeoutMs;
    while (Date.now() < deadline) {
      const msg = await this.link.next(500);
      if (!msg || msg.topic !== this.t.announce || !msg.payload.length) continue;
      if (isSigned(msg.payload)) {
        throw new DeviceError(`job ${this.run} requires signed messages (PROTOCOL.md §14) and this page has no signing key: open the join link over HTTPS in a browser with Ed25519 (WebCrypto), or join with \`edgezo join\``);
      }
      try {
        return decode(msg.payload, "announce");
      } catch (e) {
        if (!(e instanceof BadMessage)) throw e;
        this.warn(`ignoring a bad announcement: ${e.message}`);
      }
    }
    throw new DeviceError(`no coordinator announced job ${this.run} on the broker within ${this.announceTimeoutMs / 1000} s; start \`edgezo coordinate\` first (or check the join link)`);
  }

  setup(ann) {
    if (ann.onnx_sha256 && this.model.sha256 !== ann.onnx_sha256) {
      throw new DeviceError(`wrong model: the job's ONNX export has SHA-256 ${ann.onnx_sha256.slice(0, 12)}..., the downloaded model ${this.model.sha256.slice(0, 12)}...; reload the page (the coordinator may have re-exported it)`);
    }
    this.job = ann.job;
    this.probe = probeConfig(this.job, this.job.p1, this.job.p2); // refuses a method the browser cannot run
    this.distribution = this.job.distribution ?? "rademacher";
    try {
      this.replica = buildReplica(ann.trainable, this.model.baseTrainable, this.model.inputNames);
      checkLoraBase(this.job, this.replica); // LoRA: the served adapters are the run seed's (PROTOCOL.md §9.3)
    } catch (e) {
      throw new DeviceError(e.message);
    }
    if (this.model.baseFingerprint && fingerprint(this.replica) !== this.model.baseFingerprint) {
      throw new DeviceError("the base trainable tensors the coordinator served do not give their stated fingerprint; reload the page");
    }
    try {
      this.makeBatch = this.data.batcher(this.job);
    } catch (e) {
      throw new DeviceError(`the data on this page does not fit job ${ann.run}: ${e.message}`);
    }
    this.loss = this.model.lossOf(this.replica, this.distribution);
    this.index = this.data.index ?? Number(fnv1a64(this.deviceId) % (1n << 31n));
    this.replicaRound = 0;
    this.announcement = ann;
    this.report({ phase: "joined", job: `${ann.run}: ${this.job.task} with ${this.job.method}`, rounds: ann.rounds, round: 0 });
  }

  /** Refuse to go online under an id another process holds (its retained status: online, another instance). */
  async checkIdFree() {
    const topic = this.t.status(this.deviceId);
    await this.link.subscribe(topic);
    const deadline = Date.now() + this.idCheckMs;
    while (Date.now() < deadline) {
      const msg = await this.link.next(100);
      if (!msg) continue;
      if (msg.topic !== topic) {
        this.deferred.push(msg);
        continue;
      }
      let status;
      try {
        status = msg.payload.length ? decode(msg.payload, "status") : null;
      } catch {
        continue;
      }
      if (status?.state === "online" && status.instance !== this.instance) {
        throw new DeviceError(`device id ${this.deviceId} is already online in job ${this.run} (another page or device uses it); open the join link without device-id to get a fresh one, or retry in about 90 s if that device lost power`);
      }
      if (status?.state === "offline") return;
    }
  }

  async publishStatus(state = "online") {
    const online = state === "online";
    const status = { type: "status", v: PROTOCOL_VERSION, run: this.run, device: this.deviceId, state, replica_round: this.replicaRound,
      examples: this.data.size, backend: this.backend, profile: online ? this.profile : {}, memory_gb: online ? this.memoryGb : 0,
      instance: this.instance };
    await this.link.publish(this.t.status(this.deviceId), encode(status), { retain: true });
    if (online) this.statusPublished = true;
  }

  /** Tell the coordinator this device is gone, once. */
  async leave() {
    if (!this.statusPublished) return;
    this.statusPublished = false;
    try {
      await this.publishStatus("offline");
    } catch (e) {
      this.warn(`could not publish the offline status: ${e.message}`);
    }
  }

  warn(text) {
    this.report({ warning: text });
  }

  // -- the loop ---------------------------------------------------------------------------------
  async serve() {
    while (!this.stopped) {
      if (this.link.connections !== this.connectionsSeen) {
        this.connectionsSeen = this.link.connections;
        await this.publishStatus("online"); // our last will marked us offline while we were away
      }
      const msg = this.deferred.length ? this.deferred.shift() : await this.link.next(1000);
      if (!msg || !msg.payload.length) continue;
      if (await this.dispatch(msg)) return "finished";
    }
    return "stopped";
  }

  /** Handle one message; true when the job is over. Bad messages are reported and dropped. */
  async dispatch(msg) {
    const kind = this.t.kindOf(msg.topic);
    try {
      if (isSigned(msg.payload)) throw new BadMessage("a signed message in an unsigned job");
      if (kind === "announce") return await this.handleAnnounce(decode(msg.payload, "announce"));
      if (kind === "round") await this.handleAssign(decode(msg.payload, "assign"));
      else if (kind === "update") await this.handleUpdate(decode(msg.payload, "update"));
      else if (kind === "log") this.checkRefused(decode(msg.payload)); // a late LogChunk: dropped
    } catch (e) {
      if (!(e instanceof BadMessage)) throw e;
      this.warn(`ignored a malformed message on ${msg.topic}: ${e.message}`);
    }
    return false;
  }

  async handleAnnounce(ann) {
    if (ann.run !== this.run) return false;
    this.announcement = ann;
    if (ann.state === "finished" && ann.round > this.replicaRound) {
      this.report({ phase: "finished", message: `job ${ann.run} is over (it finished after round ${ann.round}/${ann.rounds}) while this page was away` });
      return true;
    }
    if (ann.round > this.replicaRound) await this.catchUp(ann.round);
    if (ann.state === "finished") this.report({ phase: "finished", message: `job ${ann.run} finished after round ${ann.round}` });
    return ann.state === "finished";
  }

  async handleUpdate(update) {
    if (update.run !== this.run || update.round <= this.replicaRound) return;
    if (update.round > this.replicaRound + 1) await this.catchUp(update.round - 1);
    this.apply(update);
  }

  apply(update) {
    try {
      applyEntry(this.replica, update, this.distribution);
    } catch (e) {
      if (e instanceof ReplicaError) throw new DeviceError(e.message);
      throw e;
    }
    this.replicaRound = update.round;
    this.report({ round: this.replicaRound });
  }

  /** End with the coordinator's reason when a signed job refused this page's key (a refusal naming
   * another key, a stranger's, is not ours). */
  checkRefused(message) {
    const keyText = this.link.key?.text ?? "";
    if (message.type !== "refused" || message.device !== this.deviceId || message.key !== keyText) return;
    const line = keyText ? `${keyText} ${this.deviceId}` : "";
    throw new DeviceError(`job ${message.run} refused device ${this.deviceId}: ${message.reason}; ${line ? `have the operator add this page's line to the coordinator's --enrolled file: ${line}` : "this page does not sign (open it over HTTPS)"}`);
  }

  // -- work -------------------------------------------------------------------------------------
  async handleAssign(assign) {
    if (assign.run !== this.run) return;
    const task = assign.tasks.find((t) => t.device === this.deviceId);
    if (!task || assign.round <= this.replicaRound) return;
    if (assign.round > this.replicaRound + 1) await this.catchUp(assign.round - 1);
    let result = this.answered.get(assign.round);
    if (!result || result.attempt !== assign.attempt) result = await this.work(assign, task);
    this.answered = new Map([[assign.round, result]]);
    const payload = encode(result);
    await this.link.publish(this.t.result(this.deviceId), payload, { retain: false });
    this.report({ phase: "waiting", sent: { round: assign.round, bytes: payload.length, scalars: result.scalars.length / 4 } });
  }

  async work(assign, task) {
    const probe = probeConfig(this.job, task.p1, task.p2);
    const stream = streamOf(this.job.method, 1 + assign.tasks.findIndex((t) => t.device === task.device));
    const t0 = performance.now();
    const positions = Array.from({ length: this.data.size }, (_, k) => k);
    const indices = deviceBatchIndices(positions, task.batch, task.k, this.job.seed, assign.round, this.index);
    const batches = indices.map((ix) => this.makeBatch(ix));
    const before = snapshot(this.replica);
    const startPrint = fingerprint(this.replica);
    this.report({ phase: "working", round: assign.round, progress: `0/${task.k} steps`, message: null });
    let out;
    try {
      out = await localRound({ loss: this.loss, replica: this.replica, batches, probe, lr: assign.lr, runSeed: this.job.seed,
        round: assign.round, stream, distribution: this.distribution,
        onStep: (s) => this.report({ progress: `${s.step + 1}/${s.of} steps`, loss: s.loss, probeSeconds: (performance.now() - t0) / 1000 / s.forwards * 2 }) });
    } finally {
      restore(this.replica, before);
    }
    const seconds = (performance.now() - t0) / 1000;
    const loss = out.losses.reduce((a, b) => a + b, 0) / out.losses.length;
    this.report({ loss, lastScalars: out.scalars.slice(0, 16), probeSeconds: (2 * seconds) / out.forwards });
    return { type: "result", v: PROTOCOL_VERSION, run: this.run, round: assign.round, attempt: assign.attempt, device: this.deviceId,
      scalars: packScalars(out.scalars), examples: batches.reduce((s, b) => s + b.labels.length, 0), loss,
      forwards1: out.forwards, forwards2: out.forwards, flops: 0, compute_s: seconds, fingerprint: startPrint };
  }

  // -- catch-up ---------------------------------------------------------------------------------
  async catchUp(target) {
    if (target <= this.replicaRound) return;
    const start = this.replicaRound;
    const t0 = performance.now();
    this.report({ phase: "catching up", progress: `rounds ${start} to ${target}` });
    while (this.replicaRound < target) await this.fetchLog(this.replicaRound + 1, target);
    const ann = this.announcement;
    if (ann && ann.round === this.replicaRound && ann.fingerprint && fingerprint(this.replica) !== ann.fingerprint) {
      throw new DeviceError(`the replica after catching up to round ${target} differs from the coordinator's global model (a tampered seed log or another base model); reload the page`);
    }
    this.report({ phase: "ready", message: `caught up from round ${start} to ${target} by replay in ${((performance.now() - t0) / 1000).toFixed(1)} s` });
    await this.publishStatus("online");
  }

  /** Ask for entries first..last and apply what comes back (at most log_chunk of them). */
  async fetchLog(first, last) {
    const req = { type: "logreq", v: PROTOCOL_VERSION, run: this.run, device: this.deviceId, first, last };
    await this.link.publish(this.t.logreq(this.deviceId), encode(req), { retain: false });
    const mine = this.t.log(this.deviceId);
    const deadline = Date.now() + this.logTimeoutMs;
    while (Date.now() < deadline) {
      const msg = await this.link.next(500);
      if (!msg) continue;
      if (msg.topic !== mine) {
        this.deferred.push(msg); // handled after catching up, in order
        continue;
      }
      let chunk;
      try {
        chunk = decode(msg.payload);
        this.checkRefused(chunk);
        if (chunk.type !== "logchunk") throw new BadMessage(`expected a LogChunk message, got ${chunk.type}`);
      } catch (e) {
        if (!(e instanceof BadMessage)) throw e;
        this.warn(`ignored a malformed log chunk: ${e.message}`);
        continue;
      }
      if (chunk.last < first) throw new DeviceError(`the coordinator has only ${chunk.last} rounds, but round ${first} was announced`);
      let applied = 0;
      for (const update of chunk.entries) {
        if (update.round === this.replicaRound + 1) {
          this.apply(update);
          applied += 1;
        }
      }
      if (applied) return;
    }
    throw new DeviceError(`no seed-log entries from the coordinator within ${this.logTimeoutMs / 1000} s (asked for rounds ${first}-${last}); is the coordinator still running?`);
  }
}

