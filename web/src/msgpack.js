/**
 * MessagePack, the subset the protocol uses (PROTOCOL.md §4), encoding exactly as msgspec does.
 *
 * Why not a general MessagePack library: the wire must be byte-equal to the Python reference where
 * the protocol requires it, and JavaScript numbers do not say whether they are an int or a float
 * (msgspec writes a float field as float64 even when it holds 300.0, and an int field as the
 * smallest integer form). So the decoder keeps floats apart from ints (`Float` boxes), integers
 * beyond 2^53 come back as BigInt (a run seed may be any 64-bit value), and the encoder is told the
 * type of every field by the message schema (messages.js).
 */

export class MsgpackError extends Error {}

/** A decoded MessagePack float (float32 or float64), kept apart from integers. */
export class Float {
  constructor(value) {
    this.value = value;
  }
}

const utf8 = new TextEncoder();
const strictUtf8 = new TextDecoder("utf-8", { fatal: true });

// -- decoding -----------------------------------------------------------------------------------

class Reader {
  constructor(bytes) {
    this.bytes = bytes;
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.at = 0;
  }

  need(n) {
    if (this.at + n > this.bytes.length) throw new MsgpackError("input data was truncated");
    const at = this.at;
    this.at += n;
    return at;
  }

  u8() { return this.view.getUint8(this.need(1)); }
  u16() { return this.view.getUint16(this.need(2)); }
  u32() { return this.view.getUint32(this.need(4)); }
}

function integer(big) {
  return big >= BigInt(Number.MIN_SAFE_INTEGER) && big <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(big) : big;
}

function readValue(r, depth) {
  if (depth > 64) throw new MsgpackError("nesting deeper than 64 levels");
  const b = r.u8();
  if (b <= 0x7f) return b;
  if (b >= 0xe0) return b - 0x100;
  if (b >= 0x80 && b <= 0x8f) return readMap(r, b & 0x0f, depth);
  if (b >= 0x90 && b <= 0x9f) return readArray(r, b & 0x0f, depth);
  if (b >= 0xa0 && b <= 0xbf) return readStr(r, b & 0x1f);
  const v = r.view;
  switch (b) {
    case 0xc0: return null;
    case 0xc2: return false;
    case 0xc3: return true;
    case 0xc4: return readBin(r, r.u8());
    case 0xc5: return readBin(r, r.u16());
    case 0xc6: return readBin(r, r.u32());
    case 0xca: return new Float(v.getFloat32(r.need(4)));
    case 0xcb: return new Float(v.getFloat64(r.need(8)));
    case 0xcc: return r.u8();
    case 0xcd: return r.u16();
    case 0xce: return r.u32();
    case 0xcf: return integer(v.getBigUint64(r.need(8)));
    case 0xd0: return v.getInt8(r.need(1));
    case 0xd1: return v.getInt16(r.need(2));
    case 0xd2: return v.getInt32(r.need(4));
    case 0xd3: return integer(v.getBigInt64(r.need(8)));
    case 0xd9: return readStr(r, r.u8());
    case 0xda: return readStr(r, r.u16());
    case 0xdb: return readStr(r, r.u32());
    case 0xdc: return readArray(r, r.u16(), depth);
    case 0xdd: return readArray(r, r.u32(), depth);
    case 0xde: return readMap(r, r.u16(), depth);
    case 0xdf: return readMap(r, r.u32(), depth);
    default: throw new MsgpackError(`invalid or unsupported MessagePack byte 0x${b.toString(16)} at offset ${r.at - 1}`);
  }
}

function readStr(r, n) {
  const at = r.need(n);
  try {
    return strictUtf8.decode(r.bytes.subarray(at, at + n));
  } catch {
    throw new MsgpackError("invalid UTF-8 in a string");
  }
}

function readBin(r, n) {
  const at = r.need(n);
  return r.bytes.slice(at, at + n);
}

function readArray(r, n, depth) {
  const out = [];
  for (let k = 0; k < n; k++) out.push(readValue(r, depth + 1));
  return out;
}

/** Maps decode to `Map` (keys keep their types and order; duplicates: the last wins). */
function readMap(r, n, depth) {
  const out = new Map();
  for (let k = 0; k < n; k++) {
    const key = readValue(r, depth + 1);
    out.set(key, readValue(r, depth + 1));
  }
  return out;
}

/** Decode one MessagePack value filling the whole buffer (trailing bytes are an error, as in msgspec). */
export function unpack(bytes) {
  const r = new Reader(bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes));
  const value = readValue(r, 0);
  if (r.at !== r.bytes.length) throw new MsgpackError(`${r.bytes.length - r.at} trailing bytes after the message`);
  return value;
}

// -- encoding -----------------------------------------------------------------------------------

/** A growable byte buffer writing big-endian MessagePack scalars. */
export class Writer {
  constructor() {
    this.buf = new Uint8Array(256);
    this.view = new DataView(this.buf.buffer);
    this.at = 0;
  }

  room(n) {
    if (this.at + n <= this.buf.length) return;
    const bigger = new Uint8Array(Math.max(this.buf.length * 2, this.at + n));
    bigger.set(this.buf.subarray(0, this.at));
    this.buf = bigger;
    this.view = new DataView(bigger.buffer);
  }

  byte(b) { this.room(1); this.buf[this.at++] = b; }
  put(fn, size, value) { this.room(size); this.view[fn](this.at, value); this.at += size; }
  bytes(data) { this.room(data.length); this.buf.set(data, this.at); this.at += data.length; }
  result() { return this.buf.slice(0, this.at); }

  int(x) {
    const big = typeof x === "bigint" ? x : BigInt(x);
    if (typeof x === "number" && !Number.isSafeInteger(x)) throw new MsgpackError(`${x} is not an integer`);
    if (big >= 0n) {
      if (big < 128n) this.byte(Number(big));
      else if (big < 256n) { this.byte(0xcc); this.put("setUint8", 1, Number(big)); }
      else if (big < 65536n) { this.byte(0xcd); this.put("setUint16", 2, Number(big)); }
      else if (big < 4294967296n) { this.byte(0xce); this.put("setUint32", 4, Number(big)); }
      else if (big < 1n << 64n) { this.byte(0xcf); this.put("setBigUint64", 8, big); }
      else throw new MsgpackError(`integer ${big} does not fit in 64 bits`);
    } else if (big >= -32n) this.byte(Number(big) & 0xff);
    else if (big >= -128n) { this.byte(0xd0); this.put("setInt8", 1, Number(big)); }
    else if (big >= -32768n) { this.byte(0xd1); this.put("setInt16", 2, Number(big)); }
    else if (big >= -2147483648n) { this.byte(0xd2); this.put("setInt32", 4, Number(big)); }
    else if (big >= -(1n << 63n)) { this.byte(0xd3); this.put("setBigInt64", 8, big); }
    else throw new MsgpackError(`integer ${big} does not fit in 64 bits`);
  }

  float(x) { this.byte(0xcb); this.put("setFloat64", 8, x); }
  nil() { this.byte(0xc0); }
  bool(x) { this.byte(x ? 0xc3 : 0xc2); }

  str(s) {
    const data = utf8.encode(s);
    this.header(data.length, 0xa0, 32, 0xd9, 0xda, 0xdb);
    this.bytes(data);
  }

  bin(data) {
    const n = data.length;
    if (n < 256) { this.byte(0xc4); this.put("setUint8", 1, n); }
    else if (n < 65536) { this.byte(0xc5); this.put("setUint16", 2, n); }
    else { this.byte(0xc6); this.put("setUint32", 4, n); }
    this.bytes(data);
  }

  array(n) { this.header(n, 0x90, 16, null, 0xdc, 0xdd); }
  map(n) { this.header(n, 0x80, 16, null, 0xde, 0xdf); }

  /** A length header: fix form below `fixLimit`, then 8-bit (str only), 16-bit, 32-bit. */
  header(n, fix, fixLimit, b8, b16, b32) {
    if (n < fixLimit) this.byte(fix | n);
    else if (b8 !== null && n < 256) { this.byte(b8); this.put("setUint8", 1, n); }
    else if (n < 65536) { this.byte(b16); this.put("setUint16", 2, n); }
    else { this.byte(b32); this.put("setUint32", 4, n); }
  }

  /** Any JSON-like value (for `dict[str, Any]` fields): a whole number is an int, other numbers
   * and `Float` boxes are float64, Uint8Array is bin, objects and Maps are maps. */
  any(x) {
    if (x === null || x === undefined) this.nil();
    else if (typeof x === "boolean") this.bool(x);
    else if (typeof x === "bigint") this.int(x);
    else if (typeof x === "number") Number.isInteger(x) ? this.int(x) : this.float(x);
    else if (x instanceof Float) this.float(x.value);
    else if (typeof x === "string") this.str(x);
    else if (x instanceof Uint8Array) this.bin(x);
    else if (Array.isArray(x)) { this.array(x.length); x.forEach((v) => this.any(v)); }
    else {
      const entries = x instanceof Map ? [...x.entries()] : Object.entries(x);
      this.map(entries.length);
      for (const [k, v] of entries) { this.any(k); this.any(v); }
    }
  }
}
