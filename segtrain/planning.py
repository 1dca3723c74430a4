"""Planning math: how often to save a checkpoint, how many steps fit in one job, how many jobs.

Everything here is plain arithmetic on measured costs, so it is tested without any framework.
The overhead formula is the one on the DSRI checkpointing page: for a training of TT seconds with
one checkpoint every z seconds that takes y seconds to save, NCP = TT / z, TTSC = NCP * y and
overhead = TTSC / TT * 100 %, which simplifies to 100 * y / z.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

from .overhead import Overhead, PlanError, daly_interval, interval_for_overhead, overhead, young_interval


@dataclass(frozen=True)
class Costs:
    """What one step and one checkpoint cost, as measured on the run's own storage."""

    step_seconds: float
    save_seconds: float
    load_seconds: float = 0.0
    startup_seconds: float = 0.0
    checkpoint_bytes: int = 0
    save_seconds_max: float = 0.0  # the slowest measured save: what must fit in a grace period
    steps_per_epoch: int = 0  # training samples // batch size, for intervals given in epochs
    eval_seconds: float = 0.0  # one evaluation on the validation data
    snapshot_seconds: float = 0.0  # an asynchronous save's blocking part: the copy to host memory (0: none)
    persist_seconds: float = 0.0  # its background part: write, fsync, rename

    @classmethod
    def from_dict(cls, data: dict) -> "Costs":
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass(frozen=True)
class Policy:
    """How the checkpoint interval is chosen: exactly one of the four fields is set."""

    every_seconds: float | None = None
    every_steps: int | None = None
    every_epochs: float | None = None
    max_overhead_percent: float | None = None
    mtbf_seconds: float | None = None

    def __post_init__(self):
        chosen = [k for k, v in asdict(self).items() if v is not None]
        if len(chosen) != 1:
            raise PlanError(
                "checkpoint policy: set exactly one of every (a duration), every_steps, every_epochs, "
                f"max_overhead or mtbf; got {chosen or 'none'}"
            )

    @property
    def kind(self) -> str:
        return next(k for k, v in asdict(self).items() if v is not None)


@dataclass
class Segment:
    """One train-segment job: trains steps (start, end], saving every ``interval`` steps."""

    index: int
    start: int
    end: int
    interval: int
    time_limit: float
    save_seconds: float = 0.0  # measured save time, for the deadline guard
    keep: int = 2
    log_every: int = 10
    eval_every: int = 0  # evaluate every this many steps (0: at every checkpoint) and at the end
    monitor: str = "val_loss"  # the metric that picks the best checkpoint
    mode: str = "min"
    async_save: bool = False  # periodic saves write in the background (async_save: auto chose it)

    def __post_init__(self):
        if not self.eval_every:
            self.eval_every = self.interval


@dataclass(frozen=True)
class JobOverhead:
    """Where the planned jobs' time goes: everything that is not a training step is overhead.

    The DSRI formula counts the saves only; a job also starts up (interpreter, framework, task,
    first step), restores its checkpoint and evaluates. ``percent`` is all of that over the jobs'
    whole time, the figure a researcher pays for in GPU hours."""

    jobs: int
    startup_seconds: float  # all jobs together
    restore_seconds: float
    save_seconds: float
    eval_seconds: float
    train_seconds: float
    total_seconds: float
    percent: float


def job_overhead(segments: list, costs: Costs, last_save: float = 0.0) -> JobOverhead:
    """Start-up, restores, saves and evaluations of ``segments``, against their whole predicted
    time (``costs.save_seconds``: what a periodic save blocks; ``last_save``: what a job's last
    save costs beyond that)."""
    startup = restore = save = evals = train = 0.0
    for seg in segments:
        steps = seg.end - seg.start
        startup += costs.startup_seconds
        restore += costs.load_seconds if seg.start > 0 else 0.0
        save += math.ceil(steps / seg.interval) * costs.save_seconds + last_save
        n_evals = math.ceil(steps / seg.eval_every) if seg.eval_every else math.ceil(steps / seg.interval)
        evals += n_evals * costs.eval_seconds
        train += steps * costs.step_seconds
    total = startup + restore + save + evals + train
    pct = 100.0 * (total - train) / total if total > 0 else 0.0
    return JobOverhead(len(segments), startup, restore, save, evals, train, total, pct)


def check_startup_share(time_limit: float, costs: Costs, max_percent: float) -> None:
    """Refuse a time limit where starting a job (and restoring its checkpoint) takes more than
    ``max_percent`` of it: such a plan would be thousands of jobs that mostly start up."""
    restart = costs.startup_seconds + costs.load_seconds
    share = 100.0 * restart / time_limit
    if share > max_percent:
        raise PlanError(
            f"time_limit {time_limit:g} s: start-up {costs.startup_seconds:.3g} s + restore "
            f"{costs.load_seconds:.3g} s would take {share:.0f} % of every job, more than max_startup_share "
            f"{max_percent:g} %. Raise time_limit to at least {100 * restart / max_percent:.3g} s, or raise "
            "max_startup_share. If the start-up was measured on a busy machine, measure again: "
            "snakemake --forcerun measure_checkpoint_cost (finished segments are kept)"
        )


@dataclass
class Plan:
    """A whole run's plan; ``to_dict`` is what plan.json holds."""

    total_steps: int
    time_limit: float
    margin_seconds: float
    costs: Costs
    policy: str
    interval_steps: int
    interval_seconds: float
    reason: str
    steps_per_segment: int
    segment_seconds: float
    segments: list[Segment] = field(default_factory=list)
    overhead: Overhead | None = None
    jobs: JobOverhead | None = None  # start-up, restores, saves and evaluations of the planned jobs
    max_startup_percent: float = 100.0
    young_seconds: float | None = None
    daly_seconds: float | None = None
    lost_mean_seconds: float = 0.0
    lost_max_seconds: float = 0.0
    frozen_segments: int = 0
    warnings: list[str] = field(default_factory=list)
    async_save: bool = False  # periodic saves write in the background
    blocking_seconds: float = 0.0  # what one periodic save blocks training: the formula's y

    def to_dict(self) -> dict:
        return asdict(self)


def background_saves(costs: Costs, wanted) -> bool:
    """Whether periodic saves go to the background: ``wanted`` True or False, or 'auto': when the
    state can be snapshotted and the copy takes under half of a synchronous save (for tiny states
    a thread and a second copy cost more than they save)."""
    if costs.snapshot_seconds <= 0:
        return False
    if wanted == "auto":
        return costs.snapshot_seconds < 0.5 * costs.save_seconds
    return bool(wanted)


def _interval_steps(policy: Policy, costs: Costs) -> tuple[int, str, float | None, float | None]:
    step, save = costs.step_seconds, costs.save_seconds
    young = daly = None
    if policy.every_steps is not None:
        return policy.every_steps, f"fixed: every {policy.every_steps} steps", None, None
    if policy.every_epochs is not None:
        if costs.steps_per_epoch < 1:
            raise PlanError("checkpoint.every_epochs needs the steps per epoch, which the costs do not give")
        steps = max(1, round(policy.every_epochs * costs.steps_per_epoch))
        return steps, (f"fixed: every {policy.every_epochs:g} epochs = {policy.every_epochs:g} * "
                       f"{costs.steps_per_epoch} steps"), None, None
    if policy.every_seconds is not None:
        steps = max(1, math.floor(policy.every_seconds / step))
        return steps, f"fixed: every {policy.every_seconds:g} s of training", None, None
    if policy.max_overhead_percent is not None:
        z = interval_for_overhead(save, policy.max_overhead_percent)
        steps = max(1, math.ceil(z / step))
        return steps, (
            f"max overhead {policy.max_overhead_percent:g} %: z = 100 * y / p = "
            f"100 * {save:.4g} s / {policy.max_overhead_percent:g} = {z:.4g} s"
        ), None, None
    m = policy.mtbf_seconds
    young, daly = young_interval(save, m), daly_interval(save, m)
    steps = max(1, round(daly / step))
    return steps, (
        f"Young/Daly for a mean time between failures of {m:g} s: Young sqrt(2CM) = {young:.4g} s, "
        f"Daly = {daly:.4g} s (used)"
    ), young, daly


def segment_seconds(steps: int, interval: int, costs: Costs, eval_every: int = 0) -> float:
    """Predicted wall time of a segment of ``steps`` steps: start-up, restore, steps, saves and
    evaluations (at every checkpoint unless ``eval_every`` says otherwise)."""
    saves = math.ceil(steps / interval)
    evals = math.ceil(steps / eval_every) if eval_every else saves
    return (costs.startup_seconds + costs.load_seconds + steps * costs.step_seconds
            + saves * costs.save_seconds + evals * costs.eval_seconds)


def max_steps_per_segment(
    time_limit: float, margin: float, interval: int, costs: Costs, eval_every: int = 0
) -> tuple[int, int]:
    """The most steps one job can take, and the interval clipped to it.

    Segments are whole multiples of the interval when at least one interval fits, so segment ends
    and periodic checkpoints coincide.
    """
    usable = time_limit - margin - costs.startup_seconds - costs.load_seconds
    evals_per_block = interval / eval_every if eval_every else 1
    block = interval * costs.step_seconds + costs.save_seconds + evals_per_block * costs.eval_seconds
    blocks = math.floor(usable / block) if usable > 0 else 0
    if blocks >= 1:
        return blocks * interval, interval
    steps = math.floor((usable - costs.save_seconds - costs.eval_seconds) / costs.step_seconds) if usable > 0 else 0
    if steps < 1:
        need = costs.startup_seconds + costs.load_seconds + costs.step_seconds + costs.save_seconds + margin
        raise PlanError(
            f"time_limit {time_limit:g} s is shorter than one step plus one save: start-up "
            f"{costs.startup_seconds:.3g} s + restore {costs.load_seconds:.3g} s + step "
            f"{costs.step_seconds:.3g} s + save {costs.save_seconds:.3g} s + margin {margin:.3g} s = "
            f"{need:.3g} s; raise time_limit or lower safety_margin (or, if the costs were measured on a busy "
            "machine, measure again: snakemake --forcerun measure_checkpoint_cost)"
        )
    return steps, steps


# More segments than this is a typo, not a training (100,000 jobs of a day each: 270 years); the plan,
# the DAG and every input function grow with the count, so it is refused before any is built.
MAX_SEGMENTS = 100_000


def make_plan(
    *,
    total_steps: int,
    time_limit: float,
    costs: Costs,
    policy: Policy,
    margin_seconds: float = 0.0,
    steps_per_segment: int | None = None,
    frozen: list[Segment] | None = None,
    keep: int = 2,
    log_every: int = 10,
    grace_seconds: float | None = None,
    eval_every: int = 0,
    monitor: str = "val_loss",
    mode: str = "min",
    max_startup_percent: float = 100.0,
    async_save="auto",
) -> Plan:
    """Plan a run; ``frozen`` segments (already trained) are kept exactly as they were.

    With background saves, y (what a periodic save blocks training) is the snapshot's time: the
    interval, the overhead and the steps per job use it. Each segment's last save is written in
    full, so one synchronous save per job is added to its time. A write slower than the interval
    would make the next save wait for it, so a derived interval is at least one write long."""
    if total_steps < 1:
        raise PlanError(f"total_steps must be at least 1, got {total_steps}")
    if costs.step_seconds <= 0:
        raise PlanError("the measured step time must be positive")
    check_startup_share(time_limit, costs, max_startup_percent)
    warnings = []
    background = background_saves(costs, async_save)
    if async_save is True and not background:
        warnings.append("async_save is true but this state takes no snapshots: its saves are synchronous")
    full_save, measured = costs.save_seconds, costs
    if background:
        costs = replace(costs, save_seconds=costs.snapshot_seconds)
    last_save = full_save - costs.save_seconds  # a job's last save blocks for the whole write
    interval, reason, young, daly = _interval_steps(policy, costs)
    if background and interval * costs.step_seconds < costs.persist_seconds:
        shortest = math.ceil(costs.persist_seconds / costs.step_seconds)
        if policy.kind in ("max_overhead_percent", "mtbf_seconds"):
            reason += (f"; raised from {interval} to {shortest} steps: a background write takes "
                       f"{costs.persist_seconds:.3g} s, and a save before it ends would wait for it")
            interval = shortest
        else:
            warnings.append(
                f"the interval ({interval} steps = {interval * costs.step_seconds:.3g} s) is shorter than a "
                f"background write ({costs.persist_seconds:.3g} s): each save waits for the previous one to "
                f"finish. An interval of at least {shortest} steps avoids that")
    fit, fit_interval = max_steps_per_segment(time_limit, margin_seconds + last_save, interval, costs, eval_every)
    if steps_per_segment is not None:
        per_segment = steps_per_segment
        interval = min(interval, per_segment)
        need = segment_seconds(per_segment, interval, costs, eval_every) + last_save + margin_seconds
        if need > time_limit:
            raise PlanError(
                f"steps_per_segment {per_segment} needs about {need:.3g} s per job (measured costs "
                f"plus margin) but time_limit is {time_limit:g} s; lower steps_per_segment to at most "
                f"{fit} or set it to auto"
            )
    else:
        per_segment, interval = fit, fit_interval
    interval = min(interval, total_steps)

    segments = [Segment(**vars(s)) if not isinstance(s, Segment) else s for s in (frozen or [])]
    done = segments[-1].end if segments else 0
    if done > total_steps:
        raise PlanError(
            f"total_steps {total_steps} is below the {done} steps this run has already trained; "
            "raise total_steps, or give the run a new name to start over"
        )
    count = len(segments) + math.ceil((total_steps - done) / per_segment)
    if count > MAX_SEGMENTS:
        raise PlanError(
            f"total_steps {total_steps} in segments of {per_segment} steps makes {count:,} jobs, more than "
            f"{MAX_SEGMENTS:,}: check total_steps for a typo, or raise steps_per_segment (or time_limit)"
        )
    start = done
    while start < total_steps:
        end = min(start + per_segment, total_steps)
        segments.append(
            Segment(len(segments), start, end, min(interval, end - start), time_limit,
                    full_save, keep, log_every, eval_every, monitor, mode, background)
        )
        start = end

    step = costs.step_seconds
    interval_seconds = interval * step
    ovh = overhead(total_steps * step, costs.save_seconds, interval_seconds)
    restart = costs.startup_seconds + costs.load_seconds
    slowest = max(full_save, costs.save_seconds_max)  # a stop's save is written in full
    if grace_seconds is not None and slowest > 0.5 * grace_seconds:
        warnings.append(
            f"a save takes up to {slowest:.3g} s but the platform's grace period between SIGTERM and "
            f"SIGKILL is {grace_seconds:g} s: a stop signal may kill the save and lose up to one interval. "
            "Raise the grace period (terminationGracePeriodSeconds, SLURM KillWait) or rely on the "
            "deadline guard, which stops before the time limit"
        )
    if ovh.percent > 10:
        warnings.append(
            f"checkpointing costs {ovh.percent:.1f} % of the training time; consider a longer interval"
        )
    new = segments[len(frozen or []):]
    jobs = job_overhead(new, costs, last_save)
    if new and jobs.startup_seconds > 0.5 * jobs.total_seconds:
        warnings.append(
            f"start-up takes {100 * jobs.startup_seconds / jobs.total_seconds:.0f} % of the planned jobs' time: "
            + ("steps_per_segment makes short jobs; 'auto' fills each job up to time_limit"
               if steps_per_segment is not None else "raise time_limit")
        )
    return Plan(
        total_steps=total_steps,
        time_limit=time_limit,
        margin_seconds=margin_seconds,
        costs=measured,
        policy=policy.kind,
        interval_steps=interval,
        interval_seconds=interval_seconds,
        reason=reason,
        steps_per_segment=per_segment,
        segment_seconds=segment_seconds(per_segment, interval, costs, eval_every) + last_save,
        segments=segments,
        overhead=ovh,
        jobs=jobs,
        max_startup_percent=max_startup_percent,
        young_seconds=young,
        daly_seconds=daly,
        lost_mean_seconds=interval_seconds / 2 + restart,
        # the save in flight: with background saves, a failure during a write loses that write too
        lost_max_seconds=interval_seconds + costs.save_seconds + (costs.persist_seconds if background else 0.0)
        + restart,
        frozen_segments=len(frozen or []),
        warnings=warnings,
        async_save=background,
        blocking_seconds=costs.save_seconds,
    )
