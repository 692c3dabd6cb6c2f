"""Where the int8 executor's weights come from, one tensor at a time, by Hugging Face name.

* ``FolderWeights``: a transformers safetensors folder (one file or shards). Tensors are read one
  by one with ``safetensors.safe_open``, and matrices to quantize a slice of rows at a time, so
  neither the float32 model nor even one float32 matrix sits in memory whole.
* ``GGUFWeights``: a llama.cpp ``.gguf`` file. Q8_0, Q4_0 and Q4_1 tensors are handed over as
  their native blocks (``quantized``), F32/F16 tensors as float32 (``fp32``); any other tensor
  type is refused when the file is opened, naming the tensor. llama.cpp's converter permutes the
  rows of LLaMA's ``attn_q``/``attn_k`` for its rope layout; the permutation is undone here, on
  whole rows of blocks, so the weights are exactly those transformers' own GGUF loader produces.

Both answer ``has(name)``, ``fp32(name)`` (a fresh float32 tensor) and ``quantized(name, qtype)``
(the folder: the matrix quantized to ``qtype``, a slice of rows at a time; the GGUF: its stored
blocks, or None for a tensor stored as F32/F16, which then stays a float32 layer).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from edgezo.backends.int8.gguf_file import GGUFFile, TensorInfo
from edgezo.backends.int8.quant import QuantTensor, dequantize, quantize_rows
from edgezo.errors import EdgezoError

GGUF_QUANT_TYPES = {"Q8_0": "q8_0", "Q4_0": "q4_0", "Q4_1": "q4_1"}
GGUF_FLOAT_TYPES = ("F32", "F16")
GGUF_ARCHITECTURES = {"llama": "LLAMA"}  # general.architecture -> gguf.MODEL_ARCH member


class FolderWeights:
    """Tensors of a safetensors folder, read one at a time."""

    def __init__(self, folder: Path):
        from safetensors import safe_open

        self.folder = Path(folder)
        files = sorted(self.folder.glob("*.safetensors"))
        if not files:
            raise EdgezoError(
                f"{self.folder} has no .safetensors weights: the int8 backend reads safetensors folders "
                "(re-save the model with save_pretrained) or .gguf files"
            )
        self._file_of: dict[str, Path] = {}
        try:
            for file in files:
                with safe_open(file, framework="pt") as f:
                    for key in f.keys():
                        self._file_of[key] = file
        except Exception as error:  # noqa: BLE001 - a bad header is "corrupt folder"
            raise EdgezoError(f"could not read {file} ({type(error).__name__}: {error}): it may be truncated or corrupt") from error

    def __repr__(self) -> str:
        return f"FolderWeights({self.folder})"

    def _key(self, name: str) -> str | None:
        if name in self._file_of:
            return name
        # a checkpoint of the base model alone ("layers.0..." for "model.layers.0...")
        alt = name.partition(".")[2]
        return alt if alt in self._file_of else None

    def has(self, name: str) -> bool:
        return self._key(name) is not None

    def fp32(self, name: str) -> torch.Tensor:
        from safetensors import safe_open

        key = self._key(name)
        if key is None:
            raise EdgezoError(f"tensor {name} is not in {self.folder}")
        try:
            with safe_open(self._file_of[key], framework="pt") as f:
                return f.get_tensor(key).to(torch.float32)
        except Exception as error:  # noqa: BLE001
            raise EdgezoError(
                f"could not read tensor {key} from {self._file_of[key]} ({type(error).__name__}: {error}): "
                "the file may be truncated or corrupt"
            ) from error

    def quantized(self, name: str, qtype: str = "q8_0") -> QuantTensor | None:
        """The matrix ``name`` quantized to ``qtype``, read a slice of rows at a time (the float32
        matrix never exists whole: the token embedding alone is 113 MB in SmolLM2-135M)."""
        from safetensors import safe_open

        key = self._key(name)
        if key is None:
            raise EdgezoError(f"tensor {name} is not in {self.folder}")
        try:
            with safe_open(self._file_of[key], framework="pt") as f:
                view = f.get_slice(key)
                shape = tuple(view.get_shape())
                if len(shape) != 2:
                    raise EdgezoError(f"tensor {key} in {self.folder} has shape {shape}; expected a matrix")
                return quantize_rows(lambda start, stop: view[start:stop], shape[0], shape[1], qtype)
        except EdgezoError:
            raise
        except Exception as error:  # noqa: BLE001
            raise EdgezoError(
                f"could not read tensor {key} from {self._file_of[key]} ({type(error).__name__}: {error}): "
                "the file may be truncated or corrupt"
            ) from error


def _reverse_permutation(rows: int, n_head: int) -> torch.Tensor:
    """Row order that undoes llama.cpp's q/k permutation (transformers' ``_reverse_permute_weights``)."""
    dim = rows // n_head // 2
    return torch.arange(rows).reshape(n_head, dim, 2).transpose(1, 2).reshape(rows)


class GGUFWeights:
    """Tensors of a GGUF file, named as the Hugging Face model built from ``config`` names them."""

    def __init__(self, path: Path, config):
        import gguf

        self.path = Path(path)
        self.file = GGUFFile(self.path)
        arch = self.file.metadata.get("general.architecture")
        if not isinstance(arch, str):
            raise EdgezoError(f"{self.path} has no general.architecture: it is not a model GGUF")
        if arch not in GGUF_ARCHITECTURES:
            raise EdgezoError(
                f"{self.path} is a {arch!r} GGUF; the int8 backend reads GGUF weights of {', '.join(GGUF_ARCHITECTURES)} "
                "only (pass a safetensors folder instead: it is quantized to Q8_0)"
            )
        for t in self.file.tensors.values():
            if t.type_name not in GGUF_QUANT_TYPES and t.type_name not in GGUF_FLOAT_TYPES:
                raise EdgezoError(
                    f"GGUF tensor {t.name} in {self.path} has type {t.type_name}, which the int8 backend cannot read; "
                    f"supported types: {', '.join(GGUF_FLOAT_TYPES + tuple(GGUF_QUANT_TYPES))}"
                )
        self.config = config
        layers = int(config.num_hidden_layers)
        blocks = self.file.metadata.get(f"{arch}.block_count")
        if blocks is not None and blocks != layers:
            raise EdgezoError(f"{self.path} has {blocks} blocks but the model config {layers} layers: they are different models")
        self._names = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, GGUF_ARCHITECTURES[arch]), layers)

    def __repr__(self) -> str:
        return f"GGUFWeights({self.path})"

    def gguf_name(self, name: str) -> str | None:
        return self._names.get_name(name, try_suffixes=(".weight", ".bias"))

    def _info(self, name: str) -> TensorInfo:
        gname = self.gguf_name(name)
        info = None if gname is None else self.file.tensors.get(gname)
        if info is None:
            raise EdgezoError(f"{self.path} has no tensor for {name} (GGUF name {gname})")
        return info

    def has(self, name: str) -> bool:
        gname = self.gguf_name(name)
        return gname is not None and gname in self.file.tensors

    def _permutation(self, name: str, rows: int) -> torch.Tensor | None:
        if name.endswith("q_proj.weight"):
            return _reverse_permutation(rows, int(self.config.num_attention_heads))
        if name.endswith("k_proj.weight"):
            heads = getattr(self.config, "num_key_value_heads", None) or self.config.num_attention_heads
            return _reverse_permutation(rows, int(heads))
        return None

    def quantized(self, name: str, qtype: str = "q8_0") -> QuantTensor | None:
        """The stored blocks of ``name`` (``qtype`` is ignored: GGUF blocks are kept as they are);
        None for a tensor stored as F32/F16, which stays float32."""
        info = self._info(name)
        qtype = GGUF_QUANT_TYPES.get(info.type_name)
        if qtype is None:
            return None
        if len(info.shape) != 2:
            raise EdgezoError(f"GGUF tensor {info.name} is {info.type_name} with shape {info.shape}; expected a matrix")
        qt = QuantTensor.from_blocks(qtype, self.file.read(info.name), info.shape[1])
        perm = self._permutation(name, info.shape[0])
        return qt if perm is None else qt.rows(perm)

    def fp32(self, name: str) -> torch.Tensor:
        info = self._info(name)
        raw = self.file.read(info.name)
        qtype = GGUF_QUANT_TYPES.get(info.type_name)
        if qtype is not None:
            values = dequantize(QuantTensor.from_blocks(qtype, raw, info.shape[-1])).reshape(info.shape)
        else:
            values = torch.from_numpy(raw.view(np.float16 if info.type_name == "F16" else np.float32).astype(np.float32))
            values = values.reshape(info.shape)
        perm = self._permutation(name, info.shape[0]) if len(info.shape) == 2 else None
        return values if perm is None else values.index_select(0, perm)
