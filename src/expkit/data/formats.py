"""Readers for the file formats datasets are distributed in: IDX (MNIST family), CIFAR pickles, .npz.

Each raises ValueError with a plain description of what is wrong; the sources turn that into a
ConfigError with the right key path.
"""

from __future__ import annotations

import gzip
import math
import pickle
import zipfile
from pathlib import Path

import numpy as np

# IDX type codes -> big-endian numpy dtypes (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT").
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_bytes(path: Path) -> bytes:
    """A file's bytes, gunzipped when it is gzip data (told by its first bytes, not its name)."""
    with open(path, "rb") as fh:
        head = fh.read(2)
    try:
        if head == b"\x1f\x8b":
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return Path(path).read_bytes()
    except (OSError, EOFError) as exc:
        raise ValueError(f"{path}: cannot read ({exc})") from None


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (plain or gzipped) as an array of its stored shape, in native byte order."""
    data = read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (its first bytes are {data[:4].hex()})")
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise ValueError(f"{path}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(data) != expected:
        raise ValueError(f"{path}: IDX header says shape {shape} ({expected} bytes), the file holds {len(data)} bytes")
    return np.frombuffer(data, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def idx_file(folder: Path, stem: str) -> Path | None:
    """`folder/stem` or `folder/stem.gz`, whichever exists (the uncompressed one first)."""
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


class _ArrayUnpickler(pickle.Unpickler):
    """CIFAR batches are pickles: allow numpy array reconstruction and nothing else (no code execution)."""

    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),  # numpy < 2 spelling, as in the original batches
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),  # pickle protocol 5
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),  # bytes in a protocol-2 pickle written by Python 3
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def read_cifar_batch(path: Path, label_key: str = "labels") -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR python batch: images as (N, 32, 32, 3) uint8, labels as int64."""
    try:
        with open(path, "rb") as fh:
            batch = _ArrayUnpickler(fh, encoding="bytes").load()
        batch = {(k.decode() if isinstance(k, bytes) else k): v for k, v in batch.items()}
        data = np.asarray(batch["data"], dtype=np.uint8)
        labels = np.asarray(batch[label_key], dtype=np.int64)
    except (OSError, EOFError, pickle.UnpicklingError, AttributeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: not a CIFAR python batch ({type(exc).__name__}: {exc})") from None
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise ValueError(f"{path}: expected data of shape (N, 3072) and N labels, found {data.shape} and {len(labels)}")
    # Stored as (N, channel, row, col); Keras and expkit use channels last.
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy(), labels


def npz_keys(path: Path) -> list[str]:
    """The array names in an .npz, without reading any array."""
    try:
        with zipfile.ZipFile(path) as zf:
            return [n.removesuffix(".npy") for n in zf.namelist() if n.endswith(".npy")]
    except (zipfile.BadZipFile, OSError) as exc:
        raise ValueError(f"{path}: not an .npz file ({exc})") from None


def npz_size_problem(path: Path, key: str) -> str | None:
    """What is wrong when an .npz array's header claims more data than its member holds, else None.
    numpy allocates what the header claims before reading, so a crafted header asks for terabytes."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(key + ".npy")
        with zf.open(info) as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
            else:
                return None
            header = fh.tell()
    claimed = math.prod(shape) * dtype.itemsize
    held = info.file_size - header
    if claimed > held:
        return (f"{key}: its header claims shape {tuple(shape)} of {dtype} ({claimed:,} bytes) but it holds "
                f"{held:,} bytes: the file is damaged or not written by numpy")
    return None


def npz_shape(path: Path, key: str) -> tuple[int, ...]:
    """The shape of one array in an .npz, read from its header only (cheap even for a large file)."""
    with zipfile.ZipFile(path) as zf, zf.open(key + ".npy") as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            return tuple(np.lib.format.read_array_header_1_0(fh)[0])
        if version == (2, 0):
            return tuple(np.lib.format.read_array_header_2_0(fh)[0])
    with np.load(path, allow_pickle=False) as npz:  # format 3.0 has no public header reader
        return tuple(npz[key].shape)
