"""Which process this is among the processes that train one segment, and how they agree.

Every decision that ends or changes a job (stop, NaN, which checkpoint) is taken once, at a step
boundary, and agreed by all processes (``agree``, ``agree_reason``); every side effect (the
attempts ledger, the metrics log and TensorBoard, ``segment.json``, pruning, quarantine, a
checkpoint's commit) happens on the main process only (``is_main``). This module is the single
process's world; segments trained by several processes (torchrun) get one with the same
interface over ``torch.distributed``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

LAUNCHER_VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_RANK")  # what torchrun (and SLURM's srun wrappers) set


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

    def broadcast(self, obj):
        """The main process's ``obj``, on every process."""
        return obj

    def agree(self, flag: bool) -> bool:
        """True on every process when any process says True (one NaN, one stop signal is enough)."""
        return bool(flag)

    def agree_reason(self, reason: str | None) -> str | None:
        """The reason of the lowest rank that has one, on every process; None when none has."""
        return reason


SINGLE = World()


class SeveralProcesses(RuntimeError):
    """The job was started as one of several processes, which segments do not train yet."""


def current(environ=None) -> World:
    """This process's world. A job launched as several processes (``WORLD_SIZE`` above 1) is
    refused with the reason: its ranks would each write the ledger, the metrics and checkpoints."""
    environ = os.environ if environ is None else environ
    size = environ.get("WORLD_SIZE", "1").strip() or "1"
    try:
        world_size = int(size)
    except ValueError:
        raise SeveralProcesses(f"WORLD_SIZE={size!r} is not a number of processes") from None
    if world_size > 1:
        raise SeveralProcesses(
            f"this job was started as one of {world_size} processes (WORLD_SIZE={world_size}, e.g. by torchrun); "
            "segtrain trains a segment in one process so far: run the job without the launcher, with one process")
    return SINGLE
