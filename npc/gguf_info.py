"""Reading a GGUF file's header: metadata and tensor shapes, without loading any weights.

Used to describe models in the store (architecture, parameter count, quantization) and to tell a
base model from an adapter before llama.cpp ever sees the file.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

GGUF_MAGIC = b"GGUF"

#: llama.cpp's general.file_type values (LLAMA_FTYPE_MOSTLY_*)
FILE_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1",
              10: "Q2_K", 11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M",
              16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K", 32: "BF16"}

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q",
            11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


class GGUFError(ValueError):
    pass


@dataclass
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    dtype: int
    offset: int


@dataclass
class GGUFInfo:
    version: int
    metadata: dict[str, object] = field(default_factory=dict)
    tensors: list[TensorInfo] = field(default_factory=list)
    data_offset: int = 0
    file_size: int = 0

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", "unknown"))

    @property
    def kind(self) -> str:
        return str(self.metadata.get("general.type", "model"))

    @property
    def parameters(self) -> int:
        n = 0
        for t in self.tensors:
            p = 1
            for d in t.shape:
                p *= d
            n += p
        return n

    @property
    def quantization(self) -> str:
        ft = self.metadata.get("general.file_type")
        return FILE_TYPES.get(ft, f"type{ft}") if isinstance(ft, int) else "unknown"


class _Reader:
    def __init__(self, f: BinaryIO, size: int):
        self.f, self.size = f, size

    def take(self, n: int) -> bytes:
        b = self.f.read(n)
        if len(b) != n:
            raise GGUFError("truncated GGUF header")
        return b

    def scalar(self, fmt: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        n = self.scalar("<Q")
        if n > self.size - self.f.tell():
            raise GGUFError("truncated or corrupt GGUF header (string runs past the end)")
        return self.take(n).decode("utf-8", "replace")

    def skip_strings(self, n: int) -> None:
        """Step over ``n`` strings (a vocabulary's hundred thousand) reading only their lengths,
        a megabyte at a time, decoding nothing."""
        base = self.f.tell()
        buf, off = b"", 0
        for _ in range(n):
            if off + 8 > len(buf):
                base += off
                self.f.seek(base)
                buf, off = self.f.read(1 << 20), 0
                if len(buf) < 8:
                    raise GGUFError("truncated GGUF header")
            off += 8 + struct.unpack_from("<Q", buf, off)[0]
            if base + off > self.size:
                raise GGUFError("truncated or corrupt GGUF header (string runs past the end)")
        self.f.seek(base + off)

    def value(self, vtype: int, keep: bool = True):
        if vtype in _SCALARS:
            return self.scalar(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            itype, n = self.scalar("<I"), self.scalar("<Q")
            if n > self.size - self.f.tell():
                raise GGUFError("truncated or corrupt GGUF header (array runs past the end)")
            if itype in _SCALARS and not keep:
                self.f.seek(n * struct.calcsize(_SCALARS[itype]), 1)
                return None
            if itype == _STRING and not keep:
                self.skip_strings(n)
                return None
            items = [self.value(itype, keep) for _ in range(n)]
            return items if keep else None
        raise GGUFError(f"unknown GGUF value type {vtype}")


def read_gguf(path: Path | str, keep_arrays: bool = False) -> GGUFInfo:
    """Parse the header. Big arrays (the tokenizer's vocabulary) are skipped unless asked for."""
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as f:
        r = _Reader(f, size)
        if f.read(4) != GGUF_MAGIC:
            raise GGUFError(f"{path.name}: not a GGUF file")
        version = r.scalar("<I")
        if version not in (2, 3):
            raise GGUFError(f"{path.name}: unsupported GGUF version {version}")
        n_tensors, n_kv = r.scalar("<Q"), r.scalar("<Q")
        if n_tensors > 1_000_000 or n_kv > 1_000_000:
            raise GGUFError(f"{path.name}: corrupt GGUF header")
        info = GGUFInfo(version=version, file_size=size)
        for _ in range(n_kv):
            key = r.string()
            vtype = r.scalar("<I")
            val = r.value(vtype, keep=keep_arrays or vtype != _ARRAY)
            if val is not None:
                info.metadata[key] = val
        for _ in range(n_tensors):
            name = r.string()
            nd = r.scalar("<I")
            if nd > 8:
                raise GGUFError(f"{path.name}: corrupt tensor info")
            shape = tuple(r.scalar("<Q") for _ in range(nd))
            dtype, offset = r.scalar("<I"), r.scalar("<Q")
            info.tensors.append(TensorInfo(name, shape, dtype, offset))
        align = int(info.metadata.get("general.alignment", 32))
        pos = f.tell()
        info.data_offset = (pos + align - 1) // align * align
        return info
