"""Which process this is among the processes that train one segment, and how they agree.

Every decision that ends or changes a job (stop, NaN, which checkpoint) is taken once, at a step
boundary, and agreed by all processes (``agree``, ``agree_reason``); every side effect (the
attempts ledger, the metrics log and TensorBoard, ``segment.json``, pruning, quarantine, a
checkpoint's commit) happens on the main process only (``is_main``). This module is the single
process's world (``SINGLE``); a job launched as several processes (torchrun sets
``WORLD_SIZE``) gets ``Distributed``, the same interface over ``torch.distributed``: a gloo group
carries the agreements (small CPU tensors and objects) whichever backend trains, and every
collective gives up after ``COLLECTIVE_TIMEOUT_ENV`` seconds, so a dead rank ends the others.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field

LAUNCHER_VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_RANK")  # what torchrun (and SLURM's srun wrappers) set
COLLECTIVE_TIMEOUT_ENV = "SEGTRAIN_COLLECTIVE_TIMEOUT"  # seconds a collective waits for the other ranks
DEFAULT_COLLECTIVE_TIMEOUT = 120.0


@dataclass(frozen=True)
class World:
    """One process alone: rank 0 of 1. Barriers return at once; what it says, all agree on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Whether this process does the side effects: rank 0."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait until every process got here (alone: nothing to wait for)."""

    def close(self) -> None:
        """Leave the world together (a rank whose peers vanished first may abort in its teardown)."""

    def broadcast(self, obj):
        """The main process's ``obj``, on every process."""
        return obj

    def all_gather(self, obj) -> list:
        """Every process's ``obj``, by rank, on every process."""
        return [obj]

    def agree(self, flag: bool) -> bool:
        """True on every process when any process says True (one NaN, one stop signal is enough)."""
        return bool(flag)

    def mean(self, row: dict) -> dict:
        """``row`` with its floats averaged over every process, on every process: what a step
        computed over the whole batch when each process trained an equal share of it (a NaN on
        one process is a NaN on all). Every process must log the same keys."""
        return row

    def agree_reason(self, reason: str | None) -> str | None:
        """The reason of the lowest rank that has one, on every process; None when none has."""
        return reason

    def of_own(self) -> World:
        """This world over a process group of its own, for another thread's collectives (the
        background checkpoint writer's), which must not interleave with the training thread's.
        Every process makes it at the same point (making a group is itself collective)."""
        return self


SINGLE = World()


@dataclass(frozen=True)
class Distributed(World):
    """One of several processes of a job (torchrun), over ``torch.distributed``."""

    group: object = field(default=None, compare=False, repr=False)  # gloo: agreements and objects

    def barrier(self) -> None:
        import torch.distributed as dist

        with _waiting("a barrier"):
            dist.barrier(group=self.group)

    def close(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier(group=self.group)
            dist.destroy_process_group()
        _CURRENT.clear()

    def broadcast(self, obj):
        import torch.distributed as dist

        box = [obj if self.is_main else None]
        with _waiting("a broadcast from rank 0"):
            dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def all_gather(self, obj) -> list:
        """Every process's ``obj``, by rank, on every process."""
        import torch.distributed as dist

        boxes = [None] * self.world_size
        with _waiting("an exchange of every process's values"):
            dist.all_gather_object(boxes, obj, group=self.group)
        return boxes

    def agree(self, flag: bool) -> bool:
        import torch
        import torch.distributed as dist

        value = torch.tensor([1 if flag else 0], dtype=torch.int32)
        with _waiting("the agreement at a step boundary"):
            dist.all_reduce(value, op=dist.ReduceOp.MAX, group=self.group)
        return bool(value.item())

    def mean(self, row: dict) -> dict:
        import torch
        import torch.distributed as dist

        keys = [k for k, v in row.items() if isinstance(v, float)]
        if not keys:
            return row
        values = torch.tensor([row[k] for k in keys], dtype=torch.float64)
        with _waiting("the average of a logged row"):
            dist.all_reduce(values, op=dist.ReduceOp.SUM, group=self.group)
        return {**row, **dict(zip(keys, (values / self.world_size).tolist()))}

    def of_own(self) -> World:
        import torch.distributed as dist

        group = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=collective_timeout()))
        return Distributed(rank=self.rank, world_size=self.world_size, local_rank=self.local_rank, group=group)

    def agree_reason(self, reason: str | None) -> str | None:
        # the common case (nobody stops) costs one small all-reduce, not an object exchange
        if not self.agree(reason is not None):
            return None
        return next(r for r in self.all_gather(reason) if r is not None)


class _Watch:
    """Names a process that stops taking part. Every process publishes, once a second, a beat
    in the process group's store: the time and where its main thread waits for the others, if
    it does. A process that has waited ``warn`` seconds reads the others' beats and says which
    one is silent (its beat is old: stopped, frozen, or gone) or busy outside the collectives
    (in its step, or the script's code), and for how long, once per wait."""

    def __init__(self, store, rank: int, world_size: int, timeout: float):
        import logging
        import threading

        self.store, self.rank, self.world_size = store, rank, world_size
        self.warn = max(5.0, min(30.0, timeout / 4))
        self.timeout = timeout
        self.waiting: tuple[float, str] | None = None  # (since, at what) of the main thread
        self.told = False
        self.log = logging.getLogger(__name__)
        threading.Thread(target=self._beat, name="segtrain-beat", daemon=True).start()

    def _beat(self) -> None:
        import json
        import time

        while True:
            waiting = self.waiting
            try:
                self.store.set(f"segtrain/beat/{self.rank}", json.dumps(
                    {"time": time.time(), "waiting": waiting[1] if waiting else None,
                     "for": time.monotonic() - waiting[0] if waiting else 0.0}))
                if waiting and not self.told and time.monotonic() - waiting[0] >= self.warn:
                    self.told = True
                    self.log.warning("%s", self.silent(time.monotonic() - waiting[0], waiting[1]))
            except Exception:  # the store went away with its process: the collective's timeout says the rest
                return
            time.sleep(1.0)

    def silent(self, waited: float, what: str) -> str:
        """Who the others are waiting for, from their beats."""
        import json
        import time

        now, found = time.time(), []
        for rank in range(self.world_size):
            if rank == self.rank:
                continue
            key = f"segtrain/beat/{rank}"
            beat = json.loads(self.store.get(key)) if self.store.check([key]) else None
            if beat is None:
                found.append(f"rank {rank} has not started taking part")
            elif now - beat["time"] > 2.5:  # a beat every second: two missed
                found.append(f"rank {rank} has been silent for {now - beat['time']:.0f} s (stopped, frozen or gone)")
            elif not beat["waiting"]:
                found.append(f"rank {rank} is busy outside the collectives (its step, or the script's own code)")
        who = "; ".join(found) or "every other rank waits too, at another collective"
        return (f"waiting {waited:.0f} s for the other processes at {what}: {who}. The job gives up after "
                f"{COLLECTIVE_TIMEOUT_ENV}={self.timeout:g} s and the retry resumes from the newest checkpoint")


_WATCH: list[_Watch] = []


class _waiting:
    """Marks the main thread as waiting in a collective (for ``_Watch``)."""

    def __init__(self, what: str):
        self.what = what

    def __enter__(self):
        import threading
        import time

        self.mine = bool(_WATCH) and threading.current_thread() is threading.main_thread()
        if self.mine:
            _WATCH[0].waiting, _WATCH[0].told = (time.monotonic(), self.what), False

    def __exit__(self, *exc):
        if self.mine:
            _WATCH[0].waiting = None


def _start_watch(world: "Distributed", timeout: float) -> None:
    try:
        from torch.distributed.distributed_c10d import _get_default_store

        store = _get_default_store()
    except Exception:  # no store to publish in: the collective's timeout alone ends a wait
        return
    _WATCH[:] = [_Watch(store, world.rank, world.world_size, timeout)]


class SeveralProcesses(RuntimeError):
    """The job was started as several processes in a way segtrain cannot train with."""


_CURRENT: list[World] = []  # this process's world, once made (a process group is made once)


def collective_timeout(environ=None) -> float:
    environ = os.environ if environ is None else environ
    text = environ.get(COLLECTIVE_TIMEOUT_ENV, "").strip()
    try:
        return float(text) if text else DEFAULT_COLLECTIVE_TIMEOUT
    except ValueError:
        raise SeveralProcesses(f"{COLLECTIVE_TIMEOUT_ENV}={text!r} is not a number of seconds") from None


def current(environ=None) -> World:
    """This process's world: ``SINGLE``, or, under a launcher that set ``WORLD_SIZE`` above 1,
    this rank's ``Distributed`` world (the process group is made on the first call)."""
    environ = os.environ if environ is None else environ
    size = environ.get("WORLD_SIZE", "1").strip() or "1"
    try:
        world_size = int(size)
    except ValueError:
        raise SeveralProcesses(f"WORLD_SIZE={size!r} is not a number of processes") from None
    if world_size <= 1:
        return SINGLE
    if _CURRENT:
        return _CURRENT[0]
    missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not environ.get(v)]
    if missing:
        raise SeveralProcesses(f"WORLD_SIZE={world_size} without {', '.join(missing)}: start the ranks with torchrun "
                               "(the pipeline does, for a run with processes above 1)")
    import torch
    import torch.distributed as dist

    timeout = datetime.timedelta(seconds=collective_timeout(environ))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend, timeout=timeout)
    group = dist.new_group(backend="gloo", timeout=timeout) if dist.get_backend() != "gloo" else dist.group.WORLD
    world = Distributed(rank=dist.get_rank(), world_size=dist.get_world_size(),
                        local_rank=int(environ.get("LOCAL_RANK", "0")), group=group)
    _CURRENT.append(world)
    _start_watch(world, timeout.total_seconds())
    return world
