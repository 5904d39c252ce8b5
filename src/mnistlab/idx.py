"""The IDX format of MNIST and Fashion-MNIST, plain or gzip-compressed.

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number of
dimensions), one big-endian uint32 per dimension, then the values in C order, big-endian.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from mnistlab.errors import UserError
from mnistlab.fileio import atomic_write, read_regular

GZIP_MAGIC = b"\x1f\x8b"  # an IDX file starts with two zero bytes, so the two never clash

# type code -> dtype as stored (big-endian)
IDX_DTYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file, plain or gzip-compressed (told apart by content), as a native-endian array.

    Raises UserError naming the file when it is unreadable, a corrupt or truncated gzip
    stream, has a bad magic number, or holds more or fewer bytes than its header says.
    """
    return parse_idx(read_regular(path, what="IDX file"), str(path))


def parse_idx(data: bytes, name: str) -> np.ndarray:
    """Decode the bytes of an IDX file, plain or gzip-compressed; `name` is for error messages."""
    if data[:2] == GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (EOFError, zlib.error, gzip.BadGzipFile) as e:
            raise UserError(f"{name}: corrupt or truncated gzip data ({e})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in IDX_DTYPES:
        raise UserError(f"{name}: not an IDX file (magic number {data[:4].hex() or 'missing'})")
    dtype, ndim = IDX_DTYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise UserError(f"{name}: truncated IDX header ({len(data)} bytes, need {header})")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = header + dtype.itemsize * int(np.prod(shape, dtype=np.int64))
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "trailing data"
        raise UserError(f"{name}: {what}: {len(data)} bytes, but its header {shape} needs {expected}")
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="))  # a writable, native-endian copy


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write `array` as an IDX file, gzip-compressed when the name ends in .gz; atomically."""
    path = Path(path)
    array = np.asarray(array)
    codes = {dtype.newbyteorder("="): code for code, dtype in IDX_DTYPES.items()}
    code = codes.get(array.dtype.newbyteorder("="))
    if code is None:
        raise ValueError(f"IDX cannot hold dtype {array.dtype}; use one of {sorted(map(str, codes))}")
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + np.ascontiguousarray(array, dtype=IDX_DTYPES[code]).tobytes()

    def write(f):
        if path.suffix == ".gz":
            with gzip.GzipFile(filename=path.stem, fileobj=f, mode="wb", mtime=0) as gz:
                gz.write(data)
        else:
            f.write(data)

    atomic_write(path, write)
