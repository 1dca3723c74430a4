"""Print what each run planned and what it measured: ``python -m segtrain.summary results``."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path


def summarize(run_dir: Path) -> str:
    plan = json.loads((run_dir / "plan.json").read_text())
    lines = [f"run {run_dir.name}: {len(plan['segments'])} segments of up to {plan['steps_per_segment']} steps, "
             f"checkpoint every {plan['interval_steps']} steps, planned overhead {plan['overhead']['percent']:.2f} %"]
    saves, steps = [], 0
    for seg in plan["segments"]:
        out = run_dir / "segments" / f"{seg['index']:04d}"
        bench = Path("benchmarks/train_segment") / run_dir.name / f"{seg['index']:04d}.tsv"
        if not (out / "segment.json").exists():
            lines.append(f"  segment {seg['index']}: not trained yet")
            continue
        info = json.loads((out / "segment.json").read_text())
        with open(out / "metrics.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        saves += [float(r["save_seconds"]) for r in rows if r.get("save_seconds")]
        steps += seg["end"] - seg["start"]
        wall = ""
        if bench.exists():
            with open(bench, newline="") as fh:
                wall = f", job wall {float(next(csv.DictReader(fh, delimiter=chr(9)))['s']):.1f} s"
        loss = next((r["loss"] for r in reversed(rows) if r.get("loss")), "?")
        lines.append(f"  segment {seg['index']}: steps {seg['start']}-{seg['end']}, attempts {info['attempts']}, "
                     f"loss {float(loss):.4f}{wall} (planned {plan['segment_seconds']:.1f} s for a full segment)")
    if saves:
        lines.append(f"  {len(saves)} saves: mean {1000 * sum(saves) / len(saves):.1f} ms, max {1000 * max(saves):.1f} ms "
                     f"(measured before planning: {1000 * plan['costs']['save_seconds']:.1f} ms)")
    return "\n".join(lines)


def main(argv=None) -> int:
    root = Path((argv or sys.argv[1:] or ["results"])[0])
    for run_dir in sorted(p for p in root.iterdir() if (p / "plan.json").exists()):
        print(summarize(run_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
