/**
 * The page's tokenisation against edgezo's (tests/golden/web_tokens.json, written by the Python
 * reference with the default model's tokenizer): @huggingface/tokenizers over the same
 * tokenizer.json, the SST-2 template, left truncation and right padding; and the loss.
 *
 * The tokenizer.json is the default model's, converted once by edgezo into its cache
 * ($EDGEZO_CACHE or ~/.cache/edgezo/converted/<model>/, made by any `edgezo` command or Python test
 * that loads the default model); it is 3.5 MB, so it is not checked in.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";

import { Tokenizer } from "@huggingface/tokenizers";

import { encodeBatch, fillTemplate, labelLoss, promptIds, taskOf, templateFields } from "../src/prompts.js";
import { sha256HexSync } from "../src/sha256.js";

const golden = JSON.parse(readFileSync(new URL("../../tests/golden/web_tokens.json", import.meta.url), "utf8"));
const cache = process.env.EDGEZO_CACHE || join(homedir(), ".cache", "edgezo");
const tokenizerPath = join(cache, "converted", golden.model, "tokenizer.json");

test("templates fill as Python's str.format (fields never formatted, {{ }} literal)", () => {
  const sst2 = taskOf("SST2");
  assert.deepEqual(templateFields(sst2.template), ["sentence"]);
  assert.equal(fillTemplate(sst2.template, { sentence: "a {fine} film" }), "Review: a {fine} film\nSentiment:");
  assert.equal(fillTemplate("{{x}} {y}", { y: 1 }), "{x} 1");
  assert.throws(() => fillTemplate(sst2.template, { text: "x" }), /no field "sentence"/);
  assert.throws(() => taskOf("mnli"), /unknown task "mnli"/);
  const user = taskOf(JSON.stringify({ name: "mine", template: "Q: {q}\nA:", labels: { yes: " Yes", no: " No" } }));
  assert.deepEqual(user, { name: "mine", template: "Q: {q}\nA:", labels: 2 });
});

test("every golden prompt tokenises and batches exactly as edgezo does", { skip: !existsSync(tokenizerPath) && `no ${tokenizerPath}: run any edgezo command on the default model once to convert it` }, () => {
  const json = readFileSync(tokenizerPath);
  assert.equal(sha256HexSync(json), golden.tokenizer_sha256, "the cached tokenizer.json is the one the fixture was made with");
  const tokenizer = new Tokenizer(JSON.parse(json.toString("utf8")), {});
  const encode = (text, special) => tokenizer.encode(text, { add_special_tokens: special }).ids;
  const prompts = golden.sentences.map((sentence) => fillTemplate(taskOf("sst2").template, { sentence }));
  assert.deepEqual(prompts, golden.prompts);
  prompts.forEach((p, k) => assert.deepEqual(encode(p, true), golden.ids[k], JSON.stringify(p)));
  assert.deepEqual([" negative", " positive"].map((w) => encode(w, false)[0]), golden.verbalizer_ids);
  const batch = encodeBatch(encode, prompts, golden.max_length, golden.pad_token_id);
  const [rows, width] = batch.dims;
  const grid = (flat) => Array.from({ length: rows }, (_, b) => Array.from(flat.subarray(b * width, (b + 1) * width), Number));
  assert.deepEqual(grid(batch.inputIds), golden.batch_input_ids);
  assert.deepEqual(grid(batch.attentionMask), golden.batch_attention_mask);
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
