/**
 * `npm run build`: the page and its bundle into edgezo/web_assets/ (Python package data, so
 * `pip install` needs no npm): index.html, edgezo-device.js (page.js with mqtt.js and
 * @huggingface/tokenizers, minified) and onnxruntime-web's WASM build. `--webgpu` adds its WebGPU
 * build too (a 29 MB wasm more: not in the committed assets, see README.md; the page fetches it only
 * on a real WebGPU adapter). `--out DIR` writes there instead (DIR is emptied first).
 */
import { build } from "esbuild";
import { copyFileSync, mkdirSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const outAt = process.argv.indexOf("--out"); // another folder (tests build the WebGPU variant there)
const out = outAt > 0 ? process.argv[outAt + 1] : join(here, "..", "edgezo", "web_assets");
const ort = join(here, "node_modules", "onnxruntime-web", "dist");
const webgpu = process.argv.includes("--webgpu");

rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });
await build({
  entryPoints: [join(here, "src", "page.js")], bundle: true, format: "esm", platform: "browser", target: "es2022",
  minify: true, outfile: join(out, "edgezo-device.js"), legalComments: "eof", logLevel: "warning",
});
copyFileSync(join(here, "index.html"), join(out, "index.html"));
const ortFiles = ["ort.wasm.bundle.min.mjs", "ort-wasm-simd-threaded.wasm", "ort-wasm-simd-threaded.mjs"]; // the .mjs: the glue its worker threads load
if (webgpu) ortFiles.push("ort.webgpu.bundle.min.mjs", "ort-wasm-simd-threaded.asyncify.wasm", "ort-wasm-simd-threaded.asyncify.mjs");
for (const f of ortFiles) copyFileSync(join(ort, f), join(out, f));
writeFileSync(join(out, "__init__.py"), '"""The browser device\'s built page (web/, `npm run build`); served by `edgezo coordinate --web-port`."""\n');
writeFileSync(join(out, "README.md"), "Built by `npm run build` in web/ (see web/README.md); do not edit: edit web/ and rebuild.\n" +
  "onnxruntime-web (MIT, Microsoft), mqtt.js (MIT), @huggingface/tokenizers (Apache-2.0): versions in web/package-lock.json.\n");
let total = 0;
for (const f of readdirSync(out)) {
  const size = statSync(join(out, f)).size;
  total += size;
  console.log(`${f.padEnd(40)} ${(size / 2 ** 20).toFixed(2).padStart(8)} MiB`);
}
console.log(`${"total".padEnd(40)} ${(total / 2 ** 20).toFixed(2).padStart(8)} MiB`);
