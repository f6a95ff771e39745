"""Read and write IDX files (the MNIST format), gzipped or raw.

Layout: big-endian uint32 magic (0x0803 for uint8 3-d images, 0x0801 for uint8 1-d labels),
then one uint32 per dimension, then the uint8 data, row-major.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np

from hardened._util.atomic import write_bytes
from hardened.errors import DataError

__all__ = ["read_idx", "write_idx"]

_UINT8 = 0x08


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (``.gz`` or raw) into a uint8 array of its stored shape."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        raise DataError(f"cannot read IDX file {path}: {error}") from error
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path} is not an IDX file (bad magic number)")
    dtype_code, ndim = raw[2], raw[3]
    if dtype_code != _UINT8:
        raise DataError(f"{path}: only uint8 IDX data is supported, got type code {dtype_code:#x}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(shape)) if shape else 0
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: IDX header promises {expected} bytes of data for shape {shape}, "
            f"found {len(raw) - header}; the file is truncated or corrupt, download it again"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def write_idx(path: str | os.PathLike[str], array: np.ndarray, compress: bool | None = None) -> Path:
    """Write a uint8 array as IDX; gzip when ``compress`` (default: the name ends in ``.gz``)."""
    data = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, _UINT8, data.ndim]) + struct.pack(f">{data.ndim}I", *data.shape)
    payload = header + data.tobytes()
    if compress if compress is not None else str(path).endswith(".gz"):
        payload = gzip.compress(payload, mtime=0)
    return write_bytes(path, payload)
