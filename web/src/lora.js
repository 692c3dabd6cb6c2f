/**
 * LoRA adapters in the page (PROTOCOL.md §9.3). The adapters are the ONNX graph's trainable
 * inputs, so the page perturbs, updates and fingerprints them exactly as it does norm tensors; the
 * only LoRA-specific part is where round 0 comes from. The page starts from the round-0 tensors the
 * coordinator serves (`/job/trainable.safetensors`, authoritative: the seed log's fingerprints
 * chain from them) and re-derives them here as a check it can make alone: `lora_A` is the canonical
 * Gaussian of the run seed (round -1) scaled by `1/sqrt(in_features)` in float32, `lora_B` is zero.
 * A coordinator serving another run's adapters is then named at once, instead of surfacing later as
 * a fingerprint mismatch at the first seed-log entry.
 */

import { direction, tensorKey } from "./keys.js";
import { gaussian } from "./perturb.js";

export const LORA_INIT_ROUND = -1;
export const DEFAULT_LORA_RANK = 8;
// The Gaussian uses Math.log and Math.cos, which ECMAScript does not require to be correctly
// rounded; the float32 result almost always hides a last-bit difference of the float64 formula,
// but "almost" is not "always", so the check allows one float32 ulp (a wrong seed or tensor is
// off everywhere by whole units). The served tensors, not these, enter the replica.
const ULPS = 1;

/** Whether a job's `trainable` setting is LoRA (`lora` or `lora:OPTIONS`). */
export function isLora(trainable) {
  return /^\s*lora\s*(:|$)/i.test(String(trainable ?? ""));
}

/** The rank `r` of a LoRA `trainable` setting (`lora:r=4,...`; 8 when not given, as §9.3 says). */
export function loraRank(trainable) {
  const options = String(trainable).split(":").slice(1).join(":");
  for (const item of options.split(",")) {
    const [key, value] = item.split("=").map((s) => s?.trim());
    if (key?.toLowerCase() === "r") {
      if (!/^\d+$/.test(value ?? "") || Number(value) < 1) throw new Error(`LoRA rank ${JSON.stringify(value)} in ${JSON.stringify(trainable)} is not a positive integer`);
      return Number(value);
    }
  }
  return DEFAULT_LORA_RANK;
}

/** §9.3: `A[e] = float32(gaussian(key, e)) * float32(1/sqrt(in_features))`, the product rounded to float32. */
export function loraInit(runSeed, name, rank, inFeatures) {
  const key = tensorKey(direction(runSeed, LORA_INIT_ROUND, 0, 0, 0, 0, 0), name);
  const z = gaussian(key, 0, rank * inFeatures);
  const scale = Math.fround(1 / Math.sqrt(inFeatures));
  for (let e = 0; e < z.length; e++) z[e] = Math.fround(z[e] * scale); // exact product of two float32, one rounding
  return z;
}

/** Distance in float32 units in the last place (both finite float32 values). */
function ulpDistance(a, b) {
  const ordered = (x) => {
    const bits = new Int32Array(Float32Array.of(x).buffer)[0];
    return bits < 0 ? -(bits & 0x7fffffff) : bits;
  };
  return Math.abs(ordered(a) - ordered(b));
}

/**
 * Check a round-0 replica's adapters against §9.3 for `job` (its `trainable` and `seed`); an
 * Error naming the first tensor that is not the canonical initialisation. Non-LoRA jobs pass.
 */
export function checkLoraBase(job, replica) {
  if (!isLora(job.trainable)) return;
  const rank = loraRank(job.trainable);
  for (const { name, data } of replica) {
    if (name.endsWith(".lora_B")) {
      const k = data.findIndex((x) => x !== 0);
      if (k >= 0) throw new Error(`the served round-0 adapter ${name} is not zero (element ${k} is ${data[k]}); PROTOCOL.md §9.3 starts lora_B at zero: the coordinator served another model's adapters`);
    } else if (name.endsWith(".lora_A")) {
      if (data.length % rank !== 0) throw new Error(`${name} has ${data.length} elements, not a multiple of the job's LoRA rank ${rank}`);
      const expected = loraInit(job.seed, name, rank, data.length / rank);
      const k = data.findIndex((x, e) => ulpDistance(x, expected[e]) > ULPS);
      if (k >= 0) throw new Error(`the served round-0 adapter ${name} is not the canonical initialisation of run seed ${job.seed} (element ${k}: ${data[k]} vs ${expected[k]}): the coordinator served another run's adapters`);
    }
  }
}
