"""A segment job's checkpoint writes: synchronous or in the background, the best checkpoint
beside them, and what each cost (for the ledger, the summary and the next plan).

A background write (``async_save``) copies the state (``snapshot``), then a writer thread writes,
verifies and renames it while training goes on; it counts as the checkpoint to fall back to only
once it is complete (``settle``). The segment's last save and a stop's save are written before
the job goes on. Only the main process writes the metrics and commits (``segtrain.world``).
"""

from __future__ import annotations

import logging
import time

from .checkpointing import BackgroundWriter, Snapshots
from .segment_output import checkpoint_meta, save_best
from .stopping import check_weights_finite

log = logging.getLogger(__name__)


class Saves:
    """The saves of one attempt. ``saved_step`` is the newest checkpoint it can fall back to."""

    def __init__(self, run, segment, store, best_store, world):
        self.run, self.segment, self.world = run, segment, world
        self.store, self.best_store = store, best_store
        self.saved_step: int | None = None
        self.blocked: list[float] = []  # seconds each save blocked training
        self.log: list[dict] = []  # per save: step, blocking and persist seconds
        self.writer: BackgroundWriter | None = None  # set when this job saves in the background
        self._best_after_write: tuple[dict, dict] | None = None  # a best checkpoint awaiting its files
        self.state_format: str | None = None
        self.per_rank: list[str] = []
        self.metrics = None  # the metrics log, made durable before each checkpoint
        self.notes: dict = {}  # what every manifest of this attempt says besides (resharded: ...)

    def begin(self, state) -> None:
        """Start saving ``state``: in the background when the run asks for it and the state can."""
        self.writer = BackgroundWriter() if self._in_background(state) else None
        # several processes: the writer thread commits each checkpoint together over a process
        # group of its own (collectives of two threads on one group would interleave)
        self.writer_world = self.world.of_own() if self.writer is not None else self.world
        self.state_format = state.state_format  # recorded in every manifest: how the export reads it
        # the objects each rank saves its own state of (several processes), listed in every manifest
        self.per_rank = list(getattr(state, "per_rank", None) or [])

    def _in_background(self, state) -> bool:
        """The run's async_save (auto: the plan's choice from the measured costs), for a state
        that can take snapshots."""
        wanted = self.run.async_save
        if wanted == "auto":
            wanted = getattr(self.segment, "async_save", False)
        if wanted and not isinstance(state, Snapshots):
            log.info("async_save: %s saves synchronously (it takes no snapshots)", type(state).__name__)
            return False
        return bool(wanted)

    def slowest(self) -> float:
        """The longest a save took so far (blocking or written), or the measured cost."""
        writes = (e["persist_seconds"] for e in self.log if e["persist_seconds"] is not None)
        return max(self.segment.save_seconds, max(self.blocked, default=0.0), max(writes, default=0.0))

    @property
    def in_flight(self) -> bool:
        return self.writer is not None and self.writer.busy

    def poll(self) -> None:
        """Count a background write that finished meanwhile. With several processes a write is
        counted at the next save instead, at the same step on every process (what it changes,
        the checkpoint to fall back to and an error, must be the same on all of them)."""
        if self.writer is not None and self.world.world_size == 1 and self.writer.done():
            self.settle()

    def settle(self) -> None:
        """Wait for the background write in flight, if any; from then on it is the checkpoint to
        fall back to. Its error (a full disk, ...) is raised here, in the training thread."""
        done = self.writer.wait() if self.writer is not None else None
        if done is not None:
            step, seconds = done
            self.saved_step = step
            for entry in self.log:
                if entry["step"] == step:
                    entry["persist_seconds"] = seconds
            best, self._best_after_write = self._best_after_write, None
            if best is not None and best[0]["step"] == step:
                self._save_best(None, *best)

    def settle_quietly(self) -> None:
        """``settle`` on the way out of a job that already failed or stopped: a failed write is logged."""
        try:
            self.settle()
        except Exception as exc:
            log.warning("the background checkpoint write failed: %s", exc)

    def save(self, state, step: int, extra: dict, data_position, wait: bool = True) -> float:
        """Save ``state`` after ``step`` (``extra`` holds its step, position and metrics row: a
        kill between the save and the log's append must not lose it); returns the seconds
        training was blocked. In the background unless ``wait``: the previous write must have
        finished first (its host buffers are reused; that wait counts as blocking)."""
        t = time.perf_counter()
        self.settle()
        check_weights_finite(self.world, state, step)
        meta = checkpoint_meta(self.run, self.segment, data_position=data_position, state_format=self.state_format,
                               **self.notes, **({"per_rank": self.per_rank} if self.per_rank else {}))
        if self.writer is not None and not wait:
            snap = state.snapshot(extra)
            self.writer.submit(step, lambda: self._persist(step, snap.write, meta, self.writer_world))
            seconds = time.perf_counter() - t
            self.log.append({"step": step, "blocking_seconds": seconds, "persist_seconds": None})
        else:
            self._persist(step, lambda folder: state.write_state(folder, extra), meta)
            seconds = time.perf_counter() - t
            self.saved_step = step
            self.log.append({"step": step, "blocking_seconds": seconds, "persist_seconds": seconds})
        self.blocked.append(seconds)
        return seconds

    def _persist(self, step: int, write, meta: dict, world=None) -> None:
        """Write, verify and rename the checkpoint of ``step``; prune the old ones. The metrics log
        is made durable first (each checkpoint also holds its step's row)."""
        if self.world.is_main and self.metrics is not None:
            self.metrics.sync()
        self.store.save(step, write, meta, world=world or self.world)
        if self.world.is_main:
            self.store.prune(protect={step})

    def best(self, state, extra: dict, best: dict) -> None:
        """Keep the checkpoint of ``extra["step"]`` as the new best: linked from the periodic
        checkpoint once its background write is complete, else written now."""
        if self.writer is not None and self.writer.step == extra["step"]:
            self._best_after_write = (extra, best)
        else:
            self._save_best(state, extra, best)

    def _save_best(self, state, extra: dict, best: dict) -> None:
        # every process: each writes its own files (its random streams, its shards)
        save_best(self.run, self.segment, self.store, self.best_store, state, extra, best, world=self.world,
                  state_format=self.state_format)
