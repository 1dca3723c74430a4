"""Loading a user's task file as a module."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
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
