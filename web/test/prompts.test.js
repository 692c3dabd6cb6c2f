/**
 * The page's tokenisation against edgezo's: tests/golden/web_tokens_sst2.json (written by
 * tests/golden/make_web_tokens.py with the Python executors' tokenisation) over two tokenizers:
 * the tiny test models' (tests/golden/tiny_tokenizer.json, committed: always checked) and
 * SmolLM2-135M-Instruct's (3.5 MB, not committed: checked from the converted model folder edgezo
 * keeps in its cache, recorded in the fixture, whenever that folder exists), with
 * @huggingface/tokenizers, the SST-2 template, right padding and left truncation; and
 * tests/golden/web_tokens.json (tests/golden/make_web_vectors.py: awkward made-up prompts, unicode,
 * braces, a long one truncated, over SmolLM2's tokenizer); and the loss.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

import { Tokenizer } from "@huggingface/tokenizers";

import { encodeBatch, fillTemplate, labelLoss, promptIds, taskOf, templateFields } from "../src/prompts.js";
import { sha256HexSync } from "../src/sha256.js";
import { jobTokenizer } from "../src/tokenizer.js";

const goldenDir = new URL("../../tests/golden/", import.meta.url);
const golden = JSON.parse(readFileSync(new URL("web_tokens_sst2.json", goldenDir), "utf8"));
const awkward = JSON.parse(readFileSync(new URL("web_tokens.json", goldenDir), "utf8"));
const tokenizerFile = (record) => (record.tokenizer_json.startsWith("/") ? record.tokenizer_json : fileURLToPath(new URL(record.tokenizer_json, goldenDir)));

const loaded = new Map();
/** The tokenizer at `path` (parsed once: SmolLM2's is 3.5 MB), after checking its SHA-256. */
function tokenizerAt(path, sha256) {
  if (!loaded.has(path)) {
    const json = readFileSync(path);
    loaded.set(path, { sha: sha256HexSync(json), tok: jobTokenizer(Tokenizer, JSON.parse(json.toString("utf8"))) });
  }
  const { sha, tok } = loaded.get(path);
  assert.equal(sha, sha256, `${path} is the tokenizer.json the fixture was made with`);
  return tok;
}

/** Every example's ids, the padded batch and the left-truncated batch, as the fixture records them. */
function checkTokenizer(record) {
  const { encode, padId } = tokenizerAt(tokenizerFile(record), record.tokenizer_sha256);
  assert.equal(padId, record.pad_token_id, "the pad token the page picks is edgezo's");
  const sst2 = taskOf("sst2");
  assert.ok(record.examples.length >= 20);
  for (const e of record.examples) {
    const prompt = fillTemplate(sst2.template, { sentence: e.sentence });
    assert.equal(prompt, e.prompt);
    assert.deepEqual(promptIds(encode, prompt, 128), e.ids, prompt);
  }
  assert.deepEqual(golden.verbalizers.map((w) => encode(w, false)[0]), record.verbalizer_ids);
  for (const b of [record.batch, record.truncated_batch]) {
    const batch = encodeBatch(encode, b.prompts, b.max_length, record.pad_token_id);
    const [rows, width] = batch.dims;
    const grid = (flat) => Array.from({ length: rows }, (_, r) => Array.from(flat.subarray(r * width, (r + 1) * width), Number));
    assert.deepEqual(grid(batch.inputIds), b.input_ids, `max_length ${b.max_length}`);
    assert.deepEqual(grid(batch.attentionMask), b.attention_mask, `max_length ${b.max_length}`);
    assert.deepEqual(batch.lengths.map((n) => n - 1), b.target_positions);
  }
}

test("the tiny test models' tokenizer: every golden prompt, batch and truncated batch as edgezo tokenises them", () => {
  checkTokenizer(golden.tiny);
});

const smol = golden.smollm2;
test("SmolLM2-135M-Instruct's tokenizer: every golden prompt, batch and truncated batch as edgezo tokenises them",
  { skip: !existsSync(tokenizerFile(smol)) && `no ${smol.tokenizer_json}: load the default model once (any edgezo command) to convert it` },
  () => checkTokenizer(smol));

test("templates fill as Python's str.format (fields never formatted, {{ }} literal)", () => {
  const sst2 = taskOf("SST2");
  assert.deepEqual(templateFields(sst2.template), ["sentence"]);
  assert.equal(fillTemplate(sst2.template, { sentence: "a {fine} film" }), "Review: a {fine} film\nSentiment:");
  assert.equal(fillTemplate("{{x}} {y}", { y: 1 }), "{x} 1");
  assert.throws(() => fillTemplate(sst2.template, { text: "x" }), /no field "sentence"/);
  assert.throws(() => taskOf("mnli"), /unknown task "mnli"/);
  const user = taskOf(JSON.stringify({ name: "mine", template: "Q: {q}\nA:", labels: { yes: " Yes", no: " No" } }));
  assert.deepEqual(user, { name: "mine", template: "Q: {q}\nA:", labels: 2, labelNames: ["yes", "no"] });
});

const awkwardTokenizer = smol.tokenizer_json; // the same converted SmolLM2 folder (awkward.tokenizer_sha256 checks it)
test("awkward prompts (unicode, braces, tabs, a truncated one) batch as edgezo batches them with SmolLM2's tokenizer",
  { skip: !existsSync(awkwardTokenizer) && `no ${awkwardTokenizer}: load the default model once (any edgezo command) to convert it` }, () => {
    const { encode, padId } = tokenizerAt(awkwardTokenizer, awkward.tokenizer_sha256);
    assert.equal(padId, awkward.pad_token_id);
    const prompts = awkward.sentences.map((sentence) => fillTemplate(taskOf("sst2").template, { sentence }));
    assert.deepEqual(prompts, awkward.prompts);
    prompts.forEach((p, k) => assert.deepEqual(encode(p, true), awkward.ids[k], JSON.stringify(p)));
    const batch = encodeBatch(encode, prompts, awkward.max_length, padId);
    const [rows, width] = batch.dims;
    const grid = (flat) => Array.from({ length: rows }, (_, b) => Array.from(flat.subarray(b * width, (b + 1) * width), Number));
    assert.deepEqual(grid(batch.inputIds), awkward.batch_input_ids);
    assert.deepEqual(grid(batch.attentionMask), awkward.batch_attention_mask);
  });

test("left truncation keeps the end of the prompt and the special tokens around it", () => {
  const encode = (text, special) => {
    const ids = [...text].map((c) => c.charCodeAt(0));
    return special ? [1, ...ids, 2] : ids;
  };
  assert.deepEqual(promptIds(encode, "abcdef", 5), [1, 100, 101, 102, 2]);
  assert.deepEqual(promptIds(encode, "ab", 5), [1, 97, 98, 2]);
  assert.throws(() => promptIds(encode, "abc", 2), /no room/);
});

test("the loss is the mean cross-entropy over the label words, in float64", () => {
  const logits = Float32Array.from([2, 0, -1, 3]);
  const expected = ((Math.log(Math.exp(2) + 1) - 2) + (Math.log(Math.exp(-1) + Math.exp(3)) + 1)) / 2;
  assert.ok(Math.abs(labelLoss(logits, [0, 0]) - expected) < 1e-15);
  assert.throws(() => labelLoss(logits, [0, 2]), /label 2 is not one of the task's 2 labels/);
});
