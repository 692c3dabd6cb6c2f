"""A minimal GGUF reader: the tensor table and the scalar metadata, tensors read on demand.

``gguf.GGUFReader`` builds a Python object for every element of every metadata array, which takes
seconds on a model with a 49k-token vocabulary (2.6 s for SmolLM2-135M on this machine); the int8
backend needs only the tensor table and a few scalars, so this reader skips arrays (a walk over
string lengths) and reads each tensor's bytes with one ``np.fromfile`` when it is asked for
(0.03 s for the table). Type ids and block sizes come from the ``gguf`` package; tests check the
table against ``gguf.GGUFReader``'s. Every structural problem (bad magic, unknown version or value
type, a table or tensor running past the end of the file) is an ``EdgezoError``.

Layout (little-endian, versions 2 and 3): magic ``GGUF``, uint32 version, uint64 tensor count,
uint64 metadata count; metadata ``(string key, uint32 type, value)``; tensor infos
``(string name, uint32 n_dims, uint64 dims[n_dims] innermost first, uint32 ggml type, uint64
offset)``; tensor data from the next multiple of ``general.alignment`` (default 32).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgezo.errors import EdgezoError

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
DEFAULT_ALIGNMENT = 32


@dataclass(frozen=True)
class TensorInfo:
    name: str
    type_name: str  # ggml type name, e.g. "Q8_0", "F32"
    type_id: int
    shape: tuple[int, ...]  # outermost first (numpy/torch order), e.g. (rows, cols)
    offset: int  # absolute byte offset in the file
    nbytes: int


class _Cursor:
    def __init__(self, data: bytes, path: Path):
        self.data, self.pos, self.path = data, 0, path

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise EdgezoError(f"{self.path} ends inside its header: the file is truncated")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str):
        size = struct.calcsize(fmt)
        return struct.unpack(fmt, self.take(size))[0]

    def string(self) -> str:
        return self.take(self.unpack("<Q")).decode("utf-8", errors="replace")

    def value(self, vtype: int):
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            etype, count = self.unpack("<I"), self.unpack("<Q")
            if etype in _SCALARS:
                self.take(count * struct.calcsize(_SCALARS[etype]))
            elif etype == _STRING:  # skip the strings without decoding them
                data, pos, end = self.data, self.pos, len(self.data)
                for _ in range(count):
                    if pos + 8 > end:
                        self.take(end + 1 - self.pos)  # raises "truncated"
                    pos += 8 + struct.unpack_from("<Q", data, pos)[0]
                self.pos = pos
                if pos > end:
                    self.pos = end
                    self.take(1)
            else:
                for _ in range(count):
                    self.value(etype)
            return None  # arrays (vocabularies, merges) are skipped
        raise EdgezoError(f"{self.path}: unknown GGUF metadata value type {vtype}: the file is corrupt")


class GGUFFile:
    """The tensor table and scalar metadata of a ``.gguf`` file."""

    def __init__(self, path: str | Path):
        import gguf

        self.path = Path(path)
        size = os.path.getsize(self.path)
        with open(self.path, "rb") as f:
            head = f.read(min(size, 1 << 20))
            cur = _Cursor(head, self.path)
            if cur.take(4) != b"GGUF":
                raise EdgezoError(f"{self.path} is not a GGUF file (bad magic)")
            self.version = cur.unpack("<I")
            if self.version not in (2, 3):
                raise EdgezoError(f"{self.path}: GGUF version {self.version} is not supported (2 and 3 are)")
            n_tensors, n_kv = cur.unpack("<Q"), cur.unpack("<Q")
            if n_tensors > size or n_kv > size:
                raise EdgezoError(f"{self.path}: the GGUF header is corrupt ({n_tensors} tensors, {n_kv} metadata entries)")
            self.metadata: dict[str, object] = {}
            while True:  # the header can be larger than the first read (long vocabularies)
                try:
                    cur.pos = 4 + 4 + 8 + 8
                    self.metadata = {}
                    for _ in range(n_kv):
                        key = cur.string()
                        self.metadata[key] = cur.value(cur.unpack("<I"))
                    infos = []
                    for _ in range(n_tensors):
                        name = cur.string()
                        n_dims = cur.unpack("<I")
                        dims = [cur.unpack("<Q") for _ in range(n_dims)]
                        infos.append((name, dims, cur.unpack("<I"), cur.unpack("<Q")))
                    break
                except EdgezoError:
                    if len(cur.data) >= size:
                        raise
                    f.seek(0)
                    cur.data = f.read(min(size, 4 * len(cur.data)))
        alignment = self.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or alignment <= 0:
            raise EdgezoError(f"{self.path}: bad general.alignment {alignment!r}")
        start = -(-cur.pos // alignment) * alignment
        self.tensors: dict[str, TensorInfo] = {}
        for name, dims, type_id, offset in infos:
            try:
                qtype = gguf.GGMLQuantizationType(type_id)
                block, type_size = gguf.GGML_QUANT_SIZES[qtype]
            except (ValueError, KeyError):
                raise EdgezoError(f"GGUF tensor {name} in {self.path} has unknown type id {type_id}: the file is corrupt or too new") from None
            numel = int(np.prod(dims, dtype=np.int64)) if dims else 1
            if dims and dims[0] % block:
                raise EdgezoError(f"GGUF tensor {name} in {self.path}: row length {dims[0]} is not a multiple of {qtype.name}'s block {block}")
            info = TensorInfo(name, qtype.name, type_id, tuple(reversed(dims)), start + offset, numel // block * type_size)
            if info.offset + info.nbytes > size:
                raise EdgezoError(f"GGUF tensor {name} runs past the end of {self.path}: the file is truncated")
            if name in self.tensors:
                raise EdgezoError(f"{self.path} holds tensor {name} twice: the file is corrupt")
            self.tensors[name] = info

    def read(self, name: str) -> np.ndarray:
        """The raw bytes of tensor ``name`` (uint8, a fresh array)."""
        info = self.tensors[name]
        data = np.fromfile(self.path, dtype=np.uint8, count=info.nbytes, offset=info.offset)
        if data.size != info.nbytes:
            raise EdgezoError(f"GGUF tensor {name} runs past the end of {self.path}: the file is truncated")
        return data
