"""What a training state must offer a job, and checkpoint writes that block training only for a copy.

A save has two parts. The *snapshot* copies the state into host memory: training must wait for
it, because the next step changes the state. The *write* serialises the copy, hashes it as it
goes, fsyncs and renames it into the store: that can run while training goes on. A synchronous
save does both before training resumes; an asynchronous one (``async_save``) hands the write to a
background thread (``BackgroundWriter``), with at most one write in flight, so a job's host copy
(``HostCopy``) is allocated once and reused by every save.

A checkpoint still counts only when its manifest is written and renamed into place: a kill during
a background write leaves a temporary folder that the next job removes, and resumes from the
newest complete checkpoint as before.
"""

from __future__ import annotations

import copy
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, ContextManager, Protocol, runtime_checkable


def as_numbers(row: dict) -> dict:
    """A step's logged values as Python floats: every state's ``as_numbers`` (a tensor of any
    framework is read from its device here, so only logging steps wait for it)."""
    return {k: float(v) for k, v in row.items()}


@runtime_checkable
class TrainingState(Protocol):
    """The contract between a job (``runner.SegmentJob``) and what it trains: the pipeline's
    backends, a script's ``segtrain.session()`` state, the Lightning and Hugging Face callbacks.

    ``state_format`` names the files it writes (``torch``: ``state.pt``; ``lightning``,
    ``huggingface``: the trainer's own checkpoint; ``keras``: raw arrays); the job records it in
    each checkpoint's manifest, and the export reads the checkpoint by it."""

    state_format: str
    verified_reads: tuple  # files read_state hashes as it reads them (the rest are verified before)

    def all_finite(self) -> bool:
        """Whether every weight is finite (checked before each save: no checkpoint holds NaN)."""

    def as_numbers(self, row: dict) -> dict:
        """A step's logged values as Python floats (waits for the device: logging steps only)."""

    def write_state(self, folder: Path, extra: dict) -> None:
        """Write the whole state and ``extra`` (step, data position, ...) into ``folder`` now."""

    def read_state(self, folder: Path) -> dict:
        """Restore what ``write_state`` or a snapshot wrote; return its ``extra``."""


@runtime_checkable
class Snapshots(Protocol):
    """A state that can save in the background: ``snapshot`` blocks, ``Snapshot.write`` need not."""

    def snapshot(self, extra: dict) -> "Snapshot":
        """Copy the state into host memory (reused between calls) and return what writes it."""


@runtime_checkable
class Evaluated(Protocol):
    """A state the job evaluates itself (the loop's backends, a script's session): evaluation
    runs on random streams of its own, so it changes nothing training draws."""

    def isolated_rng(self, seed: int) -> ContextManager:
        """Run the body (an evaluation) on random streams of its own; training's are put back."""


class Snapshot(Protocol):
    def write(self, folder: Path) -> None:
        """Write the copied state into ``folder`` (on the writer thread); the same files as
        ``write_state``, so a checkpoint loads the same way whichever way it was saved."""


class HostCopy:
    """Copies of a nested state (dicts, lists and tuples of tensors and plain values) in host
    memory: allocated at the first snapshot and reused by the next ones (the previous write must
    have finished; ``BackgroundWriter`` has at most one in flight). On a GPU the buffers are
    pinned and filled by non-blocking copies; ``ready()`` waits for them (on the writer thread)."""

    def __init__(self):
        self._buffers: dict[tuple, Any] = {}
        self._event = None

    @property
    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self._buffers.values())

    def copy(self, obj):
        import torch

        on_gpu = False
        # a tensor found twice (a model also under another name; tied weights: one parameter under
        # two names, as two views of one storage) is copied once, so the written file ties them too
        seen: dict[tuple, Any] = {}

        def walk(value, path):
            if torch.is_tensor(value):
                key = same_tensor(value)
                if key in seen:
                    return seen[key]
                seen[key] = buf = tensor(value.detach(), path)
                return buf
            if isinstance(value, dict):
                kind = OrderedDict if isinstance(value, OrderedDict) else dict
                return kind((k, walk(v, (*path, k))) for k, v in value.items())
            if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
                return type(value)(walk(v, (*path, i)) for i, v in enumerate(value))
            return copy.deepcopy(value)  # numbers, strings; param_groups change after the snapshot

        def tensor(value, path):
            nonlocal on_gpu
            if value.layout != torch.strided:  # sparse and other layouts: a fresh copy
                return value.to("cpu", copy=True)
            buf = self._buffers.get(path)
            if buf is None or buf.shape != value.shape or buf.dtype != value.dtype:
                buf = torch.empty(value.shape, dtype=value.dtype, pin_memory=value.is_cuda)
                self._buffers[path] = buf
            buf.copy_(value, non_blocking=value.is_cuda)
            on_gpu |= value.is_cuda
            return buf

        copied = walk(obj, ())
        self._event = None
        if on_gpu:
            self._event = torch.cuda.Event()
            self._event.record()
        return copied

    def ready(self) -> None:
        """Wait until the device-to-host copies of the last snapshot have landed."""
        if self._event is not None:
            self._event.synchronize()


def same_tensor(value) -> tuple:
    """What makes two tensor objects the same tensor: the same view of the same memory (a state
    dict's tensors are new objects at every call; tied weights are one storage under two names)."""
    import torch

    try:
        if value.layout != torch.strided or type(value) is not torch.Tensor or not value.untyped_storage().data_ptr():
            return ("object", id(value))
        return (str(value.device), value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape),
                value.stride(), value.dtype)
    except (RuntimeError, NotImplementedError):  # a tensor without storage of its own (a subclass's, meta)
        return ("object", id(value))


class BackgroundWriter:
    """Runs one checkpoint write at a time on a thread of its own.

    ``submit`` starts a write (the previous one must have been waited for), ``wait`` joins it and
    raises its error, if any, in the training thread; ``done`` says whether it has finished."""

    def __init__(self):
        self._thread: threading.Thread | None = None
        self._outcome: tuple[int, float, BaseException | None] | None = None
        self.step: int | None = None  # the step of the write in flight

    @property
    def busy(self) -> bool:
        return self._thread is not None

    def done(self) -> bool:
        return self._thread is not None and not self._thread.is_alive()

    def submit(self, step: int, work: Callable[[], None]) -> None:
        if self._thread is not None:
            raise RuntimeError("a checkpoint write is already in flight; wait for it first")

        def run():
            t = time.perf_counter()
            try:
                work()
                self._outcome = (step, time.perf_counter() - t, None)
            except BaseException as exc:  # handed to the training thread by wait()
                self._outcome = (step, time.perf_counter() - t, exc)

        self.step, self._outcome = step, None
        # Not a daemon: an interpreter that exits with a write in flight finishes it first.
        self._thread = threading.Thread(target=run, name=f"segtrain-checkpoint-{step}")
        self._thread.start()

    def wait(self) -> tuple[int, float] | None:
        """Join the write in flight: (its step, the seconds it took), or None when there is none."""
        if self._thread is None:
            return None
        self._thread.join()
        self._thread, self.step = None, None
        step, seconds, error = self._outcome
        if error is not None:
            raise error
        return step, seconds
