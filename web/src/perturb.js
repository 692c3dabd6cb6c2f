/**
 * The canonical perturbation (PROTOCOL.md §9.8) and what a replica does with it (§9.9, §9.10),
 * bit for bit as edgezo/perturb.py and the reference executors.
 *
 * The generator is counter based: word c of a tensor key (k0 = low 32 bits, k1 = high 32 bits) is
 * lowbias32(lowbias32(c ^ k0) ^ k1), in uint32 arithmetic (`Math.imul` and `>>> 0`, which wrap
 * exactly as NumPy's uint32 does). Rademacher element e is bit e % 32 of word e / 32 (a set bit is
 * -1). With ±1 entries, `float32(coef) * z` is exact, so applying an update is one float32
 * rounding per row and element: the same bits in any language.
 *
 * A replica's trainable tensors are a list `[{name, block, data: Float32Array}]` in the order of
 * §9.2 (the fingerprint's order).
 */

import { covers, tensorKey } from "./keys.js";
import { Sha256 } from "./sha256.js";

export const RADEMACHER = "rademacher";
export const GAUSSIAN = "gaussian";
const BITS_PER_WORD = 32;

/** Wellons' lowbias32 integer hash, in uint32. */
export function lowbias32(x) {
  x ^= x >>> 16;
  x = Math.imul(x, 0x7feb352d);
  x ^= x >>> 15;
  x = Math.imul(x, 0x846ca68b);
  x ^= x >>> 16;
  return x >>> 0;
}

/** A key's two 32-bit halves (k0 low, k1 high) as numbers. */
export function splitKey(key) {
  return [Number(key & 0xffffffffn), Number((key >> 32n) & 0xffffffffn)];
}

/** The generator's uint32 words for counters start .. start+count-1 (counters wrap at 2^32). */
export function words(key, start, count) {
  const [k0, k1] = splitKey(key);
  const out = new Uint32Array(count);
  for (let n = 0; n < count; n++) out[n] = lowbias32(lowbias32(((start + n) >>> 0) ^ k0) ^ k1);
  return out;
}

/** Elements start .. start+count-1 of the ±1 vector for `key`, as a Float32Array. */
export function rademacher(key, start, count) {
  const out = new Float32Array(count);
  if (count === 0) return out;
  const [k0, k1] = splitKey(key);
  let wordIndex = -1;
  let word = 0;
  for (let n = 0; n < count; n++) {
    const e = start + n;
    const w = Math.floor(e / BITS_PER_WORD);
    if (w !== wordIndex) {
      wordIndex = w;
      word = lowbias32(lowbias32((w >>> 0) ^ k0) ^ k1);
    }
    out[n] = (word >>> (e % BITS_PER_WORD)) & 1 ? -1 : 1;
  }
  return out;
}

/** Elements start .. start+count-1 of the standard normal vector for `key` (Box-Muller in float64,
 * rounded to float32; within one float32 ulp of NumPy where the platforms' log/cos differ). */
export function gaussian(key, start, count) {
  const w = words(key, 2 * start, 2 * count);
  const out = new Float32Array(count);
  for (let n = 0; n < count; n++) {
    const u1 = (w[2 * n] + 1) / 4294967296;
    const u2 = w[2 * n + 1] / 4294967296;
    out[n] = Math.sqrt(-2 * Math.log(u1)) * Math.cos(2 * Math.PI * u2);
  }
  return out;
}

/** The generator of a distribution by name; an unknown name is an error naming the choices. */
export function generator(distribution = RADEMACHER) {
  if (distribution === RADEMACHER) return rademacher;
  if (distribution === GAUSSIAN) return gaussian;
  throw new Error(`unknown perturbation distribution ${JSON.stringify(distribution)}; use one of ${RADEMACHER}, ${GAUSSIAN}`);
}

/** z of one direction on one tensor (the whole tensor). */
export function directionVector(d, tensor, distribution = RADEMACHER) {
  return generator(distribution)(tensorKey(d, tensor.name), 0, tensor.data.length);
}

const f32 = new Float32Array(1);
const f32bits = new Int32Array(f32.buffer);

/** The float32 next to `r` (a float32) on the side of `t`. */
function float32Toward(r, t) {
  if (r === 0) return t > 0 ? 1.401298464324817e-45 : -1.401298464324817e-45;
  f32[0] = r;
  f32bits[0] += (t > r) === (r > 0) ? 1 : -1; // away from zero in magnitude, or toward it
  return f32[0];
}

/**
 * float32(w + p) rounded once, as a fused multiply-add rounds `w + s*z` (p = s*z, exact in
 * float64 since s and z are float32). `fround(w + p)` rounds twice (to float64, then to float32)
 * and differs from one rounding exactly when the float64 sum lands on a float32 tie that the exact
 * sum was not on (about one sum in 2^28 when p is far smaller than w, as updates are); then the
 * exact sum's side of the tie (Knuth's TwoSum error) picks the neighbour.
 */
export function roundedSum(w, p) {
  const t = w + p;
  const r = Math.fround(t);
  if (r === t) return r;
  const bp = t - w;
  const err = (w - (t - bp)) + (p - bp); // w + p = t + err exactly
  if (err === 0) return r;
  const other = float32Toward(r, t);
  if (t - r !== other - t) return r; // t is not a tie: rounding it once more is the right rounding
  return (err > 0) === (other > r) ? other : r;
}

/**
 * `w += float32(scale) * z` on a Float32Array, rounded to float32 once per element, as the torch
 * executor does (its `add_(z, alpha=s)` is a fused multiply-add on CPUs with FMA and on GPUs:
 * checked on this machine's AVX-512 torch, tails included). With Rademacher `s*z = ±s`, which is the
 * old two-rounding formula bit for bit; with Gaussian z, rounding the product to float32 first
 * (NumPy's `w + float32(s) * z`) differed from torch on 0.5% of elements, so a Gaussian job's
 * replica failed the coordinator's fingerprint.
 */
function addScaled(data, z, scale) {
  const s = Math.fround(scale);
  for (let e = 0; e < data.length; e++) data[e] = roundedSum(data[e], s * z[e]);
}

/**
 * The trainable tensors of a perturbed forward: copies of the replica's tensors with `w + s·z`
 * added for each (direction, s) in turn, on the tensors the direction's block covers. The replica
 * itself never changes, so restoring is exact. Returns Float32Arrays in the replica's order.
 */
export function perturbedTensors(replica, perturbation, distribution = RADEMACHER) {
  return replica.map((tensor) => {
    const data = new Float32Array(tensor.data);
    for (const [d, s] of perturbation) {
      if (covers(d, tensor.block)) addScaled(data, directionVector(d, tensor, distribution), s);
    }
    return data;
  });
}

/**
 * Apply update rows (sorted `[direction, coef]` pairs) to the replica in place: for each tensor,
 * each row whose block covers it in the given order, `w ← w + float32(coef)·z` in float32.
 */
export function applyUpdate(replica, rows, distribution = RADEMACHER) {
  for (const tensor of replica) {
    for (const [d, coef] of rows) {
      if (covers(d, tensor.block)) addScaled(tensor.data, directionVector(d, tensor, distribution), coef);
    }
  }
}

const utf8 = new TextEncoder();
const littleEndian = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** A Float32Array's bytes, little-endian whatever the platform. */
export function float32Bytes(data) {
  const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  if (littleEndian) return bytes;
  const out = new Uint8Array(data.length * 4);
  const view = new DataView(out.buffer);
  data.forEach((x, k) => view.setFloat32(4 * k, x, true));
  return out;
}

/** SHA-256 over each trainable tensor's name then its little-endian float32 bytes (§9.10). */
export function fingerprint(replica) {
  const hash = new Sha256();
  for (const tensor of replica) {
    hash.update(utf8.encode(tensor.name));
    hash.update(float32Bytes(tensor.data));
  }
  return hash.hex();
}

/** A deep copy of the replica's weights (to restore the round's start exactly). */
export function snapshot(replica) {
  return replica.map((t) => new Float32Array(t.data));
}

/** Put back a snapshot taken by `snapshot`. */
export function restore(replica, saved) {
  replica.forEach((t, k) => t.data.set(saved[k]));
}
