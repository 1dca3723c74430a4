"""A Lightning callback: the planned interval, the deadline stop, the verified store and the resume
path for a ``Trainer`` script (``script: train.py`` in a run of the config).

    import segtrain.lightning

    checkpoints = segtrain.lightning.Checkpoints()
    trainer = L.Trainer(max_steps=checkpoints.max_steps, callbacks=[checkpoints], enable_checkpointing=False,
                        devices=checkpoints.devices, num_nodes=checkpoints.num_nodes)
    trainer.fit(model, train_loader, val_loader, **checkpoints.resume)   # ckpt_path, weights_only=True

    # LightningCLI: the same settings as the trainer's defaults, run=False, fit with resume
    cli = LightningCLI(Model, DataModule, run=False, save_config_kwargs={"overwrite": True},
                       trainer_defaults={"max_steps": checkpoints.max_steps, "callbacks": [checkpoints], ...})
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, **checkpoints.resume)

The run's length: the config's total_steps as ``checkpoints.max_steps``, or the Trainer's own
``max_epochs`` (without ``max_steps``) when the config leaves total_steps out; a ``max_epochs``
that would end training before total_steps is refused by the measure job.

Each optimizer step is handed to the job: it saves (Lightning's own checkpoint,
``trainer.save_checkpoint``, inside this project's atomic, verified store) at the planned interval,
stops the Trainer at the segment's end (``max_steps`` is the run's total, so schedules span the
whole run), and on a stop signal or near the deadline saves at the next step (the one after,
when Lightning validates after this one) and ends the job for a retry. ``resume`` names the
newest verified checkpoint, which Lightning loads (model, optimizers, schedulers, loops,
callbacks) with ``weights_only=True``.

The metrics: the training loss of every step the run logs (``log_every``), and what validation
logs (``self.log("val_loss", ...)`` in ``validation_step``) at the step it followed, so
``monitor: val_loss`` picks the best checkpoint (``model.best.*``) at Lightning's own validation
schedule (``val_check_interval``).

The segment's end is set as the epoch loop's ``max_steps`` once training starts (no stop request:
Lightning would run an extra validation on one), so ``trainer.max_steps`` reads the segment's end
from then on; schedules built in ``configure_optimizers`` (from ``max_steps`` or
``estimated_stepping_batches``) span the whole run.

With ``processes`` (and ``nodes``) above 1 the pipeline starts the script under torchrun, and
Lightning's DDP joins the job's process group (``devices``/``num_nodes`` are the run's; a Trainer
that trains another number of processes is refused when it starts). Every process calls the save
(Lightning's main process writes the checkpoint); the stop is agreed by all processes at a step.

What holds: the interval, the deadline and signal stops and the step count are exact; every
process's random streams are saved beside the checkpoint and restored when training starts. With
its training data from ``seg.dataloader(dataset, batch_size)`` (a stateful loader in the run's
seeded order, set to the exact step on a resume) a resumed run is bitwise identical to an
uninterrupted one (tested, 1 and 2 processes); with a plain ``DataLoader`` the data position is
Lightning's (it starts the epoch again on a mid-epoch resume), and the plan says so.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import lightning as L
import torch

from .backends.torch_state import LIGHTNING_CHECKPOINT, read_state_file, rng_state, set_rng_state, write_state_file
from .checkpointing import as_numbers
from .lifecycle import STOP
from .script import finite
from .trainer_hook import TrainerHook

log = logging.getLogger(__name__)

CHECKPOINT = LIGHTNING_CHECKPOINT
EXTRA = "segtrain.json"


def config_saved_once(trainer) -> str | None:
    """Why LightningCLI's config saving would fail the run's second job, or None: it writes
    config.yaml into the trainer's log folder and refuses to overwrite it, and without a logger
    that folder is the same in every job (a logger's is a new version in each)."""
    try:
        from lightning.pytorch.cli import SaveConfigCallback
    except ImportError:  # LightningCLI's jsonargparse is not installed: no LightningCLI
        return None
    for callback in trainer.callbacks:
        if isinstance(callback, SaveConfigCallback) and callback.save_to_log_dir and not callback.overwrite \
                and trainer.logger is None:
            return (f"LightningCLI saves its config to {callback.config_filename} in {trainer.log_dir} and refuses to "
                    "overwrite it, and every segment's job runs the script again: pass LightningCLI(..., "
                    "save_config_kwargs={'overwrite': True}) (the run's config is the same in every job), or give "
                    "the Trainer a logger (each job then writes into a new version's folder)")
    return None


def _validates_now(trainer) -> bool:
    """Whether Lightning validates after the batch that just ended (its own rule, asked here
    before its loop asks it)."""
    loop = trainer.fit_loop
    try:
        return bool(loop.epoch_loop._should_check_val_fx(loop._data_fetcher))
    except (AttributeError, TypeError):  # another Lightning: a stop may then come before a validation
        return False


def rng_file(rank: int) -> str:
    return f"rng-{rank:05d}.pt"


class _LightningState:
    """What the job saves and restores: Lightning's checkpoint, and the job's extra beside it."""

    state_format = "lightning"
    verified_reads = ()  # Lightning reads its checkpoint itself: verified whole before

    def __init__(self, rank: int = 0):
        self.trainer = None
        self.rank = rank
        self.restored: Path | None = None
        self.rng: dict | None = None  # this process's random streams at the restored step

    def write_state(self, folder: Path, extra: dict) -> None:
        # every process calls it (a collective under DDP); Lightning's main process writes it
        self.trainer.save_checkpoint(Path(folder) / CHECKPOINT, weights_only=False)
        if self.trainer.is_global_zero:
            (Path(folder) / EXTRA).write_text(json.dumps(extra))
        # Lightning keeps no random streams: each process's own, beside its checkpoint
        write_state_file(folder, {"rng": rng_state()}, name=rng_file(self.rank))

    def read_state(self, folder: Path) -> dict:
        # a Lightning checkpoint that a weights_only load refuses is refused here, before Lightning loads it
        torch.load(Path(folder) / CHECKPOINT, map_location="cpu", weights_only=True)
        if (Path(folder) / rng_file(self.rank)).exists():  # (written from this version on)
            self.rng = read_state_file(folder, name=rng_file(self.rank))["rng"]
        self.restored = Path(folder) / CHECKPOINT
        return json.loads((Path(folder) / EXTRA).read_text())

    def all_finite(self) -> bool:
        return finite([self.trainer.lightning_module])

    as_numbers = staticmethod(as_numbers)


class Checkpoints(L.Callback):
    """Hands each optimizer step to the pipeline's job (see the module's text)."""

    def __init__(self):
        from .script import session

        self.state = _LightningState(rank=session().world.rank)
        self.hook = TrainerHook(self.state, "Lightning's")
        self.max_steps = self.hook.max_steps
        run = self.hook.seg.run
        self.devices, self.num_nodes = run.processes, run.nodes  # the Trainer's, under the job's torchrun
        self._training_names: set[str] = set()
        self._validation_names: set[str] = set()
        self._before: set[str] = set()

    @property
    def finished(self) -> bool:
        """True once the run is trained to its end (the job of its last segment, after fit): code
        after ``trainer.fit`` runs at the end of every segment's job, and what should run once
        (``trainer.test``, ``predict``) checks ``if checkpoints.finished:``."""
        return self.hook.finished

    @property
    def resume(self) -> dict:
        """``trainer.fit`` keywords: the checkpoint to resume from (None for a fresh start), loaded
        with ``weights_only=True``."""
        return {"ckpt_path": str(self.state.restored) if self.state.restored else None, "weights_only": True}

    def setup(self, trainer, pl_module, stage):
        why = config_saved_once(trainer)
        if why:
            raise RuntimeError(why)

    def on_train_start(self, trainer, pl_module):  # after Lightning restored its loops and optimizers
        from .script import SegmentLoader

        self.state.trainer = trainer
        if isinstance(trainer.train_dataloader, SegmentLoader):  # seg.dataloader: the exact data position
            trainer.train_dataloader.position = trainer.global_step * trainer.accumulate_grad_batches
            self.hook.data_position = "segtrain"
        if self.state.rng is not None:  # the random streams of the restored step (the sanity check drew since)
            set_rng_state(self.state.rng)
        # Lightning's SIGTERM handler ends its loop at a batch's end, without the job's save (and,
        # with several processes, broadcasts from inside the handler): the job's own handler again
        taken = STOP.reclaim()
        if taken:
            log.info("the job handles %s itself: a stop saves at the next step (agreed by every process)",
                     ", ".join(taken))
        if self.hook.start(trainer.global_step, trainer.world_size,
                           "give the Trainer devices=checkpoints.devices, num_nodes=checkpoints.num_nodes",
                           length=self._own_length(trainer)):
            trainer.should_stop = True
        if self.hook.job is not None and not self.hook.seg.measuring:
            # the loop ends at the segment's end as at a max_steps (no stop request: Lightning runs
            # an extra validation on one); schedules were built from the run's total before this
            trainer.fit_loop.epoch_loop.max_steps = self.hook.job.segment.end

    def _own_length(self, trainer):
        """The steps the Trainer's own limits train (max_epochs, or a max_steps not the callback's),
        or None when its max_steps is the callback's."""
        if trainer.max_steps == self.max_steps:
            total, epochs = self.hook.seg.run.total_steps, trainer.max_epochs
            batches = trainer.num_training_batches
            if total and epochs not in (None, -1) and batches != float("inf"):
                per_epoch = -(-int(batches) // max(int(trainer.accumulate_grad_batches), 1))
                if epochs * per_epoch < total:  # said before the first training job, not at its end
                    raise ValueError(
                        f"Lightning's max_epochs={epochs} of {per_epoch} steps ends training at step "
                        f"{epochs * per_epoch}, before the run's total_steps {total}: set total_steps: "
                        f"{epochs * per_epoch} in the config, or remove max_epochs (max_steps=checkpoints.max_steps "
                        "then gives the length)")
            return None
        steps = trainer.estimated_stepping_batches
        if steps == float("inf"):
            return None
        said = (f"max_steps={trainer.max_steps}" if trainer.max_steps not in (-1, None) else
                f"max_epochs={trainer.max_epochs} of {trainer.num_training_batches} batches")
        return int(steps), f"Lightning's {said}"

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        row = {"loss": outputs["loss"].detach()} if isinstance(outputs, dict) and "loss" in outputs else {}
        if trainer.optimizers:
            row["lr"] = trainer.optimizers[0].param_groups[0]["lr"]
        self.hook.step_done(trainer.global_step, row,  # the segment's end ends the loop (max_steps)
                            evaluation_follows=_validates_now(trainer))
        self._training_names |= set(trainer.callback_metrics) - self._validation_names

    def on_validation_start(self, trainer, pl_module):
        self._before = set(trainer.callback_metrics)

    def on_validation_end(self, trainer, pl_module):
        """The validation metrics (what validation logged: the names new to it, or known from an
        earlier validation) join the row of the step the validation followed."""
        found = set(trainer.callback_metrics)
        self._validation_names |= (found - self._before) - self._training_names
        values = {k: v for k, v in trainer.callback_metrics.items() if k in self._validation_names}
        if trainer.sanity_checking:  # before training: only the names count (the measure job reads them)
            self.hook.metric_names |= set(values)
            return
        self.hook.metrics(values, evaluation=True)

    def on_train_end(self, trainer, pl_module):
        self.hook.end(trainer.global_step)
