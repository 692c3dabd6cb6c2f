/**
 * Prompts, tokenised batches and the loss (PROTOCOL.md §9.4), for causal language models (the ONNX
 * export the page runs). The tokenizer is passed in as `encode(text, addSpecialTokens) → ids` (the
 * page wraps @huggingface/tokenizers over the job's tokenizer.json); this module only does what
 * edgezo's Python side does around it: fill the task's template, truncate from the left, pad to the
 * right, and compute the cross-entropy over the label words in float64.
 */

/** The built-in tasks' causal templates and label counts (edgezo/tasks.py). */
export const TASKS = {
  sst2: { template: "Review: {sentence}\nSentiment:", labels: 2, labelNames: ["negative", "positive"] },
  rte: { template: "{premise}\nQuestion: {hypothesis} True or False?\nAnswer:", labels: 2, labelNames: ["entailment", "not_entailment"] },
  boolq: { template: "{passage}\nQuestion: {question}?\nAnswer:", labels: 2, labelNames: ["false", "true"] },
  wic: { template: 'Does the word "{word}" have the same meaning in these two sentences?\n{sentence1}\n{sentence2}\nAnswer:', labels: 2,
    labelNames: ["different", "same"] },
};

/** A job's task (`Announce.job.task`): a built-in name, or a user task's JSON text (edgezo/taskfile.py). */
export function taskOf(ref) {
  const builtin = TASKS[String(ref).toLowerCase()];
  if (builtin) return { name: String(ref).toLowerCase(), ...builtin };
  let spec;
  try {
    spec = JSON.parse(ref);
  } catch {
    throw new Error(`unknown task ${JSON.stringify(ref)}: the page knows ${Object.keys(TASKS).join(", ")} and user tasks announced as JSON`);
  }
  if (spec.kind === "generation" || !spec.template || !spec.labels) {
    throw new Error(`task ${JSON.stringify(spec.name)} is not a classification task with a template and label words; the browser device runs classification tasks only`);
  }
  return { name: spec.name ?? "task", template: spec.template, labels: Object.keys(spec.labels).length, labelNames: Object.keys(spec.labels) };
}

/** The names `{field}` a template uses (Python str.format; `{{` and `}}` are literal braces). */
export function templateFields(template) {
  return [...template.replace(/\{\{|\}\}/g, "").matchAll(/\{([^{}]*)\}/g)].map((m) => m[1]);
}

/** Python's `template.format(**fields)` for plain named fields; the values are never formatted. */
export function fillTemplate(template, fields) {
  return template.replace(/\{\{|\}\}|\{([^{}]*)\}/g, (match, name) => {
    if (match === "{{") return "{";
    if (match === "}}") return "}";
    if (!(name in fields)) throw new Error(`the example has no field ${JSON.stringify(name)} that the task's template uses`);
    return String(fields[name]);
  });
}

/** One prompt's ids truncated from the left to `maxLength`, keeping the special tokens the
 * tokenizer adds around the text (Hugging Face's truncation_side="left"). */
export function promptIds(encode, text, maxLength) {
  const withSpecial = encode(text, true);
  const plain = encode(text, false);
  if (withSpecial.length <= maxLength) return withSpecial;
  const start = findSub(withSpecial, plain);
  if (start < 0) throw new Error("the tokenizer's special tokens are not around the text; cannot truncate this prompt");
  const before = withSpecial.slice(0, start);
  const after = withSpecial.slice(start + plain.length);
  const room = maxLength - before.length - after.length;
  if (room <= 0) throw new Error(`max_length ${maxLength} leaves no room for the prompt's text`);
  return [...before, ...plain.slice(plain.length - room), ...after];
}

function findSub(whole, part) {
  outer: for (let s = 0; s + part.length <= whole.length; s++) {
    for (let k = 0; k < part.length; k++) if (whole[s + k] !== part[k]) continue outer;
    return s;
  }
  return -1;
}

/** A batch of prompts as right-padded int64 `input_ids` and `attention_mask` ([B, T] row-major). */
export function encodeBatch(encode, prompts, maxLength, padId) {
  const rows = prompts.map((p) => promptIds(encode, p, maxLength));
  const width = Math.max(...rows.map((r) => r.length));
  const ids = new BigInt64Array(rows.length * width).fill(BigInt(padId));
  const mask = new BigInt64Array(rows.length * width);
  rows.forEach((r, b) => r.forEach((id, t) => {
    ids[b * width + t] = BigInt(id);
    mask[b * width + t] = 1n;
  }));
  return { inputIds: ids, attentionMask: mask, dims: [rows.length, width], lengths: rows.map((r) => r.length) };
}

/**
 * Mean cross-entropy, in float64, of the softmax over the label words (`labelLogits`, [B, V]
 * row-major float32) against the label indices: the loss the Python executor computes.
 */
export function labelLoss(labelLogits, labels) {
  const v = labelLogits.length / labels.length;
  let total = 0;
  labels.forEach((label, b) => {
    if (!(Number.isInteger(label) && label >= 0 && label < v)) throw new Error(`label ${label} is not one of the task's ${v} labels`);
    const row = Array.from(labelLogits.subarray(b * v, (b + 1) * v), Number);
    const top = Math.max(...row);
    const lse = top + Math.log(row.reduce((s, x) => s + Math.exp(x - top), 0));
    total += lse - row[label];
  });
  return total / labels.length;
}
