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
import logging
import time
from pathlib import Path

import lightning as L
import torch

log = logging.getLogger(__name__)

CHECKPOINT = "lightning.ckpt"
EXTRA = "segtrain.json"


class _LightningState:
    """What the job saves and restores: Lightning's checkpoint, and the job's extra beside it."""

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
        params = [p.detach() for p in self.trainer.lightning_module.parameters()]
        return bool(torch.stack([torch.isfinite(p).all() for p in params]).all()) if params else True

    @staticmethod
    def as_numbers(row: dict) -> dict:
        return {k: float(v) for k, v in row.items()}


class Checkpoints(L.Callback):
    """Hands each optimizer step to the pipeline's job (see the module's text)."""

    def __init__(self):
        from .script import session

        self.seg = session()
        self.state = _LightningState()
        self.job = self.seg._job
        self._steps = None
        self._marks: list[float] = []
        self._startup = 0.0
        if self.job is not None and not self.job.restore(self.state):
            raise RuntimeError("a damaged checkpoint was set aside: run again to start from the next usable one")

    @property
    def max_steps(self) -> int:
        """The Trainer's max_steps: the run's total (a schedule built from the Trainer's estimated
        steps spans the whole run); the job stops the Trainer at its segment's end."""
        if self.seg.measuring:
            from .measure import WARMUP_STEPS

            return WARMUP_STEPS + self.seg.run["measure_steps"]
        return self.seg.total_steps

    @property
    def resume(self) -> dict:
        """``trainer.fit`` keywords: the checkpoint to resume from (None for a fresh start), loaded
        with ``weights_only=True``."""
        return {"ckpt_path": str(self.state.restored) if self.state.restored else None, "weights_only": True}

    def on_train_start(self, trainer, pl_module):  # after Lightning restored its loops and optimizers
        self.state.trainer = trainer
        if self.job is None:
            return
        if trainer.global_step != self.job.step:
            raise RuntimeError(f"the Trainer starts at step {trainer.global_step}, the job at {self.job.step}: "
                               "pass **checkpoints.resume to trainer.fit")
        if self.job.step > 0:
            log.warning("resumed at step %d from %s; the data position is Lightning's own (not bitwise identical "
                        "to an uninterrupted run)", self.job.step, self.state.restored)
        self._steps = self.job.steps(self.state)
        try:
            next(self._steps)
        except StopIteration:
            trainer.should_stop = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.seg.measuring:
            return self._measure(trainer, outputs)
        if self.job is None or self._steps is None or trainer.global_step == self.job.step:
            return  # alone, or an accumulation micro-batch: no optimizer step yet
        row = {"loss": outputs["loss"].detach()} if isinstance(outputs, dict) and "loss" in outputs else {}
        if trainer.optimizers:
            row["lr"] = trainer.optimizers[0].param_groups[0]["lr"]
        self.job.log(row)
        try:
            next(self._steps)
        except StopIteration:
            trainer.should_stop = True

    def _measure(self, trainer, outputs):
        from .lifecycle import process_age
        from .measure import WARMUP_STEPS

        self._marks.append(time.perf_counter())
        if len(self._marks) == 1:
            self._startup = process_age()
        if trainer.global_step >= self.max_steps:
            step_times = [b - a for a, b in zip(self._marks[WARMUP_STEPS - 1:], self._marks[WARMUP_STEPS:])]
            names = {"loss", "lr"}
            self.state.trainer = trainer
            self.seg._finish_measure(self.state, step_times, names, None, 0, "Lightning's", self._startup)
