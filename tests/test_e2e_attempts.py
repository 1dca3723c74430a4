"""Which failed attempts are tried again, and what happens to a job when Snakemake dies."""

import os
import signal
import time

import pytest

from segtrain import store as st

from support import wait_for_checkpoint

pytestmark = pytest.mark.e2e
SNAKEMAKE_TARGETS = ("models",)  # no test here reads the figures: plans and exports only

FAILING = {"task": "tasks/failing_digits_torch.py", "params": {"fail_at": 130}, "validation_split": 0}
SLOW = {"task": "tasks/slow_digits_torch.py", "params": {"pause": 0.0}}


def test_the_same_error_at_the_same_step_twice_stops_the_run_with_that_error(project):
    project.write_config({"r": {**FAILING, "total_steps": 400, "steps_per_segment": 400}})
    r = project.snakemake("--retries", "5", check=False)
    out = r.stdout + r.stderr
    assert r.returncode != 0
    attempts = [a for a in project.attempts("r") if "status" in a]
    assert [a["status"] for a in attempts] == ["error", "error"], attempts  # two attempts, not retries + 1
    assert {a["end_step"] for a in attempts} == {130}
    assert "failed 2 times at step 130 with the same error" in out
    assert "ValueError: the task broke at step 130" in out  # the task's own error, in Snakemake's output
    # the first attempt's progress is kept: the second resumed from its last checkpoint
    starts = [a for a in project.attempts("r") if "resumed_from" in a]
    assert [a["resumed_from"] for a in starts] == [0, 100]


def test_a_segment_stopped_at_its_deadline_again_and_again_with_progress_still_finishes(project):
    # measured fast, then the machine gets slower: 60 s of training in 20 s jobs, each of which
    # also starts up (5-13 s on 2 busy cores; the plan allows up to 75 %), so 4 or more jobs
    project.write_config({"r": {**SLOW, "total_steps": 600, "steps_per_segment": 600}},
                         time_limit="20s", safety_margin="1s", max_startup_share="75%",
                         checkpoint={"every_steps": 25})
    project.snakemake("--until", "plan_segments")
    project.snakemake("--retries", "2", env={"SLOW_TASK_PAUSE": "0.1"})  # the local profile's 2
    ends = [a for a in project.attempts("r") if "status" in a]
    stops = [a for a in ends if a["status"] == "stopped"]
    assert len(stops) >= 3, ends  # more stops than the local profile's 2 retries
    assert all("deadline" in a["reason"] for a in stops)
    assert ends[-1]["status"] == "completed" and ends[-1]["end_step"] == 600
    assert (project.run_dir("r") / "model.pt").exists()


def running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie waiting to be reaped is not)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_kill_9_of_snakemake_leaves_no_training_process(project):
    project.write_config({"r": {**SLOW, "total_steps": 3000, "steps_per_segment": 3000}},
                         checkpoint={"every_steps": 50})
    project.snakemake("--until", "plan_segments")
    proc = project.popen(env={**os.environ, "SLOW_TASK_PAUSE": "0.01"})
    store_root = project.paths("r").store
    wait_for_checkpoint(store_root, 50, proc)
    trainer = int((store_root / ".lock").read_text().split()[1])
    assert running(trainer)
    os.kill(proc.pid, signal.SIGKILL)  # Snakemake alone: its job is not in the signal
    proc.wait()
    killed = time.time()
    while running(trainer) and time.time() - killed < 10:
        time.sleep(0.05)
    alive = running(trainer)
    if alive:
        os.kill(trainer, signal.SIGKILL)
    assert not alive, "the training process outlived its Snakemake process by 10 s"
    gone = time.time() - killed
    stop = [a for a in project.attempts("r") if a.get("status") == "stopped"][-1]
    assert "Snakemake process" in stop["reason"] and "is gone" in stop["reason"]
    st.verify(st.CheckpointStore(store_root).path(stop["end_step"]))  # it saved where it stopped
    print(f"training process gone {gone:.2f} s after kill -9 of Snakemake, saved at step {stop['end_step']}")
