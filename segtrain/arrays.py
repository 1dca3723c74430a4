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
        for name, dtype, shape, offset in index:
            dt = _dtype(dtype)
            count = int(np.prod(shape, dtype=np.int64))
            if offset + count * dt.itemsize > size:
                raise ValueError(f"{path}: {name} lies beyond the end of the file")
            array = aligned_empty(tuple(shape), dt)
            view, pos = memoryview(array.reshape(-1).view(np.uint8)), 0
            fh.seek(offset)
            while pos < len(view):
                n = fh.readinto(view[pos:])
                if not n:
                    raise ValueError(f"{path}: the file ended inside {name}")
                pos += n
            arrays[name] = array
    return arrays


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
