"""Benchmark: how long `snakemake -n` takes on a plan of 200 segments (target: under 5 s).

Run with `make bench-dag`; prints its figures. The plan is made by the real measure and plan rules.
"""

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import MLP, Project, planned_jobs  # noqa: E402


def bench(segments: int = 200, repeats: int = 3) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        p = Project(Path(tmp) / "proj")
        p.write_config({"long": {**MLP, "total_steps": 10 * segments, "steps_per_segment": 10}},
                       checkpoint={"every_steps": 10})
        p.snakemake("--until", "plan_segments")
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            r = p.snakemake("-n")
            times.append(time.perf_counter() - t)
        jobs = planned_jobs(r.stdout + r.stderr)
        t = time.perf_counter()
        p.snakemake("-n", "--rerun-triggers", "mtime")
        mtime_only = time.perf_counter() - t
    return {"segments": jobs.get("train_segment", 0), "dry_run_seconds": times, "mtime_trigger_only": mtime_only}


if __name__ == "__main__":
    result = bench()
    best = min(result["dry_run_seconds"])
    print(f"snakemake -n with {result['segments']} train_segment jobs: "
          f"best {best:.2f} s of {len(result['dry_run_seconds'])} "
          f"({', '.join(f'{t:.2f}' for t in result['dry_run_seconds'])} s), whole process incl. start-up; "
          f"with --rerun-triggers mtime: {result['mtime_trigger_only']:.2f} s; target < 5 s")
