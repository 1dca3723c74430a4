"""The train-segment runner: restore, train to the planned end step, save periodically, stop in time.

``SegmentJob`` is the order of a job's events (open, restore, steps with their saves and
evaluations, stop or finish); which checkpoint it resumes from is ``segtrain.resume``'s, the
metrics log ``segtrain.metrics``'s, the output folder ``segtrain.segment_output``'s. The data
order is a function of the seed and the step, so training continues exactly where the restored
checkpoint left it. A stop request (SIGTERM, SIGUSR1) or the approaching deadline saves at the
next step boundary and exits with EXIT_STOPPED so that the scheduler's retry resumes.
"""

from __future__ import annotations

import errno
import logging
import time
from pathlib import Path

from . import resume
from . import store as store_mod
from .attempts import BEFORE_TRAINING, Ledger
from .definition import keep_sources
from .events import EventFile
from .layout import CHECKPOINT_ROOT_ENV, RunPaths  # noqa: F401  (RunPaths: part of the runner's interface)
from .lifecycle import STOP, StopRequested, process_age
from .metrics import MetricsLog
from .planning import Segment
from .saving import Saves
from .segment_output import write_output
from .settings import RunSettings
from .stopping import (  # noqa: F401  (Stopped, NonFinite, EXIT_STOPPED, DEADLINE_ENV: the runner's interface)
    DEADLINE_ENV,
    EXIT_STOPPED,
    NonFinite,
    StopChecks,
    Stopped,
    check_finite,
    job_deadline,
)
from .training import Training, evaluation_seed, prepare_training  # noqa: F401  (the runner's interface)
from .world import SINGLE
from .world import current as current_world

log = logging.getLogger(__name__)


class SegmentJob:
    """One attempt at one segment: the guarantees of a training job, whoever runs the loop.

    The pipeline's own loop (``run_segment``) and a user's script (``segtrain.session()``) are its
    two clients. It owns the job's clock and deadline, the stop flag, the checkpoint store and its
    lock, the attempts ledger, the metrics log, the restore, the periodic, final, stop and best
    saves, and evaluation at the planned steps. The client owns only the step itself::

        with SegmentJob(run, segment, paths, previous, out_dir) as job:  # lock, ledger; errors recorded
            job.restore(state)                # anything with write_state/read_state/all_finite/...
            for step in job.steps(state):     # checks the stop flag and the deadline first
                job.log(state.train_step())   # what this step computed (tensors are read lazily)
            job.summary                       # the segment's output, written when the loop ended

    A client that trains several steps per call (Keras: one graph call) asks how many it may
    train now, ``count = job.free_steps(limit)``, and hands over each one's outputs with
    ``job.log_steps(rows)``. A stop saves at the next step boundary and raises Stopped.
    """

    def __init__(self, run: RunSettings, segment: Segment, paths: RunPaths, previous: Path | None, out_dir: Path,
                 clock=time.monotonic, job_start: float | None = None, world=None):
        self.run, self.segment, self.paths = run, segment, paths
        self.world = world if world is not None else current_world()
        self.previous, self.out_dir, self.clock = previous, Path(out_dir), clock
        self.started_wall = time.time()
        # The job's clock starts with its process (interpreter and framework start-up count too).
        self.deadline = (clock() - process_age() if job_start is None else job_start) + segment.time_limit
        self.step = self.attempting = segment.start
        self.started = False  # whether this attempt's start record is written
        self.completed = False  # whether this attempt trained its segment to the end (its record written)
        self.timing = {"train_seconds": 0.0, "save_seconds": 0.0, "eval_seconds": 0.0}
        self.saves: Saves | None = None  # the checkpoint writes, once the store is open
        self.evals: list[float] = []
        self.best: dict | None = None
        self.source = ""
        self.summary: dict | None = None
        self.stopped = ""  # why the job stopped early, once it has
        self.data_note = ""  # why the data position of a resume is not exact, if it is not
        self.data_shuffled = False  # a loader of the script's own that draws a new order each pass
        self.data_placeholder = False  # the script's iterable gives None: it draws its batches itself
        self.order = None  # the seeded data order, when the data goes through us
        self.reshards: list[dict] = []  # changes of the number of processes so far (allow_reshard)
        self.edits: list[dict] = []  # accepted edits of the run's code so far (continue_edited)
        self._row: dict = {}
        self._rows: list[dict] | None = None  # the outputs of a call that trained several steps
        self._call_seconds, self._call_steps = 0.0, 1  # the client's last call: its seconds and steps
        # a trainer that logs and evaluates itself (segtrain.trainer_hook) completes a step's row
        # after the step was counted: the row is held until the next one
        self.holds_rows = False
        # set by a trainer's callback: the trainer evaluates after the step just handed over, so a
        # stop waits for the next step (a stop here would end the job before that evaluation,
        # which the resumed trainer does not repeat)
        self.evaluation_follows = False
        self.epoch_steps = 0  # an epoch-shaped script's epoch (segtrain.epochs): its last step logs and judges
        self._held: dict | None = None
        self.store = self.ledger = None

    def open(self) -> None:
        """Check the absolute deadline, catch the stop signals, lock the store, record the launch."""
        # an absolute deadline (e.g. the end of a GPU booking): whichever comes first
        self.deadline = job_deadline(self.deadline, self.clock, self.segment.save_seconds)
        if not STOP.installed:
            STOP.install()
        self.store = store_mod.CheckpointStore(self.paths.store, keep=self.run.keep)
        main = self.world.is_main
        try:
            if main:  # a previous attempt's process may still be saving after its job was declared failed
                self.store.lock(wait=min(self.run.grace_period_seconds, 120.0))
            self.ledger = Ledger(self.paths.attempts, writes=main)
            self.attempt = self.world.broadcast(self.ledger.next_attempt(self.segment.index) if main else None)
            self.ledger.launch(self.segment.index, self.attempt)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            self.ledger = None  # nothing can be recorded
            raise store_mod.StoreError(
                f"no space left in {self.paths.store} to start segment {self.segment.index} (its lock and attempts "
                "record cannot be written); the checkpoints there are intact. Free space (or raise the volume's "
                "size) and run again") from exc
        self.process_start = self.started_wall - process_age()
        self.best_store = store_mod.CheckpointStore(self.paths.best_store, keep=2)
        if main:  # partial writes of a dead attempt; no process of this one writes yet
            self.store.clean_partials()
            self.best_store.clean_partials()
            # the code this attempt runs, kept by content: what a later edit's refusal shows its diff against
            keep_sources(self.run.model_definition or {}, self.paths.store)
        self.world.barrier()
        self.saves = Saves(self.run, self.segment, self.store, self.best_store, self.world)

    @property
    def saved_step(self) -> int | None:
        """The newest checkpoint this attempt can fall back to."""
        return self.saves.saved_step if self.saves is not None else None

    def close(self) -> None:
        try:
            if self.saves is not None:
                self.saves.settle_quietly()  # a write in flight is finished, not cut
        finally:
            if self.store is not None and self.world.is_main:
                self.store.unlock()

    def __enter__(self) -> "SegmentJob":
        try:
            self.open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, kind, exc, tb) -> None:
        """A real error (not a stop, not an interrupt) goes into the ledger; the store is unlocked."""
        try:
            if isinstance(exc, Exception) and not isinstance(exc, Stopped):
                if self.saves is not None:
                    self.saves.settle_quietly()  # the ledger then names the newest complete checkpoint
                self.fail(exc)
        finally:
            self.close()

    def restore_once(self, state, into: str = "the model") -> None:
        """``restore`` for a client that cannot build its state again (a script, Keras ``fit``, a
        trainer): a damaged checkpoint half-loaded into ``into`` ends the job with the reason;
        the next attempt starts from the next usable checkpoint."""
        if not self.restore(state):
            raise RuntimeError(f"a damaged checkpoint was partly loaded into {into} before it failed; it has been "
                               "set aside: run again to start from the next usable one")

    def restore(self, state) -> bool:
        """Load the newest usable checkpoint into ``state`` (or keep its fresh build at step 0).

        Returns False when a damaged checkpoint was half-loaded before it failed: the client must
        then build its state again and call ``restore`` once more."""
        segment = self.segment
        skipped: list[dict] = []
        from .check import await_checkpoint

        await_checkpoint(self.store.root, self.world)  # a resume check's resumed job: its checkpoint to restore
        t_restore = time.perf_counter()
        try:
            with STOP.interrupting():  # a stop during a restore ends the job at once: nothing to save yet
                self.source, self.step, restored, clean, written_by, manifest = resume.restore(
                    self.run, segment, self.store, self.previous, state, skipped, world=self.world)
        except StopRequested as stop:
            # nothing was restored or trained: the attempt starts and ends where the segment stands
            # (its newest checkpoint), so it shows neither progress nor lost work
            stands = max((s for s in self.store.steps() if segment.start < s <= segment.end), default=segment.start)
            self.ledger.start(segment.index, self.attempt, start_time=self.started_wall,
                              process_start_time=self.process_start, train_start_time=time.time(),
                              resumed_from=stands, source="(stopped while restoring)",
                              restore_seconds=time.perf_counter() - t_restore, skipped=skipped)
            self.started = True
            self.ledger.end(segment.index, self.attempt, stands, "stopped", f"{stop} (while restoring)",
                            saved_step=stands, **self.timing)
            self.stopped = (f"segment {segment.index} stopped while restoring its checkpoint ({stop}); "
                            "run again to continue")
            raise Stopped(self.stopped) from None
        if not clean and self.step == 0:
            self._skipped = skipped
            return False
        self.reshards = resume.reshards(restored, self.step, written_by, self.world, script=self.run.is_script)
        self.edits = resume.definition_edits(restored, manifest, self.step, self.run, self.world, self.paths.store)
        self.saves.notes = {**({"resharded": self.reshards} if self.reshards else {}),
                            **({"definition_edits": self.edits} if self.edits else {})}
        best = restored.get("best")
        if best and (best.get("monitor"), best.get("mode")) != (segment.monitor, segment.mode):
            log.info("the best-model criterion changed (%s); best so far starts anew", best)
            best = None
        self.best = best
        restore_seconds = time.perf_counter() - t_restore
        self.metrics = MetricsLog(self.paths.working_metrics(segment.index),
                                  events=EventFile(self.paths.tensorboard, segment.index))
        self.saves.metrics = self.metrics
        lost = self.metrics.resume_at(self.step, segment.start, restored.get("row"), writes=self.world.is_main)
        skipped = getattr(self, "_skipped", []) + skipped
        self.ledger.start(segment.index, self.attempt, start_time=self.started_wall,
                          process_start_time=self.process_start, train_start_time=time.time(),
                          resumed_from=self.step, source=self.source, restore_seconds=restore_seconds,
                          skipped=skipped, **lost,
                          **({"edited": self.edits[-1]} if self.edits and self.edits[-1]["step"] == self.step else {}))
        self.started = True
        self.saves.saved_step = self.step  # the newest checkpoint this attempt can fall back to
        self.attempting = self.step  # a failure before the first step happens where the run stands
        log.info("segment %d attempt %d: starting at step %d from %s; training to step %d, saving every %d steps",
                 segment.index, self.attempt, self.step, self.source, segment.end, segment.interval)
        return True

    def log(self, row: dict) -> None:
        """What the current step computed (loss, metrics; tensors are read only on logging steps)."""
        self._row.update(row)

    def log_steps(self, rows: list[dict | None]) -> None:
        """What each of the several steps trained in this call computed, in order (see ``free_steps``);
        None for a step whose outputs the client never saw (Keras ``fit`` reports only a call's
        last step): it gets no row, and may not save or evaluate."""
        self._rows = list(rows)

    def free_steps(self, limit: int, seconds: float = 1.0) -> int:
        """How many steps, from the one ``steps()`` just yielded, a client may train in one call:
        up to the next step that saves, evaluates or ends the segment (none of those may fall
        inside a call), at most ``limit``, and about ``seconds`` of training at the last call's
        pace, so that the stop flag and the deadline are still checked that often."""
        pace = self._call_seconds / max(self._call_steps, 1)
        by_time = int(seconds / pace) if pace > 0 else 1
        count = max(1, min(limit, by_time, self.next_event() - self.step))
        self._call_steps = count
        return count

    def next_event(self) -> int:
        """The next step after the current one that saves, evaluates or ends the segment: the
        last step a call of several may train."""
        run, segment, done = self.run, self.segment, self.step
        run_end = int(run.total_steps or segment.end)
        events = [segment.end, (done // segment.interval + 1) * segment.interval,
                  (done // segment.eval_every + 1) * segment.eval_every]
        if run_end > done:
            events.append(run_end)
        return min(events)

    def steps(self, state, evaluate=None, after_evaluation=None, hold_finish=False):
        """Yield the number of each step to train (the first is ``restored step + 1``), from the
        restored step to the segment's end; between them: evaluate, save, log, and stop in time.

        ``evaluate()`` returns validation metrics (run on RNG streams of its own);
        ``after_evaluation(row, monitor)`` steps a metric-driven scheduler. ``hold_finish``: yield
        None once the last step is counted, and write the segment's output at the next call (a
        trainer may still evaluate that step)."""
        segment = self.segment
        saves = self.saves
        saves.begin(state)
        t0 = self.clock()
        last_progress = t0
        first_step = self.step
        row: dict = {}
        stops = StopChecks(self.world)  # every step, or every few with several processes (1 % of the time)
        while self.step < segment.end:
            saves.poll()  # a background write that finished counts from now
            # what the next step may still cost: the slowest save and evaluation so far, a
            # background write in flight, and the client's next calls (up to the next check)
            slowest = saves.slowest()
            upcoming = slowest + (slowest if saves.in_flight else 0.0) + max(self.evals, default=0.0) \
                + self._call_seconds * stops.every
            if stops.due(self.step - first_step) and not self.evaluation_follows:
                why = stops.reason(self.deadline - self.clock(), upcoming,
                                   max(saves.blocked, default=segment.save_seconds))
                if why is not None:
                    self._stop(state, why, state.as_numbers(row) if row else row)
            stops.probe(self.step - first_step, self.timing["train_seconds"])
            self.attempting = self.step + 1
            self._row, self._rows = {}, None
            t_step = time.perf_counter()
            yield self.step + 1
            self._call_seconds = time.perf_counter() - t_step
            self.timing["train_seconds"] += self._call_seconds
            raws = self._rows if self._rows is not None else (self._row,)
            now = self.clock()
            report_due = self.world.is_main and now - last_progress >= 10
            for i, raw in enumerate(raws):
                row = self._after_step(state, raw, evaluate, after_evaluation,
                                       read=report_due and i == len(raws) - 1)
            if (report_due or self.step == segment.end) and self.world.is_main:
                rate = (self.step - first_step) / max(now - t0, 1e-9)
                eta = (segment.end - self.step) / rate if rate > 0 else float("inf")
                log.info("step %d/%d loss %s %.1f steps/s, segment ends in %.0f s, deadline in %.0f s",
                         self.step, segment.end, f"{row['loss']:.4f}" if "loss" in row else "(not logged)", rate,
                         eta, self.deadline - now)
                last_progress = now
        if hold_finish:
            yield None
        self._finish()

    def _after_step(self, state, raw: dict, evaluate, after_evaluation, read: bool) -> dict:
        """Count one trained step, whose outputs are ``raw``; evaluate, save and log as its number
        asks. Returns its row: numbers where it was read (``read`` asks for that in any case)."""
        run, segment = self.run, self.segment
        self.step += 1
        step = self.step
        if self.holds_rows and self.world.is_main:
            self._release()  # the step before is complete now (its trainer logged and evaluated): in the
            # log before this step's save, so a kill right after that save cannot lose it
        if raw is None:  # a step inside a call whose outputs only its last step reported
            if step % segment.interval == 0 or step == segment.end or self.evaluates_at(step):
                raise RuntimeError(f"step {step} saves or evaluates, and its outputs were not handed over "
                                   "(a call of several steps must end at it: see next_event)")
            return {}
        # Evaluation runs on RNG streams of its own and at steps fixed by the global step alone
        # (every eval_every steps and the run's last step, not at segment ends), so neither the
        # plan's cut points nor the measured costs can change what training draws.
        evaluating = self.evaluates_at(step)
        save_now = step % segment.interval == 0 or step == segment.end
        logged = self.logs_at(step)
        # The loss is read (a wait for the device) only on the steps that log, save or evaluate;
        # a NaN between them shows at the next one, and no checkpoint ever holds NaN weights.
        if logged:
            # the step's numbers over the whole batch: averaged over the processes' equal shares,
            # so a NaN on one process is one on every process (that is the agreement)
            row = self.world.mean(state.as_numbers(raw))
            check_finite(SINGLE, row, step, self.saved_step)
        elif read:  # for the progress line: this process's clock asked, so no agreement here
            row = state.as_numbers(raw)
        else:
            row = raw
        if evaluating and evaluate is not None:
            t_eval = time.perf_counter()
            with state.isolated_rng(evaluation_seed(run.seed, step)):
                row = {**row, **state.as_numbers(evaluate())}
            self.evals.append(time.perf_counter() - t_eval)
            check_finite(self.world, row, step, self.saved_step)
            self.timing["eval_seconds"] += self.evals[-1]
        if evaluating and after_evaluation is not None:
            if segment.monitor not in row:
                raise ValueError(
                    f"the task's scheduler steps on a metric (ReduceLROnPlateau) and the run monitors "
                    f"'{segment.monitor}', which step {step} did not compute: set validation_split (or give "
                    "the task build_validation), or monitor: loss")
            after_evaluation(row, segment.monitor)
        judging = evaluating or (self.epoch_steps and step % self.epoch_steps == 0)
        new_best = judging and segment.monitor in row and self._better(row[segment.monitor], step)
        if judging and self.world.world_size > 1:  # the main process's judgement, for every process
            self.best, new_best = self.world.broadcast((self.best, new_best))
        seconds = self._save(state, _row(segment, self.attempt, step, row),
                             wait=step == segment.end) if save_now else None
        if new_best:
            self.saves.best(state, self._extra(step), self.best)
        if logged:
            self._record({**_row(segment, self.attempt, step, row),
                          "save_seconds": "" if seconds is None else f"{seconds:.6f}"})
        return row

    def evaluates_at(self, step: int) -> bool:
        """Whether ``step`` evaluates: every eval_every steps and the run's last step."""
        return step % self.segment.eval_every == 0 or step == int(self.run.total_steps or self.segment.end)

    def logs_at(self, step: int) -> bool:
        """Whether ``step`` gets a row in the metrics: it logs (log_every), saves or evaluates."""
        segment = self.segment
        return (step % self.run.log_every == 0 or step % segment.interval == 0 or step == segment.end
                or self.evaluates_at(step) or (self.epoch_steps and step % self.epoch_steps == 0))

    def _better(self, value: float, step: int) -> bool:
        """Whether ``value`` of the monitored metric at ``step`` is the best so far (it then is)."""
        best, segment = self.best, self.segment
        if best is None or (value < best["value"] if segment.mode == "min" else value > best["value"]):
            self.best = {"monitor": segment.monitor, "mode": segment.mode, "value": value, "step": step}
            return True
        return False

    def _record(self, row: dict) -> None:
        """A step's row into the metrics log (the main process's), or held (``holds_rows``)."""
        if not self.world.is_main:
            return
        if self.holds_rows:
            self._release()
            self._held = row
        else:
            self.metrics.append(row)

    def _release(self) -> None:
        if self._held is not None:
            self.metrics.append(self._held)
            self._held = None

    def add_metrics(self, state, metrics: dict, judge: bool = True) -> bool:
        """What a trainer computed itself after the step counted last (its logged training loss,
        its evaluation), by every process: the main process's numbers complete that step's row,
        and the monitored metric among them (``judge``) may make that step the best. Returns
        whether it did. Ignored once the segment's output is written or before training began."""
        if self.summary is not None or not self.started or self.stopped:
            return False
        numbers = self.world.broadcast({k: v for k, v in state.as_numbers(metrics).items()
                                        if isinstance(v, (int, float))})
        step, segment = self.step, self.segment
        if self.world.is_main:
            if self._held is None or int(self._held["step"]) != step:
                self._release()
                self._held = _row(segment, self.attempt, step, {})
            self._held.update(numbers)
        if judge and segment.monitor in numbers and self._better(float(numbers[segment.monitor]), step):
            self.saves.best(state, self._extra(step), self.best)
            return True
        return False

    def _extra(self, step: int) -> dict:
        extra = {"step": step, "segment": self.segment.index, "best": self.best}
        if self.reshards:
            extra["reshards"] = self.reshards
        if self.edits:
            extra["definition_edits"] = self.edits
        if self.order is not None:
            pos = self.order.position(step)
            extra.update(epoch=pos.epoch, index=pos.index)
        return extra

    def _save(self, state, row: dict, wait: bool = True) -> float:
        """Save the state after the current step, with its metrics ``row``; returns the seconds
        training was blocked (``segtrain.saving``)."""
        extra = {**self._extra(self.step), "row": row}
        position = {k: extra[k] for k in ("epoch", "index") if k in extra}
        seconds = self.saves.save(state, self.step, extra, position or self.data_note or "not ours", wait=wait)
        self.timing["save_seconds"] += seconds
        return seconds

    def _stop(self, state, why: str, row: dict):
        step = self.step
        if self.world.is_main:
            self._release()
        self.saves.settle()  # a write in flight completes first (it may be this very step's)
        if step > self.segment.start and not self.world.broadcast(self.store.path(step).exists()):
            logged = _row(self.segment, self.attempt, step, row)
            seconds = self._save(state, logged)
            if self.world.is_main:
                self.metrics.log_step({**logged, "save_seconds": f"{seconds:.6f}"})
        self.ledger.end(self.segment.index, self.attempt, step, "stopped", why, saved_step=self.saved_step,
                        **self.timing)
        self.stopped = f"segment {self.segment.index} stopped at step {step} ({why}); run again to continue"
        raise Stopped(self.stopped)

    def _finish(self) -> None:
        segment = self.segment
        if self.world.is_main:
            self._release()
        final = self.store.path(segment.end)
        store_mod.verify(final)
        self.ledger.end(segment.index, self.attempt, self.step, "completed", "", saved_step=segment.end,
                        **self.timing)
        self.completed = True
        if self.world.is_main:  # the others' view of the best may predate the main one's link to it
            history = self.ledger.records(segment.index)
            best_ckpt = self.best_store.newest_valid(max_step=segment.end)
            if self.best is not None and (best_ckpt is None or best_ckpt.step != self.best["step"]):
                log.warning("the best checkpoint (%s %s at step %s) does not verify; the segment keeps %s",
                            self.best["monitor"], self.best["value"], self.best["step"],
                            f"the best one that does (step {best_ckpt.step})" if best_ckpt else "no best checkpoint")
            self.summary = write_output(segment, final, self.metrics, self.out_dir, self.source, self.attempt,
                                         self.saves.blocked, self.started_wall, history, best_ckpt, self.saves.log,
                                         data=self.data_note,
                                         data_shuffled=self.data_shuffled, data_placeholder=self.data_placeholder)
        self.summary = self.world.broadcast(self.summary)  # the output is complete, for every process

    def fail(self, exc: BaseException) -> None:
        """Record a real error with the step it happened at, so the workflow can tell a repeating
        failure (not worth another attempt) from one that moved on."""
        if self.ledger is None:
            return
        if not self.started:
            self.ledger.start(self.segment.index, self.attempt, start_time=self.started_wall,
                              process_start_time=self.process_start, train_start_time=time.time(),
                              resumed_from=self.step, source=BEFORE_TRAINING, restore_seconds=0.0,
                              skipped=[])
        reason = f"{type(exc).__name__}: {exc}".strip()
        more = {}
        if self.completed:  # the segment trained to its end; the job failed after that
            reason = f"after the segment's training completed at step {self.step}: {reason}"
            more["supersedes"] = "completed"  # the attempt's status is its last end record (attempts_of)
        self.ledger.end(self.segment.index, self.attempt, self.attempting, "error", reason[:2000],
                        saved_step=self.saved_step if self.saved_step is not None else self.step, **self.timing,
                        **more)


def run_segment(
    run: RunSettings,
    segment: Segment,
    paths: RunPaths,
    previous: Path | None,
    out_dir: Path,
    backend_factory=None,
    clock=time.monotonic,
    job_start: float | None = None,
) -> dict:
    """Train ``segment`` of ``run`` with the pipeline's own loop and write its output folder;
    returns the segment summary. Raises Stopped after saving when a signal or the deadline stops
    training early."""
    with SegmentJob(run, segment, paths, previous, out_dir, clock=clock, job_start=job_start) as job:
        training = prepare_training(run, backend_factory)
        if not job.restore(training.backend):  # a damaged checkpoint got half-loaded: build afresh
            training = prepare_training(run, backend_factory)
            job.restore(training.backend)
        backend, job.order = training.backend, training.order
        evaluate = None
        if training.has_validation:
            def evaluate():
                return backend.evaluate(training.validation_indices, run.batch_size)
        batches = backend.batches(training.order, job.step, segment.end)  # fetched ahead by workers, if any
        per_call = backend.steps_per_call
        for _step in job.steps(backend, evaluate=evaluate,
                               after_evaluation=backend.after_evaluation if backend.steps_on_metric else None):
            if per_call > 1:  # one call trains the steps up to the next save or evaluation
                count = job.free_steps(per_call)
                job.log_steps(backend.train_steps([next(batches) for _ in range(count)]))
            else:
                job.log(backend.train_step(next(batches)))
        return job.summary


def _row(segment, attempt, step, train_row) -> dict:
    return {"segment": segment.index, "attempt": attempt, "step": step, **train_row, "time": time.time()}


