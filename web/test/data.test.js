/** Data a person picks or pastes: JSONL and CSV of the task's columns, checked against the task. */
import { test } from "node:test";
import assert from "node:assert/strict";

import { batcher, examplesFor, parseCsv, parseRecords } from "../src/data.js";
import { taskOf } from "../src/prompts.js";

const sst2 = taskOf("sst2");

test("CSV with quotes, commas and newlines inside fields", () => {
  assert.deepEqual(parseCsv('sentence,label\r\n"a, ""fine"" film",1\n"two\nlines",0\n'), [["sentence", "label"], ['a, "fine" film', "1"], ["two\nlines", "0"]]);
});

test("JSONL and CSV give the same examples; labels by index or by name", () => {
  const fromJsonl = examplesFor(parseRecords('{"sentence": " a fine film ", "label": 1}\n{"sentence": "dull", "label": "negative"}\n', "x.jsonl"), sst2);
  const fromCsv = examplesFor(parseRecords("sentence,label\na fine film,positive\ndull,0\n", "x.csv"), sst2);
  assert.deepEqual(fromJsonl, [{ fields: { sentence: "a fine film" }, label: 1 }, { fields: { sentence: "dull" }, label: 0 }]);
  assert.deepEqual(fromCsv, fromJsonl);
});

test("a file that does not fit the task is one clear error", () => {
  assert.throws(() => examplesFor(parseRecords('{"text": "x", "label": 0}'), sst2), /example 1 lacks "sentence", which task sst2's template uses/);
  assert.throws(() => examplesFor(parseRecords('{"sentence": "x", "label": 7}'), sst2), /label 7 is not one of task sst2's labels \(0..1 or negative, positive\)/);
  assert.throws(() => parseRecords('{"sentence": "x"\n', "d.jsonl"), /line 1 of d.jsonl is not JSON/);
  assert.throws(() => examplesFor([], sst2), /no examples/);
});

test("a batch holds the filled prompts' tokens and the labels", () => {
  const examples = examplesFor([{ sentence: "ab", label: 1 }, { sentence: "abcd", label: 0 }], sst2);
  const make = batcher(examples, sst2, (t) => [...t].map((c) => c.charCodeAt(0)), 64, 0);
  const batch = make([1, 0]);
  assert.deepEqual(batch.labels, [0, 1]);
  assert.deepEqual(batch.dims, [2, "Review: abcd\nSentiment:".length]);
  assert.equal(batch.attentionMask.reduce((a, b) => a + b, 0n), BigInt(2 * "Review: \nSentiment:".length + 6));
});
