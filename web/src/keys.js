/**
 * Perturbation keys: what a seed means (PROTOCOL.md §9.8), bit for bit as edgezo/keys.py.
 *
 * A direction is named by integers only: (run_seed, round, step, block, i, j, stream). Each
 * trainable tensor gets its own 64-bit key, folded with SplitMix64 from the direction's fields and
 * the FNV-1a hash of the tensor's name. All of it is 64-bit wrapping arithmetic, so it runs on
 * BigInt: a JavaScript number holds 53 bits, and a run seed can be any 64-bit value (the protocol
 * carries seeds ≥ 2^63 and -1), so seeds enter as BigInt or decimal strings, never through a float.
 */

export const MASK64 = (1n << 64n) - 1n;
export const WHOLE_MODEL = 0;

/** A seed-like value as an unsigned 64-bit BigInt (a negative value is its two's complement). */
export function toU64(value) {
  return asBigInt(value) & MASK64;
}

/** An integer given as BigInt, safe number or decimal string, as BigInt; anything else is refused
 * (a float here would silently change which directions a device probes). */
export function asBigInt(value) {
  if (typeof value === "bigint") return value;
  if (typeof value === "number") {
    if (!Number.isSafeInteger(value)) {
      throw new TypeError(`${value} is not an exact integer; pass seeds as BigInt or decimal strings`);
    }
    return BigInt(value);
  }
  if (typeof value === "string" && /^-?[0-9]+$/.test(value)) return BigInt(value);
  throw new TypeError(`${String(value)} is not an integer (expected a BigInt, a safe integer or a decimal string)`);
}

/** SplitMix64 finaliser (Steele, Lea, Flood 2014) on a 64-bit integer. */
export function splitmix64(x) {
  x = (x + 0x9e3779b97f4a7c15n) & MASK64;
  x = ((x ^ (x >> 30n)) * 0xbf58476d1ce4e5b9n) & MASK64;
  x = ((x ^ (x >> 27n)) * 0x94d049bb133111ebn) & MASK64;
  return x ^ (x >> 31n);
}

const utf8 = new TextEncoder();

/** FNV-1a 64-bit hash of a UTF-8 string (tensor names). */
export function fnv1a64(text) {
  let h = 0xcbf29ce484222325n;
  for (const byte of utf8.encode(text)) h = ((h ^ BigInt(byte)) * 0x100000001b3n) & MASK64;
  return h;
}

/**
 * One direction: the seven integers that name a perturbation vector. `runSeed` is kept as BigInt;
 * the others are small non-negative numbers (round may be -1 for LoRA initialisation).
 */
export function direction(runSeed, round, step, block, i, j = 0, stream = 0) {
  return { runSeed: asBigInt(runSeed), round, step, block, i, j, stream };
}

/** Whether a direction perturbs the tensors of `block` (1 or 2); block 0 is the whole model. */
export function covers(d, block) {
  return d.block === WHOLE_MODEL || d.block === block;
}

/** Lexicographic order of directions in field order: the order updates are applied and scalars sent. */
export function compareDirections(a, b) {
  if (a.runSeed !== b.runSeed) return a.runSeed < b.runSeed ? -1 : 1;
  for (const f of ["round", "step", "block", "i", "j", "stream"]) {
    if (a[f] !== b[f]) return a[f] < b[f] ? -1 : 1;
  }
  return 0;
}

/** A direction's fields as a tuple of BigInts (what the key mix folds). */
export function fieldsOf(d) {
  return [d.runSeed, d.round, d.step, d.block, d.i, d.j, d.stream].map(asBigInt);
}

const nameHashes = new Map();

/** The 64-bit key of one tensor along one direction (BigInt). */
export function tensorKey(d, name) {
  let nameHash = nameHashes.get(name);
  if (nameHash === undefined) {
    nameHash = fnv1a64(name);
    nameHashes.set(name, nameHash);
  }
  let h = 0n;
  for (const v of [...fieldsOf(d), nameHash]) h = splitmix64(h ^ (v & MASK64));
  return h;
}

/** The intermediate `h` after each of the eight SplitMix64 calls (PROTOCOL.md lists them). */
export function keyTrace(d, name) {
  const trace = [];
  let h = 0n;
  for (const v of [...fieldsOf(d), fnv1a64(name)]) {
    h = splitmix64(h ^ (v & MASK64));
    trace.push(h);
  }
  return trace;
}
