"""Reader for the IDX format of MNIST and Fashion-MNIST (plain or gzip-compressed).

Format (LeCun et al.): a 4-byte magic ``0x00 0x00 <dtype> <ndim>``, then ``ndim`` big-endian
uint32 dimensions, then the data. Only unsigned bytes (dtype 0x08) are used by these datasets.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from mtlcli.errors import DataError
from mtlcli.io import write_bytes_atomic

_UBYTE = 0x08
_GZIP_MAGIC = b"\x1f\x8b"


def _read_payload(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as exc:
        raise DataError(
            f"{path} is a corrupt or truncated gzip file ({exc})",
            hint="delete it and download it again, or pass --source with good files",
        ) from None


def read_idx(path: Path, *, ndim: int) -> np.ndarray:
    """Read an IDX file of unsigned bytes with `ndim` dimensions; raise DataError when malformed."""
    path = Path(path)
    data = _read_payload(path)
    if len(data) < 4:
        raise DataError(f"{path} is not an IDX file: only {len(data)} bytes")
    zero, dtype, file_ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != _UBYTE:
        raise DataError(
            f"{path} is not an IDX file of unsigned bytes: magic {data[:4].hex()} "
            f"(expected 0000{_UBYTE:02x}{ndim:02x})"
        )
    if file_ndim != ndim:
        raise DataError(f"{path}: expected {ndim} dimension(s), the header says {file_ndim}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path} is truncated: the header needs {header} bytes, found {len(data)}")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(dims, dtype=np.int64))
    found = len(data) - header
    if found != expected:
        what = "truncated" if found < expected else "longer than its header says"
        raise DataError(f"{path} is {what}: dimensions {dims} need {expected} bytes of data, found {found}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims).copy()


def write_idx(path: Path, array: np.ndarray, *, compress: bool = False) -> None:
    """Write `array` (uint8) in IDX format; used by tests and tools that make small datasets."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">HBB", 0, _UBYTE, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.tobytes()
    if compress:
        payload = gzip.compress(payload, mtime=0)
    write_bytes_atomic(Path(path), payload)
