"""Exact resume through the real snakemake: 1 vs 5 segments, SIGKILL of a segment, of snakemake."""

import os
import signal
import time

import pandas as pd
import pytest

from conftest import TASKS, assert_bitwise_equal, final_state, load_weights, model_file

from segtrain import store as st

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("task", list(TASKS))
def test_one_segment_and_five_segments_end_bitwise_identical(baseline, task):
    one, five = baseline.run_dir(f"{task}-1"), baseline.run_dir(f"{task}-5")
    assert len(list((one / "segments").iterdir())) == 1
    assert len(list((five / "segments").iterdir())) == 5
    assert_bitwise_equal(load_weights(model_file(baseline, f"{task}-1")),
                         load_weights(model_file(baseline, f"{task}-5")))
    assert_bitwise_equal(final_state(baseline, f"{task}-1"), final_state(baseline, f"{task}-5"))
    m1, m5 = pd.read_csv(one / "metrics.csv"), pd.read_csv(five / "metrics.csv")
    cols = ["step", "loss", "lr"]
    rows1 = m1.dropna(subset=["loss"])[cols].drop_duplicates("step").reset_index(drop=True)
    rows5 = m5.dropna(subset=["loss"])[cols].drop_duplicates("step").reset_index(drop=True)
    pd.testing.assert_frame_equal(rows1[rows1.step % 10 == 0].reset_index(drop=True),
                                  rows5[rows5.step % 10 == 0].reset_index(drop=True))
    assert m5.step.max() == m1.step.max() == TASKS[task][1]


def test_exported_keras_model_loads_with_load_model_and_predicts(baseline):
    import keras

    from conftest import REPO
    from segtrain.taskfile import load_task

    model = keras.models.load_model(baseline.run_dir("kmlp-1") / "model.keras")
    x, y = load_task(REPO / "examples/digits_mlp_keras.py").build_dataset({})
    assert (model.predict(x, verbose=0).argmax(1) == y).mean() > 0.9


def test_exported_weights_load_with_weights_only(baseline):
    import torch

    from conftest import REPO
    from segtrain.taskfile import load_task

    task = load_task(REPO / "examples/digits_mlp_torch.py")
    model = task.build_model({"hidden": 32})
    model.load_state_dict(torch.load(baseline.run_dir("mlp-1") / "model.pt", weights_only=True))
    x, y = task.build_dataset({})
    assert (model(x).argmax(1) == y).float().mean() > 0.9


def wait_for_checkpoint(store_root, min_step, proc, timeout=120):
    store = st.CheckpointStore(store_root)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if any(s >= min_step for s in store.steps()):
            return
        if proc.poll() is not None:
            raise AssertionError(f"snakemake ended before step {min_step}:\n{proc.stdout.read()[-3000:]}")
        time.sleep(0.005)
    raise AssertionError(f"no checkpoint at step >= {min_step} within {timeout} s")


def newest_after_kill(store_root):
    ck = st.CheckpointStore(store_root).newest_valid()
    return ck.step


@pytest.mark.parametrize("task", ["cnn", "kcnn"])
def test_sigkill_of_training_process_resumes_from_newest_periodic_checkpoint(project, baseline, task):
    spec, total = TASKS[task]
    project.write_config({"cnn-kill": {**spec, "total_steps": total, "steps_per_segment": total // 2}})
    proc = project.popen()
    store_root = project.run_dir("cnn-kill") / "ckpt"
    wait_for_checkpoint(store_root, total // 2 + 100, proc)
    pid = int((store_root / ".lock").read_text().split()[1])
    os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=120)
    assert proc.returncode != 0  # the killed job failed the run
    resume_at = newest_after_kill(store_root)
    assert total // 2 + 100 <= resume_at < total

    project.snakemake()
    attempts = [a for a in project.attempts("cnn-kill") if a.get("segment") == 1 and "resumed_from" in a]
    assert [a["attempt"] for a in attempts] == [1, 2]
    assert attempts[1]["resumed_from"] == resume_at
    assert attempts[1]["source"].startswith("periodic checkpoint")
    assert_bitwise_equal(load_weights(model_file(baseline, f"{task}-1")), load_weights(model_file(project, "cnn-kill")))
    assert_bitwise_equal(final_state(baseline, f"{task}-1"), final_state(project, "cnn-kill"))


@pytest.mark.parametrize("task", ["cnn", "kcnn"])
def test_killed_snakemake_process_resumes_with_rerun_incomplete(project, baseline, task):
    spec, total = TASKS[task]
    project.write_config({"cnn-sm": {**spec, "total_steps": total, "steps_per_segment": total // 2}})
    proc = project.popen(start_new_session=True)
    store_root = project.run_dir("cnn-sm") / "ckpt"
    wait_for_checkpoint(store_root, 100, proc)
    os.killpg(proc.pid, signal.SIGKILL)  # snakemake and everything it started, as when a pod is stopped
    proc.wait(timeout=60)
    time.sleep(0.5)
    resume_at = newest_after_kill(store_root)
    assert 100 <= resume_at < total

    # What the README says to do after the Snakemake process was stopped:
    r = project.snakemake(check=False)
    assert r.returncode != 0 and "--unlock" in r.stderr  # snakemake's lock outlived the kill
    project.snakemake("--unlock")
    project.snakemake("--rerun-incomplete")
    retried = [a for a in project.attempts("cnn-sm") if "resumed_from" in a and a["attempt"] >= 2]
    assert len(retried) == 1  # only the killed segment ran twice
    assert retried[0]["resumed_from"] == resume_at and retried[0]["source"].startswith("periodic checkpoint")
    assert_bitwise_equal(load_weights(model_file(baseline, f"{task}-1")), load_weights(model_file(project, "cnn-sm")))
    assert_bitwise_equal(final_state(baseline, f"{task}-1"), final_state(project, "cnn-sm"))
