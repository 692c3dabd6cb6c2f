/**
 * The examples a page holds, the way a phone would: a file picked or pasted on the page (JSONL or
 * CSV of the task's columns), or the shard the coordinator offers for demos (`/job/data?shard=I/N`,
 * JSONL with the template's fields and `label`, the 0-based label index). Nothing leaves the page
 * but scalars. Each example is checked against the job's task, so a wrong file is one clear error.
 */

import { encodeBatch, fillTemplate, templateFields } from "./prompts.js";

/** Rows of a CSV text (RFC 4180: quoted fields, doubled quotes, newlines inside quotes). */
export function parseCsv(text) {
  const rows = [];
  let row = [], field = "", quoted = false;
  for (let k = 0; k < text.length; k++) {
    const c = text[k];
    if (quoted) {
      if (c === '"' && text[k + 1] === '"') { field += '"'; k++; }
      else if (c === '"') quoted = false;
      else field += c;
    } else if (c === '"') quoted = true;
    else if (c === ",") { row.push(field); field = ""; }
    else if (c === "\n" || c === "\r") {
      if (c === "\r" && text[k + 1] === "\n") k++;
      row.push(field); rows.push(row); row = []; field = "";
    } else field += c;
  }
  if (field !== "" || row.length) { row.push(field); rows.push(row); }
  return rows.filter((r) => r.some((x) => x !== ""));
}

/** Records (plain objects) from a JSONL or CSV text; `name` (a file name) or the first character decides which. */
export function parseRecords(text, name = "") {
  const jsonl = name.endsWith(".jsonl") || name.endsWith(".json") || (!name.endsWith(".csv") && text.trimStart().startsWith("{"));
  if (jsonl) {
    return text.split(/\r?\n/).filter((l) => l.trim()).map((line, k) => {
      try {
        return JSON.parse(line);
      } catch {
        throw new Error(`line ${k + 1} of ${name || "the data"} is not JSON; give one JSON object per line, or a CSV file with a header row`);
      }
    });
  }
  const [header, ...rows] = parseCsv(text);
  if (!header) throw new Error(`${name || "the data"} is empty`);
  return rows.map((r) => Object.fromEntries(header.map((h, k) => [h.trim(), r[k] ?? ""])));
}

/** The label index of a record: an index, or one of the task's label names. */
function labelIndex(value, task, where) {
  if (typeof value === "number" || (typeof value === "string" && /^\d+$/.test(value.trim()))) {
    const k = Number(value);
    if (k < task.labels) return k;
  } else if (typeof value === "string" && task.labelNames?.includes(value.trim())) {
    return task.labelNames.indexOf(value.trim());
  }
  throw new Error(`${where}: label ${JSON.stringify(value)} is not one of task ${task.name}'s labels (0..${task.labels - 1}${task.labelNames ? ` or ${task.labelNames.join(", ")}` : ""})`);
}

/** `[{fields, label}]` from records, checked against the task (its template's fields, its labels). */
export function examplesFor(records, task, labelColumn = "label") {
  const fields = templateFields(task.template);
  if (records.length === 0) throw new Error("the data holds no examples");
  return records.map((r, k) => {
    const where = `example ${k + 1}`;
    const missing = fields.filter((f) => !(f in r));
    if (missing.length) throw new Error(`${where} lacks ${missing.map((f) => JSON.stringify(f)).join(", ")}, which task ${task.name}'s template uses; the data needs the columns ${fields.join(", ")} and ${labelColumn}`);
    if (!(labelColumn in r)) throw new Error(`${where} has no ${JSON.stringify(labelColumn)} column`);
    return { fields: Object.fromEntries(fields.map((f) => [f, String(r[f]).trim()])), label: labelIndex(r[labelColumn], task, where) };
  });
}

/** `makeBatch(indices)` over the examples: prompts, the tokenised batch and the labels. */
export function batcher(examples, task, encode, maxLength, padId) {
  return (indices) => {
    const prompts = indices.map((k) => fillTemplate(task.template, examples[k].fields));
    return { ...encodeBatch(encode, prompts, maxLength, padId), labels: indices.map((k) => examples[k].label) };
  };
}
