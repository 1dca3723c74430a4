"""Where a run keeps its files: the one place that builds them (no framework imported, so the
workflow's parse-time checks and the jobs read the same folders)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CHECKPOINT_ROOT_ENV = "SEGTRAIN_CHECKPOINT_ROOT"
RESULTS = "results"  # every run's outputs: results/<run>
DEFAULT_CHECKPOINT_ROOT = RESULTS


# the files of a run's folder and of each segment's output folder
PLAN = "plan.json"
SEGMENT_SUMMARY = "segment.json"  # written last: a segment folder without it is unfinished
SEGMENT_METRICS = "metrics.csv"


def run_root(run: str) -> Path:
    """``results/<run>``: the run's plan, segments, exports, metrics and report."""
    return Path(RESULTS) / run


def checkpoint_folder(run: str, checkpoint_root: str | os.PathLike | None = None) -> Path:
    """``<checkpoint_root>/<run>/ckpt``: the run's periodic checkpoints, best ones, attempts
    ledger and working metrics. ``checkpoint_root`` defaults to the environment's (the workflow
    sets it for every job), else ``results``."""
    root = checkpoint_root or os.environ.get(CHECKPOINT_ROOT_ENV) or DEFAULT_CHECKPOINT_ROOT
    return Path(root) / run / "ckpt"


@dataclass
class RunPaths:
    """Where one run keeps its files.

    The periodic checkpoints live under ``checkpoint_root/<run>/ckpt`` (default: next to the
    results). On Kubernetes a job's working directory is an emptyDir that dies with the pod, so
    there the workflow points checkpoint_root at the persistent volume (env SEGTRAIN_CHECKPOINT_ROOT).
    """

    root: Path  # results/<run>
    checkpoint_root: Path | None = None

    ATTEMPTS = "attempts.jsonl"  # in the checkpoint folder

    @property
    def store(self) -> Path:
        base = self.checkpoint_root or os.environ.get(CHECKPOINT_ROOT_ENV)
        return checkpoint_folder(self.root.name, base) if base else self.root / "ckpt"

    def working_metrics(self, segment: int) -> Path:
        return self.store / "metrics" / f"segment-{segment:04d}.csv"

    @property
    def tensorboard(self) -> Path:
        """TensorBoard's log folder for the run, beside its checkpoints: tensorboard --logdir <it>."""
        return self.store.parent / "tensorboard"

    @property
    def attempts(self) -> Path:
        return self.store / self.ATTEMPTS

    def segment_dir(self, segment: int) -> Path:
        return self.root / "segments" / f"{segment:04d}"

    def segment_summary(self, segment: int) -> Path:
        return self.segment_dir(segment) / SEGMENT_SUMMARY

    @property
    def plan(self) -> Path:
        return self.root / PLAN
