"""The smaller browser download (backends/torch/onnx_quant.py): GGUF blocks stored as they are.

Blocks are real llama.cpp blocks made with the project's own Q4/Q8 code (``backends/int8/quant``,
bit-exact to ``gguf.quants``). Checked: the repacking keeps every code and scale (MatMulNBits'
definition gives back the GGUF's values: bit for bit for Q8_0 and Q4_0, within one float32 rounding
for Q4_1), onnxruntime's kernel computes that definition, a hand-made graph using a matrix through
MatMul, Gemm and Gather gives the float graph's outputs after the rewrite, and a tiny LLaMA whose
weights are GGUF blocks exports to a graph that passes the pre-serve check against the torch executor.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from transformers import LlamaForCausalLM

from edgezo.backends.int8.quant import dequantize, quantize
from edgezo.backends.torch.factory import build_torch_executor
from edgezo.backends.torch.onnx_check import onnx_outputs, onnx_session, trainable_values
from edgezo.backends.torch.onnx_export import cached_export
from edgezo.backends.torch.onnx_quant import dequantize_nbits, nbits_weight, store_gguf_blocks
from edgezo.config import JobConfig
from edgezo.coordinator.server.web_serving import BlockSource, check_batches, served_export
from edgezo.errors import EdgezoError
from edgezo.jobdata import load_job_data
from edgezo.keys import Direction
from tiny import save_tiny

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def blocks(qtype: str, rows: int = 24, cols: int = 96, seed: int = 0):
    """A real block set of a random matrix (with one constant block: Q4_1's d = 0 case)."""
    x = torch.from_numpy(np.random.default_rng(seed).standard_normal((rows, cols)).astype(np.float32))
    x[3, 32:64] = 0.75
    return quantize(x, qtype)


def gguf_codes(qt) -> np.ndarray:
    rows, cols = qt.shape
    packed = qt.qs.numpy().reshape(rows, cols // 32, 16)
    return np.concatenate([packed & 15, packed >> 4], axis=2)


@pytest.mark.parametrize("qtype", ["q8_0", "q4_0"])
def test_symmetric_blocks_are_stored_bit_for_bit(qtype):
    qt = blocks(qtype)
    w = nbits_weight(qt)
    assert w.zero_points is None and w.bits == {"q8_0": 8, "q4_0": 4}[qtype] and (w.n, w.k) == qt.shape
    assert np.array_equal(w.scales, qt.d.numpy().astype(np.float32))
    assert np.array_equal(dequantize_nbits(w), dequantize(qt).numpy())


def test_q4_1_keeps_every_code_and_scale_and_its_values_to_one_rounding():
    qt = blocks("q4_1")
    w = nbits_weight(qt)
    codes = np.stack([w.packed & 15, w.packed >> 4], axis=-1).reshape(w.n, -1, 32)  # MatMulNBits order: 2i low, 2i+1 high
    flat = qt.d.numpy() == 0
    assert flat.sum() == 1 and flat[3, 1]  # the constant block
    assert np.array_equal(codes[~flat], gguf_codes(qt)[~flat])
    assert np.array_equal(w.scales[~flat], qt.d.numpy().astype(np.float32)[~flat])
    ref, got = dequantize(qt).numpy(), dequantize_nbits(w)
    assert np.all(got[3, 32:64] == ref[3, 32:64])  # d = 0: every value is m
    scale = np.abs(qt.m.numpy().astype(np.float32)) + 15 * qt.d.numpy().astype(np.float32)  # a block's largest |value|
    bound = 2 * np.finfo(np.float32).eps * np.repeat(scale, 32, axis=1)  # (q + m/d) rounds once, times d once
    assert np.all(np.abs(got - ref) <= bound)


def matmul_nbits_model(w, k: int, n: int):
    inits = [numpy_helper.from_array(w.packed, "B"), numpy_helper.from_array(w.scales, "S")]
    inputs = ["A", "B", "S"]
    if w.zero_points is not None:
        inits.append(numpy_helper.from_array(w.zero_points, "Z"))
        inputs.append("Z")
    node = helper.make_node("MatMulNBits", inputs, ["Y"], domain="com.microsoft", K=k, N=n, bits=w.bits, block_size=32)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["M", k])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", n])], inits)
    return helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid("com.microsoft", 1)])


def run(model, feeds: dict) -> list:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, feeds)


@pytest.mark.parametrize("qtype", ["q4_1", "q4_0", "q8_0"])
def test_onnxruntime_computes_the_operator_definition(qtype):
    """With the identity as A, MatMulNBits returns its dequantized weight (transposed)."""
    qt = blocks(qtype)
    w = nbits_weight(qt)
    (y,) = run(matmul_nbits_model(w, w.k, w.n), {"A": np.eye(w.k, dtype=np.float32)})
    assert np.abs(y.T - dequantize_nbits(w)).max() <= 2 * np.finfo(np.float32).eps * np.abs(dequantize_nbits(w)).max()
    if qtype != "q4_1":
        assert np.array_equal(y.T, dequantize(qt).numpy())


def float_graph(emb: np.ndarray, proj: np.ndarray):
    """ids -> Gather(emb) -> MatMul(proj^T) -> Gemm(emb, transB) -> logits, as the export uses its matrices."""
    vocab, hidden = emb.shape
    nodes = [helper.make_node("Gather", ["emb", "ids"], ["h0"], name="embedding", axis=0),
             helper.make_node("MatMul", ["h0", "projT"], ["h1"], name="proj"),
             helper.make_node("Constant", [], ["flat"], value=numpy_helper.from_array(np.array([-1, hidden], np.int64), "flat")),
             helper.make_node("Reshape", ["h1", "flat"], ["h2"]),
             helper.make_node("Gemm", ["h2", "emb"], ["logits"], name="head", transB=1)]
    inits = [numpy_helper.from_array(emb, "emb"), numpy_helper.from_array(np.ascontiguousarray(proj.T), "projT")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["B", "T"])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["BT", vocab])], inits)
    return helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 20)])


@pytest.mark.parametrize("emb_type", ["q8_0", "q4_1"])
def test_a_graph_using_a_matrix_three_ways_gives_the_same_outputs_after_the_rewrite(emb_type):
    emb_q, proj_q = blocks(emb_type, 40, 64, seed=1), blocks("q4_1", 64, 64, seed=2)
    tensors = {"model.embed_tokens.weight": emb_q, "model.layers.0.mlp.up_proj.weight": proj_q}
    model = float_graph(dequantize(emb_q).numpy(), dequantize(proj_q).numpy())
    ids = np.array([[0, 5, 39], [7, 7, 1]], dtype=np.int64)
    (before,) = run(model, {"ids": ids})
    report = store_gguf_blocks(model, tensors)
    assert report.replaced == {"emb": f"model.embed_tokens.weight ({emb_type})", "projT": "model.layers.0.mlp.up_proj.weight (q4_1)"}
    assert report.kept_float == {} and report.bytes_after < report.bytes_before / 3
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("MatMulNBits") == 2 and "MatMul" not in ops and "Gemm" not in ops
    assert {i.name for i in model.graph.initializer}.isdisjoint({"emb", "projT"})  # the float copies are gone
    (after,) = run(model, {"ids": ids})
    assert after.shape == before.shape
    assert np.abs(after - before).max() <= 1e-5 * np.abs(before).max()


def test_a_graph_of_another_model_is_refused():
    model = float_graph(dequantize(blocks("q8_0", 40, 64, seed=1)).numpy(), dequantize(blocks("q4_1", 64, 64, seed=2)).numpy())
    other = {"model.embed_tokens.weight": blocks("q8_0", 40, 64, seed=3)}
    with pytest.raises(EdgezoError, match="not the same model"):
        store_gguf_blocks(model, other)


@pytest.fixture(scope="module")
def gguf_tiny(tmp_path_factory, sst2_dir):
    """A 2-layer tiny LLaMA whose matrices are GGUF blocks (Q4_1 layers, Q8_0 tied embedding), and those blocks."""
    folder = save_tiny(tmp_path_factory.mktemp("models") / "tiny-gguf", "llama", layers=2)
    model = LlamaForCausalLM.from_pretrained(folder)
    tensors = {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                tensors[name] = quantize(p.detach(), "q8_0" if "embed" in name else "q4_1")
                p.copy_(dequantize(tensors[name]))
    model.save_pretrained(folder)
    return folder, tensors


@pytest.fixture(scope="module")
def gguf_job(gguf_tiny, tmp_path_factory):
    torch.set_num_threads(1)
    folder, tensors = gguf_tiny
    cfg = JobConfig(model=str(folder), task="sst2", batch_size=8, eval_samples=64, seed=5).validate()
    data = load_job_data(cfg, need_train=False)
    ex, info = build_torch_executor(cfg, data.task)
    batches = check_batches(ex, data, cfg, 2)
    cache = tmp_path_factory.mktemp("onnx-cache")
    return cfg, ex, batches, cached_export(ex, batches[0], info.digest, cfg.trainable, cache), cache, tensors


def test_a_gguf_model_is_served_its_own_blocks_and_they_pass_the_pre_serve_check(gguf_job):
    cfg, ex, batches, fp32, cache, tensors = gguf_job
    said = []
    served, agreement = served_export(ex, batches, fp32, BlockSource("tiny", lambda: tensors), Direction(cfg.seed, 1, 0, 0, 0, 0), 1e-2,
                                      cache, said.append)
    assert served.path != fp32.path and served.bytes < fp32.bytes
    assert any("stored 15 matrices as the GGUF's blocks" in line for line in said)  # 7 per layer, and the tied embedding/head
    model = onnx.load(str(served.path))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("MatMulNBits") == 15 and "Gemm" not in ops
    blocks = (".scales", ".zero_points")
    assert not [i.name for i in model.graph.initializer if i.data_type == TensorProto.FLOAT and len(i.dims) == 2 and not i.name.endswith(blocks)]
    weights = sum(numpy_helper.to_array(i).nbytes for i in model.graph.initializer)
    assert weights < sum(numpy_helper.to_array(i).nbytes for i in onnx.load(str(fp32.path)).graph.initializer) / 3
    assert agreement.batches == 2 and agreement.max_logit_diff < 1e-4
    assert np.allclose(agreement.scalars_onnx, agreement.scalars_torch, rtol=1e-3, atol=1e-5)
    assert any(abs(s) > 1e-4 for s in agreement.scalars_torch)
    small, full = onnx_session(served.path), onnx_session(fp32.path)
    for batch in batches:
        got, ref = onnx_outputs(small, batch, trainable_values(ex))[0], onnx_outputs(full, batch, trainable_values(ex))[0]
        assert np.abs(got - ref).max() < 1e-5
    again = served_export(ex, batches, fp32, BlockSource("tiny", lambda: pytest.fail("blocks read again")), Direction(cfg.seed, 1, 0, 0, 0, 0),
                          1e-2, cache, said.append)[0]
    assert again == served  # cached: the blocks are not read again


def test_blocks_of_another_model_fall_back_to_fp32_with_the_reason(gguf_job):
    cfg, ex, batches, fp32, cache, tensors = gguf_job
    other = {name: quantize(torch.randn(qt.shape), qt.qtype) for name, qt in tensors.items()}
    said = []
    served, agreement = served_export(ex, batches, fp32, BlockSource("other", lambda: other), Direction(cfg.seed, 1, 0, 0, 0, 0), 1e-2,
                                      cache, said.append)
    assert served == fp32 and agreement.max_logit_diff < 1e-4
    assert any("serving the float32 ONNX export" in line and "not the same model" in line for line in said)
    said.clear()
    assert served_export(ex, batches, fp32, None, Direction(cfg.seed, 1, 0, 0, 0, 0), 1e-2, cache, said.append)[0] == fp32
    assert any("has no GGUF blocks" in line for line in said)


WASM_PAGE = """<!doctype html><meta charset="utf-8"><script type="module">
import * as ort from "/assets/ort.wasm.bundle.min.mjs";
ort.env.wasm.wasmPaths = "/assets/";
ort.env.wasm.numThreads = 1;
window.forward = async (ids, mask, shape, trainables) => {
  const bytes = new Uint8Array(await (await fetch("/job/model.onnx")).arrayBuffer());
  const session = await ort.InferenceSession.create(bytes, { executionProviders: ["wasm"] });
  const feeds = { input_ids: new ort.Tensor("int64", BigInt64Array.from(ids.map(BigInt)), shape),
                  attention_mask: new ort.Tensor("int64", BigInt64Array.from(mask.map(BigInt)), shape) };
  for (const [name, values, dims] of trainables) feeds[name] = new ort.Tensor("float32", Float32Array.from(values), dims);
  const out = await session.run(feeds);
  return Array.from(out.label_logits.data);
};
window.ready = true;
</script>"""


@pytest.mark.browser
def test_the_block_export_runs_in_chromium_wasm_as_in_python_onnxruntime(gguf_job, tmp_path):
    """onnxruntime-web's WASM kernels (MatMulNBits with float zero points, 8-bit blocks, the Gather
    of blocks) in headless Chromium give Python onnxruntime's label logits on the job's batch."""
    from playwright.sync_api import sync_playwright

    from edgezo.coordinator.server.web_server import BrokerWebSocket, WebJob, WebServer
    from edgezo.coordinator.server.web_serving import assets_folder, base_trainable_file

    cfg, ex, batches, fp32, cache, tensors = gguf_job
    served, _ = served_export(ex, batches, fp32, BlockSource("tiny", lambda: tensors), Direction(cfg.seed, 1, 0, 0, 0, 0), 1e-2,
                              cache, lambda line: None)
    assert served != fp32
    values = trainable_values(ex, Direction(cfg.seed, 1, 0, 0, 0, 0), 1e-2)
    expected = onnx_outputs(onnx_session(served.path), batches[0], values)[0]
    job = WebJob("quant", BrokerWebSocket(url="ws://127.0.0.1:9"), served.path, served.sha256, tmp_path / "none.json",
                 base_trainable_file(ex, tmp_path), assets_folder())
    server = WebServer(job, "127.0.0.1", 0).start()
    headers = {"Content-Type": "text/html", "Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp"}
    args = [batches[0].input_ids.reshape(-1).tolist(), batches[0].attention_mask.reshape(-1).tolist(), list(batches[0].input_ids.shape),
            [[n, values[n].reshape(-1).tolist(), list(values[n].shape)] for n in ex.names]]
    try:
        with sync_playwright() as p:
            context = p.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path="/usr/bin/chromium", headless=True,
                                                           args=["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"])
            page = context.new_page()
            page.route(f"{server.url()}/wasm", lambda route: route.fulfill(status=200, headers=headers, body=WASM_PAGE))
            page.goto(f"{server.url()}/wasm")
            page.wait_for_function("window.ready === true", timeout=60_000)
            got = np.array(page.evaluate("([i, m, s, t]) => window.forward(i, m, s, t)", args)).reshape(expected.shape)
            context.close()
    finally:
        server.stop()
    assert np.abs(got - expected).max() < 1e-4 and np.abs(expected).max() > 0.1
