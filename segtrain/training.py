"""A run's task, built: the framework's backend, its seeded data order and its validation split.

The pipeline's own loop trains it (``segtrain.runner.run_segment``); the measure rule times it.
"""

from __future__ import annotations

from dataclasses import dataclass

from .data import DataOrder, validation_split
from .definition import find_task
from .settings import RunSettings
from .taskfile import RunContext


def evaluation_seed(seed: int, step: int) -> int:
    """The seed of the evaluation at ``step``: its own stream, whatever training drew before."""
    return (seed * 1_000_003 + step) % 2**62


@dataclass
class Training:
    """A built task and the data it trains and validates on."""

    backend: object
    order: DataOrder
    has_validation: bool
    validation_indices: object  # held-out sample indices, or None for the task's own validation data


def prepare_training(run: RunSettings, backend_factory=None) -> Training:
    """Build the run's task with its framework's backend, and its seeded data order and split."""
    if backend_factory is None:
        from .backends import load_backend

        backend_factory = load_backend(run.framework)
    task = str(find_task(run.task) or run.task)
    backend = backend_factory(task, run.params, run.seed, run.threads, training=run.training)
    train_idx = val_idx = None
    has_val = backend.has_validation_data
    if not has_val and run.validation_split > 0:
        train_idx, val_idx = validation_split(backend.num_samples, run.validation_split, run.seed)
        has_val = True
    # one step takes `accumulate` micro-batches: the data order hands out all of them at once
    order = DataOrder(backend.num_samples, run.batch_size * run.accumulate, run.seed, indices=train_idx)
    backend.build(RunContext(name=run.name, total_steps=run.total_steps, steps_per_epoch=order.steps_per_epoch,
                             batch_size=run.batch_size, seed=run.seed))
    return Training(backend, order, has_val, val_idx)
