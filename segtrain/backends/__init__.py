"""Backends, one per framework; this module names them without importing any framework."""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol, runtime_checkable

from ..checkpointing import Evaluated, TrainingState
from ..settings import RunSettings


@dataclass(frozen=True)
class BackendInfo:
    module: str  # segtrain.backends.<module>
    package: str  # what must be importable
    install: str  # how to install it
    required: tuple[str, ...]  # functions a task file must define
    optional: tuple[str, ...] = ()


BACKENDS = {
    "torch": BackendInfo(
        module="torch_backend",
        package="torch",
        install="pip install torch (CPU: pip install torch==2.13.0)",
        required=("build_model", "build_optimizer", "build_dataset", "compute_loss"),
        optional=("build_scheduler",),
    ),
    "keras": BackendInfo(
        module="keras_backend",
        package="tensorflow",
        install="pip install tensorflow (CPU only: pip install tensorflow-cpu)",
        required=("build_model", "build_dataset"),
    ),
}


def missing_package(framework: str) -> str | None:
    """The install hint when ``framework``'s package is not importable, else None."""
    info = BACKENDS[framework]
    if importlib.util.find_spec(info.package) is None:
        return info.install
    return None


def load_backend(framework: str):
    """The backend class for ``framework`` (imports the framework)."""
    info = BACKENDS[framework]
    module = importlib.import_module(f"{__name__}.{info.module}")
    return module.Backend


@runtime_checkable
class Backend(TrainingState, Evaluated, Protocol):
    """What the pipeline's own loop (``runner.run_segment``) and the measure rule need of a
    framework's backend, besides saving and restoring its whole state (``TrainingState``).

    Built as ``Backend(task_path, params, seed, threads, training=...)``; ``EXPORTS`` and
    ``export`` write a checkpoint in the framework's usual forms for the export rule."""

    framework: str
    num_samples: int  # samples in the task's training data (the data order's length)
    steps_per_call: int  # steps one call trains: 1 calls train_step; more calls train_steps
    EXPORTS: tuple  # the file kinds export writes, e.g. ("pt", "safetensors")

    def build(self, context) -> None:
        """Build model, optimizer and the rest for the run (``taskfile.RunContext``)."""

    def batches(self, order, start: int, end: int) -> Iterator:
        """The batches of steps start+1 .. end, in the seeded data order (fetched ahead if it can)."""

    def train_step(self, batch) -> dict:
        """Train one step; its logged values (tensors are read only on logging steps)."""

    @property
    def has_validation_data(self) -> bool:
        """Whether the task brings its own validation data."""

    @property
    def steps_on_metric(self) -> bool:
        """Whether a scheduler steps on an evaluated metric (``after_evaluation`` then does it)."""

    def evaluate(self, indices, batch_size: int) -> dict:
        """Validation metrics, on held-out ``indices`` or the task's own validation data."""

    def after_evaluation(self, metrics: dict, monitor: str) -> None:
        """Step a metric-driven scheduler with the evaluated ``metrics``."""

    @staticmethod
    def export(run: RunSettings, folder: Path, out: dict) -> None:
        """Write the checkpoint in ``folder`` to ``out[ext]`` for every ext in ``EXPORTS``."""


class SeveralSteps(Protocol):
    """A backend whose ``steps_per_call`` is above 1 (Keras: one graph call trains several)."""

    def train_steps(self, batches: list) -> list[dict]:
        """Train one step per batch, in one call; each step's logged values, in order."""
