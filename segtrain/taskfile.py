"""Loading a user's task file as a module."""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import sys
from dataclasses import dataclass
from pathlib import Path


def load_task(path: str | Path):
    """Import the task file at ``path`` and return the module."""
    path = Path(path).resolve()
    name = "segtrain_task_" + hashlib.sha1(str(path).encode()).hexdigest()[:10]
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import task file {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class RunContext:
    """What a task may know about its run. A task function receives it when it has a parameter
    named ``run`` (e.g. ``def build_scheduler(optimizer, params, run)``): OneCycleLR and warm-up
    schedules need ``total_steps`` and ``steps_per_epoch``. A task that reads it has total_steps
    in its model definition, so raising total_steps later is refused instead of silently changing
    a schedule half-way."""

    name: str
    total_steps: int
    steps_per_epoch: int
    batch_size: int
    seed: int


def call_task(fn, *args, run: RunContext | None = None):
    """Call a task function, passing ``run=`` when it has a parameter of that name."""
    if run is not None and "run" in inspect.signature(fn).parameters:
        return fn(*args, run=run)
    return fn(*args)
