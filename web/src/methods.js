/**
 * What a device computes for an assignment (PROTOCOL.md §6, §9.6, §9.7), ported from
 * edgezo/methods/ and edgezo/estimators.py: the directions a task owes in canonical order, one local
 * round of probes with the local update after each step, and `update_rule`.
 *
 * The loss is passed in as a function `loss(batch, perturbation) → Promise<number>` (float64), where
 * a perturbation is a list of `[direction, scale]` to add to the trainable tensors: the page runs a
 * full forward of the ONNX model per call; unit tests pass a pure-JavaScript function. The browser
 * has no block-1 activation reuse, so joint SPZO's probe (i, j) is one full forward along
 * ±eps·(z1_i + z2_ij): the same function of the perturbation as the Python device's two-block
 * forward, at 2·P1·P2 full forwards per step.
 */

import { compareDirections, direction, WHOLE_MODEL } from "./keys.js";
import { applyUpdate } from "./perturb.js";

/** The methods a browser device runs; a backpropagating one (fedavg) has no zero-order probe. */
export const METHODS = {
  spzo: { differences: ["central"], defaultDifference: "central", sharedSeeds: true, split: true },
  mezo: { differences: ["central", "forward"], defaultDifference: "central", sharedSeeds: true, split: false },
  decomfl: { differences: ["central", "forward"], defaultDifference: "central", sharedSeeds: true, split: false },
  fedzo: { differences: ["central", "forward"], defaultDifference: "forward", sharedSeeds: false, split: false },
};

/** How a device probes: the job's method, variant, difference and eps with its task's P1, P2. */
export function probeConfig(job, p1, p2) {
  const method = METHODS[job.method];
  if (!method) {
    throw new Error(`the job's method ${JSON.stringify(job.method)} cannot run in a browser (it runs ${Object.keys(METHODS).join(", ")}); join with \`edgezo join\` instead`);
  }
  const difference = job.difference ?? method.defaultDifference;
  if (!method.differences.includes(difference)) throw new Error(`${job.method} uses ${method.differences.join(" or ")} differences (got ${difference})`);
  const variant = job.variant ?? "joint";
  if (!["joint", "clean"].includes(variant)) throw new Error(`unknown SPZO variant ${JSON.stringify(variant)}; use joint or clean`);
  if (!(p1 >= 1 && p2 >= 1)) throw new Error(`P1 and P2 must be at least 1 (got P1=${p1}, P2=${p2})`);
  if (!(job.eps > 0 && Number.isFinite(job.eps))) throw new Error(`eps must be a positive number (got ${job.eps})`);
  return { method: job.method, p1, p2: method.split ? p2 : 1, eps: job.eps, variant, difference };
}

/** The direction stream of the device at `position` (1-based) in the assignment's tasks. */
export function streamOf(methodName, position) {
  return METHODS[methodName].sharedSeeds ? 0 : position;
}

/** The directions `steps` local steps probe, sorted: the order of Result.scalars. */
export function directions(probe, runSeed, round, steps, stream = 0) {
  const out = [];
  for (let step = 0; step < steps; step++) {
    for (let i = 0; i < probe.p1; i++) {
      if (probe.method !== "spzo") out.push(direction(runSeed, round, step, WHOLE_MODEL, i, 0, stream));
      else {
        if (probe.variant === "clean") out.push(direction(runSeed, round, step, 1, i));
        for (let j = 0; j < probe.p2; j++) out.push(direction(runSeed, round, step, 2, i, j));
      }
    }
  }
  return out.sort(compareDirections);
}

const groupKey = (d) => `${d.runSeed},${d.round},${d.step},${d.stream}`;

/**
 * Scalars (`[direction, g]` in the order they were measured) → sorted `[direction, coef]` rows,
 * normalised per (round, step, stream) group by the directions evaluated (estimators.update_rule).
 */
export function updateRule(scalars, lr, variant = "joint") {
  const groups = new Map();
  for (const item of scalars) {
    const k = groupKey(item[0]);
    if (!groups.has(k)) groups.set(k, []);
    groups.get(k).push(item);
  }
  const update = [];
  for (const items of groups.values()) {
    const whole = items.filter(([d]) => d.block === WHOLE_MODEL);
    const block2 = items.filter(([d]) => d.block === 2);
    const block1 = items.filter(([d]) => d.block === 1);
    for (const [d, g] of whole) update.push([d, (-lr * g) / whole.length]);
    for (const [d, g] of block2) update.push([d, (-lr * g) / block2.length]);
    if (variant === "joint" && block2.length) {
      const perI = new Map();
      for (const [d, g] of block2) {
        if (!perI.has(d.i)) perI.set(d.i, { d: direction(d.runSeed, d.round, d.step, 1, d.i, 0, d.stream), gs: [] });
        perI.get(d.i).gs.push(g);
      }
      for (const { d, gs } of perI.values()) {
        update.push([d, (-lr * (gs.reduce((a, b) => a + b, 0) / gs.length)) / perI.size]);
      }
    } else {
      for (const [d, g] of block1) update.push([d, (-lr * g) / block1.length]);
    }
  }
  return update.sort((a, b) => compareDirections(a[0], b[0]));
}

function checkFinite(...losses) {
  for (const loss of losses) {
    if (!Number.isFinite(loss)) throw new Error(`the loss became ${loss} (NaN or infinite): lower --lr or --eps, or check the data`);
  }
}

/** One SPZO step with full forwards: per (i, j) a central difference along ±eps·(z1_i + z2_ij)
 * (joint), or block 1 alone and block 2 alone (clean). */
async function spzoStep(loss, batch, probe, runSeed, round, step) {
  const scalars = [];
  const losses = [];
  let forwards = 0;
  const eps = probe.eps;
  for (let i = 0; i < probe.p1; i++) {
    const d1 = direction(runSeed, round, step, 1, i);
    const joint = probe.variant === "joint";
    if (!joint) {
      const lp = await loss(batch, [[d1, eps]]);
      const lm = await loss(batch, [[d1, -eps]]);
      forwards += 2;
      checkFinite(lp, lm);
      scalars.push([d1, (lp - lm) / (2 * eps)]);
    }
    for (let j = 0; j < probe.p2; j++) {
      const d2 = direction(runSeed, round, step, 2, i, j);
      const lp = await loss(batch, joint ? [[d1, eps], [d2, eps]] : [[d2, eps]]);
      const lm = await loss(batch, joint ? [[d1, -eps], [d2, -eps]] : [[d2, -eps]]);
      forwards += 2;
      checkFinite(lp, lm);
      scalars.push([d2, (lp - lm) / (2 * eps)]);
      losses.push(0.5 * (lp + lm));
    }
  }
  return { scalars, losses, forwards };
}

/** One single-block step: P1 whole-model probes, central (2P forwards) or forward (P + 1). */
async function singleBlockStep(loss, batch, probe, runSeed, round, step, stream) {
  const scalars = [];
  const losses = [];
  let forwards = 0;
  let base = null;
  if (probe.difference === "forward") {
    base = await loss(batch, []);
    forwards += 1;
    checkFinite(base);
    losses.push(base);
  }
  for (let i = 0; i < probe.p1; i++) {
    const d = direction(runSeed, round, step, WHOLE_MODEL, i, 0, stream);
    const lp = await loss(batch, [[d, probe.eps]]);
    forwards += 1;
    if (base === null) {
      const lm = await loss(batch, [[d, -probe.eps]]);
      forwards += 1;
      checkFinite(lp, lm);
      scalars.push([d, (lp - lm) / (2 * probe.eps)]);
      losses.push(0.5 * (lp + lm));
    } else {
      checkFinite(lp);
      scalars.push([d, (lp - base) / probe.eps]);
    }
  }
  return { scalars, losses, forwards };
}

/**
 * K local steps (one per batch): probe, then apply this device's own update to `replica` before
 * the next step. The caller restores the round's starting weights afterwards. Returns the scalars
 * in canonical order, each step's mean loss and the full forwards run. `onStep` hears progress.
 */
export async function localRound({ loss, replica, batches, probe, lr, runSeed, round, stream = 0, distribution, onStep = () => {} }) {
  const measured = new Map();
  const losses = [];
  let forwards = 0;
  for (let step = 0; step < batches.length; step++) {
    const out = probe.method === "spzo"
      ? await spzoStep(loss, batches[step], probe, runSeed, round, step)
      : await singleBlockStep(loss, batches[step], probe, runSeed, round, step, stream);
    applyUpdate(replica, updateRule(out.scalars, lr, probe.variant), distribution);
    for (const [d, g] of out.scalars) measured.set(directionId(d), g);
    const stepLoss = out.losses.reduce((a, b) => a + b, 0) / out.losses.length;
    losses.push(stepLoss);
    forwards += out.forwards;
    onStep({ step, of: batches.length, loss: stepLoss, forwards });
  }
  const order = directions(probe, runSeed, round, batches.length, stream);
  return { scalars: order.map((d) => measured.get(directionId(d))), order, losses, forwards };
}

const directionId = (d) => `${d.runSeed},${d.round},${d.step},${d.block},${d.i},${d.j},${d.stream}`;
