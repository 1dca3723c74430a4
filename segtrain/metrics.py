"""A segment's metrics log: its rows kept in the store so they survive kills, cut back on resume,
mirrored to TensorBoard."""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

from . import store as store_mod

log = logging.getLogger(__name__)


class MetricsLog:
    """The segment's metrics rows, kept in the store so they survive kills; cut back on resume."""

    def __init__(self, path: Path, events=None):
        self.path = path
        self.events = events  # a TensorBoard mirror of the rows (segtrain.events.EventFile), or None
        self.fields: list[str] | None = None
        self.rows: list[dict] = []
        if path.exists():
            with open(path, newline="") as fh:
                reader = csv.DictReader(fh)
                self.fields = reader.fieldnames
                rows = list(reader)
            # a kill after an append that was not yet synced can leave a torn last row: dropped
            self.rows = [r for r in rows if self._whole(r)]
            if len(self.rows) != len(rows):
                log.warning("%s: dropped %d torn metrics row(s)", path, len(rows) - len(self.rows))

    @staticmethod
    def _whole(row: dict) -> bool:
        if None in row or any(v is None for v in row.values()):
            return False  # too few or too many fields
        try:
            int(row["step"])
            float(row["time"])
        except (KeyError, TypeError, ValueError):
            return False
        return True

    def truncate_after(self, step: int) -> None:
        """Drop rows after ``step``: they will be trained again and logged again."""
        self.rows = [r for r in self.rows if int(r["step"]) <= step]
        self._rewrite()

    def resume_at(self, step: int, start: int, saved_row, writes: bool = True) -> dict:
        """Continue the log from a restore at ``step`` (the segment began at ``start``); returns
        the work the failure before lost. Rows past ``step`` were logged by an attempt that died
        before saving them: they go (they are trained again, identically). The row saved with
        the checkpoint comes back if the kill fell between the save and its row. ``writes``:
        whether this process writes the log (the main one)."""
        beyond = [r for r in self.rows if int(r["step"]) > step]
        lost = {"lost_steps": max(int(r["step"]) for r in beyond) - step,
                "lost_until_time": max(float(r["time"]) for r in beyond)} if beyond else {}
        if writes:
            self.truncate_after(step)
            if step > start and isinstance(saved_row, dict) and (
                    not self.rows or int(self.rows[-1]["step"]) != step):
                self.append({**saved_row, "save_seconds": ""})
        return lost

    def _rewrite(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.events is not None:
            self.events.rewrite(self.rows)
        if self.fields is None:
            self.path.unlink(missing_ok=True)
            return
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, self.fields, extrasaction="ignore")
            w.writeheader()
            w.writerows(self.rows)
        os.replace(tmp, self.path)

    def append(self, row: dict) -> None:
        if self.fields is None:
            self.fields = list(row)
            self._rewrite()
        elif any(k not in self.fields for k in row):  # e.g. the first validation metrics
            self.fields = self.fields + [k for k in row if k not in self.fields]
            self._rewrite()
        self.rows.append(row)
        with open(self.path, "a", newline="") as fh:
            csv.DictWriter(fh, self.fields, extrasaction="ignore").writerow(row)
        if self.events is not None:
            self.events.append(row)

    def log_step(self, row: dict) -> None:
        """Append ``row``, or complete the last row when it is of the same step (a stop saves a
        step that was already logged): each step is in the log once."""
        last = self.rows[-1] if self.rows else None
        if last is None or int(last["step"]) != int(row["step"]):
            self.append(row)
            return
        last.update({k: v for k, v in row.items() if v != "" or k not in last})
        if any(k not in self.fields for k in row):
            self.fields = self.fields + [k for k in row if k not in self.fields]
        self._rewrite()

    def sync(self) -> None:
        if self.path.exists():
            store_mod.fsync_path(self.path)
