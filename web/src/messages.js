/**
 * The wire protocol's messages (PROTOCOL.md §4-§6), encoded and validated as the Python reference
 * (coordinator/wire/messages.py, msgspec Structs) does: one MessagePack map per payload, tagged by
 * "type", fields in declaration order, defaults written out; a decoder that refuses a wrong type,
 * a missing required field, a str where bytes go, another protocol version or an oversized payload,
 * and ignores unknown keys.
 *
 * Messages are plain objects `{type: "assign", v: 1, run: ..., ...}`. Integers that do not fit a
 * JavaScript number exactly (a run seed ≥ 2^53) are BigInt; bytes are Uint8Array.
 */

import { Float, MsgpackError, Writer, unpack } from "./msgpack.js";
import { direction } from "./keys.js";

export const PROTOCOL_VERSION = 1;
export const MAX_PAYLOAD_BYTES = 1 << 20;
export const UPDATE_ROW_BYTES = 19;

/** A payload that is not a valid message of this protocol: logged and dropped, never fatal. */
export class BadMessage extends Error {}

const INT = "int", FLOAT = "float", STR = "str", BYTES = "bytes", ANYMAP = "dict";
const list = (of) => ({ list: of });
const TRAINABLE_ITEM = { tuple: [STR, INT, INT] };
/** The default of an optional field that the reference leaves out of the payload when unset
 * (msgspec's UNSET: Announce.onnx_sha256), so a job without browser devices keeps its bytes. */
const OMITTED = Symbol("omitted");

const MODEL_REF = { name: "ModelRef", fields: [["name", STR], ["revision", STR], ["digest", STR]] };
const DEVICE_TASK = { name: "DeviceTask", fields: [["device", STR], ["k", INT], ["p1", INT], ["p2", INT], ["batch", INT]] };
const UPDATE = {
  name: "Update", tag: "update",
  fields: [["v", INT], ["run", STR], ["round", INT], ["run_seed", INT], ["rows", BYTES], ["fingerprint", STR]],
};

/** Every message kind: its tag, struct name and fields `[name, type, default?]` in declaration order. */
export const SCHEMAS = {
  announce: {
    name: "Announce", tag: "announce",
    fields: [["v", INT], ["run", STR], ["state", STR], ["model", MODEL_REF], ["job", ANYMAP], ["split", INT], ["round", INT],
      ["rounds", INT], ["fingerprint", STR], ["log_chunk", INT], ["checkpoint_url", STR, ""], ["checkpoint_round", INT, 0],
      ["trainable", list(TRAINABLE_ITEM), []], ["onnx_sha256", STR, OMITTED]],
  },
  assign: {
    name: "Assign", tag: "assign",
    fields: [["v", INT], ["run", STR], ["round", INT], ["attempt", INT], ["lr", FLOAT], ["timeout_s", FLOAT], ["tasks", list(DEVICE_TASK)]],
  },
  result: {
    name: "Result", tag: "result",
    fields: [["v", INT], ["run", STR], ["round", INT], ["attempt", INT], ["device", STR], ["scalars", BYTES], ["examples", INT],
      ["loss", FLOAT], ["forwards1", INT], ["forwards2", INT], ["flops", FLOAT], ["compute_s", FLOAT], ["fingerprint", STR]],
  },
  update: UPDATE,
  status: {
    name: "Status", tag: "status",
    fields: [["v", INT], ["run", STR], ["device", STR], ["state", STR], ["replica_round", INT, 0], ["examples", INT, 0],
      ["backend", STR, ""], ["profile", ANYMAP, {}], ["memory_gb", FLOAT, 0.0], ["instance", STR, ""]],
  },
  logreq: { name: "LogRequest", tag: "logreq", fields: [["v", INT], ["run", STR], ["device", STR], ["first", INT], ["last", INT]] },
  logchunk: {
    name: "LogChunk", tag: "logchunk",
    fields: [["v", INT], ["run", STR], ["device", STR], ["entries", list(UPDATE)], ["last", INT]],
  },
  refused: { name: "Refused", tag: "refused", fields: [["v", INT], ["run", STR], ["device", STR], ["key", STR], ["reason", STR]] },
};

// -- decoding -----------------------------------------------------------------------------------

function typeName(x) {
  if (x === null) return "null";
  if (x instanceof Float) return "float";
  if (typeof x === "number" || typeof x === "bigint") return "int";
  if (typeof x === "string") return "str";
  if (typeof x === "boolean") return "bool";
  if (x instanceof Uint8Array) return "bytes";
  if (Array.isArray(x)) return "array";
  return "object";
}

function expected(type, value, path) {
  return new BadMessage(`malformed payload: Expected \`${type}\`, got \`${typeName(value)}\` - at \`${path}\``);
}

/** A decoded `Any` value as plain JavaScript: Float unboxed, maps with str keys as objects. */
export function plain(value) {
  if (value instanceof Float) return value.value;
  if (Array.isArray(value)) return value.map(plain);
  if (value instanceof Map) {
    if ([...value.keys()].every((k) => typeof k === "string")) {
      return Object.fromEntries([...value.entries()].map(([k, v]) => [k, plain(v)]));
    }
    return new Map([...value.entries()].map(([k, v]) => [plain(k), plain(v)]));
  }
  return value;
}

function check(type, value, path) {
  if (type === INT) {
    if (typeof value === "number" || typeof value === "bigint") return value;
    throw expected("int", value, path);
  }
  if (type === FLOAT) {
    if (value instanceof Float) return value.value;
    if (typeof value === "number" || typeof value === "bigint") return Number(value);
    throw expected("float", value, path);
  }
  if (type === STR || type === BYTES) {
    if (typeName(value) === type) return value;
    throw expected(type, value, path);
  }
  if (type === ANYMAP) {
    if (!(value instanceof Map)) throw expected("object", value, path);
    for (const k of value.keys()) if (typeof k !== "string") throw expected("str", k, `${path}[...]`);
    return plain(value);
  }
  if (type.list) {
    if (!Array.isArray(value)) throw expected("array", value, path);
    return value.map((v, k) => check(type.list, v, `${path}[${k}]`));
  }
  if (type.tuple) {
    if (!Array.isArray(value)) throw expected("array", value, path);
    if (value.length !== type.tuple.length) {
      throw new BadMessage(`malformed payload: Expected \`array\` of length ${type.tuple.length}, got ${value.length} - at \`${path}\``);
    }
    return value.map((v, k) => check(type.tuple[k], v, `${path}[${k}]`));
  }
  return struct(type, value, path);
}

/** Validate a decoded map against a struct schema; a nested tagged struct may omit its tag. */
function struct(schema, value, path) {
  if (!(value instanceof Map)) throw expected("object", value, path);
  if (schema.tag && value.has("type") && value.get("type") !== schema.tag) {
    throw new BadMessage(`malformed payload: Invalid value ${JSON.stringify(value.get("type"))} - at \`${path}.type\``);
  }
  const out = schema.tag ? { type: schema.tag } : {};
  for (const [name, type, fallback] of schema.fields) {
    if (!value.has(name)) {
      if (fallback === undefined) throw new BadMessage(`malformed payload: Object missing required field \`${name}\` - at \`${path}\``);
      if (fallback !== OMITTED) out[name] = structuredClone(fallback);
      continue;
    }
    out[name] = check(type, value.get(name), `${path}.${name}`);
  }
  return out;
}

/**
 * Decode and validate one payload. `kind` (e.g. "assign") requires that kind of message. Throws
 * BadMessage naming what is wrong; the caller logs and drops the message.
 */
export function decode(payload, kind = null) {
  if (payload.length > MAX_PAYLOAD_BYTES) {
    throw new BadMessage(`oversized payload (${payload.length.toLocaleString("en-US")} bytes; the limit is ${MAX_PAYLOAD_BYTES.toLocaleString("en-US")})`);
  }
  let raw;
  try {
    raw = unpack(payload);
  } catch (e) {
    if (e instanceof MsgpackError || e instanceof RangeError) throw new BadMessage(`malformed payload: ${e.message}`);
    throw e;
  }
  if (!(raw instanceof Map)) throw expected("object", raw, "$");
  const tag = raw.get("type");
  if (tag === undefined) throw new BadMessage("malformed payload: Object missing required field `type` - at `$`");
  const schema = Object.values(SCHEMAS).find((s) => s.tag === tag);
  if (!schema) throw new BadMessage(`malformed payload: Invalid value ${JSON.stringify(tag)} - at \`$.type\``);
  const message = struct(schema, raw, "$");
  if (kind !== null && message.type !== kind) {
    throw new BadMessage(`expected a ${SCHEMAS[kind].name} message, got ${schema.name}`);
  }
  if (message.v !== PROTOCOL_VERSION) {
    throw new BadMessage(`protocol version ${message.v}; this edgezo speaks version ${PROTOCOL_VERSION}`);
  }
  return message;
}

// -- encoding -----------------------------------------------------------------------------------

function write(w, type, value, path) {
  if (type === INT) {
    if (!(typeof value === "bigint" || Number.isInteger(value))) throw new TypeError(`${path} must be an integer, got ${value}`);
    w.int(value);
  } else if (type === FLOAT) {
    if (typeof value !== "number" && typeof value !== "bigint") throw new TypeError(`${path} must be a number, got ${value}`);
    w.float(Number(value));
  } else if (type === STR) {
    if (typeof value !== "string") throw new TypeError(`${path} must be a string, got ${typeName(value)}`);
    w.str(value);
  } else if (type === BYTES) {
    if (!(value instanceof Uint8Array)) throw new TypeError(`${path} must be a Uint8Array, got ${typeName(value)}`);
    w.bin(value);
  } else if (type === ANYMAP) {
    w.any(value);
  } else if (type.list || type.tuple) {
    w.array(value.length);
    value.forEach((v, k) => write(w, type.list || type.tuple[k], v, `${path}[${k}]`));
  } else {
    writeStruct(w, type, value, path);
  }
}

function writeStruct(w, schema, value, path) {
  const present = schema.fields.filter(([name, , fallback]) => !(fallback === OMITTED && value[name] === undefined));
  w.map(present.length + (schema.tag ? 1 : 0));
  if (schema.tag) {
    w.str("type");
    w.str(schema.tag);
  }
  for (const [name, type, fallback] of present) {
    let v = value[name];
    if (v === undefined) {
      if (fallback === undefined) throw new TypeError(`${schema.name} needs field ${name} (${path}.${name})`);
      v = fallback;
    }
    w.str(name);
    write(w, type, v, `${path}.${name}`);
  }
}

/** Encode a message object (`type` names its kind) exactly as the reference encoder does. */
export function encode(message) {
  const schema = SCHEMAS[message.type];
  if (!schema) throw new TypeError(`unknown message type ${JSON.stringify(message.type)}`);
  const w = new Writer();
  writeStruct(w, schema, message, "$");
  return w.result();
}

// -- scalars and update rows --------------------------------------------------------------------

/** Scalars as float32 little-endian (each rounded to the nearest float32). */
export function packScalars(values) {
  const out = new Uint8Array(4 * values.length);
  const view = new DataView(out.buffer);
  values.forEach((x, k) => view.setFloat32(4 * k, x, true));
  return out;
}

export function unpackScalars(data) {
  if (data.length % 4) throw new BadMessage(`scalars field of ${data.length} bytes is not a whole number of float32 values`);
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  return Array.from({ length: data.length / 4 }, (_, k) => view.getFloat32(4 * k, true));
}

/** Update rows (`[direction, coef]`, sorted) as packed 19-byte records (PROTOCOL.md §6). */
export function packUpdate(rows) {
  const out = new Uint8Array(UPDATE_ROW_BYTES * rows.length);
  const view = new DataView(out.buffer);
  rows.forEach(([d, coef], k) => {
    const at = UPDATE_ROW_BYTES * k;
    view.setUint16(at, d.step, true);
    view.setUint8(at + 2, d.block);
    view.setUint16(at + 3, d.i, true);
    view.setUint16(at + 5, d.j, true);
    view.setUint32(at + 7, d.stream, true);
    view.setFloat64(at + 11, coef, true);
  });
  return out;
}

/** An Update message's rows as `[direction, coef]` pairs; refuses partial records and non-finite coefficients. */
export function unpackUpdate(message) {
  const data = message.rows;
  if (data.length % UPDATE_ROW_BYTES) throw new BadMessage(`update rows of ${data.length} bytes are not whole records`);
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const rows = [];
  for (let at = 0; at < data.length; at += UPDATE_ROW_BYTES) {
    const d = direction(message.run_seed, message.round, view.getUint16(at, true), view.getUint8(at + 2),
      view.getUint16(at + 3, true), view.getUint16(at + 5, true), view.getUint32(at + 7, true));
    rows.push([d, view.getFloat64(at + 11, true)]);
  }
  if (rows.some(([, c]) => !Number.isFinite(c))) {
    throw new BadMessage(`update for round ${message.round} holds a non-finite coefficient`);
  }
  return rows;
}
