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


def safetensors_form(weights: dict) -> tuple[dict, dict | None]:
    """``weights`` as safetensors' ``save_model`` writes a model's state dict, with its metadata.

    safetensors refuses tensors that share memory. A model whose layers share one weight (tied
    weights: a language model's output layer is its embedding) has one tensor under two names in
    its state dict, and in a checkpoint (``torch.save`` keeps the sharing). Of each group of names
    on one storage the file keeps the first, in sorted order, of those that cover the whole
    storage; the metadata maps every other name to the kept one, so ``load_model`` restores the
    tying into the same class. A group with no name covering its storage (views of a larger
    tensor) is written as copies, name by name."""
    tensors, metadata = {}, {}
    groups: dict[int, list[str]] = {}
    for name, value in weights.items():
        if torch.is_tensor(value) and value.layout == torch.strided and value.untyped_storage().data_ptr():
            groups.setdefault(value.untyped_storage().data_ptr(), []).append(name)
    dropped, copied = set(), set()
    for names in groups.values():
        if len(names) < 2:
            continue
        whole = sorted(n for n in names if _covers_storage(weights[n]))
        if not whole:
            copied.update(names)
            continue
        metadata.update({name: whole[0] for name in names if name != whole[0]})
        dropped.update(name for name in names if name != whole[0])
    for name, value in weights.items():
        if name not in dropped:
            tensors[name] = value.clone().contiguous() if name in copied else value.contiguous()
    return tensors, metadata or None


def _covers_storage(tensor: torch.Tensor) -> bool:
    storage = tensor.untyped_storage()
    return (tensor.data_ptr() == storage.data_ptr() and tensor.is_contiguous()
            and tensor.numel() * tensor.element_size() == storage.nbytes())


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
