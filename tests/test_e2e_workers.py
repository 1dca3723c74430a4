"""Loader workers in the pipeline's real jobs: a num_workers: 2 job's training process really has
two worker children, its weights equal a run without workers, and a SIGKILL of that process (as
an out-of-memory kill) leaves neither workers nor a held lock: the automatic retry resumes."""

import os
import signal
import subprocess
import time

import pytest

from segtrain.layout import working_metrics

from conftest import assert_bitwise_equal, final_state, last_logged_step

pytestmark = pytest.mark.e2e
SNAKEMAKE_TARGETS = ("models",)  # no test here reads the figures: plans and exports only

TASK = {"task": "tasks/dataset_digits_torch.py", "params": {"pause": 0.02}, "total_steps": 400,
        "steps_per_segment": 200}


def children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def test_two_workers_run_as_two_children_and_a_kill_of_their_trainer_is_resumed(project):
    project.write_config({"w2": {**TASK, "num_workers": 2}, "w0": TASK}, checkpoint={"every_steps": 50})
    proc = project.popen("--retries", "2")
    store_root = project.paths("w2").store
    metrics = working_metrics(store_root, 0)
    deadline = time.time() + 300
    while last_logged_step(metrics) < 60:  # past the first periodic checkpoint, workers running
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read() if proc.poll() is not None else ""
        time.sleep(0.05)
    trainer = int((store_root / ".lock").read_text().split()[1])
    workers = children(trainer)
    assert len(workers) == 2, f"training process {trainer} has children {workers}"
    os.kill(trainer, signal.SIGKILL)  # what the out-of-memory killer does
    gone = time.time()
    while any(os.path.exists(f"/proc/{w}") for w in workers) and time.time() - gone < 10:
        time.sleep(0.01)
    assert not any(os.path.exists(f"/proc/{w}") and open(f"/proc/{w}/stat").read().split()[2] != "Z"
                   for w in workers), "the workers outlived their training process"
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-4000:]
    attempts = [a for a in project.attempts("w2") if "resumed_from" in a and a["segment"] == 0]
    assert len(attempts) == 2 and attempts[1]["resumed_from"] >= 50  # retried at once, from the checkpoint
    assert_bitwise_equal(final_state(project, "w2"), final_state(project, "w0"))

