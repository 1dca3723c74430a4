"""Where a run keeps its files: the one place that builds them (no framework imported, so the
workflow's parse-time checks and the jobs read the same folders)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CHECKPOINT_ROOT_ENV = "SEGTRAIN_CHECKPOINT_ROOT"
RESULTS = "results"  # every run's outputs: results/<run>
DEFAULT_CHECKPOINT_ROOT = RESULTS
CHECKPOINTS = "ckpt"  # <checkpoint_root>/<run>/ckpt


# the files of a run's folder and of each segment's output folder
PLAN = "plan.json"
SEGMENTS = "segments"  # results/<run>/segments/<0000>: one folder per segment
SEGMENT_SUMMARY = "segment.json"  # written last: a segment folder without it is unfinished
SEGMENT_METRICS = "metrics.csv"
SEGMENT_STATE = "state"  # the segment's final checkpoint (a verified store folder)
SEGMENT_BEST = "best"  # the best checkpoint seen up to the end of the segment, if any
BEST_STORE = "best"  # in the checkpoint folder: the best checkpoints, kept apart from the rotation


class Files:
    """The workflow's file patterns, which the rules declare; ``{run}``, ``{segment}`` and
    ``{ext}`` are Snakemake wildcards (a segment's is its four-digit index)."""

    run = f"{RESULTS}/{{run}}"
    costs = f"{run}/costs.json"
    plan = f"{run}/{PLAN}"
    plan_txt = f"{run}/plan.txt"
    segment = f"{run}/{SEGMENTS}/{{segment}}"
    metrics = f"{run}/metrics.csv"
    model = f"{run}/model.{{ext}}"
    model_best = f"{run}/model.best.{{ext}}"
    report = f"{run}/report/{{name}}"  # the figures and tables of the report
    compare = f"{RESULTS}/compare/loss.svg"

    @staticmethod
    def of(pattern: str, **wildcards) -> str:
        """A pattern with some wildcards filled in (the rest stay wildcards)."""
        return pattern.format_map({**{k: f"{{{k}}}" for k in ("run", "segment", "ext", "name")}, **wildcards})


def run_root(run: str) -> Path:
    """``results/<run>``: the run's plan, segments, exports, metrics and report."""
    return Path(RESULTS) / run


def checkpoint_folder(run: str, checkpoint_root: str | os.PathLike | None = None) -> Path:
    """``<checkpoint_root>/<run>/ckpt``: the run's periodic checkpoints, best ones, attempts
    ledger and working metrics. ``checkpoint_root`` defaults to the environment's (the workflow
    sets it for every job), else ``results``."""
    root = checkpoint_root or os.environ.get(CHECKPOINT_ROOT_ENV) or DEFAULT_CHECKPOINT_ROOT
    return Path(root) / run / CHECKPOINTS


def working_metrics(store: str | os.PathLike, segment: int) -> Path:
    """A segment's metrics as they are logged, in the checkpoint folder ``store`` (every attempt
    appends; the segment's output gets the rows of its own steps)."""
    return Path(store) / "metrics" / f"segment-{segment:04d}.csv"


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
        return checkpoint_folder(self.root.name, base) if base else self.root / CHECKPOINTS

    def working_metrics(self, segment: int) -> Path:
        return working_metrics(self.store, segment)

    @property
    def tensorboard(self) -> Path:
        """TensorBoard's log folder for the run, beside its checkpoints: tensorboard --logdir <it>."""
        return self.store.parent / "tensorboard"

    @property
    def attempts(self) -> Path:
        return self.store / self.ATTEMPTS

    @classmethod
    def of_segment(cls, segment_dir: str | os.PathLike) -> RunPaths:
        """The paths of the run a segment folder (``results/<run>/segments/<i>``) belongs to."""
        return cls(Path(segment_dir).parent.parent)

    @property
    def best_store(self) -> Path:
        return self.store / BEST_STORE

    @property
    def segments(self) -> Path:
        return self.root / SEGMENTS

    def segment_dir(self, segment: int) -> Path:
        return self.segments / f"{segment:04d}"

    def last_segment_dir(self) -> Path:
        """The highest-numbered segment folder present (of a finished run: its last segment)."""
        return max(self.segments.iterdir(), key=lambda d: int(d.name) if d.name.isdigit() else -1)

    def segment_summary(self, segment: int) -> Path:
        return self.segment_dir(segment) / SEGMENT_SUMMARY

    @property
    def plan(self) -> Path:
        return self.root / PLAN
