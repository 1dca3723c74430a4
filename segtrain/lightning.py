"""A Lightning callback: the planned interval, the deadline stop, the verified store and the resume
path for a ``Trainer`` script (``script: train.py`` in a run of the config).

    import segtrain.lightning

    checkpoints = segtrain.lightning.Checkpoints()
    trainer = L.Trainer(max_steps=checkpoints.max_steps, callbacks=[checkpoints], enable_checkpointing=False)
    trainer.fit(model, train_loader, val_loader, **checkpoints.resume)   # ckpt_path, weights_only=True

Each optimizer step is handed to the job: it saves (Lightning's own checkpoint,
``trainer.save_checkpoint``, inside this project's atomic, verified store) at the planned interval,
stops the Trainer at the segment's end (``max_steps`` is the run's total, so schedules span the
whole run), and on a stop signal or near the deadline saves at the next step and
ends the job for a retry. ``resume`` names the newest verified checkpoint, which Lightning loads
(model, optimizers, schedulers, loops, callbacks) with ``weights_only=True``.

What holds, honestly: the interval, the deadline and signal stops and the step count are exact;
the data position is Lightning's (its loaders restart the epoch on a mid-epoch resume, unless they
are stateful), so a resumed run is not bitwise identical to an uninterrupted one.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import torch

from .backends.torch_state import LIGHTNING_CHECKPOINT
from .checkpointing import as_numbers
from .script import finite
from .trainer_hook import TrainerHook

CHECKPOINT = LIGHTNING_CHECKPOINT
EXTRA = "segtrain.json"


class _LightningState:
    """What the job saves and restores: Lightning's checkpoint, and the job's extra beside it."""

    state_format = "lightning"
    verified_reads = ()  # Lightning reads its checkpoint itself: verified whole before

    def __init__(self):
        self.trainer = None
        self.restored: Path | None = None

    def write_state(self, folder: Path, extra: dict) -> None:
        self.trainer.save_checkpoint(Path(folder) / CHECKPOINT, weights_only=False)
        (Path(folder) / EXTRA).write_text(json.dumps(extra))

    def read_state(self, folder: Path) -> dict:
        # a Lightning checkpoint that a weights_only load refuses is refused here, before Lightning loads it
        torch.load(Path(folder) / CHECKPOINT, map_location="cpu", weights_only=True)
        self.restored = Path(folder) / CHECKPOINT
        return json.loads((Path(folder) / EXTRA).read_text())

    def all_finite(self) -> bool:
        return finite([self.trainer.lightning_module])

    as_numbers = staticmethod(as_numbers)


class Checkpoints(L.Callback):
    """Hands each optimizer step to the pipeline's job (see the module's text)."""

    def __init__(self):
        self.state = _LightningState()
        self.hook = TrainerHook(self.state, "Lightning's")
        self.max_steps = self.hook.max_steps

    @property
    def resume(self) -> dict:
        """``trainer.fit`` keywords: the checkpoint to resume from (None for a fresh start), loaded
        with ``weights_only=True``."""
        return {"ckpt_path": str(self.state.restored) if self.state.restored else None, "weights_only": True}

    def on_train_start(self, trainer, pl_module):  # after Lightning restored its loops and optimizers
        self.state.trainer = trainer
        if self.hook.start(trainer.global_step):
            trainer.should_stop = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        row = {"loss": outputs["loss"].detach()} if isinstance(outputs, dict) and "loss" in outputs else {}
        if trainer.optimizers:
            row["lr"] = trainer.optimizers[0].param_groups[0]["lr"]
        if self.hook.step_done(trainer.global_step, row):
            trainer.should_stop = True
