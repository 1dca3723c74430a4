"""Exact resume through the real snakemake: 1 vs 5 segments, SIGKILL of a segment, of snakemake."""

import os
import signal
import time

import pandas as pd
import pytest

from conftest import TASKS, assert_bitwise_equal, best_record, final_state, load_weights, model_file
from support import newest_after_kill, wait_for_checkpoint

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("task", list(TASKS))
def test_one_segment_and_five_segments_end_bitwise_identical(baseline, task):
    one, five = baseline.run_dir(f"{task}-1"), baseline.run_dir(f"{task}-5")
    assert len(list((one / "segments").iterdir())) == 1
    assert len(list((five / "segments").iterdir())) == 5
    assert_bitwise_equal(load_weights(model_file(baseline, f"{task}-1")),
                         load_weights(model_file(baseline, f"{task}-5")))
    assert_bitwise_equal(final_state(baseline, f"{task}-1"), final_state(baseline, f"{task}-5"))
    # the best checkpoint (by val_loss) is the same step with the same weights
    assert best_record(baseline, f"{task}-1") == best_record(baseline, f"{task}-5")
    assert_bitwise_equal(load_weights(model_file(baseline, f"{task}-1", best=True)),
                         load_weights(model_file(baseline, f"{task}-5", best=True)))
    m1, m5 = pd.read_csv(one / "metrics.csv"), pd.read_csv(five / "metrics.csv")
    cols = ["step", "loss", "lr"]
    rows1 = m1.dropna(subset=["loss"])[cols].drop_duplicates("step").reset_index(drop=True)
    rows5 = m5.dropna(subset=["loss"])[cols].drop_duplicates("step").reset_index(drop=True)
    pd.testing.assert_frame_equal(rows1[rows1.step % 10 == 0].reset_index(drop=True),
                                  rows5[rows5.step % 10 == 0].reset_index(drop=True))
    assert m5.step.max() == m1.step.max() == TASKS[task][1]
    assert "val_loss" in m5.columns and m5.val_loss.notna().sum() >= 5  # evaluated in every segment


@pytest.mark.parametrize("which", ["last", "best"])
def test_torch_exports_load_with_plain_apis_and_predict_like_the_final_state(baseline, which):
    import torch
    from safetensors.torch import load_file

    from segtrain.taskfile import load_task

    from conftest import REPO

    task = load_task(REPO / "examples/digits_cnn_torch.py")
    params = TASKS["cnn"][0]["params"]
    run = baseline.run_dir("cnn-5")
    last = sorted((run / "segments").iterdir())[-1]
    state = torch.load(last / ("state" if which == "last" else "best") / "state.pt", weights_only=True)
    stem = "model" if which == "last" else "model.best"
    x, y = task.build_dataset(params)
    predictions = []
    for weights in (state["model"], torch.load(run / f"{stem}.pt", weights_only=True),
                    load_file(run / f"{stem}.safetensors")):
        model = task.build_model(params).eval()
        model.load_state_dict(weights)
        with torch.no_grad():
            predictions.append(model(x))
    assert torch.equal(predictions[0], predictions[1]) and torch.equal(predictions[0], predictions[2])
    assert (predictions[0].argmax(1) == y).float().mean() > 0.9


@pytest.mark.parametrize("which", ["last", "best"])
def test_keras_exports_load_with_plain_apis_and_predict_like_the_final_state(baseline, which):
    import keras
    import numpy as np

    from segtrain.backends.keras_backend import Backend
    from segtrain.taskfile import load_task

    from conftest import REPO

    params = TASKS["kcnn"][0]["params"]
    task_path = REPO / "examples/digits_cnn_keras.py"
    run = baseline.run_dir("kcnn-5")
    last = sorted((run / "segments").iterdir())[-1]
    pipeline_state = Backend(str(task_path), params, 0, 1)
    pipeline_state.build()
    pipeline_state.read_state(last / ("state" if which == "last" else "best"))
    stem = "model" if which == "last" else "model.best"
    x, y = load_task(task_path).build_dataset(params)
    reference = pipeline_state.model.predict(x, verbose=0)
    loaded = keras.models.load_model(run / f"{stem}.keras")
    weights_only = load_task(task_path).build_model(params)
    weights_only.load_weights(run / f"{stem}.weights.h5")
    assert np.array_equal(reference, loaded.predict(x, verbose=0))
    assert np.array_equal(reference, weights_only.predict(x, verbose=0))
    assert (reference.argmax(1) == y).mean() > 0.9


@pytest.mark.parametrize("task", ["cnn", "kcnn"])
def test_sigkill_of_training_process_resumes_from_newest_periodic_checkpoint(project, baseline, task):
    spec, total = TASKS[task]
    # five segments, killed in the middle one a quarter into it: three checkpoints before its end,
    # so the kill lands while it trains (a kill after its output is complete fails nothing; a
    # save a segment's end away from the kill let that happen to the Keras run, whose steps take ms)
    segment = total // 5
    kill_after = 2 * segment + segment // 4
    project.write_config({"cnn-kill": {**spec, "total_steps": total, "steps_per_segment": segment,
                                       "checkpoint": {"every_steps": segment // 4}, "eval_every": 50}})  # as the baseline
    proc = project.popen()
    store_root = project.paths("cnn-kill").store
    wait_for_checkpoint(store_root, kill_after, proc)
    pid = int((store_root / ".lock").read_text().split()[1])
    os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=120)
    assert proc.returncode != 0  # the killed job failed the run
    resume_at = newest_after_kill(store_root)
    assert kill_after <= resume_at < 3 * segment

    project.snakemake()
    retried = [a for a in project.attempts("cnn-kill") if "resumed_from" in a and a["attempt"] >= 2]
    assert len(retried) == 1 and retried[0]["resumed_from"] == resume_at
    assert retried[0]["source"].startswith("periodic checkpoint")
    assert_bitwise_equal(load_weights(model_file(baseline, f"{task}-1")), load_weights(model_file(project, "cnn-kill")))
    assert_bitwise_equal(final_state(baseline, f"{task}-1"), final_state(project, "cnn-kill"))
    assert best_record(baseline, f"{task}-1") == best_record(project, "cnn-kill")
    assert_bitwise_equal(load_weights(model_file(baseline, f"{task}-1", best=True)),
                         load_weights(model_file(project, "cnn-kill", best=True)))


@pytest.mark.parametrize("task", ["cnn", "kcnn"])
def test_killed_snakemake_process_resumes_with_rerun_incomplete(project, baseline, task):
    spec, total = TASKS[task]
    project.write_config({"cnn-sm": {**spec, "total_steps": total, "steps_per_segment": total // 2}})
    proc = project.popen(start_new_session=True)
    store_root = project.paths("cnn-sm").store
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
