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
        if self.seg.measuring:
            from .measure import StepMarks

            self._marks = StepMarks(self.seg.run)
        if self.job is not None:
            self.job.restore_once(state, into="the trainer's model")

    @property
    def max_steps(self) -> int:
        """The trainer's max_steps: the run's total (a schedule built from it spans the whole run);
        the job stops the trainer at its segment's end."""
        if self.seg.measuring:
            return self._marks.count
        return self.seg.total_steps

    def start(self, global_step: int) -> bool:
        """The trainer is about to train from ``global_step`` (after its own restore); returns True
        when this job has nothing to train."""
        if self.job is None or self.seg.measuring:
            return False
        if global_step != self.job.step:
            raise RuntimeError(f"the trainer starts at step {global_step} and the job at {self.job.step}: resume "
                               "the trainer from the checkpoint the callback names (see its module's text)")
        if self.job.step > 0:
            log.warning("resumed at step %d from %s; the data position is %s own (not bitwise identical to an "
                        "uninterrupted run unless the trainer skips exactly the batches it has seen)",
                        self.job.step, self.state.restored, self.data_position)
        self._steps = self.job.steps(self.state)
        return self._advance()

    def step_done(self, global_step: int, row: dict) -> bool:
        """An optimizer step ended; returns True when the trainer must stop (the segment is done).
        A stop signal or the deadline saves here and raises Stopped."""
        if self.seg.measuring:
            return self._measure(global_step)
        if self._steps is None or global_step == self.job.step:
            return False  # alone, or an accumulation micro-batch: no optimizer step yet
        self.job.log(row)
        return self._advance()

    def _advance(self) -> bool:
        try:
            next(self._steps)
        except StopIteration:
            return True
        return False

    def _measure(self, global_step: int) -> bool:
        self._marks.mark()
        if global_step >= self.max_steps:
            self.seg._finish_measure(self.state, self._marks.step_times(), {"loss", "lr"}, None, 0,
                                     self.data_position, self._marks.startup)
        return False
