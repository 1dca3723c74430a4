"""A Hugging Face ``Trainer`` callback: the planned interval, the deadline stop, the verified store
and the resume path for a ``Trainer`` script (``script: train.py`` in a run of the config).

    import segtrain.huggingface

    checkpoints = segtrain.huggingface.Checkpoints()
    args = TrainingArguments(output_dir="out", max_steps=checkpoints.max_steps, save_strategy="no", ...)
    trainer = Trainer(model=model, args=args, train_dataset=train, callbacks=[checkpoints])
    checkpoints.train(trainer)             # instead of trainer.train(): resumes from the newest checkpoint

Each optimizer step is handed to the job: at the planned interval it saves the Trainer's own
checkpoint layout (weights as safetensors, optimizer, scheduler, scaler, RNG states and
``trainer_state.json``) inside this project's atomic, verified store; it stops at the segment's
end (``max_steps`` stays the run's total, so the learning-rate schedule is the whole run's), and
on a stop signal or near the deadline saves at the next step and ends the job for a retry. The
Trainer resumes from that folder itself (``resume_from_checkpoint``; it loads with
``weights_only=True``) and skips the data it has already seen in the epoch.

With ``processes`` (and ``nodes``) above 1 the pipeline starts the script under torchrun and the
Trainer trains with DDP in the job's process group: its main process writes the model, optimizer,
scheduler and ``trainer_state.json``, every process its RNG states (``rng_state_<rank>.pth``); the
stop is agreed by all processes at a step.

The metrics: the Trainer is asked to log at the run's ``log_every`` (and at saves and the run's
evaluation steps), whatever its ``logging_steps``: its training loss, averaged since its last
log, joins that step's row. Its evaluations (``eval_strategy``, ``compute_metrics``) join the row
of the step they followed, without their timings, so ``monitor: eval_loss`` (or
``eval_accuracy``, mode max) picks the best checkpoint (``model.best.*``).

What holds: the interval, the deadline and signal stops and the step count are exact; the data
position is the Trainer's own (it skips the batches it has seen, and restores its RNG states).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from transformers import TrainerCallback

from .checkpointing import as_numbers
from .script import finite
from .trainer_hook import TrainerHook

EXTRA = "segtrain.json"


class _TrainerState:
    """What the job saves and restores: the Trainer's checkpoint files, and the job's extra."""

    state_format = "huggingface"
    verified_reads = ()  # the Trainer reads its files itself: verified whole before

    def __init__(self):
        self.trainer = None
        self.restored: Path | None = None

    def write_state(self, folder: Path, extra: dict) -> None:
        trainer, folder = self.trainer, str(folder)
        trainer.save_model(folder)
        Path(folder, "training_args.bin").unlink(missing_ok=True)  # a pickle: never loaded on resume, not kept
        # The Trainer's own writers (private, stable across 4.x and 5.x): the layout its resume reads
        trainer._save_optimizer_and_scheduler(folder)
        trainer._save_scaler(folder)
        trainer._save_rng_state(folder)
        if trainer.args.should_save:  # the main process (the writers above check it themselves)
            trainer.state.save_to_json(os.path.join(folder, "trainer_state.json"))
            Path(folder, EXTRA).write_text(json.dumps(extra))

    def read_state(self, folder: Path) -> dict:
        import torch

        for name in ("optimizer.pt", "scheduler.pt"):  # what the Trainer will load, refused here if it needs unpickling
            if (Path(folder) / name).exists():
                torch.load(Path(folder) / name, map_location="cpu", weights_only=True)
        self.restored = Path(folder)
        return json.loads((Path(folder) / EXTRA).read_text())

    def all_finite(self) -> bool:
        return finite([self.trainer.model])

    as_numbers = staticmethod(as_numbers)


def _world_fix(args) -> str:
    """Why the Trainer trains in another number of processes than the job's, in its own terms."""
    import torch

    if not torch.cuda.is_available() and not getattr(args, "use_cpu", False):
        return ("on a machine without CUDA the Trainer joins torchrun's processes only with use_cpu=True: give "
                "TrainingArguments(use_cpu=True, ...)")
    return ("the Trainer takes its processes from torchrun, which the pipeline starts; keep TrainingArguments' "
            "parallelism settings at their defaults")


class Checkpoints(TrainerCallback):
    """Hands each optimizer step to the pipeline's job (see the module's text)."""

    def __init__(self):
        self.state = _TrainerState()
        self.hook = TrainerHook(self.state, "the Trainer's")
        self.max_steps = self.hook.max_steps
        self._ended_segment = False

    @property
    def finished(self) -> bool:
        """True once the run is trained to its end (the job of its last segment, after train):
        code after ``trainer.train()`` runs at the end of every segment's job, and what should run
        once (``trainer.evaluate``, ``predict``, ``save_model``) checks ``if checkpoints.finished:``."""
        return self.hook.finished

    def train(self, trainer, **kwargs):
        """``trainer.train``, resumed from the newest verified checkpoint of this segment's chain."""
        self.state.trainer = trainer
        restored = self.state.restored
        return trainer.train(resume_from_checkpoint=str(restored) if restored else None, **kwargs)

    def on_train_begin(self, args, state, control, **kwargs):
        if self.state.trainer is None:
            raise RuntimeError("call checkpoints.train(trainer) instead of trainer.train(): it resumes the run")
        own = None
        if args.max_steps != self.max_steps:  # the Trainer's own limit: num_train_epochs, or a max_steps of its own
            own = (int(state.max_steps), f"the Trainer's max_steps={args.max_steps}" if args.max_steps > 0 else
                   f"the Trainer's num_train_epochs={args.num_train_epochs:g}")
        if self.hook.start(state.global_step, args.world_size, _world_fix(args), length=own):
            control.should_training_stop = self._ended_segment = True

    def on_step_end(self, args, state, control, **kwargs):
        if self.hook.logs_now(state.global_step):
            control.should_log = True  # the loss at the run's log_every, whatever logging_steps says
        row = {"lr": self.state.trainer.optimizer.param_groups[0]["lr"]}
        ends_epoch = abs(state.epoch - round(state.epoch)) < 1e-6
        evaluates = bool(control.should_evaluate) or (str(getattr(args.eval_strategy, "value", args.eval_strategy))
                                                       == "epoch" and ends_epoch)
        if self.hook.step_done(state.global_step, row, evaluation_follows=evaluates):
            control.should_training_stop = True
            self._ended_segment = state.global_step < self.max_steps  # the run's end is the Trainer's own

    def on_epoch_end(self, args, state, control, **kwargs):
        # a segment's end inside an epoch is not the epoch's end: no epoch-end evaluation (nor
        # log, nor save) that an uninterrupted run would not do there (at the run's last step the
        # Trainer evaluates as it would without the callback)
        if self._ended_segment and abs(state.epoch - round(state.epoch)) > 1e-6:
            control.should_evaluate = control.should_log = control.should_save = False

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:  # the training loss averaged since the Trainer's last log
            self.hook.metrics({"loss": logs["loss"]}, evaluation=False)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        values = {k: v for k, v in (metrics or {}).items()
                  if k.startswith("eval_") and not k.endswith(TIMINGS)}
        self.hook.metrics(values, evaluation=True)

    def on_train_end(self, args, state, control, **kwargs):
        self.hook.end(state.global_step)


TIMINGS = ("_runtime", "_samples_per_second", "_steps_per_second")  # of the evaluation: not metrics
