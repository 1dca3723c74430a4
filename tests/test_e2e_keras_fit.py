"""A Keras `fit` script (two named inputs, sample weights, dropout, a schedule, validation data,
a callback of its own) through segtrain.keras.fit and the real snakemake command: 4 segments
with a SIGKILL of the training process, a SIGTERM and a SIGKILL of Snakemake end bitwise identical
to 1 segment."""

import os
import signal
import time

import pytest

from conftest import Project, assert_bitwise_equal, final_state, last_logged_step, load_weights, model_file
from test_e2e_resume import newest_after_kill, wait_for_checkpoint

pytestmark = pytest.mark.e2e

TOTAL = 400


def fit_run(args="", **more):
    return {"framework": "keras", "script": f"tasks/script_fit_keras.py {args}".strip(), "total_steps": TOTAL,
            **more}


def test_a_keras_fit_script_killed_and_stopped_across_segments_ends_bitwise_identical(tmp_path):
    ref = Project(tmp_path / "ref")
    ref.write_config({"kf-1": fit_run(steps_per_segment=TOTAL)})
    ref.snakemake()

    p = Project(tmp_path / "killed")
    p.write_config({"kf-4": fit_run("--step-sleep 0.02", steps_per_segment=TOTAL // 4)}, log_every=1)
    store_root = p.run_dir("kf-4") / "ckpt"
    proc = p.popen()
    wait_for_checkpoint(store_root, 150, proc)  # segment 1
    os.kill(int((store_root / ".lock").read_text().split()[1]), signal.SIGKILL)
    proc.wait(timeout=120)
    assert proc.returncode != 0
    killed_at = newest_after_kill(store_root)
    assert 150 <= killed_at < 200

    proc = p.popen("--retries", "2")
    wait_for_checkpoint(store_root, 250, proc)  # segment 2, past its save at 250
    while last_logged_step(store_root / "metrics" / "segment-0002.csv") < 260:
        time.sleep(0.005)
    os.kill(int((store_root / ".lock").read_text().split()[1]), signal.SIGTERM)

    wait_for_checkpoint(store_root, 350, proc)  # segment 3: Snakemake itself is killed
    pid = int((store_root / ".lock").read_text().split()[1])
    proc.kill()
    proc.wait(timeout=60)
    deadline = time.time() + 60  # the job sees its Snakemake gone, saves and ends (segtrain.lifecycle)
    while os.path.exists(f"/proc/{pid}") and time.time() < deadline:
        time.sleep(0.05)
    p.snakemake("--unlock")
    p.snakemake("--rerun-incomplete")

    attempts = p.attempts("kf-4")
    stopped = [a for a in attempts if a.get("status") == "stopped"]
    assert stopped and "SIGTERM" in stopped[0]["reason"] and stopped[0]["end_step"] > 260
    starts = [(a["segment"], a["resumed_from"]) for a in attempts if "resumed_from" in a]
    assert (1, killed_at) in starts and (2, stopped[0]["end_step"]) in starts
    assert sum(1 for segment, _ in starts if segment == 3) == 2  # segment 3 ran again after Snakemake's kill
    assert_bitwise_equal(final_state(p, "kf-4"), final_state(ref, "kf-1"))
    # the script exported its own model (two named inputs): the same weights
    assert_bitwise_equal(load_weights(model_file(p, "kf-4")), load_weights(model_file(ref, "kf-1")))
    assert "resuming at step" in (p.root / "logs" / "train_segment" / "kf-4" / "0001.log").read_text()
