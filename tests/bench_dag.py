"""Benchmark: how long `snakemake -n` takes, and how much memory it needs, on a long chain of segments.

Run with `make bench-dag` (200, 2,000 and 10,000 segments) or `python tests/bench_dag.py 2000 10000`;
prints its figures. The plan is made by the real measure and plan rules. Target: 2,000 segments in
under 10 s for the whole process.
"""

import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import MLP, SNAKEMAKE, Project, planned_jobs  # noqa: E402


def _timed(cwd: Path, *args) -> tuple[float, int, str]:
    """Seconds and peak resident memory (MB) of one snakemake process, and its output."""
    # ru_maxrss of children is the largest of all waited-for children: measure each in a fresh
    # Python so an earlier, bigger run does not mask a later one
    code = (
        "import resource, subprocess, sys, time; t = time.perf_counter(); "
        "r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
        "dt = time.perf_counter() - t; "
        "print(dt, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024, r.returncode); "
        "sys.stderr.write(r.stdout + r.stderr)"
    )
    r = subprocess.run([sys.executable, "-c", code, SNAKEMAKE, "--cores", "2", *args], cwd=cwd,
                       capture_output=True, text=True)
    seconds, peak_mb, rc = r.stdout.split()
    if int(rc) != 0:
        raise SystemExit(f"snakemake {' '.join(args)} failed:\n{r.stderr[-3000:]}")
    return float(seconds), int(peak_mb), r.stderr


def bench(segments: int, repeats: int = 2) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        p = Project(Path(tmp) / "proj")
        p.write_config({"long": {**MLP, "total_steps": 10 * segments, "steps_per_segment": 10}},
                       checkpoint={"every_steps": 10})
        p.snakemake("--until", "plan_segments")
        runs = [_timed(p.root, "-n") for _ in range(repeats)]
        jobs = planned_jobs(runs[-1][2])
    return {"segments": jobs.get("train_segment", 0), "seconds": [r[0] for r in runs],
            "peak_mb": max(r[1] for r in runs)}


if __name__ == "__main__":
    sizes = [int(a) for a in sys.argv[1:]] or [200, 2000, 10000]
    print(f"{'segments':>9} {'train jobs':>10} {'snakemake -n (s)':>18} {'peak memory':>12}")
    for n in sizes:
        r = bench(n)
        print(f"{n:>9} {r['segments']:>10} {min(r['seconds']):>18.2f} {r['peak_mb']:>9} MB"
              f"   (runs: {', '.join(f'{t:.2f}' for t in r['seconds'])} s, whole process incl. start-up)")
    print("target: 2,000 segments in under 10 s")
