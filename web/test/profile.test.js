/** The profile a page sends in its status: format 1, measured, floats boxed as MessagePack floats. */
import { test } from "node:test";
import assert from "node:assert/strict";

import { decode, encode } from "../src/messages.js";
import { Float } from "../src/msgpack.js";
import { browserProfile, memoryLimitGb } from "../src/profile.js";

test("memory: the heap limit bounds what training may use, WebAssembly's 4 GiB too", () => {
  assert.deepEqual(memoryLimitGb({ deviceMemory: 8, jsHeapSizeLimit: 2 * 2 ** 30 }), { total: 8, available: 2 });
  assert.deepEqual(memoryLimitGb({ deviceMemory: 8 }), { total: 8, available: 4 });
  assert.deepEqual(memoryLimitGb({}), { total: 2, available: 1 });
});

test("a measured profile with the throughput of one timed forward", () => {
  const p = browserProfile({ deviceId: "web-1", backend: "onnxruntime-web-wasm", forwardSeconds: 2, tokens: 128, modelBytes: 4e8,
    memory: { total: 8, available: 4 }, userAgent: "UA", cores: 4 });
  assert.equal(p.kind, "measured");
  assert.equal(p.format, 1);
  assert.ok(p.backends[0].gflops instanceof Float);
  assert.equal(p.backends[0].gflops.value, (2 * 1e8 * 128) / 2 / 1e9);
  assert.match(p.description, /one forward of 128 tokens in 2.000 s, 15.63 ms per token/);
  const status = decode(encode({ type: "status", v: 1, run: "e", device: "web-1", state: "online", profile: p, memory_gb: 4 }));
  assert.equal(status.profile.memory_total_gb, 8);
  assert.equal(status.profile.backends[0].bytes_per_param, 4);
  assert.equal(status.profile.backends[0].reuses_block1, false); // a full forward per probe
});
