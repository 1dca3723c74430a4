"""Finished work is never redone by accident: the real snakemake decides what to run."""

import re

import pytest

from segtrain.layout import SEGMENT_STATE, SEGMENT_SUMMARY

from conftest import MLP, planned_jobs

pytestmark = pytest.mark.e2e


def trained_segments(result):
    """Segments whose train_segment job snakemake ran (it prints each job's output)."""
    return set(re.findall(r"output: results/\w+/segments/(\d+)", result.stdout + result.stderr))


def segment_stamps(project, run):
    segs = sorted((project.paths(run).segments).iterdir())
    return {p.name: ((p / SEGMENT_SUMMARY).stat().st_mtime_ns, (p / SEGMENT_STATE / "state.pt").stat().st_ino) for p in segs}


def test_touching_replanning_editing_and_raising_total_steps_never_retrain(project):
    run = {**MLP, "total_steps": 300, "steps_per_segment": 100}
    project.write_config({"mlp": run})
    project.snakemake()
    before = segment_stamps(project, "mlp")
    assert sorted(before) == ["0000", "0001", "0002"]

    # 1. touching the plan
    for f in ("plan.json", "plan.txt", "costs.json"):
        (project.run_dir("mlp") / f).touch()
    assert "Nothing to be done" in project.snakemake("-n").stdout
    # 2. editing a script and the package
    for f in ("scripts/train_segment.py", "segtrain/runner.py"):
        with open(project.root / f, "a") as fh:
            fh.write("\n# edited\n")
    assert "Nothing to be done" in project.snakemake("-n").stdout
    # 3. regenerating the plan
    r = project.snakemake("--forcerun", "plan_segments")
    assert trained_segments(r) == set()
    assert "Finished jobid" in r.stderr and "plan_segments" in r.stderr
    assert segment_stamps(project, "mlp") == before
    # 4. raising total_steps: only new segments, after the last one
    project.write_config({"mlp": {**run, "total_steps": 500}})
    dry = project.snakemake("-n")
    jobs = planned_jobs(dry.stdout + dry.stderr)
    assert "train_segment" not in jobs and jobs.get("plan_segments") == 1
    r = project.snakemake()
    assert trained_segments(r) == {"0003", "0004"}
    after = segment_stamps(project, "mlp")
    assert sorted(after) == ["0000", "0001", "0002", "0003", "0004"]
    assert {k: after[k] for k in before} == before
    assert "Nothing to be done" in project.snakemake("-n").stdout

    # 5. a copy of results/ without Snakemake's records (.snakemake/: another machine, a new clone):
    # raising total_steps still extends the chain (Snakemake has no params record to compare)
    import shutil

    from conftest import Project

    copy = Project(project.root.parent / "copy")
    shutil.copytree(project.root / "results", copy.root / "results", copy_function=shutil.copy2, symlinks=True)
    copy.write_config({"mlp": {**run, "total_steps": 600}})
    r = copy.snakemake()
    assert trained_segments(r) == {"0005"}, r.stdout[-2000:] + r.stderr[-3000:]
    assert sorted(segment_stamps(copy, "mlp")) == ["0000", "0001", "0002", "0003", "0004", "0005"]


def test_changed_model_definition_is_refused_and_nothing_is_touched(project):
    run = {**MLP, "total_steps": 100, "steps_per_segment": 50}
    project.write_config({"mlp": run})
    project.snakemake()
    before = segment_stamps(project, "mlp")
    ckpts = sorted(p.name for p in (project.paths("mlp").store).iterdir())
    project.write_config({"mlp": {**run, "total_steps": 150, "params": {**run["params"], "lr": 0.01}}})
    r = project.snakemake(check=False)
    assert r.returncode != 0
    assert "different model definition" in r.stderr and "new name" in r.stderr
    assert segment_stamps(project, "mlp") == before
    assert sorted(p.name for p in (project.paths("mlp").store).iterdir()) == ckpts


def test_dry_run_of_a_600_segment_plan_lists_every_segment(measured):
    # past the ~475 segments where building the DAG used to recurse too deep (RecursionError)
    from bench_dag import bench

    result = bench(segments=600, repeats=1)
    assert result["segments"] == 600
    measured("bench", f"snakemake -n, 600 segments: {result['seconds'][0]:.2f} s, peak {result['peak_mb']} MB")
