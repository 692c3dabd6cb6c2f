/** The batch draws against NumPy's (tests/golden: Floyd and tail-shuffle paths, seeds ≥ 2^63). */
import { test } from "node:test";
import assert from "node:assert/strict";

import { deviceBatchIndices, PCG64 } from "../src/rng.js";
import { vectors } from "./golden.js";

test("deviceBatchIndices draws exactly NumPy's batches", () => {
  assert.ok(vectors.batches.length >= 9);
  for (const c of vectors.batches) {
    const shard = Array.from({ length: c.n }, (_, k) => k);
    const got = deviceBatchIndices(shard, c.batch, c.steps, BigInt(c.seed), c.round, c.device);
    assert.deepEqual(got, c.indices, `n ${c.n} batch ${c.batch} seed ${c.seed} round ${c.round} device ${c.device}`);
  }
});

test("the shard maps positions to its own example indices", () => {
  const shard = [10, 20, 30, 40, 50];
  const positions = deviceBatchIndices([0, 1, 2, 3, 4], 3, 2, 1n, 2, 3);
  assert.deepEqual(deviceBatchIndices(shard, 3, 2, 1n, 2, 3), positions.map((b) => b.map((k) => shard[k])));
});

test("a negative seed is refused (NumPy refuses it too)", () => {
  assert.throws(() => new PCG64([-1, 0, 0]), /non-negative/);
});
