/**
 * The runtime choice (src/runtime.js): WebGPU only on a real adapter of a build that ships it,
 * the WebGPU files asked for only then, and a forced `?ep=webgpu` that cannot run says why.
 */
import { test } from "node:test";
import assert from "node:assert/strict";

import { chooseRuntime, executionProviders, probeWebgpu, RuntimeChoiceError, webgpuSessionError } from "../src/runtime.js";

const real = { webgpu: true, adapter: { fallback: false, name: "nvidia ampere" } };
const software = { webgpu: true, adapter: { fallback: true, name: "google swiftshader" } };
const noAdapter = { webgpu: true, adapter: null };
const noWebgpu = { webgpu: false, adapter: null };

/** A `shipsWebgpu` that records whether it was asked (the HEAD request for the WebGPU bundle). */
function ships(answer) {
  const f = async () => { f.asked += 1; return answer; };
  f.asked = 0;
  return f;
}

test("automatic: WebGPU only on a real adapter of a build that ships it; the build is asked only then", async () => {
  for (const [probe, reason] of [[noWebgpu, /no WebGPU/], [noAdapter, /no WebGPU adapter/], [software, /swiftshader is a software fallback/]]) {
    const asked = ships(true);
    const choice = await chooseRuntime(null, probe, asked);
    assert.equal(choice.ep, "wasm");
    assert.match(choice.reason, reason);
    assert.equal(asked.asked, 0, "a page that will not use WebGPU must not request its files");
  }
  const without = ships(false);
  assert.deepEqual(await chooseRuntime(null, real, without), { ep: "wasm", reason: "this coordinator's page was built without WebGPU" });
  assert.equal(without.asked, 1);
  const choice = await chooseRuntime(null, real, ships(true));
  assert.deepEqual(choice, { ep: "webgpu", reason: "WebGPU adapter nvidia ampere" });
  assert.deepEqual(executionProviders(choice), ["webgpu", "wasm"]);
});

test("forced: ?ep=wasm always; ?ep=webgpu runs without a quiet fallback or says why it cannot", async () => {
  const wasm = await chooseRuntime("wasm", real, ships(true));
  assert.equal(wasm.ep, "wasm");
  assert.deepEqual(executionProviders(wasm), ["wasm"]);
  const forced = await chooseRuntime("webgpu", real, ships(true));
  assert.equal(forced.ep, "webgpu");
  assert.deepEqual(executionProviders(forced), ["webgpu"]);
  const slow = await chooseRuntime("webgpu", software, ships(true));
  assert.equal(slow.ep, "webgpu");
  assert.match(slow.warning, /software fallback: expect it to be slower than WASM/);
  const refusals = [[noWebgpu, true, /this browser has no WebGPU/], [noAdapter, true, /offers no WebGPU adapter/],
    [real, false, /built without WebGPU \(build it with `npm run build -- --webgpu`/]];
  for (const [probe, built, message] of refusals) {
    await assert.rejects(chooseRuntime("webgpu", probe, ships(built)), (e) => e instanceof RuntimeChoiceError && message.test(e.message)
      && /without \?ep=webgpu to run on WASM/.test(e.message));
  }
  await assert.rejects(chooseRuntime("webgl", real, ships(true)), /unknown runtime \?ep=webgl; use one of wasm, webgpu/);
  assert.match(webgpuSessionError(forced, new Error("no shader-f16")).message, /could not be loaded on WebGPU \(forced by \?ep=webgpu.*no shader-f16; open the join link without \?ep=webgpu/);
});

test("probing the browser: no navigator.gpu, no adapter, a software fallback, a real adapter", async () => {
  assert.deepEqual(await probeWebgpu(undefined), noWebgpu);
  assert.deepEqual(await probeWebgpu({ requestAdapter: async () => null }), noAdapter);
  assert.deepEqual(await probeWebgpu({ requestAdapter: async () => { throw new Error("blocked"); } }), noAdapter);
  assert.deepEqual(await probeWebgpu({ requestAdapter: async () => ({ info: { isFallbackAdapter: true, vendor: "google", architecture: "swiftshader" } }) }), software);
  assert.deepEqual(await probeWebgpu({ requestAdapter: async () => ({ isFallbackAdapter: false, info: { vendor: "nvidia", architecture: "ampere" } }) }), real);
});
