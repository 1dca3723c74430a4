"""Exactness without fine print: tasks with global RNGs, odd cut points, other intervals, changed
task files, run-length-aware schedules and NaN losses, through the real snakemake command."""

import json

import pytest

from segtrain import store as st
from segtrain.layout import SEGMENT_SUMMARY

from conftest import KMLP, assert_bitwise_equal, final_state

pytestmark = pytest.mark.e2e
SNAKEMAKE_TARGETS = ("models",)  # no test here reads the figures: plans and exports only

AUGMENT = {"task": "tasks/augment_digits_torch.py", "checkpoint": {"every_steps": 25}}


def test_keras_layer_drawing_unseeded_random_numbers_resumes_identically(project):
    noisy = {**KMLP, "task": "tasks/noisy_keras.py", "checkpoint": {"every_steps": 40}}
    project.write_config({"whole": {**noisy, "total_steps": 200, "steps_per_segment": 200},
                          "cut": {**noisy, "total_steps": 200, "steps_per_segment": 70}})
    project.snakemake()
    assert_bitwise_equal(final_state(project, "whole"), final_state(project, "cut"))


def test_editing_the_task_file_is_refused_before_any_job(project):
    task = project.root / "tasks" / "mine.py"
    task.write_text((project.root / "examples" / "digits_mlp_torch.py").read_text())
    project.write_config({"r": {"task": "tasks/mine.py", "params": {"hidden": 16, "lr": 0.05},
                                "total_steps": 100, "steps_per_segment": 50}})
    project.snakemake()
    stamp = (project.paths("r").segment_dir(1) / SEGMENT_SUMMARY).stat().st_mtime_ns
    task.write_text(task.read_text().replace("nn.ReLU()", "nn.GELU()"))
    assert "nn.GELU()" in task.read_text()
    project.write_config({"r": {"task": "tasks/mine.py", "params": {"hidden": 16, "lr": 0.05},
                                "total_steps": 200, "steps_per_segment": 50}})
    r = project.snakemake("-n", check=False)
    out = r.stdout + r.stderr
    assert r.returncode != 0
    assert "tasks/mine.py (content changed)" in out and "Nothing was touched" in out
    assert (project.paths("r").segment_dir(1) / SEGMENT_SUMMARY).stat().st_mtime_ns == stamp


def test_one_cycle_schedule_gets_the_run_length_and_raising_it_is_refused(project):
    onecycle = {"task": "tasks/onecycle_torch.py", "checkpoint": {"every_steps": 50}, "log_every": 10}
    project.write_config({"r": {**onecycle, "total_steps": 300, "steps_per_segment": 100},
                          "whole": {**onecycle, "total_steps": 300, "steps_per_segment": 300}})
    project.snakemake()  # a schedule for 300 steps, over three segments: no "Tried to step" error
    assert_bitwise_equal(final_state(project, "r"), final_state(project, "whole"))
    project.write_config({"r": {**onecycle, "total_steps": 400, "steps_per_segment": 100}})
    r = project.snakemake("-n", check=False)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "total_steps (300 -> 400)" in out and "Nothing was touched" in out


def test_a_nan_loss_stops_the_run_and_the_newest_checkpoint_is_finite(project):
    import numpy as np

    project.write_config({"r": {"task": "tasks/failing_digits_torch.py", "params": {"fail_at": 130, "nan": True},
                                "total_steps": 400, "steps_per_segment": 400, "validation_split": 0}})
    r = project.snakemake("--retries", "5", check=False)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "loss = nan at step 130" in out
    ends = [a for a in project.attempts("r") if "status" in a]
    assert [a["status"] for a in ends] == ["error", "error"]  # the same error at the same step: not retried
    store = st.CheckpointStore(project.paths("r").store)
    newest = store.newest_valid()
    assert newest.step == 100
    import torch

    state = torch.load(newest.path / "state.pt", weights_only=True)
    assert all(np.isfinite(v.numpy()).all() for v in state["model"].values())
    assert not (project.run_dir("r") / "model.pt").exists()


def test_random_cut_points_intervals_measured_costs_and_kills_all_end_bitwise_identical(project):
    """Property-style, with a Dataset that augments with the global RNGs and the default held-out
    split read through it: seeded random segment lengths (cut at steps that line up with neither
    evaluations nor epochs), checkpoint intervals and evaluation steps, a plan made from other
    measured costs, and random kills; every run ends bitwise identical to one uninterrupted run."""
    import os
    import signal
    import threading
    import time

    import numpy as np

    rng = np.random.default_rng(2026)
    total = 240
    runs = {
        "ref": {**AUGMENT, "total_steps": total, "steps_per_segment": total},
        # planned from other measured costs: another interval, so evaluations at other steps
        "costs": {**AUGMENT, "total_steps": total, "steps_per_segment": total, "checkpoint": {"max_overhead": "5%"}},
    }
    for i in range(3):
        runs[f"r{i}"] = {**AUGMENT, "total_steps": total, "steps_per_segment": int(rng.integers(37, 97)),
                         "checkpoint": {"every_steps": int(rng.integers(5, 40))}, "eval_every": int(rng.integers(7, 50))}
    project.write_config(runs, log_every=1)
    project.snakemake("--until", "measure_checkpoint_cost")
    costs = project.run_dir("costs") / "costs.json"
    measured = json.loads(costs.read_text())
    # z = 800 steps (a background save would block as long: the plan saves synchronously)
    costs.write_text(json.dumps({**measured, "save_seconds": 40 * measured["step_seconds"],
                                 "snapshot_seconds": 40 * measured["step_seconds"]}))
    # planned first: Snakemake 9 drops a job it is retrying when a checkpoint (another run's plan)
    # finishes in between, and ends with "At least one job did not complete"
    project.snakemake("--until", "plan_segments")
    plans = {r: json.loads((project.paths(r).plan).read_text()) for r in runs}
    assert plans["ref"]["interval_steps"] == 25 and plans["costs"]["interval_steps"] == total  # 800, capped
    store = project.paths("r2").store
    kills, done = [], threading.Event()

    def killer():  # SIGKILL r2's training at random moments, three times
        while len(kills) < 3 and not done.is_set():
            try:
                pid = int((store / ".lock").read_text().split()[1])
                alive = b"train_segment" in open(f"/proc/{pid}/cmdline", "rb").read()
            except (OSError, IndexError, ValueError):
                alive = False
            if not alive or pid in kills:
                time.sleep(0.01)
                continue
            time.sleep(float(rng.uniform(0.0, 1.0)))
            try:
                os.kill(pid, signal.SIGKILL)
                kills.append(pid)
            except ProcessLookupError:
                pass

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    project.snakemake("--retries", "5")
    done.set()
    thread.join(timeout=5)
    print("cuts:", {r: (v["steps_per_segment"], v.get("checkpoint"), v.get("eval_every")) for r, v in runs.items()},
          "kills:", len(kills))
    assert len(kills) == 3
    reference = final_state(project, "ref")
    for run in ("costs", "r0", "r1", "r2"):
        assert_bitwise_equal(reference, final_state(project, run))
