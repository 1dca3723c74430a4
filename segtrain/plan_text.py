"""A plan as a table for people: the DSRI formula with the run's numbers, the jobs' overhead,
the segments and the work a failure loses."""

from __future__ import annotations

from .durations import format_duration as fd
from .planning import Plan


def _jobs_lines(plan: Plan) -> list[str]:
    j = plan.jobs
    if j is None or j.jobs == 0:
        return ["  no new jobs to plan"]
    return [
        f"  {j.jobs} jobs: start-up {fd(j.startup_seconds)} + restores {fd(j.restore_seconds)} + saves "
        f"{fd(j.save_seconds)} + evaluations {fd(j.eval_seconds)} = {fd(j.total_seconds - j.train_seconds)}",
        f"  of {fd(j.total_seconds)} in all (training steps {fd(j.train_seconds)}): overhead {j.percent:.3g} %",
        f"  start-up and restore per job: {fd(plan.costs.startup_seconds + plan.costs.load_seconds)} = "
        f"{100 * (plan.costs.startup_seconds + plan.costs.load_seconds) / plan.time_limit:.3g} % of time_limit "
        f"(allowed: max_startup_share {plan.max_startup_percent:g} %)",
    ]


def plan_table(plan: Plan, run: str = "") -> str:
    """A human table of the plan: the DSRI formula with this run's numbers, then the segments."""
    c, o = plan.costs, plan.overhead
    lines = [
        f"Plan for run {run}" if run else "Plan",
        "",
        "Measured costs",
        f"  step time            y_step = {fd(c.step_seconds)}",
        *([f"  checkpoint save      y      = {fd(plan.blocking_seconds)} blocking (copy to host memory; written "
           f"in the background in {fd(c.persist_seconds)}; a synchronous save: {fd(c.save_seconds)})"]
          if plan.async_save else
          [f"  checkpoint save      y      = {fd(c.save_seconds)}"
           + (f" (synchronous; a background save would block {fd(c.snapshot_seconds)})"
              if c.snapshot_seconds else "")]),
        f"  checkpoint load             = {fd(c.load_seconds)}",
        f"  job start-up                = {fd(c.startup_seconds)}",
        f"  evaluation                  = {fd(c.eval_seconds)} (at every checkpoint unless eval_every is set)",
        f"  checkpoint size             = {c.checkpoint_bytes / 1e6:.3g} MB",
        "",
        "Checkpoint interval",
        f"  policy  {plan.reason}",
        f"  z = {plan.interval_steps} steps = {fd(plan.interval_seconds)}"
        + (f" = {plan.interval_steps / c.steps_per_epoch:.3g} epochs" if c.steps_per_epoch else ""),
        "",
        "Overhead (DSRI formula)",
        f"  TT    = {plan.total_steps} steps * {fd(c.step_seconds)} = {fd(o.train_seconds)}",
        f"  NCP   = TT / z = {fd(o.train_seconds)} / {fd(o.interval_seconds)} = {o.checkpoints:.4g} checkpoints",
        f"  TTSC  = NCP * y = {o.checkpoints:.4g} * {fd(o.save_seconds)} = {fd(o.checkpoint_seconds)}",
        f"  overhead = TTSC / TT * 100 = {o.percent:.3g} %   (saves only)",
        "",
        "Overhead of the jobs (start-up, restores, saves and evaluations over the jobs' whole time)",
        *_jobs_lines(plan),
        "",
        "Segments",
        f"  job time limit      {fd(plan.time_limit)} (safety margin {fd(plan.margin_seconds)})",
        f"  steps per segment   {plan.steps_per_segment} (predicted {fd(plan.segment_seconds)} per job)",
        f"  segments            {len(plan.segments)}"
        + (f" ({plan.frozen_segments} already trained, kept as they were)" if plan.frozen_segments else ""),
        "",
        "Work lost per failure (interval + save in flight + restart)",
        f"  mean {fd(plan.lost_mean_seconds)}, at most {fd(plan.lost_max_seconds)}",
    ]
    if plan.young_seconds is not None:
        lines += ["", f"  Young {fd(plan.young_seconds)}, Daly {fd(plan.daly_seconds)}"]
    for w in plan.warnings:
        lines += ["", f"WARNING: {w}"]
    lines += ["", f"{'segment':>8} {'start':>10} {'end':>10} {'interval':>9}"]
    lines += [f"{s.index:>8} {s.start:>10} {s.end:>10} {s.interval:>9}" for s in plan.segments]
    return "\n".join(lines) + "\n"
