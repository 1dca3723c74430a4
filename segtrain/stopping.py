"""When a segment job stops: a signal, the job's time limit or an absolute deadline coming too
close for the next step's save, or a value that is not finite. Each is decided at a step
boundary, agreed by every process of the job (``segtrain.world``); the job then saves and exits
with ``EXIT_STOPPED``, or, for a NaN, fails before saving it."""

from __future__ import annotations

import logging
import math
import os
import time

from .admission import seconds_to_start_and_save
from .lifecycle import STOP

log = logging.getLogger(__name__)

EXIT_STOPPED = 75  # EX_TEMPFAIL: stopped early on purpose, run again to continue
DEADLINE_ENV = "SEGTRAIN_DEADLINE"  # an absolute end (e.g. a DSRI booking's), ISO 8601


class Stopped(Exception):
    """Training stopped early (deadline or signal) after saving; rerun to continue."""


class NonFinite(RuntimeError):
    """The loss, a metric or the weights became NaN or infinite: training stops before saving it."""


def absolute_deadline() -> float | None:
    """The wall-clock end time from SEGTRAIN_DEADLINE (seconds since the epoch), if set."""
    from datetime import datetime

    text = os.environ.get(DEADLINE_ENV, "").strip()
    if not text:
        return None
    when = datetime.fromisoformat(text)
    if when.tzinfo is None:  # the workflow always writes an offset (segtrain.config.deadline_of)
        raise ValueError(f"{DEADLINE_ENV}={text} has no time zone offset; a job cannot tell which 09:00 "
                         "is meant. Set the config key deadline with an offset, or timezone")
    return when.timestamp()


def job_deadline(deadline: float, clock, save_seconds: float, time=None) -> float:
    """The job's end on ``clock``: its time limit's end ``deadline``, or the absolute deadline if
    that comes first. Raises Stopped when the absolute one leaves too little to start and save."""
    import time as time_mod

    now = (time or time_mod.time)()
    end = absolute_deadline()
    if end is None:
        return deadline
    if end - now < seconds_to_start_and_save(save_seconds):
        raise Stopped(f"the deadline {os.environ[DEADLINE_ENV]} has passed or is too close to train; "
                      "set a later deadline (config key deadline) to continue")
    return min(deadline, clock() + end - now)


def stop_reason(world, time_left: float, upcoming: float, slowest_save: float) -> str | None:
    """Why the job stops before its next step, agreed by every process, or None to go on.

    ``upcoming`` is what the next step may still cost before the job can exit: the slowest save
    and evaluation so far, a background write in flight, and the client's next call (which may
    train several steps); half as much again, and half a second, is kept in hand."""
    why = None
    if STOP:
        why = STOP.reason
    elif time_left < upcoming * 1.5 + 0.5:
        why = f"deadline: {time_left:.1f} s left, a save takes up to {slowest_save:.2f} s"
    return world.agree_reason(why)


AGREEMENT_SHARE = 0.01  # the stop agreement may cost at most this share of training time
MOST_STEPS_BETWEEN_AGREEMENTS = 64


def agreement_interval(agreement_seconds: list[float], step_seconds: float) -> int:
    """Every how many steps several processes agree on a stop: as often as costs at most
    ``AGREEMENT_SHARE`` of the steps' time (the median agreement measured), at most every
    ``MOST_STEPS_BETWEEN_AGREEMENTS``. A stop then waits that many steps at most; the deadline
    check counts them."""
    if not agreement_seconds or step_seconds <= 0:
        return 1
    cost = sorted(agreement_seconds)[len(agreement_seconds) // 2]
    return max(1, min(MOST_STEPS_BETWEEN_AGREEMENTS, math.ceil(cost / (AGREEMENT_SHARE * step_seconds))))


class StopChecks:
    """When a job's processes check for a stop (``stop_reason``): at every step for one process
    (it costs nothing); several agree every ``every`` steps, chosen after ``PROBE_STEPS`` timed
    steps by ``agreement_interval`` and broadcast, so all of them check at the same steps."""

    PROBE_STEPS = 8

    def __init__(self, world):
        self.world, self.every, self.seconds = world, 1, []

    def due(self, done: int) -> bool:
        """Whether the job checks before its step number ``done + 1`` of this attempt."""
        return done % self.every == 0

    def reason(self, time_left: float, upcoming: float, slowest_save: float) -> str | None:
        started = time.perf_counter()
        why = stop_reason(self.world, time_left, upcoming, slowest_save)
        self.seconds.append(time.perf_counter() - started)
        return why

    def probe(self, done: int, train_seconds: float) -> None:
        """After ``done`` steps of this attempt: with several processes, choose how often to check."""
        if self.world.world_size == 1 or done != self.PROBE_STEPS:
            return
        self.every = self.world.broadcast(agreement_interval(self.seconds, train_seconds / done))
        if self.world.is_main:
            log.info("the %d processes agree on a stop every %d step(s) (%.0f us an agreement)",
                     self.world.world_size, self.every, 1e6 * sorted(self.seconds)[len(self.seconds) // 2])


def check_finite(world, row: dict, step: int, newest: int | None) -> None:
    """Raise NonFinite (on every process) when a number in ``row`` is NaN or infinite."""
    bad = {k: v for k, v in row.items() if isinstance(v, float) and not math.isfinite(v)}
    if world.agree(bool(bad)):
        what = ", ".join(f"{k} = {v}" for k, v in bad.items()) or "a value on another process"
        raise NonFinite(
            f"{what} at step {step}: training stopped before saving it; the newest checkpoint (step {newest}) "
            "holds finite values. Lower the learning rate, clip gradients or check the data, then run again"
        )


def check_weights_finite(world, state, step: int) -> None:
    """Raise NonFinite (on every process) when the weights about to be saved are not finite."""
    if world.agree(not state.all_finite()):
        raise NonFinite(f"the weights hold NaN or infinite values after step {step}: training stopped before "
                        "saving them; the newest checkpoint holds finite values. Lower the learning rate, "
                        "clip gradients or check the data, then run again")
