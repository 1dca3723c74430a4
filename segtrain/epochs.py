"""Epoch-shaped scripts: ``seg.epochs(loader)`` and ``seg.batches()`` keep a script's own
structure (a loop over epochs, a loop over the epoch's batches, per-epoch schedulers and tests):

    for epoch in seg.epochs(loader):
        model.train()
        for x, y in seg.batches():             # this epoch's batches that this job trains
            ...                                # forward, backward, optimizer.step()
            seg.log(loss=loss.detach())
        scheduler.step()                       # per epoch, as the official examples write it
        seg.log(**test())                      # joins the row of the epoch's last step

Where a step is an epoch's last, the job saves (and checks for a stop) only after the code that
follows the epoch's batches ran, so a checkpoint there holds the stepped scheduler and a resume
starts the next epoch. A segment that ends inside an epoch ends the job right after that step
(the code after the batches does not run: the next job trains the rest of the epoch); one that
ends at an epoch's end ends it after that code. Only at the run's last step does the loop end
normally, so the script's code after it runs once, at the end of training.
"""

from __future__ import annotations


class SegmentDone(BaseException):
    """Ends a script's job at its segment's end, its output written (not an Exception: a script's
    ``except Exception`` must not swallow it)."""


class EpochLoop:
    """The job's steps as epochs of ``steps_per_epoch`` steps (see the module's text)."""

    def __init__(self, job, steps, batches, steps_per_epoch: int, run_end: int):
        self.job, self.steps, self.source = job, steps, batches
        self.per, self.run_end = steps_per_epoch, run_end
        self.next_step: int | None = None  # the step the job hands out next; None: the segment is trained
        self.ended = False  # the run's last step is trained: the loops end normally

    def epochs(self):
        self.next_step = next(self.steps)
        if self.next_step is None:  # nothing to train in this job (its segment's end was restored)
            self._segment_trained()
            return
        while not self.ended:
            yield (self.next_step - 1) // self.per
            if self.ended:
                return
            # the epoch's last step, after the code that followed its batches: saved, logged, stop checked
            self.next_step = next(self.steps)
            if self.next_step is None:
                self._segment_trained()
                return

    def batches(self):
        if self.next_step is None or self.ended:
            return
        epoch_end = ((self.next_step - 1) // self.per + 1) * self.per
        while True:
            step = self.next_step
            yield next(self.source)
            if step == epoch_end:
                return  # the epoch loop takes the step over once the epoch's own code has run
            self.next_step = next(self.steps)
            if self.next_step is None:  # the segment ends inside the epoch
                self._segment_trained()
                return

    def _segment_trained(self) -> None:
        """Write the segment's output; end the job unless the run itself is trained."""
        next(self.steps, None)
        if self.job is None or self.job.step >= self.run_end:
            self.ended = True
            return
        raise SegmentDone


class Paired:
    """A generator of ``(step, batch)`` (the script alone, the measure job) as the two iterators
    an EpochLoop reads: the steps, then None; the batch of the step handed out last."""

    def __init__(self, pairs):
        self.pairs, self.batch = pairs, None

    def steps(self):
        for step, batch in self.pairs:
            self.batch = batch
            yield step
        yield None

    def batches(self):
        while True:
            yield self.batch
