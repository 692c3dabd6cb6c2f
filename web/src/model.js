/**
 * From a forward pass to the loss a probe measures: perturb copies of the replica's trainable
 * tensors (the stored ones never change), run the model on the batch with them, and take the mean
 * cross-entropy over the label words in float64. The forward is passed in: onnxruntime-web in the
 * page (`ortForward`), a pure-JavaScript stand-in in unit tests.
 */

import { perturbedTensors } from "./perturb.js";
import { labelLoss } from "./prompts.js";

/** `lossOf(replica, distribution)` → `loss(batch, perturbation)` for a `forward(batch, tensors)`
 * returning `{labelLogits}` ([B, labels] float32). */
export function lossFromForward(forward) {
  return (replica, distribution) => async (batch, perturbation) => {
    const tensors = perturbedTensors(replica, perturbation, distribution);
    const { labelLogits } = await forward(batch, tensors.map((data, k) => ({ name: replica[k].name, data })));
    return labelLoss(labelLogits, batch.labels);
  };
}

/**
 * The forward of an onnxruntime(-web) session over the export's graph (web/CONTRACT.md): inputs
 * `input_ids`, `attention_mask` (int64 [B, T]) and one float32 input per trainable tensor; output
 * `label_logits`. `ort` is the onnxruntime module (web or node), `shapes` each trainable's dims.
 * Every input is copied: with inference in a worker (`ort.env.wasm.proxy`) onnxruntime-web
 * transfers the buffers it is given, which would leave a batch probed again, or the replica, empty.
 */
export function ortForward(ort, session, shapes) {
  return async (batch, tensors) => {
    const feeds = {
      input_ids: new ort.Tensor("int64", batch.inputIds.slice(), batch.dims),
      attention_mask: new ort.Tensor("int64", batch.attentionMask.slice(), batch.dims),
    };
    for (const { name, data } of tensors) feeds[name] = new ort.Tensor("float32", data.slice(), shapes.get(name));
    const out = await session.run(feeds, ["label_logits"]);
    return { labelLogits: out.label_logits.data };
  };
}
