"""TensorBoard event files of a run's metrics, written without TensorBoard or TensorFlow.

One file per segment, mirroring that segment's metrics log row for row: rewritten from the log
when a job resumes (the log is first cut back to the restored step), then appended as the job
logs. A resumed run's curves therefore hold each step once, whatever was killed where.

The format is TensorFlow's: TFRecord framing (length, masked CRC-32C of the length, the data,
masked CRC-32C of the data) around ``Event`` protocol buffers (wall_time, step, and a ``Summary``
of ``simple_value`` scalars), the first of them naming the file version.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

# CRC-32C (Castagnoli), reflected polynomial
_POLY = 0x82F63B78
_TABLE = []
for _n in range(256):
    _c = _n
    for _ in range(8):
        _c = (_c >> 1) ^ _POLY if _c & 1 else _c >> 1
    _TABLE.append(_c)


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked(crc: int) -> int:
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low = n & 0x7F
        n >>= 7
        if n:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _bytes_field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def event(wall_time: float, step: int, scalars: dict[str, float] | None = None, file_version: str | None = None) -> bytes:
    """One serialized ``tensorflow.Event``."""
    out = _varint(1 << 3 | 1) + struct.pack("<d", wall_time) + _varint(2 << 3 | 0) + _varint(step)
    if file_version is not None:
        out += _bytes_field(3, file_version.encode())
    if scalars:
        values = b"".join(
            _bytes_field(1, _bytes_field(1, tag.encode()) + _varint(2 << 3 | 5) + struct.pack("<f", value))
            for tag, value in scalars.items())
        out += _bytes_field(5, values)
    return out


def record(data: bytes) -> bytes:
    """``data`` framed as one TFRecord."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", _masked(crc32c(length))) + data + struct.pack("<I", _masked(crc32c(data)))


NOT_SCALARS = {"segment", "attempt", "step", "time"}


def scalars_of(row: dict) -> dict[str, float]:
    """The row's numeric values, by name (empty cells, e.g. no save at this step, left out)."""
    found = {}
    for key, value in row.items():
        if key in NOT_SCALARS or value in ("", None):
            continue
        try:
            found[key] = float(value)
        except (TypeError, ValueError):
            continue
    return found


class EventFile:
    """The event file of one segment, kept equal to its metrics rows."""

    def __init__(self, folder: Path, segment: int):
        self.path = Path(folder) / f"events.out.tfevents.{segment:010d}.segtrain"

    def rewrite(self, rows: list[dict]) -> None:
        """The file holding exactly ``rows`` (atomically: a kill leaves the old file or the new one)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        first = float(rows[0]["time"]) if rows else 0.0
        with open(tmp, "wb") as fh:
            fh.write(record(event(first, 0, file_version="brain.Event:2")))
            for row in rows:
                fh.write(self._encode(row))
        os.replace(tmp, self.path)

    def append(self, row: dict) -> None:
        with open(self.path, "ab") as fh:
            fh.write(self._encode(row))

    @staticmethod
    def _encode(row: dict) -> bytes:
        return record(event(float(row["time"]), int(row["step"]), scalars_of(row)))
