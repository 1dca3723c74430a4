"""Measure what a training step and a checkpoint cost, on the storage the run will use."""

from __future__ import annotations

import logging
import os
import shutil
import statistics
import time
from pathlib import Path

from . import store as store_mod
from .checkpointing import Snapshots
from .lifecycle import process_age
from .settings import RunSettings
from .training import prepare_training
from .world import current as current_world

log = logging.getLogger(__name__)

WARMUP_STEPS = 5


def remove_stale_scratch(store_root: Path) -> list[str]:
    """Remove the scratch folders of measure jobs that were killed (``.measure-<pid>`` whose
    process is gone); a live one's is left alone."""
    removed = []
    for folder in Path(store_root).glob(".measure-*"):
        pid = folder.name.split("-", 1)[1]
        if pid.isdigit() and int(pid) != os.getpid() and not os.path.exists(f"/proc/{pid}"):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder.name)
            log.info("removed %s, left by a measure job that was killed", folder.name)
    return removed


class StepMarks:
    """The times a measure job marks as each step ends, for a loop it does not run itself (a
    script's, Keras ``fit``, a Trainer's): the first mark's process age is the start-up
    (interpreter, imports, set-up and the first step, which every segment pays again); the steps
    after ``WARMUP_STEPS`` are the step times."""

    def __init__(self, run: RunSettings):
        self.count = WARMUP_STEPS + run.measure_steps  # steps to train in all
        self.marks: list[float] = []
        self.startup: float | None = None

    def mark(self, steps: int = 1) -> None:
        """``steps`` steps ended now (several: one call trained them, each taking an equal share)."""
        now = time.perf_counter()
        last = self.marks[-1] if self.marks else None
        if last is not None and steps > 1:
            self.marks.extend(last + (now - last) * i / steps for i in range(1, steps))
        self.marks.append(now)
        if self.startup is None:
            self.startup = process_age()

    def step_times(self) -> list[float]:
        steady = self.marks[WARMUP_STEPS - 1:]
        return [b - a for a, b in zip(steady, steady[1:])]


def measure_costs(run: RunSettings, store_root: Path, backend_factory=None) -> dict:
    """Time ``measure_steps`` steps and ``measure_saves`` saves and loads in a scratch store
    next to the run's real checkpoints. Returns the costs as a plain dict (seconds, bytes)."""
    training = prepare_training(run, backend_factory)
    backend, order = training.backend, training.order
    # A backend that trains several steps per call (Keras: one graph call up to the next save) is
    # timed that way, after both of its call shapes (a fixed and a varying step count) are traced.
    per_call = min(backend.steps_per_call, run.measure_steps)
    calls = -(-run.measure_steps // per_call)
    warmup = WARMUP_STEPS + (2 * per_call - 1 if per_call > 1 else 0)
    batches = backend.batches(order, 0, warmup + calls * per_call)
    backend.train_step(next(batches))
    # What a job pays before its steady state: interpreter, framework import, building the task
    # and the first step (graph tracing, allocator warm-up), which every segment pays again.
    startup = process_age()
    for step in range(1, WARMUP_STEPS):
        backend.train_step(next(batches))
    if per_call > 1:
        for count in (per_call, per_call - 1):
            backend.train_steps([next(batches) for _ in range(count)])
    step_times = []
    for _call in range(calls):
        t = time.perf_counter()
        if per_call > 1:
            row = backend.as_numbers(backend.train_steps([next(batches) for _ in range(per_call)])[-1])
        else:
            row = backend.as_numbers(backend.train_step(next(batches)))  # waits for the device
        step_times += [(time.perf_counter() - t) / per_call] * per_call
    names = set(row)

    eval_times, eval_warmup = [], 0.0
    if training.has_validation:
        eval_times, eval_warmup = time_evaluations(
            backend, run.seed, lambda: backend.evaluate(training.validation_indices, run.batch_size), names)

    costs = costs_of(step_times, time_checkpoints(backend, run, store_root), startup=startup + eval_warmup,
                     eval_times=eval_times, steps_per_epoch=order.steps_per_epoch, names=names, run=run,
                     store_root=store_root)
    log.info("measured: %s", costs)
    return costs


def time_evaluations(state, seed: int, evaluate, names: set) -> tuple[list[float], float]:
    """Time ``evaluate()`` three times (on its own RNG streams; the metric names go into ``names``).
    Returns the steady times and the first one's extra cost: it also builds what an evaluation
    needs (Keras traces a graph), once per job, so it goes with the start-up."""
    times = []
    for _repeat in range(3):
        t = time.perf_counter()
        with state.isolated_rng(seed):
            names |= set(evaluate())
        times.append(time.perf_counter() - t)
    return times[1:], max(0.0, times[0] - statistics.median(times[1:]))


def time_checkpoints(state, run: RunSettings, store_root: Path) -> dict:
    """Save and load ``state`` (anything with write_state/read_state) ``measure_saves`` times in a
    scratch store next to the run's real checkpoints: {save, load: seconds each; sizes: bytes}.

    A state that takes snapshots is also saved the background way, one after the other:
    snapshot (what training waits for; the first one also allocates the host buffers, once
    per job) and persist (the writer thread's work, timed here in the foreground)."""
    world = current_world()
    # its own folder: two runs sharing a checkpoint_root and name must not race on it (several
    # processes share the main one's: they save each checkpoint together, as a segment does)
    scratch = Path(store_root) / f".measure-{world.broadcast(os.getpid())}"
    if world.is_main:
        remove_stale_scratch(Path(store_root))
        shutil.rmtree(scratch, ignore_errors=True)
    world.barrier()
    store = store_mod.CheckpointStore(scratch, keep=max(2, run.measure_saves))
    timed = {"save": [], "load": [], "sizes": [], "snapshot": [], "persist": []}
    meta = {"model_hash": run.model_hash}
    try:
        for i in range(run.measure_saves):
            extra = {"step": i + 1, "epoch": 0, "index": 0, "segment": -1}
            if isinstance(state, Snapshots):
                t = time.perf_counter()
                state.all_finite()  # a job checks the weights before every save
                snap = state.snapshot(extra)
                timed["snapshot"].append(time.perf_counter() - t)
                t = time.perf_counter()
                store.save(1000 + i, snap.write, meta, world=world)  # several: each its files, committed together
                timed["persist"].append(time.perf_counter() - t)
                if world.is_main:
                    shutil.rmtree(store.path(1000 + i))
                world.barrier()
            t = time.perf_counter()
            state.all_finite()
            ckpt = store.save(i + 1, lambda folder: state.write_state(folder, extra), meta, world=world)
            timed["save"].append(time.perf_counter() - t)
            timed["sizes"].append(sum(f.stat().st_size for f in ckpt.path.iterdir()))
            t = time.perf_counter()
            # a resume verifies before it loads (the state's own files as it reads them): part of the cost
            store_mod.verify(ckpt.path, state.verified_reads)
            state.read_state(ckpt.path)
            timed["load"].append(time.perf_counter() - t)
        world.barrier()  # every process has read its checkpoints before the scratch goes
    finally:
        if world.is_main:
            shutil.rmtree(scratch, ignore_errors=True)
    return timed


def costs_of(step_times, checkpoints: dict, *, startup: float, eval_times, steps_per_epoch: int | None,
             names, run: RunSettings, store_root: Path) -> dict:
    """The measured costs as the planner reads them (seconds, bytes)."""
    save_times, load_times = checkpoints["save"], checkpoints["load"]
    snapshots = checkpoints.get("snapshot") or []
    steady = snapshots[1:] or snapshots  # after the first, which allocates the job's host buffers
    return {
        # The median resists one-off hiccups; the plan adds its own margin for the slow tail.
        "step_seconds": statistics.median(step_times),
        "step_seconds_max": max(step_times),
        "save_seconds": statistics.median(save_times),
        "save_seconds_max": max(save_times),
        "load_seconds": statistics.median(load_times),
        "load_seconds_max": max(load_times),
        "startup_seconds": startup,
        "checkpoint_bytes": max(checkpoints["sizes"]),
        "snapshot_seconds": statistics.median(steady) if steady else 0.0,
        "persist_seconds": statistics.median(checkpoints["persist"]) if steady else 0.0,
        "steps_per_epoch": steps_per_epoch,
        "eval_seconds": statistics.median(eval_times) if eval_times else 0.0,
        "metric_names": sorted(names),  # what a job logs: the names monitor may pick from
        "measured_steps": len(step_times),
        "measured_saves": len(save_times),
        "storage": str(Path(store_root).resolve()),
        "framework": run.framework,
    }
