"""NumPy arrays as one file of raw bytes and a JSON index: the Keras checkpoint format.

``np.savez`` writes a zip archive through Python's zipfile, and reading it back copies each
member; here the arrays' bytes follow each other (64-byte aligned) and the index (name, dtype,
shape, offset) goes into the checkpoint's JSON part. A load reads the file into memory once and
takes views. Numbers only: nothing is unpickled.
"""

from __future__ import annotations

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
    """The arrays of ``write_arrays``: one read of the file into memory, then views into it."""
    size = Path(path).stat().st_size
    buf = bytearray(size)
    with open(path, "rb", buffering=0) as fh:
        view, pos = memoryview(buf), 0
        while pos < size and (n := fh.readinto(view[pos:])):
            pos += n
    arrays = {}
    for name, dtype, shape, offset in index:
        dt = _dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64))
        if offset + count * dt.itemsize > size:
            raise ValueError(f"{path}: {name} lies beyond the end of the file")
        arrays[name] = np.frombuffer(buf, dtype=dt, count=count, offset=offset).reshape(tuple(shape))
    return arrays


def _dtype(name: str) -> np.dtype:
    try:
        return np.dtype(name)
    except TypeError:  # bfloat16 and friends (mixed precision) come from ml_dtypes, as in Keras
        import ml_dtypes

        return np.dtype(getattr(ml_dtypes, name))
