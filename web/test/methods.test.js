/**
 * The methods' local rounds against the Python reference: directions in canonical order, update_rule,
 * and whole local rounds (probes, local updates between steps) on tests/toy_executor.py's quadratic,
 * re-implemented here as the injected loss.
 */
import { test } from "node:test";
import assert from "node:assert/strict";

import { direction, covers, tensorKey } from "../src/keys.js";
import { directions, localRound, probeConfig, updateRule } from "../src/methods.js";
import { rademacher } from "../src/perturb.js";
import { f32FromHex, toHex, vectors } from "./golden.js";

const tuple = (d) => [d.step, d.block, d.i, d.j, d.stream];

test("update_rule and direction order equal the reference's for every method", () => {
  for (const c of vectors.updates) {
    const probe = probeConfig({ method: c.method, variant: c.variant, eps: 1e-3 }, 2, 3);
    const order = directions(probe, BigInt(c.run_seed), c.round, 2, c.stream);
    assert.deepEqual(order.map(tuple), c.directions, c.method);
    const rows = updateRule(order.map((d, k) => [d, c.scalars[k]]), c.lr, c.variant);
    assert.deepEqual(rows.map(([d, coef]) => [...tuple(d), coef]), c.update, `${c.method} ${c.variant}`);
  }
});

test("PROTOCOL.md §6's scalar order examples", () => {
  const show = (probe, stream = 0) => directions(probe, 0n, 1, 2, stream).map((d) => tuple(d).join(","));
  const spzo = (variant) => probeConfig({ method: "spzo", variant, eps: 1e-3 }, 2, 2);
  assert.deepEqual(show(spzo("joint")), ["0,2,0,0,0", "0,2,0,1,0", "0,2,1,0,0", "0,2,1,1,0", "1,2,0,0,0", "1,2,0,1,0", "1,2,1,0,0", "1,2,1,1,0"]);
  assert.deepEqual(show(spzo("clean")).slice(0, 7), ["0,1,0,0,0", "0,1,1,0,0", "0,2,0,0,0", "0,2,0,1,0", "0,2,1,0,0", "0,2,1,1,0", "1,1,0,0,0"]);
  assert.deepEqual(show(probeConfig({ method: "fedzo", eps: 1e-3 }, 2, 9), 3), ["0,0,0,0,3", "0,0,1,0,3", "1,0,0,0,3", "1,0,1,0,3"]);
});

test("a method the browser cannot run is refused by name", () => {
  assert.throws(() => probeConfig({ method: "fedavg", eps: 1e-3 }, 1, 1), /fedavg.*cannot run in a browser/);
  assert.throws(() => probeConfig({ method: "spzo", difference: "forward", eps: 1e-3 }, 1, 1), /central/);
});

/** tests/toy_executor.py's QuadraticExecutor loss, perturbed as it does: NumPy 2 multiplies the
 * float32 z by the scale in float32 (a Python float is a "weak" scalar), then adds in float64. */
function quadraticLoss(c, replica) {
  return async (batch, perturbation) => {
    const value = (tensor) => {
      const v = Float64Array.from(tensor.data);
      for (const [d, s] of perturbation) {
        if (!covers(d, tensor.block)) continue;
        const z = rademacher(tensorKey(d, tensor.name), 0, v.length);
        const s32 = Math.fround(s);
        for (let e = 0; e < v.length; e++) v[e] += s32 * z[e];
      }
      return v;
    };
    const a = value(replica[0]);
    const b = value(replica[1]);
    let total = 0;
    for (let e = 0; e < a.length; e++) total += 0.5 * (a[e] - c.t1[e] - batch) ** 2;
    for (let e = 0; e < b.length; e++) total += 0.5 * (b[e] - c.t2[e]) ** 2;
    for (let e = 0; e < c.m; e++) total += c.c * a[e] * b[e];
    return total;
  };
}

test("local rounds of every method equal the reference's (scalars, losses, local updates)", async () => {
  assert.equal(vectors.local_rounds.length, 5);
  for (const c of vectors.local_rounds) {
    const replica = [{ name: "block1.w", block: 1, data: f32FromHex(c.theta["block1.w"]) },
      { name: "block2.w", block: 2, data: f32FromHex(c.theta["block2.w"]) }];
    const probe = probeConfig({ method: c.method, variant: c.variant, difference: c.difference, eps: c.eps }, c.p1, c.p2);
    const out = await localRound({ loss: quadraticLoss(c, replica), replica, batches: c.batches, probe, lr: c.lr,
      runSeed: BigInt(c.run_seed), round: c.round, stream: c.stream });
    const where = `${c.method} ${c.variant} ${c.difference}`;
    assert.deepEqual(out.order.map(tuple), c.directions, where);
    out.scalars.forEach((g, k) => assert.ok(Math.abs(g - c.scalars[k]) <= 1e-9 * Math.max(1, Math.abs(c.scalars[k])), `${where} scalar ${k}: ${g} vs ${c.scalars[k]}`));
    out.losses.forEach((l, k) => assert.ok(Math.abs(l - c.losses[k]) <= 1e-9 * Math.abs(c.losses[k]), `${where} loss ${k}`));
    assert.equal(toHex(new Uint8Array(replica[0].data.buffer)), c.after_local_f32_hex["block1.w"], `${where} block 1 after the local steps`);
    assert.equal(toHex(new Uint8Array(replica[1].data.buffer)), c.after_local_f32_hex["block2.w"], `${where} block 2 after the local steps`);
  }
});

test("a NaN loss stops the round with a clear message", async () => {
  const replica = [{ name: "w", block: 2, data: new Float32Array(4) }];
  const probe = probeConfig({ method: "mezo", eps: 1e-3 }, 1, 1);
  await assert.rejects(localRound({ loss: async () => NaN, replica, batches: [0], probe, lr: 0.1, runSeed: 0n, round: 1 }), /loss became NaN/);
  assert.ok(direction(0, 1, 0, 0, 0));
});
