/**
 * What a browser device tells the coordinator about itself (Status.profile, PROTOCOL.md §5): a
 * measured profile in the format of device_profiles/README.md, from one timed forward in this tab
 * and the memory the browser lets it see, so `coordinate --plan` gives it work that fits.
 *
 * The page knows neither the model's layer sizes nor its FLOPs, so the throughput is estimated from
 * the export's size: an fp32 export holds about `bytes / 4` weights, and a forward costs about two
 * FLOPs per weight per token. The raw measurement goes in the description, which a person reads.
 */

import { Float } from "./msgpack.js";

const GIB = 2 ** 30;

/** The memory this tab may use, GiB: the heap limit Chrome exposes, the device memory others give
 * (capped at 8 by browsers), bounded by WebAssembly's 4 GiB; `fallback` when none is exposed. */
export function memoryLimitGb({ deviceMemory, jsHeapSizeLimit } = {}, fallback = 2) {
  const heap = jsHeapSizeLimit ? jsHeapSizeLimit / GIB : null;
  const total = deviceMemory ?? heap ?? fallback;
  return { total, available: Math.min(4, total, heap ?? total / 2) };
}

/** A format-1 measured profile: one backend named `backend`, throughput from `forwardSeconds` for
 * `tokens` tokens of a model of `modelBytes` fp32 bytes. Floats are boxed so they encode as floats. */
export function browserProfile({ deviceId, backend, forwardSeconds, tokens, modelBytes, memory, userAgent = "", cores = 0 }) {
  const perToken = forwardSeconds / tokens;
  const gflops = Math.max(0.01, (2 * (modelBytes / 4) * tokens) / forwardSeconds / 1e9);
  const profile = {
    name: deviceId, kind: "measured", format: 1,
    description: `browser device (${backend}); measured in the page: one forward of ${tokens} tokens in ${forwardSeconds.toFixed(3)} s, ${(perToken * 1000).toFixed(2)} ms per token; ${userAgent}`.slice(0, 400),
    memory_total_gb: new Float(memory.total), memory_available_gb: new Float(memory.available),
    // the page runs a full forward for every probe (no block-1 activations kept): the planner
    // charges each block-2 probe t1 + t2 (edgezo.profiles.BackendProfile.reuses_block1)
    backends: [{ name: backend, dtype: "float32", gflops: new Float(gflops), bytes_per_param: new Float(4), reuses_block1: false }],
  };
  if (cores) profile.cores = cores;
  return profile;
}
