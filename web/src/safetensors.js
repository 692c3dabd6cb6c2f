/**
 * Reading the trainable tensors the page starts from (`/job/trainable.safetensors`, the checkpoint
 * file format of PROTOCOL.md §10): an 8-byte little-endian header length, a JSON header naming each
 * tensor's dtype, shape and byte range, then the data. Only float32 is accepted (the weights' dtype
 * of every reference executor, and what the fingerprint hashes).
 */

const MAX_HEADER = 100 << 20;

/** `{metadata, tensors: Map(name → Float32Array), shapes: Map(name → dims)}` from a safetensors file's bytes. */
export function readSafetensors(bytes) {
  if (bytes.length < 8) throw new Error(`a safetensors file of ${bytes.length} bytes is cut short`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerLength = Number(view.getBigUint64(0, true));
  if (headerLength > MAX_HEADER || 8 + headerLength > bytes.length) throw new Error("the safetensors header is larger than the file");
  let header;
  try {
    header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + headerLength)));
  } catch {
    throw new Error("the safetensors header is not JSON");
  }
  const data = bytes.subarray(8 + headerLength);
  const tensors = new Map();
  const shapes = new Map();
  for (const [name, info] of Object.entries(header)) {
    if (name === "__metadata__") continue;
    if (info.dtype !== "F32") throw new Error(`tensor ${name} is ${info.dtype}; trainable tensors travel as F32`);
    const [start, end] = info.data_offsets;
    const count = info.shape.reduce((a, b) => a * b, 1);
    if (end - start !== 4 * count || end > data.length) throw new Error(`tensor ${name}'s bytes do not match its shape ${JSON.stringify(info.shape)}`);
    const out = new Float32Array(count);
    const src = new DataView(data.buffer, data.byteOffset + start, end - start);
    for (let k = 0; k < count; k++) out[k] = src.getFloat32(4 * k, true);
    tensors.set(name, out);
    shapes.set(name, info.shape);
  }
  return { metadata: header.__metadata__ ?? {}, tensors, shapes };
}

/** A safetensors file of float32 tensors (for tests and tools): `[[name, Float32Array], ...]`. */
export function writeSafetensors(entries, metadata = {}) {
  let offset = 0;
  const header = { __metadata__: metadata };
  for (const [name, data] of entries) {
    header[name] = { dtype: "F32", shape: [data.length], data_offsets: [offset, offset + 4 * data.length] };
    offset += 4 * data.length;
  }
  let json = new TextEncoder().encode(JSON.stringify(header));
  const pad = (8 - (json.length % 8)) % 8;
  json = new TextEncoder().encode(JSON.stringify(header) + " ".repeat(pad));
  const out = new Uint8Array(8 + json.length + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
  out.set(json, 8);
  let at = 8 + json.length;
  for (const [, data] of entries) {
    const view = new DataView(out.buffer, at, 4 * data.length);
    data.forEach((x, k) => view.setFloat32(4 * k, x, true));
    at += 4 * data.length;
  }
  return out;
}
