/**
 * Which onnxruntime-web build the page runs on: WASM (always shipped) or WebGPU (only when the
 * page was built with `npm run build -- --webgpu`, and only fetched when it will be used: its
 * WebAssembly is 29 MB). Automatic choice: WebGPU only on a real adapter (a software fallback such
 * as SwiftShader is slower than WASM) of a build that ships it; a person may force one with
 * `?ep=wasm|webgpu`, and a forced WebGPU that cannot run says why instead of falling back quietly.
 * Pure decisions here; `page.js` asks the browser and fetches.
 */

export const WEBGPU_BUNDLE = "ort.webgpu.bundle.min.mjs";
export const WASM_BUNDLE = "ort.wasm.bundle.min.mjs";
const CHOICES = ["wasm", "webgpu"];

/** Raised when the runtime a person forced cannot run here: the message says what to do. */
export class RuntimeChoiceError extends Error {}

/**
 * What the browser offers, as `chooseRuntime` needs it: `adapter` is null (no WebGPU, or no
 * adapter) or `{fallback: bool, name: string}`. Asks for an adapter only when the browser has
 * WebGPU; nothing is downloaded.
 */
export async function probeWebgpu(gpu) {
  if (!gpu) return { webgpu: false, adapter: null };
  const adapter = await gpu.requestAdapter().catch(() => null);
  if (!adapter) return { webgpu: true, adapter: null };
  const info = adapter.info ?? {};
  return { webgpu: true, adapter: { fallback: Boolean(info.isFallbackAdapter ?? adapter.isFallbackAdapter), name: [info.vendor, info.architecture].filter(Boolean).join(" ") || "unnamed" } };
}

/**
 * `{ep, reason, warning?}` from `forced` (the `ep` URL parameter or null), the `probe` of
 * `probeWebgpu`, and `shipsWebgpu()` (async: whether the server has the WebGPU bundle; called only
 * when WebGPU would otherwise be chosen, so a page without a real adapter sends no request for it).
 */
export async function chooseRuntime(forced, probe, shipsWebgpu) {
  if (forced !== null && forced !== undefined && !CHOICES.includes(forced)) {
    throw new RuntimeChoiceError(`unknown runtime ?ep=${forced}; use one of ${CHOICES.join(", ")} (or leave it out to choose automatically)`);
  }
  if (forced === "wasm") return { ep: "wasm", reason: "forced by ?ep=wasm" };
  if (forced === "webgpu") return forcedWebgpu(probe, shipsWebgpu);
  if (!probe.webgpu) return { ep: "wasm", reason: "this browser has no WebGPU" };
  if (!probe.adapter) return { ep: "wasm", reason: "no WebGPU adapter" };
  if (probe.adapter.fallback) return { ep: "wasm", reason: `WebGPU adapter ${probe.adapter.name} is a software fallback` };
  if (!(await shipsWebgpu())) return { ep: "wasm", reason: "this coordinator's page was built without WebGPU" };
  return { ep: "webgpu", reason: `WebGPU adapter ${probe.adapter.name}` };
}

async function forcedWebgpu(probe, shipsWebgpu) {
  const instead = "open the join link without ?ep=webgpu to run on WASM";
  if (!probe.webgpu) throw new RuntimeChoiceError(`?ep=webgpu: this browser has no WebGPU (navigator.gpu; it needs a secure context, HTTPS or localhost); ${instead}`);
  if (!probe.adapter) throw new RuntimeChoiceError(`?ep=webgpu: the browser offers no WebGPU adapter (none enabled, or blocked for this GPU); ${instead}`);
  if (!(await shipsWebgpu())) {
    throw new RuntimeChoiceError(`?ep=webgpu: this coordinator's page was built without WebGPU (build it with \`npm run build -- --webgpu\` in web/); ${instead}`);
  }
  const warning = probe.adapter.fallback ? `WebGPU adapter ${probe.adapter.name} is a software fallback: expect it to be slower than WASM` : undefined;
  return { ep: "webgpu", reason: `forced by ?ep=webgpu (adapter ${probe.adapter.name})`, ...(warning ? { warning } : {}) };
}

/** The execution providers of a session: a forced WebGPU gets no quiet WASM fallback. */
export function executionProviders(choice) {
  if (choice.ep === "wasm") return ["wasm"];
  return choice.reason.startsWith("forced") ? ["webgpu"] : ["webgpu", "wasm"];
}

/** A failed WebGPU session, as a person should read it. */
export function webgpuSessionError(choice, error) {
  const what = choice.reason.startsWith("forced") ? "open the join link without ?ep=webgpu to run on WASM" : "open the join link with ?ep=wasm";
  return new RuntimeChoiceError(`the model could not be loaded on WebGPU (${choice.reason}): ${error?.message ?? error}; ${what}`);
}
