/** The golden vectors the Python reference wrote (tests/golden/make_web_vectors.py), and hex helpers. */
import { readFileSync } from "node:fs";

const here = new URL(".", import.meta.url);
export const vectors = JSON.parse(readFileSync(new URL("../../tests/golden/web_vectors.json", here), "utf8"));

export const fromHex = (hex) => Uint8Array.from(hex.match(/../g) ?? [], (b) => parseInt(b, 16));
export const toHex = (bytes) => Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
export const f32FromHex = (hex) => new Float32Array(fromHex(hex).buffer);
