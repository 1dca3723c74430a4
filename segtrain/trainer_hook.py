"""The job's side of a framework trainer's callback (segtrain.lightning, segtrain.huggingface):
the trainer keeps its own loop, logging and validation; the hook restores before it starts, hands
each optimizer step to the segment's job and times a measure job."""

from __future__ import annotations

import logging

from .script import session

log = logging.getLogger(__name__)


class TrainerHook:
    """The job's side of a framework's trainer callback (segtrain.lightning, segtrain.huggingface):
    restore before the trainer starts, hand each optimizer step to the job, time a measure job.
    ``state`` saves and restores the framework's own checkpoint; ``data_position`` names who owns
    the data position (for the plan)."""

    def __init__(self, state, data_position: str):
        self.seg = session()
        self.state, self.data_position = state, data_position
        self.job = self.seg._job
        self._steps = None
        self.trained = False  # the job's segment is trained (its output is written at the trainer's end)
        self.metric_names: set[str] = set()  # what the trainer computed itself (for the measure job)
        if self.seg.measuring:
            from .measure import StepMarks

            self._marks = StepMarks(self.seg.run)
        if self.job is not None:
            self.job.restore_once(state, into="the trainer's model")

    @property
    def finished(self) -> bool:
        """Whether the run is trained to its end in this process: its last segment's job once the
        trainer ended, or a script run alone; never in the measure job. Code after the trainer's
        ``fit`` runs at the end of every segment's job; what should run once checks this."""
        if self.seg.measuring:
            return False
        if self.job is None:
            return True
        return self.trained and self.job.segment.end >= self.seg.total_steps

    @property
    def max_steps(self) -> int:
        """The trainer's max_steps: the run's total (a schedule built from it spans the whole run);
        the job stops the trainer at its segment's end."""
        if self.seg.measuring:
            return self._marks.count
        return self.seg.total_steps

    def start(self, global_step: int, trainer_world: int, how: str, length: tuple[int, str] | None = None) -> bool:
        """The trainer is about to train from ``global_step`` (after its own restore) in
        ``trainer_world`` processes; returns True when this job has nothing to train. ``how`` says
        how the trainer is told the job's processes. ``length``: the steps the trainer's own limits
        train and how they are set, None when its limit is the callback's ``max_steps``."""
        world = self.seg.world.world_size
        if trainer_world != world:
            raise RuntimeError(f"the trainer trains in {trainer_world} process(es) and the job runs {world} (the run's "
                               f"processes x nodes): {how}")
        if length is not None:
            self.seg._run_length(length[0], f"{length[1]} trains {length[0]} steps",
                                 fix="give the trainer max_steps=checkpoints.max_steps")
        elif self.seg.measuring and not self.seg.run.total_steps:
            raise ValueError(f"the config leaves the run's total_steps out, and {self.data_position} trainer's "
                             "max_steps is checkpoints.max_steps (the run's length): set total_steps in the config, "
                             "or leave max_steps out and let the trainer's own epochs give the run's length")
        if self.job is None or self.seg.measuring:
            return False
        if global_step != self.job.step:
            raise RuntimeError(f"the trainer starts at step {global_step} and the job at {self.job.step}: resume "
                               "the trainer from the checkpoint the callback names (see its module's text)")
        if self.job.step > 0 and self.data_position != "segtrain":
            log.warning("resumed at step %d from %s; the data position is %s own (not bitwise identical to an "
                        "uninterrupted run unless the trainer skips exactly the batches it has seen)",
                        self.job.step, self.state.restored, self.data_position)
        self.job.holds_rows = True  # the trainer's own numbers for a step come after the step
        self._steps = self.job.steps(self.state, hold_finish=True)
        return self._advance()

    def step_done(self, global_step: int, row: dict, evaluation_follows: bool = False) -> bool:
        """An optimizer step ended; returns True when the trainer must stop (the segment is done).
        A stop signal or the deadline saves here and raises Stopped, unless the trainer evaluates
        after this step (``evaluation_follows``): then at the next step."""
        if self.seg.measuring:
            return self._measure(global_step)
        if self._steps is None or global_step == self.job.step:
            return False  # alone, or an accumulation micro-batch: no optimizer step yet
        self.job.log(row)
        self.job.evaluation_follows = evaluation_follows
        return self._advance()

    def metrics(self, values: dict, evaluation: bool) -> None:
        """What the trainer computed itself for the step handed last (its logged loss, its
        evaluation's metrics), on every process: into that step's row; an evaluation's monitored
        metric may make the step the best (a logged loss does at the run's evaluation steps)."""
        self.metric_names |= set(values)
        if self._steps is None or self.seg.measuring or not values:
            return
        judge = evaluation or self.job.evaluates_at(self.job.step)
        self.job.add_metrics(self.state, values, judge=judge)

    def logs_now(self, global_step: int) -> bool:
        """Whether the job records a row for ``global_step`` (its log_every, saves, evaluations):
        the trainer is asked to log its loss there."""
        return self._steps is not None and not self.seg.measuring and self.job.logs_at(global_step)

    def end(self, global_step: int) -> None:
        """The trainer ended (its own train-end hook): the segment's output is written, or, when
        the trainer stopped before the segment's end, the job fails with the reason."""
        if self._steps is None or self.seg.measuring:
            return
        if not self.trained:
            segment = self.job.segment
            raise RuntimeError(
                f"the trainer ended at step {global_step}, before segment {segment.index}'s end step {segment.end}: "
                f"its own limit (max_epochs or num_train_epochs, max_time, early stopping) ended training before the "
                f"run's total_steps {self.seg.total_steps}; set the run's total_steps to the steps the trainer trains, "
                "or leave its limit to the callback's max_steps")
        try:
            next(self._steps)
        except StopIteration:
            pass
        self._steps = None
        if not self.finished and self.seg.world.is_main:
            segment = self.job.segment
            text = (f"segment {segment.index} ended at step {segment.end} of {self.seg.total_steps}: the script's "
                    "code after the trainer's fit() runs now, at the end of this job, on the weights of this step; "
                    "what should run once, on the trained model (test, predict, an export), checks "
                    "`if checkpoints.finished:`")
            log.warning("%s", text)
            print(f"segtrain: {text}", flush=True)

    def _advance(self) -> bool:
        try:
            step = next(self._steps)
        except StopIteration:  # a job with nothing to train (its segment's end was restored)
            self.trained = True
            return True
        if step is None:
            self.trained = True
            return True
        return False

    def _measure(self, global_step: int) -> bool:
        self._marks.mark()
        if global_step >= self.max_steps:
            self.seg._finish_measure(self.state, self._marks.step_times(), {"loss", "lr"} | self.metric_names, None,
                                     0, self.data_position, self._marks.startup, evaluates="the trainer")
        return False
