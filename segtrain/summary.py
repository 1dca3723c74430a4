"""Print what each run planned and what it measured: ``python -m segtrain.summary results``."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

from .attempts import attempts_of
from .durations import format_duration as fd
from .layout import PLAN, SEGMENT_METRICS, SEGMENT_SUMMARY, RunPaths
from .planning import Costs, segment_seconds


def measured_attempts(segment_json: dict) -> list[dict]:
    """Per attempt of a segment: start-up, job wall time and time in training steps (seconds),
    from the timings each attempt recorded in the attempts ledger."""
    out = []
    for a in attempts_of(segment_json.get("history", [])):
        if "process_start_time" not in a or "end_time" not in a:
            continue  # killed (no end record), or recorded by an older version
        wall = a["end_time"] - a["process_start_time"]
        startup = a["train_start_time"] - a["process_start_time"] - a.get("restore_seconds", 0.0)
        out.append({"status": a["status"], "wall": wall, "startup": startup, "train": a.get("train_seconds", 0.0),
                    "restore": a.get("restore_seconds", 0.0)})
    return out


def summarize(run_dir: Path) -> str:
    plan = json.loads((RunPaths(run_dir).plan).read_text())
    costs = Costs.from_dict(plan["costs"])
    jobs = plan.get("jobs") or {}
    lines = [
        f"run {run_dir.name}: {len(plan['segments'])} segments of up to {plan['steps_per_segment']} steps, "
        f"checkpoint every {plan['interval_steps']} steps ({plan['reason']})",
        f"  planned : start-up {fd(costs.startup_seconds)} per job, step {fd(costs.step_seconds)}, save "
        f"{fd(costs.save_seconds)}, evaluation {fd(costs.eval_seconds)}; a full job {fd(plan['segment_seconds'])} "
        f"of a {fd(plan['time_limit'])} limit",
        f"            overhead {jobs.get('percent', float('nan')):.1f} % of the jobs' time (start-up, restores, "
        f"saves, evaluations); DSRI formula (saves only) {plan['overhead']['percent']:.2f} %",
    ]
    saves, all_attempts, seg_lines = [], [], []
    for seg in plan["segments"]:
        out = RunPaths(run_dir).segment_dir(seg["index"])
        if not (out / SEGMENT_SUMMARY).exists():
            seg_lines.append(f"  segment {seg['index']}: not trained yet")
            continue
        info = json.loads((out / SEGMENT_SUMMARY).read_text())
        with open(out / SEGMENT_METRICS, newline="") as fh:
            rows = list(csv.DictReader(fh))
        saves += [float(r["save_seconds"]) for r in rows if r.get("save_seconds")]
        attempts = measured_attempts(info)
        all_attempts += attempts
        planned = segment_seconds(seg["end"] - seg["start"], seg["interval"], costs, seg.get("eval_every", 0))
        wall = sum(a["wall"] for a in attempts)
        startup = sum(a["startup"] for a in attempts)
        loss = next((r["loss"] for r in reversed(rows) if r.get("loss")), "nan")
        seg_lines.append(
            f"  segment {seg['index']}: steps {seg['start']}-{seg['end']}, {info['attempts']} attempt(s), "
            f"loss {float(loss):.4f}, job {fd(wall)} (planned {fd(planned)}), start-up {fd(startup)}"
        )
    if all_attempts:
        wall = sum(a["wall"] for a in all_attempts)
        train = sum(a["train"] for a in all_attempts)
        startup = sum(a["startup"] for a in all_attempts) / len(all_attempts)
        lines.append(
            f"  measured: start-up {fd(startup)} per job (mean of {len(all_attempts)} attempts), jobs {fd(wall)} in "
            f"all, of which training steps {fd(train)}: overhead {100 * (wall - train) / wall:.1f} %"
        )
    if saves:
        lines.append(f"            {len(saves)} saves: mean {fd(sum(saves) / len(saves))}, max {fd(max(saves))} "
                     f"(measured before planning: {fd(costs.save_seconds)})")
    return "\n".join(lines + seg_lines)


def main(argv=None) -> int:
    root = Path((argv or sys.argv[1:] or ["results"])[0])
    runs = sorted(p for p in root.iterdir() if (p / PLAN).exists()) if root.is_dir() else []
    if not runs:
        print(f"no planned runs in {root}")
        return 1
    for run_dir in runs:
        print(summarize(run_dir))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
