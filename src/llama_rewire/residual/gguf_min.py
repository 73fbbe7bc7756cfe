"""A small GGUF reader and writer for the files the residual stream uses (control vectors): metadata of
every type, F32 tensors. It reads with bounds checks, so a damaged or foreign file is a ``ValueError``.

Layout (GGUF v2/v3, little-endian): magic ``GGUF``, u32 version, u64 tensor count, u64 key count; the
keys (string key, u32 type, value); the tensor infos (string name, u32 dims, u64 sizes, u32 type, u64
offset into the data section); padding to ``general.alignment`` (32 by default); the data section.
"""

from __future__ import annotations

import os
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

MAGIC = b"GGUF"
ALIGNMENT = 32
TYPE_F32 = 0

# metadata value types
_U8, _I8, _U16, _I16, _U32, _I32, _F32, _BOOL, _STR, _ARR, _U64, _I64, _F64 = range(13)
_SCALARS = {
    _U8: "<B",
    _I8: "<b",
    _U16: "<H",
    _I16: "<h",
    _U32: "<I",
    _I32: "<i",
    _F32: "<f",
    _BOOL: "<?",
    _U64: "<Q",
    _I64: "<q",
    _F64: "<d",
}
_MAX_STRING = 1 << 24  # bytes in one string
_MAX_ITEMS = 1 << 26  # entries in one array, keys, tensors
_MAX_DIMS = 4


@dataclass
class GGUFTensor:
    name: str
    shape: tuple[int, ...]  # ggml order: shape[0] varies fastest
    type: int
    offset: int


@dataclass
class GGUFFile:
    version: int
    metadata: dict[str, Any]
    tensors: list[GGUFTensor]
    data_start: int
    path: Path
    _size: int = field(repr=False, default=0)

    def f32(self, tensor: GGUFTensor) -> np.ndarray:
        """The data of an F32 tensor, shaped with the slowest dimension first."""
        if tensor.type != TYPE_F32:
            raise ValueError(f"{self.path}: tensor {tensor.name!r} is not F32 (type {tensor.type})")
        n = int(np.prod(tensor.shape, dtype=np.int64)) if tensor.shape else 1
        start = self.data_start + tensor.offset
        if start < self.data_start or start + 4 * n > self._size:
            raise ValueError(
                f"{self.path}: the data of tensor {tensor.name!r} lies beyond the end of the file"
            )
        with _open_regular(self.path) as f:
            f.seek(start)
            data = np.frombuffer(f.read(4 * n), dtype="<f4").astype(np.float32)
        return data.reshape(tuple(reversed(tensor.shape)))


def _open_regular(p: Path) -> BinaryIO:
    """Open a regular file for reading; anything else (a FIFO, a device, a directory: a read could block
    or never end) is a ValueError, refused before it is opened for reading."""
    try:
        mode = p.stat().st_mode
        if not stat.S_ISREG(mode):
            raise ValueError(f"{p}: not a regular file")
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # no wait on a FIFO swapped in
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise ValueError(f"{p}: not a regular file")
        return os.fdopen(fd, "rb")
    except OSError as e:
        raise ValueError(f"{p}: cannot be read: {e.strerror or e}") from None


class _Reader:
    def __init__(self, f: BinaryIO, size: int, path: Path) -> None:
        self.f, self.size, self.path = f, size, path

    def bytes(self, n: int) -> bytes:
        b = self.f.read(n)
        if len(b) != n:
            raise ValueError(f"{self.path}: truncated GGUF file")
        return b

    def scalar(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.bytes(struct.calcsize(fmt)))[0]

    def count(self, what: str, limit: int = _MAX_ITEMS) -> int:
        n = int(self.scalar("<Q"))
        if n > limit:
            raise ValueError(f"{self.path}: {what} {n} is beyond any real file's")
        return n

    def string(self) -> str:
        n = self.count("string length", _MAX_STRING)
        try:
            return self.bytes(n).decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"{self.path}: a string that is not UTF-8") from None

    def value(self, vtype: int, depth: int = 0) -> Any:
        if vtype in _SCALARS:
            return self.scalar(_SCALARS[vtype])
        if vtype == _STR:
            return self.string()
        if vtype == _ARR and depth < 2:
            itype = int(self.scalar("<I"))
            n = self.count("array length")
            return [self.value(itype, depth + 1) for _ in range(n)]
        raise ValueError(f"{self.path}: unknown metadata value type {vtype}")


def read(path: str | os.PathLike[str]) -> GGUFFile:
    """The metadata and tensor infos of a GGUF file (tensor data is read on demand)."""
    p = Path(path)
    f = _open_regular(p)
    with f:
        size = os.fstat(f.fileno()).st_size
        r = _Reader(f, size, p)
        if f.read(4) != MAGIC:
            raise ValueError(f"{p}: not a GGUF file")
        version = int(r.scalar("<I"))
        if version not in (2, 3):
            raise ValueError(f"{p}: GGUF version {version} is not supported (2 or 3)")
        n_tensors = r.count("tensor count")
        n_kv = r.count("key count")
        metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key = r.string()
            metadata[key] = r.value(int(r.scalar("<I")))
        tensors = []
        for _ in range(n_tensors):
            name = r.string()
            n_dims = int(r.scalar("<I"))
            if not 1 <= n_dims <= _MAX_DIMS:
                raise ValueError(f"{p}: tensor {name!r} has {n_dims} dimensions")
            shape = tuple(int(r.scalar("<Q")) for _ in range(n_dims))
            if any(d > _MAX_ITEMS for d in shape):
                raise ValueError(f"{p}: tensor {name!r} has a dimension beyond any real file's")
            tensors.append(GGUFTensor(name, shape, int(r.scalar("<I")), int(r.scalar("<Q"))))
        align = metadata.get("general.alignment", ALIGNMENT)
        if not isinstance(align, int) or align <= 0 or align & (align - 1):
            raise ValueError(f"{p}: general.alignment {align!r} is not a power of two")
        pos = f.tell()
        data_start = (pos + align - 1) // align * align
    return GGUFFile(version, metadata, tensors, data_start, p, size)


def _pack_value(value: Any) -> bytes:
    if isinstance(value, bool):
        return struct.pack("<I?", _BOOL, value)
    if isinstance(value, int):
        return (
            struct.pack("<Ii", _I32, value)
            if -(1 << 31) <= value < (1 << 31)
            else struct.pack("<Iq", _I64, value)
        )
    if isinstance(value, float):
        return struct.pack("<If", _F32, value)
    if isinstance(value, str):
        b = value.encode("utf-8")
        return struct.pack("<IQ", _STR, len(b)) + b
    raise TypeError(f"cannot write a metadata value of type {type(value).__name__}")


def write(path: str | os.PathLike[str], metadata: dict[str, Any], tensors: dict[str, np.ndarray]) -> None:
    """Write a GGUF v3 file: ``metadata`` (str, int, float, bool values) and F32 ``tensors`` (numpy
    shapes, slowest dimension first)."""
    head = [MAGIC, struct.pack("<IQQ", 3, len(tensors), len(metadata))]
    for key, value in metadata.items():
        k = key.encode("utf-8")
        head.append(struct.pack("<Q", len(k)) + k + _pack_value(value))
    blobs = []
    offset = 0
    for name, array in tensors.items():
        a = np.ascontiguousarray(array, dtype="<f4")
        n = name.encode("utf-8")
        dims = tuple(reversed(a.shape)) or (1,)
        head.append(
            struct.pack("<Q", len(n))
            + n
            + struct.pack("<I", len(dims))
            + b"".join(struct.pack("<Q", d) for d in dims)
            + struct.pack("<IQ", TYPE_F32, offset)
        )
        blob = a.tobytes()
        pad = (-len(blob)) % ALIGNMENT
        blobs.append(blob + b"\0" * pad)
        offset += len(blob) + pad
    header = b"".join(head)
    header += b"\0" * ((-len(header)) % ALIGNMENT)
    tmp = Path(f"{path}.partial")
    with open(tmp, "wb") as f:
        f.write(header)
        for blob in blobs:
            f.write(blob)
    os.replace(tmp, path)
