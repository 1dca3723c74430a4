"""Plan a segmented training from the command line, in the units a person types.

    python -m segtrain.plan --train-time 7d --save-time 20s --interval 30m
    python -m segtrain.plan --train-time 7d --save-time 20s --max-overhead 2%
    python -m segtrain.plan --train-time 7d --save-time 20s --mtbf 24h
    python -m segtrain.plan --train-time 7d --save-time 20s --interval 30m --time-limit 24h --step-time 0.4s
"""

from __future__ import annotations

import argparse
import math
import sys

from . import overhead, planning
from .durations import DurationError, format_duration, parse_duration, parse_percent


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m segtrain.plan",
        description="Checkpoint interval, overhead and segments of a time-limited training "
        "(DSRI formula: NCP = TT/z, TTSC = NCP*y, overhead = TTSC/TT*100 %%).",
    )
    p.add_argument("--train-time", required=True, help="total training time TT, e.g. 7d")
    p.add_argument("--save-time", required=True, help="time to save one checkpoint y, e.g. 20s")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--interval", help="checkpoint every z, e.g. 30m")
    how.add_argument("--max-overhead", help="longest acceptable overhead, e.g. 2%%: gives z")
    how.add_argument("--mtbf", help="mean time between random failures, e.g. 24h: Young/Daly z")
    p.add_argument("--time-limit", help="job time limit (walltime or booking), e.g. 24h")
    p.add_argument("--step-time", help="time of one training step, e.g. 0.4s (needs --time-limit)")
    p.add_argument("--load-time", default="0s", help="time to restore a checkpoint (default 0s)")
    p.add_argument("--startup", default="0s", help="job start-up before training (default 0s)")
    p.add_argument("--margin", default="0s", help="safety margin kept free in each job (default 0s)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        tt = parse_duration(args.train_time, "--train-time")
        y = parse_duration(args.save_time, "--save-time")
        if tt <= 0:
            raise DurationError("--train-time must be positive")
        young = daly = None
        if args.interval:
            z = parse_duration(args.interval, "--interval")
            why = "given"
        elif args.max_overhead:
            pct = parse_percent(args.max_overhead, "--max-overhead")
            z = overhead.interval_for_overhead(y, pct)
            why = f"longest overhead {pct:g} %: z = 100 * y / p"
        elif args.mtbf:
            m = parse_duration(args.mtbf, "--mtbf")
            young, daly = overhead.young_interval(y, m), overhead.daly_interval(y, m)
            z, why = daly, "Daly's interval for the given MTBF"
        else:
            z = overhead.interval_for_overhead(y, 1.0)
            why = "no policy given: the interval that keeps the overhead at 1 %"
        if z <= 0:
            raise DurationError("the checkpoint interval must be positive")
        o = overhead.overhead(tt, y, z)
    except (DurationError, planning.PlanError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    out = [
        f"training time    TT   = {format_duration(tt)} ({tt / 3600:.4g} h)",
        f"save time        y    = {format_duration(y)}",
        f"interval         z    = {format_duration(z)} ({z / 3600:.4g} h; {why})",
    ]
    if young is not None:
        out.append(f"Young  sqrt(2*y*M)   = {format_duration(young)} ({young / 3600:.4g} h)")
        out.append(f"Daly                 = {format_duration(daly)} ({daly / 3600:.4g} h)")
    out += [
        f"checkpoints      NCP  = TT / z = {o.checkpoints:.4g}",
        f"time saving      TTSC = NCP * y = {o.checkpoint_seconds / 3600:.3g} h",
        f"overhead              = TTSC / TT * 100 = {o.percent:.3g} %",
    ]
    if args.step_time or args.time_limit:
        try:
            if not (args.step_time and args.time_limit):
                raise DurationError("--step-time and --time-limit go together")
            costs = planning.Costs(
                step_seconds=parse_duration(args.step_time, "--step-time"),
                save_seconds=y,
                load_seconds=parse_duration(args.load_time, "--load-time"),
                startup_seconds=parse_duration(args.startup, "--startup"),
            )
            if costs.step_seconds <= 0:
                raise DurationError("--step-time must be positive")
            limit = parse_duration(args.time_limit, "--time-limit")
            margin = parse_duration(args.margin, "--margin")
            total = max(1, math.ceil(tt / costs.step_seconds))
            plan = planning.make_plan(
                total_steps=total,
                time_limit=limit,
                costs=costs,
                policy=planning.Policy(every_seconds=z),
                margin_seconds=margin,
            )
        except (DurationError, planning.PlanError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        out += [
            f"steps in total       = {total}",
            f"interval in steps    = {plan.interval_steps}",
            f"steps per segment    = {plan.steps_per_segment} "
            f"(about {format_duration(plan.segment_seconds)} of a {format_duration(limit)} job)",
            f"segments (jobs)      = {len(plan.segments)}",
            f"work lost a failure  = {format_duration(plan.lost_mean_seconds)} on average, "
            f"{format_duration(plan.lost_max_seconds)} at most",
        ]
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
