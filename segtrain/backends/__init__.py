"""Backends, one per framework; this module names them without importing any framework."""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass


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
