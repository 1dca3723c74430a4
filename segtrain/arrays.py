"""NumPy arrays as one file of raw bytes and a JSON index: the Keras checkpoint format.

``np.savez`` writes a zip archive through Python's zipfile, and reading it back copies each
member; here the arrays' bytes follow each other (64-byte aligned) and the index (name, dtype,
shape, offset) goes into the checkpoint's JSON part. A load reads each array straight into its
own aligned memory. Numbers only: nothing is unpickled.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

ALIGN = 64  # offsets of the arrays in the file


def write_arrays(fh, arrays: dict) -> list:
    """Write ``arrays``' bytes to ``fh`` one after the other; returns their index for the JSON
    part: [name, dtype name, shape, offset]. Numbers only: nothing needs unpickling to read it."""
    index, offset = [], 0
    for name, array in arrays.items():
        array = np.asarray(array)
        if not array.flags.c_contiguous:  # (np.ascontiguousarray would make a 0-d array 1-d)
            array = array.copy(order="C")
        if array.dtype.hasobject:
            raise TypeError(f"{name}: an object array cannot be saved without pickle")
        pad = -offset % ALIGN
        if pad:
            fh.write(b"\0" * pad)
            offset += pad
        index.append([name, array.dtype.name, list(array.shape), offset])
        data = array.reshape(-1).view(np.uint8)
        fh.write(data)
        offset += data.nbytes
    return index


def read_arrays(path: Path, index: list) -> dict:
    """The arrays of ``write_arrays``, each read straight into fresh memory aligned like the file
    (one copy from the page cache; no zero-filled buffer, no second copy)."""
    arrays = {}
    with open(path, "rb", buffering=0) as fh:
        size = os.fstat(fh.fileno()).st_size
        for name, dt, shape, offset in check_index(index, size, path):
            array = aligned_empty(shape, dt)
            view, pos = memoryview(array.reshape(-1).view(np.uint8)), 0
            fh.seek(offset)
            while pos < len(view):
                n = fh.readinto(view[pos:])
                if not n:
                    raise ValueError(f"{path}: the file ended inside {name}")
                pos += n
            arrays[name] = array
    return arrays


def check_index(index, size: int, path="the file") -> list:
    """``index`` as (name, dtype, shape, offset) entries, checked against a file of ``size``
    bytes before any memory is taken: well formed, unique names, and each array inside the file
    and after the one before it, so the arrays together never need more memory than the file
    holds (a crafted index of overlapping entries would otherwise multiply it). ValueError says
    which entry is wrong."""
    if not isinstance(index, list):
        raise ValueError(f"{path}: the array index is not a list")
    checked, names, end = [], set(), 0
    for entry in index:
        if not (isinstance(entry, list) and len(entry) == 4):
            raise ValueError(f"{path}: malformed array index entry {entry!r}")
        name, dtype, shape, offset = entry
        if not isinstance(name, str) or name in names:
            raise ValueError(f"{path}: array name {name!r} is not a string or appears twice")
        if not (isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                 for d in shape)):
            raise ValueError(f"{path}: {name} has a malformed shape {shape!r}")
        if not isinstance(offset, int) or isinstance(offset, bool) or offset < end:
            raise ValueError(f"{path}: {name} starts at {offset!r}, inside the array before it (or before the "
                             "file's start)")
        try:
            dt = _dtype(dtype)
        except (TypeError, AttributeError, ValueError):
            raise ValueError(f"{path}: {name} has an unknown dtype {dtype!r}") from None
        if dt.hasobject:
            raise ValueError(f"{path}: {name} has an object dtype (that would need pickle)")
        nbytes = dt.itemsize
        for d in shape:
            nbytes *= d
        if offset + nbytes > size:
            raise ValueError(f"{path}: {name} lies beyond the end of the file")
        names.add(name)
        end = offset + nbytes
        checked.append((name, dt, tuple(shape), offset))
    return checked


def aligned_empty(shape: tuple, dtype: np.dtype) -> np.ndarray:
    """An uninitialised array whose data starts on an ALIGN-byte boundary (what TensorFlow's
    kernels expect of a buffer they adopt)."""
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + ALIGN, np.uint8)
    start = -raw.ctypes.data % ALIGN
    return raw[start:start + nbytes].view(dtype).reshape(shape)


def _dtype(name: str) -> np.dtype:
    try:
        return np.dtype(name)
    except TypeError:  # bfloat16 and friends (mixed precision) come from ml_dtypes, as in Keras
        import ml_dtypes

        return np.dtype(getattr(ml_dtypes, name))
