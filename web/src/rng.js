/**
 * NumPy's `default_rng([seed, round, index]).choice(n, size, replace=False)`, ported: the batches a
 * device draws (PROTOCOL.md §9.5) must be the ones the Python device draws, so that a re-opened
 * round gets the same answer and a page given shard i/N computes what `edgezo join --shard i/N`
 * computes for the same assignment.
 *
 * Three pieces of NumPy, each as NumPy 2 writes it: SeedSequence (entropy words → a 4-word pool →
 * 128-bit state and increment), PCG64 (XSL-RR 128/64, with NumPy's buffered 32-bit draws) and
 * Generator.choice without replacement (Floyd's algorithm then a shuffle; for a population over
 * 10,000 drawing more than a 50th of it, a partial Fisher-Yates shuffle of the tail), with Lemire's
 * bounded integers. 128-bit arithmetic runs on BigInt; the rest on uint32 numbers.
 */

import { asBigInt } from "./keys.js";

const MASK32 = 0xffffffffn;
const MASK64 = (1n << 64n) - 1n;
const MASK128 = (1n << 128n) - 1n;
const PCG_MULT = 0x2360ed051fc65da44385df649fccf645n;

// SeedSequence constants (numpy/random/bit_generator.pyx).
const INIT_A = 0x43b0d7e5, MULT_A = 0x931e8875, INIT_B = 0x8b51f9dd, MULT_B = 0x58f38ded;
const MIX_MULT_L = 0xca01f9dd, MIX_MULT_R = 0x4973f715, POOL_SIZE = 4;

/** A non-negative integer as little-endian uint32 words (at least one), as NumPy coerces seeds. */
function uint32Words(n) {
  let x = asBigInt(n);
  if (x < 0n) throw new RangeError(`a seed must be non-negative (got ${x})`);
  const out = [];
  do {
    out.push(Number(x & MASK32));
    x >>= 32n;
  } while (x > 0n);
  return out;
}

/** SeedSequence(entropy).generate_state(words) as uint32 numbers. */
export function seedSequenceState(entropy, words) {
  const data = entropy.flatMap(uint32Words);
  let hashConst = INIT_A;
  const hashmix = (value) => {
    value = (value ^ hashConst) >>> 0;
    hashConst = Math.imul(hashConst, MULT_A) >>> 0;
    value = Math.imul(value, hashConst) >>> 0;
    return (value ^ (value >>> 16)) >>> 0;
  };
  const mix = (x, y) => {
    const r = (Math.imul(MIX_MULT_L, x) - Math.imul(MIX_MULT_R, y)) >>> 0;
    return (r ^ (r >>> 16)) >>> 0;
  };
  const pool = new Array(POOL_SIZE);
  for (let i = 0; i < POOL_SIZE; i++) pool[i] = hashmix(i < data.length ? data[i] : 0);
  for (let src = 0; src < POOL_SIZE; src++) {
    for (let dst = 0; dst < POOL_SIZE; dst++) if (src !== dst) pool[dst] = mix(pool[dst], hashmix(pool[src]));
  }
  for (let src = POOL_SIZE; src < data.length; src++) {
    for (let dst = 0; dst < POOL_SIZE; dst++) pool[dst] = mix(pool[dst], hashmix(data[src]));
  }
  let h = INIT_B;
  const out = [];
  for (let k = 0; k < words; k++) {
    let v = (pool[k % POOL_SIZE] ^ h) >>> 0;
    h = Math.imul(h, MULT_B) >>> 0;
    v = Math.imul(v, h) >>> 0;
    out.push((v ^ (v >>> 16)) >>> 0);
  }
  return out;
}

/** PCG64 as NumPy seeds and draws it (including the buffered upper half of 32-bit draws). */
export class PCG64 {
  constructor(entropy) {
    const w = seedSequenceState(entropy, 8).map(BigInt);
    const u64 = (k) => w[2 * k] | (w[2 * k + 1] << 32n); // generate_state(4, uint64), little-endian pairs
    const initState = (u64(0) << 64n) | u64(1);
    const initSeq = (u64(2) << 64n) | u64(3);
    this.inc = ((initSeq << 1n) | 1n) & MASK128;
    this.state = 0n;
    this.step();
    this.state = (this.state + initState) & MASK128;
    this.step();
    this.spare = null; // NumPy's has_uint32 / uinteger
  }

  step() {
    this.state = (this.state * PCG_MULT + this.inc) & MASK128;
  }

  next64() {
    this.step();
    const hi = this.state >> 64n;
    const rot = Number(this.state >> 122n);
    const x = (hi ^ this.state) & MASK64;
    return ((x >> BigInt(rot)) | (x << BigInt((64 - rot) & 63))) & MASK64;
  }

  next32() {
    if (this.spare !== null) {
      const v = this.spare;
      this.spare = null;
      return v;
    }
    const next = this.next64();
    this.spare = Number(next >> 32n);
    return Number(next & MASK32);
  }

  /** An integer in [0, max] (inclusive), Lemire's method on 32-bit draws (max < 2^32 - 1). */
  bounded(max) {
    if (max === 0) return 0;
    if (max >= 0xffffffff) throw new RangeError("ranges beyond 32 bits are not needed here");
    const excl = BigInt(max + 1);
    let m = BigInt(this.next32()) * excl;
    let leftover = Number(m & MASK32);
    if (leftover < max + 1) {
      const threshold = (0xffffffff - max) % (max + 1);
      while (leftover < threshold) {
        m = BigInt(this.next32()) * excl;
        leftover = Number(m & MASK32);
      }
    }
    return Number(m >> 32n);
  }

  /** Shuffle data[first..n-1] from the end, as NumPy's _shuffle_int. */
  shuffleTail(data, n, first) {
    for (let i = n - 1; i >= first; i--) {
      const j = this.bounded(i);
      [data[i], data[j]] = [data[j], data[i]];
    }
  }

  /** `Generator.choice(popSize, size, replace=False)` (shuffle=True). */
  choice(popSize, size) {
    if (size > popSize) throw new RangeError(`cannot take ${size} of ${popSize} without replacement`);
    if (popSize > 10000 && size > Math.floor(popSize / 50)) {
      const idx = Array.from({ length: popSize }, (_, k) => k);
      this.shuffleTail(idx, popSize, Math.max(popSize - size, 1));
      return idx.slice(popSize - size);
    }
    const out = [];
    const seen = new Set();
    for (let j = popSize - size; j < popSize; j++) {
      const val = this.bounded(j);
      const pick = seen.has(val) ? j : val;
      seen.add(pick);
      out.push(pick);
    }
    this.shuffleTail(out, size, 1);
    return out;
  }
}

/**
 * The examples a device uses in a round: for each of `steps` steps, `min(batch, shard.length)`
 * positions drawn without replacement by one generator seeded with [seed, round, device]
 * (edgezo.engine.device_batch_indices), mapped through the shard.
 */
export function deviceBatchIndices(shard, batch, steps, seed, round, device) {
  const rng = new PCG64([seed, round, device]);
  const size = Math.min(batch, shard.length);
  return Array.from({ length: steps }, () => rng.choice(shard.length, size).map((k) => shard[k]));
}
