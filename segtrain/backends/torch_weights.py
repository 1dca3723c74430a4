"""Where each PyTorch state format keeps a checkpoint's model weights, for the export: the one
PyTorch state format (``state.pt``), its sharded form (every rank's rows, joined), Lightning's
checkpoint and the Hugging Face Trainer's safetensors."""

from __future__ import annotations

from pathlib import Path

import torch

from ..store import read_manifest
from .torch_sharded import SHARDED_FORMAT, sharded_weights
from .torch_state import LIGHTNING_CHECKPOINT, STATE_FILE


def _lightning_weights(folder: Path) -> dict:
    return torch.load(folder / LIGHTNING_CHECKPOINT, map_location="cpu", weights_only=True)["state_dict"]


def _trainer_weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def _state_weights(folder: Path) -> dict:
    return torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)["model"]


# where each PyTorch state format keeps the model's weights (segtrain.lightning, segtrain.huggingface,
# segtrain.backends.torch_sharded)
WEIGHTS_OF = {"torch": _state_weights, "lightning": _lightning_weights, "huggingface": _trainer_weights,
              SHARDED_FORMAT: sharded_weights}


def exported_weights(folder: Path) -> dict:
    """The model weights of the checkpoint in ``folder``, read by its recorded state format."""
    recorded = read_manifest(folder).get("state_format")
    if recorded is None:  # written before formats were recorded (loop and scripts: state.pt, else theirs)
        recorded = "torch" if (folder / STATE_FILE).exists() else (
            "lightning" if (folder / LIGHTNING_CHECKPOINT).exists() else "huggingface")
    if recorded not in WEIGHTS_OF:
        raise ValueError(f"{folder} holds a '{recorded}' checkpoint, which the PyTorch export cannot read "
                         f"(it reads {', '.join(sorted(WEIGHTS_OF))})")
    return WEIGHTS_OF[recorded](folder)
