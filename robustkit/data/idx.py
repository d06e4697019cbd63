"""Readers for the raw file formats of the datasets: IDX (MNIST) and CIFAR-10 pickles.

IDX (LeCun et al., "THE MNIST DATABASE", file format section): a big-endian int32 magic
number ``0x000008TD`` (``T`` = 0x08 for unsigned bytes, ``D`` = number of dimensions), then
``D`` big-endian int32 sizes, then the raw data. MNIST images have magic 0x00000803
(N x 28 x 28), labels 0x00000801 (N).

CIFAR-10 "python version" batches are pickles of a dict with ``b"data"`` (N x 3072 uint8,
channel-major RGB 32x32) and ``b"labels"``. They are unpickled with a restricted unpickler
that only allows the numpy array constructors, so a tampered file cannot run code.
"""

from __future__ import annotations

import codecs
import gzip
import io
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np

from robustkit.errors import InputError

IDX_IMAGES_MAGIC = 0x00000803
IDX_LABELS_MAGIC = 0x00000801


def read_bytes(path: Path) -> bytes:
    """The content of ``path``, gunzipped when the name ends in ``.gz``."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise InputError(f"cannot read dataset file {path}: {exc}") from exc


def read_idx(path: Path, expected_magic: int) -> np.ndarray:
    """Read an unsigned-byte IDX file (optionally gzipped) and check its magic number and size."""
    data = read_bytes(path)
    if len(data) < 4:
        raise InputError(f"{path} is not an IDX file: only {len(data)} bytes")
    (magic,) = struct.unpack(">i", data[:4])
    if magic != expected_magic:
        raise InputError(
            f"{path} has IDX magic number 0x{magic:08x}, expected 0x{expected_magic:08x} "
            "(0x00000803 for images, 0x00000801 for labels); is it the right file?"
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise InputError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{ndim}i", data[4:header])
    count = int(np.prod(dims))
    if len(data) - header != count:
        raise InputError(
            f"{path}: IDX header announces {dims} = {count} bytes of data, file has {len(data) - header}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _numpy_reconstruct() -> Any:
    core = getattr(np, "_core", None)
    if core is not None and hasattr(core, "multiarray"):
        return core.multiarray._reconstruct
    return np.core.multiarray._reconstruct  # numpy < 2


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that resolves only numpy's array constructors (no arbitrary code)."""

    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("_codecs", "encode"),  # bytes in protocol-2 pickles written by Python 3
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR-10 batch")
        if name == "_reconstruct":
            return _numpy_reconstruct()
        if module == "_codecs":
            return codecs.encode
        return getattr(np, name)


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 batch pickle (optionally gzipped): images (N, 3, 32, 32) uint8, labels (N,)."""
    raw = read_bytes(path)
    try:
        obj = _NumpyOnlyUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise InputError(f"{path} is not a CIFAR-10 batch pickle: {exc}") from exc
    if not isinstance(obj, dict) or b"data" not in obj or b"labels" not in obj:
        raise InputError(f"{path} is not a CIFAR-10 batch: expected a dict with b'data' and b'labels'")
    data = np.asarray(obj[b"data"])
    labels = np.asarray(obj[b"labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise InputError(f"{path}: b'data' must be N x 3072 uint8, got {data.shape} {data.dtype}")
    if labels.shape != (data.shape[0],):
        raise InputError(f"{path}: {labels.shape[0]} labels for {data.shape[0]} images")
    return data.reshape(-1, 3, 32, 32), labels
