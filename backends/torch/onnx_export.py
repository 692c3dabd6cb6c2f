"""The ONNX export of a job's model for the browser device (issue 26; ``web/CONTRACT.md``).

A browser cannot run torch, but onnxruntime-web runs an ONNX graph. The graph is the torch
executor's own forward (the architecture adapter of ``edgezo.backends.hf.arch``, unit by unit),
with the **trainable tensors as graph inputs**: the page perturbs and updates them itself (they
are kilobytes for ``norm``), so one download serves the whole job, every probe and every round.

Graph inputs: ``input_ids`` and ``attention_mask`` (int64 [B, T], right-padded), then one float32
input per trainable tensor, named as PROTOCOL.md section 9.2 names it, in the fingerprint's order.
Outputs: ``label_logits`` (float32 [B, labels]: the verbalizer tokens' logits at each row's target
position, exactly the columns the executor's loss reads) and ``log_normalizer`` (float32 [B]: the
logsumexp over the whole vocabulary there, for a page that wants vocabulary-normalised scores; the
protocol's loss does not use it).

How: ``torch.func.functional_call`` makes the trainables arguments of the forward;
``torch.export.export`` with dynamic batch and length; ``torch.onnx.export`` of that program
(passing ``dynamic_shapes`` straight to ``torch.onnx.export`` fails on the varargs trainables, and
the legacy exporter refuses ``functional_call``). A tiny model exports in seconds, SmolLM2-135M in
about a minute, so an export is cached, keyed by what the graph depends on (:func:`export_key`).
Whether the export computes what the executor computes is ``edgezo.backends.torch.onnx_check``'s.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from edgezo.backends.hf.source import default_cache_dir
from edgezo.errors import EdgezoError

EXPORT_FORMAT = 1  # bump when the graph's inputs, outputs or computation change: old cached files are then not used
OPSET = 20
INPUTS = ("input_ids", "attention_mask")
OUTPUTS = ("label_logits", "log_normalizer")
MAX_BATCH, MAX_TOKENS = 4096, 32768
MODEL_FILE, META_FILE = "model.onnx", "export.json"
WEB_EXTRA_HINT = "install the web extra: pip install 'edgezo[web]' (onnx, onnxscript, onnxruntime)"


class _TargetForward(nn.Module):
    """The whole model, unit by unit as the executor runs it, at each row's target position."""

    def __init__(self, ex):
        super().__init__()
        self.model = ex.model  # a submodule, so functional_call finds the trainables under "model."
        self.adapter = ex.adapter
        self.num_layers = ex.num_layers
        self.kind = ex.kind
        self.mask_token_id = getattr(ex.tokenizer, "mask_token_id", None)
        self.register_buffer("verbalizer_ids", torch.as_tensor(ex.verbalizer_ids).clone().cpu(), persistent=False)

    def targets(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """PROTOCOL.md 9.4: the last real token (causal), the first mask token (masked LM)."""
        if self.kind == "mlm":
            return (input_ids == self.mask_token_id).to(torch.int64).argmax(dim=1)
        return attention_mask.sum(dim=1) - 1

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        h = self.adapter.embed(input_ids, attention_mask, self.targets(input_ids, attention_mask))
        for i in range(self.num_layers):
            h = self.adapter.layer(i, h)
        logits = self.adapter.head(h).float()
        return logits[:, self.verbalizer_ids], torch.logsumexp(logits, dim=-1)


class TrainableInputs(nn.Module):
    """``forward(input_ids, attention_mask, *trainables)``: the trainables replace the model's own
    tensors for the call (``functional_call``), so they become graph inputs, not constants."""

    def __init__(self, ex):
        super().__init__()
        self.inner = _TargetForward(ex)
        self.names = list(ex.names)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *trainables: torch.Tensor):
        params = {f"model.{n}": t for n, t in zip(self.names, trainables)}
        return torch.func.functional_call(self.inner, params, (input_ids, attention_mask), strict=False)


@dataclass(frozen=True)
class OnnxExport:
    """An export on disk: the file, its SHA-256 (what ``Announce.onnx_sha256`` carries and the page
    checks), its size and the cache key it was made for."""

    path: Path
    sha256: str
    bytes: int
    key: str


def export_key(ex, model_digest: str, trainable_spec: str) -> str:
    """What the graph depends on: the base weights (their digest), the trainable layout (names,
    shapes and the job's ``trainable`` setting, which fixes LoRA's rank and scale), the model kind,
    the label tokens, and the exporter (format, opset, torch version)."""
    layout = {
        "format": EXPORT_FORMAT, "opset": OPSET, "torch": torch.__version__, "digest": model_digest,
        "trainable": trainable_spec, "kind": ex.kind, "verbalizers": [int(i) for i in ex.verbalizer_ids],
        "tensors": [[n, list(ex.params[n].shape)] for n in ex.names],
    }
    frozen = frozen_adapters_digest(ex)
    if frozen:  # lora:factors=B: lora_A is a constant of the graph, seeded by the run seed
        layout["frozen_adapters"] = frozen
    return hashlib.sha256(json.dumps(layout, sort_keys=True).encode()).hexdigest()


def frozen_adapters_digest(ex) -> str:
    """SHA-256 of the LoRA factors the job does not train (``lora:factors=B`` freezes ``lora_A``
    at its run-seeded init, PROTOCOL.md 9.3), or "" when there are none. They are baked into the
    graph as constants, so two runs of the same model with different seeds need different exports
    (the same key would hand the second run the first run's graph, which the check against the
    torch executor then refuses)."""
    h, found, trained = hashlib.sha256(), False, set(ex.names)
    for name, param in ex.model.named_parameters():
        if name.rsplit(".", 1)[-1] in ("lora_A", "lora_B") and name not in trained:
            h.update(name.encode())
            h.update(param.detach().cpu().float().numpy().tobytes())
            found = True
    return h.hexdigest() if found else ""


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def export_onnx(ex, sample, path: Path) -> None:
    """Write the graph of ``ex`` (a torch executor) to ``path``. ``sample``: a batch of the job
    (at least 2 rows and 2 tokens, so neither dimension is specialised to 1) to trace with."""
    _require_exporter()
    ids, mask = sample.input_ids.cpu(), sample.attention_mask.cpu()
    if ids.shape[0] < 2 or ids.shape[1] < 2:
        raise EdgezoError(f"the ONNX export needs a sample batch of at least 2 rows and 2 tokens (got {tuple(ids.shape)})")
    module = TrainableInputs(ex).eval()
    trainables = tuple(ex.params[n].detach().cpu().clone() for n in ex.names)
    batch, tokens = torch.export.Dim("batch", min=1, max=MAX_BATCH), torch.export.Dim("tokens", min=1, max=MAX_TOKENS)
    shapes = ({0: batch, 1: tokens}, {0: batch, 1: tokens}, tuple(None for _ in trainables))
    with torch.no_grad():
        program = torch.export.export(module, (ids, mask, *trainables), dynamic_shapes=shapes)
        onnx_program = torch.onnx.export(program, input_names=[*INPUTS, *ex.names], output_names=list(OUTPUTS),
                                         opset_version=OPSET, dynamo=True, external_data=False, optimize=True, verbose=False)
    onnx_program.save(str(path), external_data=False)


def cached_export(ex, sample, model_digest: str, trainable_spec: str, cache_dir: Path | None = None,
                  say: Callable[[str], None] = lambda msg: None) -> OnnxExport:
    """The export for this job, made once per key under ``cache_dir`` (default
    ``~/.cache/edgezo/onnx``); see :func:`cached_file`."""
    key = export_key(ex, model_digest, trainable_spec)
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "onnx"
    making = "exporting the model to ONNX for browser devices (once per model and trainable set; SmolLM2-135M takes about a minute) ..."
    return cached_file(key, folder, lambda path: export_onnx(ex, sample, path), say, making)


def cached_file(key: str, folder: Path, make: Callable[[Path], dict | None], say: Callable[[str], None], making: str) -> OnnxExport:
    """The model file for ``key`` under ``folder``, made by ``make(path)`` (which may return extra
    metadata to record) when absent, and written atomically (a crash mid-export leaves no file that
    looks complete); a cached file whose bytes no longer match its recorded SHA-256 is made again."""
    target = Path(folder) / key[:32]
    cached = _read_cached(target, key)
    if cached is not None:
        say(f"ONNX export of the model: cached {cached.path} ({cached.bytes / 1e6:.1f} MB)")
        return cached
    say(making)
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{key[:12]}-", dir=target.parent))
    extra = make(work / MODEL_FILE) or {}
    done = OnnxExport(target / MODEL_FILE, file_sha256(work / MODEL_FILE), (work / MODEL_FILE).stat().st_size, key)
    (work / META_FILE).write_text(json.dumps({**extra, **asdict(done), "path": MODEL_FILE}, indent=1) + "\n")
    if target.exists():  # a stale or broken entry of the same key
        _remove_tree(target)
    os.replace(work, target)
    say(f"ONNX export written: {done.path} ({done.bytes / 1e6:.1f} MB, sha256 {done.sha256[:12]}...)")
    return done


def _read_cached(target: Path, key: str) -> OnnxExport | None:
    try:
        meta = json.loads((target / META_FILE).read_text())
        path = target / MODEL_FILE
        if meta.get("key") != key or path.stat().st_size != meta.get("bytes") or file_sha256(path) != meta.get("sha256"):
            return None
        return OnnxExport(path, meta["sha256"], meta["bytes"], key)
    except (OSError, ValueError, KeyError):
        return None


def _remove_tree(folder: Path) -> None:
    for item in folder.iterdir():
        item.unlink()
    folder.rmdir()


def _require_exporter() -> None:
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise EdgezoError(f"exporting the model to ONNX for browser devices needs onnx and onnxscript; {WEB_EXTRA_HINT}") from None


__all__ = ["OnnxExport", "TrainableInputs", "cached_export", "cached_file", "export_key", "export_onnx", "file_sha256", "frozen_adapters_digest"]
